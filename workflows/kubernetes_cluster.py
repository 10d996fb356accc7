"""geoseg batch on Kubernetes from Python: the set-up of kubernetes.yaml, whose cluster it uses.

    pip install dask-kubernetes
    python workflows/kubernetes_cluster.py /mnt/archive/stac/items.json /mnt/results/geoseg

The DaskCluster (images, GPU requests, volumes, replicas) is the ``custom_cluster_spec`` of
``kubernetes.yaml``, read with geoseg's own spec loader, so the two never drift apart: edit it
there. The scheduler pod requests no GPU, each worker pod one (``nvidia.com/gpu: 1``, Dask
resource ``GPU=1``), and inference runs only on workers with that resource, on CUDA. Run
this where ``geoseg batch --spec workflows/kubernetes.yaml`` would run (see its header): the
driver mounts /mnt/archive, /mnt/models and /mnt/results too, since it reads the STAC file,
plans every scene and writes every output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dask_kubernetes.operator import KubeCluster
from distributed import Client

from geoseg.batch import run_batch
from geoseg.batch.inputs import resolve_inputs
from geoseg.cli.batch import load_spec
from geoseg.config import RunOptions

SPEC = Path(__file__).with_name("kubernetes.yaml")


def main(inputs: list[str], outdir: str) -> int:
    cluster_options = load_spec(SPEC)["cluster"]["options"]  # namespace, custom_cluster_spec
    options = RunOptions(
        model="/mnt/models/buildings-v3.pt",
        tile_px=512,
        overlap_px=128,
        batch_size=8,
        device="cuda",  # the workers' device: this process never loads the model on it
    )
    with KubeCluster(**cluster_options) as cluster, Client(cluster) as client:
        print("Dashboard:", client.dashboard_link)
        report = run_batch(
            resolve_inputs(inputs, asset="visual"),
            outdir,
            options=options,
            scheduler=client,
            predict_resources={"GPU": 1},  # inference only on the GPU workers
            merge=True,
        )
    for outcome in report.failed:
        print("FAILED", outcome.scene, outcome.error)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:-1], sys.argv[-1]))
