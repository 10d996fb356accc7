"""geoseg batch on a SLURM cluster through dask-jobqueue (adapt queue, account and sizes).

    pip install dask-jobqueue
    python workflows/slurm_cluster.py archive/ out/

Each SLURM job is one Dask worker process with the model loaded once; the batch is resumable,
so a job killed by the queue's time limit only loses the scenes it was working on.
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
        processes=1,  # one worker process per job: one model in memory
        memory="32GB",
        walltime="04:00:00",
        job_extra_directives=["--gres=gpu:1"],
        worker_extra_args=["--resources", "GPU=1"],
    )
    cluster.adapt(minimum_jobs=1, maximum_jobs=10)
    with Client(cluster) as client:
        print("Dashboard:", client.dashboard_link)
        report = run_batch(
            resolve_inputs(inputs),
            outdir,
            options=RunOptions(device="cuda", batch_size=16),
            scheduler=client,
            predict_resources={"GPU": 1},
            merge=True,
        )
    for outcome in report.outcomes:
        print(outcome.scene, outcome.status, outcome.error)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:-1], sys.argv[-1]))
