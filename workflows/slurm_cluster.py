"""geoseg batch on a SLURM cluster from Python: the set-up of slurm.yaml (edit queue, account,
sizes).

    pip install dask-jobqueue
    python workflows/slurm_cluster.py /scratch/archive/manifest.txt /scratch/geoseg/archive

Run it on the login node: it needs no GPU (it never loads the model on CUDA). Each SLURM job
is one Dask worker process on one GPU with the model loaded once. ``--lifetime`` retires a
worker before the walltime kills its job, and ``run_batch`` submits a new job for each one
that ends while the batch runs, so a batch longer than the walltime finishes; the batch is
resumable besides, so a killed driver loses nothing done.
"""

from __future__ import annotations

import sys

from dask_jobqueue import SLURMCluster
from distributed import Client

from geoseg.batch import run_batch
from geoseg.batch.inputs import resolve_inputs
from geoseg.config import RunOptions


def main(inputs: list[str], outdir: str) -> int:
    cluster = SLURMCluster(
        queue="gpu",  # your partition
        account="my-project",  # your account
        cores=8,
        processes=1,  # one worker process per job: one model per GPU
        memory="32GB",
        walltime="04:00:00",
        job_extra_directives=["--gres=gpu:1"],
        # retire each worker cleanly before the walltime, not all at once (225m: 3 h 45 min,
        # one unit: Dask reads no "3h45m")
        worker_extra_args=[
            *("--resources", "GPU=1"),
            *("--lifetime", "225m", "--lifetime-stagger", "5m"),
        ],
    )
    with cluster, Client(cluster) as client:
        cluster.adapt(minimum_jobs=1, maximum_jobs=16)
        print("Dashboard:", client.dashboard_link)
        report = run_batch(
            resolve_inputs(inputs),
            outdir,
            options=RunOptions(
                model="/scratch/models/buildings-v3.pt",
                tile_px=512,
                overlap_px=128,
                batch_size=8,
                device="cuda",  # the workers' device
            ),
            scheduler=client,
            predict_resources={"GPU": 1},  # inference only on the GPU workers
            merge=True,
        )
    for outcome in report.failed:
        print("FAILED", outcome.scene, outcome.error)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:-1], sys.argv[-1]))
