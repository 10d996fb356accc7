"""geoseg batch on Kubernetes through dask-kubernetes (adapt the image and resources).

    pip install dask-kubernetes
    python workflows/kubernetes_cluster.py s3-mounted/archive/ /data/out/

The image must contain geoseg (``pip install geoseg``) and see the scenes and the output
folder at the same paths as this script (a shared volume), since outputs are written by the
client and scenes are read by the workers.
"""

from __future__ import annotations

import sys

from dask_kubernetes.operator import KubeCluster
from distributed import Client

from geoseg.batch import run_batch
from geoseg.batch.inputs import resolve_inputs
from geoseg.config import RunOptions


def main(inputs: list[str], outdir: str) -> int:
    cluster = KubeCluster(
        name="geoseg",
        image="registry.example.org/geoseg:latest",  # your image with geoseg installed
        n_workers=4,
        resources={
            "requests": {"cpu": "4", "memory": "16Gi"},
            "limits": {"cpu": "4", "memory": "16Gi"},
        },
    )
    with Client(cluster) as client:
        print("Dashboard:", client.dashboard_link)
        report = run_batch(
            resolve_inputs(inputs), outdir, options=RunOptions(), scheduler=client, merge=True
        )
    cluster.close()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:-1], sys.argv[-1]))
