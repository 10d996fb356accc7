"""The cluster workflows of workflows/ as a user runs them: the driver plans without the
workers' device, the Kubernetes manifests (GPU only on workers, `dask scheduler`/`dask worker`,
shared volumes), and batches that outlive their workers (walltime, --lifetime, SIGKILL)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import yaml
from affine import Affine

from geoseg.batch import run_batch
from geoseg.batch.cluster import start_cluster
from geoseg.batch.journal import JOURNAL_NAME
from geoseg.cli.batch import load_spec
from geoseg.config import RunOptions
from geoseg.model import describe_model, load_segmenter
from geoseg.pipeline import plan_scene
from geoseg.testing import OracleSegmenter, write_coded_scene
from tests.models import SlowOracle

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SHARED = ("/mnt/archive", "/mnt/models", "/mnt/results")

_lock = threading.Lock()
LOADS: list[tuple[str, bool]] = []  # (device, in a Dask worker) of each model built
PREDICTED_BY: set[str] = set()  # addresses of the workers that ran predict


@pytest.fixture(autouse=True)
def _keep_sigint() -> Any:
    """dask_jobqueue sets a SIGINT handler when imported: not in this test process."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def _in_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def device_recording_oracle(device: str = "auto") -> OracleSegmenter:
    """An oracle factory that notes the device it is built for and where it is built."""
    with _lock:
        LOADS.append((device, _in_worker()))
    return OracleSegmenter(device=device)


class AddressRecordingSlowOracle(SlowOracle):
    def predict(self, tiles: np.ndarray) -> list:
        from distributed import get_worker

        with _lock:
            PREDICTED_BY.add(get_worker().address)
        return super().predict(tiles)


def address_recording_slow_oracle() -> AddressRecordingSlowOracle:
    return AddressRecordingSlowOracle()


def scenes(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.zeros((120, 150), dtype=np.int32)
    ids[10:40, 20:70] = 1
    ids[60:110, 80:140] = 2
    transform = Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000)
    return [
        write_coded_scene(folder / f"s{k}.tif", ids, {1: 0, 2: 1}, transform=transform,
                          crs="EPSG:32633")
        for k in range(count)
    ]  # fmt: skip


def done_lines(outdir: Path) -> dict[str, int]:
    """How many times the journal says each scene was done."""
    counts: dict[str, int] = {}
    for line in (outdir / JOURNAL_NAME).read_text().splitlines():
        entry = json.loads(line)
        if entry["status"] == "done":
            counts[Path(entry["scene"]).name] = counts.get(Path(entry["scene"]).name, 0) + 1
    return counts


# 1. The driver plans a CUDA batch on a machine without CUDA, and never builds the model on
#    the workers' device.


def test_a_cuda_batch_plans_from_checkpoint_metadata_without_building_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geoseg.model.maskrcnn as maskrcnn
    import geoseg.model.protocol as protocol

    reference = describe_model(load_segmenter("default", device="cpu"), "default")
    protocol._INFO.clear()

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the driver built a network")

    monkeypatch.setattr(maskrcnn, "build_network", no_network)
    [scene] = scenes(tmp_path, 1)
    plan = plan_scene(scene, RunOptions(model="default", device="cuda", tile_px=64, overlap_px=16))
    assert plan.model == reference  # the checksum and scales the journal and outputs record
    assert plan.batches and plan.options.device == "cuda"  # the workers' device, untouched


def test_a_cuda_batch_on_a_cluster_builds_models_on_cuda_only_in_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from geoseg.cli import main

    scenes(tmp_path / "in", 2)
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "inputs: [in]\noutdir: out\nmodel: tests.test_workflows:device_recording_oracle\n"
        "tile_size: 64\noverlap: 16\ndevice: cuda\ngpu: true\n"
        "cluster:\n  class: distributed.LocalCluster\n"
        "  options: {n_workers: 1, threads_per_worker: 2, processes: false,"
        " dashboard_address: ':0', resources: {GPU: 1}}\n"
    )
    LOADS.clear()
    with pytest.raises(SystemExit) as exit_info:
        main(["batch", "--spec", str(spec)])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    assert ("cuda", True) in LOADS  # the workers run on their device
    assert all(in_worker for device, in_worker in LOADS if device != "cpu")
    assert LOADS.count(("cpu", False)) == 1  # the driver's copy: once, on the CPU


# 3, 4. The Kubernetes cluster, built from the spec with geoseg's own loader.


def kubernetes_options() -> dict[str, Any]:
    spec = load_spec(WORKFLOWS / "kubernetes.yaml")
    assert spec["gpu"] is True and spec["device"] == "cuda"
    assert spec["cluster"]["class"] == "dask_kubernetes.operator.KubeCluster"
    return spec["cluster"]["options"]


def mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """mountPath -> the pod volume behind it (which must exist)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    found = {}
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in volumes, f"{mount['name']} is mounted but not a volume"
        found[mount["mountPath"]] = mount["name"]
    return found


def test_kubernetes_manifest_gpus_commands_and_volumes() -> None:
    options = kubernetes_options()
    # ignored by KubeCluster when a manifest is given: their presence would mislead
    assert not {"n_workers", "resources", "worker_command", "image"} & set(options)
    manifest = options["custom_cluster_spec"]
    assert manifest["apiVersion"] == "kubernetes.dask.org/v1"
    assert manifest["kind"] == "DaskCluster"
    text = json.dumps(manifest)
    assert "dask-worker" not in text and "dask-scheduler" not in text  # gone in 2026.6

    scheduler_pod = manifest["spec"]["scheduler"]["spec"]
    [scheduler] = scheduler_pod["containers"]
    assert scheduler["args"][:2] == ["dask", "scheduler"]
    for kind in ("requests", "limits"):
        assert not any("gpu" in key for key in scheduler["resources"].get(kind, {}))

    workers = manifest["spec"]["worker"]
    assert workers["replicas"] >= 1
    worker_pod = workers["spec"]
    [worker] = worker_pod["containers"]
    args = worker["args"]
    assert args[:2] == ["dask", "worker"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert "$(DASK_WORKER_NAME)" in args
    for kind in ("requests", "limits"):
        assert worker["resources"][kind]["nvidia.com/gpu"] == 1
    assert set(SHARED) <= set(mounts(worker_pod, worker))
    assert scheduler["image"] == worker["image"]


def test_kubernetes_driver_job_mounts_what_the_driver_reads_and_writes() -> None:
    docs = list(yaml.safe_load_all((WORKFLOWS / "k8s" / "driver.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    [driver] = pod["containers"]
    assert driver["args"] == ["geoseg", "batch", "--spec", "/etc/geoseg/kubernetes.yaml"]
    found = mounts(pod, driver)
    assert set(SHARED) | {"/etc/geoseg"} <= set(found)
    assert "gpu" not in json.dumps(driver["resources"])
    [account] = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    [role] = [d for d in docs if d["kind"] == "Role"]
    allowed = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"daskclusters", "daskworkergroups", "pods", "services"} <= allowed
    # the driver's claims are the workers'
    options = kubernetes_options()
    worker_pod = options["custom_cluster_spec"]["spec"]["worker"]["spec"]
    claims = {v["name"]: v for v in worker_pod["volumes"]}
    for path, name in found.items():
        if path in SHARED:
            worker_volume = claims[mounts(worker_pod, worker_pod["containers"][0])[path]]
            driver_volume = next(v for v in pod["volumes"] if v["name"] == name)
            assert driver_volume["persistentVolumeClaim"] == worker_volume["persistentVolumeClaim"]
    assert job["metadata"]["namespace"] == options["namespace"]


def test_dask_kubernetes_accepts_the_manifest_without_a_cluster() -> None:
    pytest.importorskip("dask_kubernetes")
    from dask_kubernetes.operator import KubeCluster, make_cluster_spec
    from dask_kubernetes.operator.controller import controller

    options = kubernetes_options()
    manifest = options["custom_cluster_spec"]
    name = manifest["metadata"]["name"]
    # the same shape as the manifests dask-kubernetes makes itself
    reference = make_cluster_spec(name=name, worker_command=["dask", "worker"])
    assert set(reference["spec"]) <= set(manifest["spec"])
    for part in ("scheduler", "worker"):
        [ours] = manifest["spec"][part]["spec"]["containers"]
        [theirs] = reference["spec"][part]["spec"]["containers"]
        assert set(theirs) - {"env"} <= set(ours), part
        assert ours["ports"] == theirs["ports"], part
    assert manifest["spec"]["scheduler"]["service"] == reference["spec"]["scheduler"]["service"]

    async def construct() -> Any:  # in a running loop, asynchronous: nothing is contacted
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # _start never awaited
            cluster = KubeCluster(**options, asynchronous=True, quiet=True)
        KubeCluster._instances.discard(cluster)
        return cluster

    cluster = asyncio.run(construct())
    assert cluster.name == name and cluster.namespace == options["namespace"]

    # what the operator's controller makes of it: the pods keep commands, GPUs and volumes
    scheduler = controller.build_scheduler_deployment_spec(
        name, copy.deepcopy(manifest["spec"]["scheduler"]["spec"]), {}, {}
    )
    worker = controller.build_worker_deployment_spec(
        f"{name}-default", "geoseg", name, "uid", manifest["spec"]["worker"]["spec"], {}, {}
    )
    [s] = scheduler["spec"]["template"]["spec"]["containers"]
    [w] = worker["spec"]["template"]["spec"]["containers"]
    assert s["args"][:2] == ["dask", "scheduler"] and w["args"][:2] == ["dask", "worker"]
    assert "nvidia.com/gpu" not in json.dumps(s["resources"])
    assert w["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert set(SHARED) <= {m["mountPath"] for m in w["volumeMounts"]}
    assert {e["name"] for e in w["env"]} >= {"DASK_WORKER_NAME", "DASK_SCHEDULER_ADDRESS"}


def test_kubernetes_script_runs_the_yaml_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dask_kubernetes")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "kubernetes_cluster", WORKFLOWS / "kubernetes_cluster.py"
    )
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_cluster(**kwargs: Any) -> Any:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(script, "KubeCluster", fake_cluster)
    with pytest.raises(Stop):
        script.main(["/mnt/archive/stac/items.json"], "/mnt/results/geoseg")
    assert seen == kubernetes_options()


# 6. SLURM: retire workers before the walltime; a batch outlives its workers.


def test_slurm_spec_retires_workers_before_the_walltime() -> None:
    from dask.utils import parse_timedelta

    spec = load_spec(WORKFLOWS / "slurm.yaml")
    options = spec["cluster"]["options"]
    extra = options["worker_extra_args"]
    lifetime = parse_timedelta(extra[extra.index("--lifetime") + 1])
    stagger = parse_timedelta(extra[extra.index("--lifetime-stagger") + 1])
    hours, minutes, seconds = (int(x) for x in options["walltime"].split(":"))
    assert lifetime + stagger < hours * 3600 + minutes * 60 + seconds
    assert extra[extra.index("--resources") + 1] == "GPU=1"
    assert options["processes"] == 1 and "adapt" in spec["cluster"]
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        return
    options = {**options, "scheduler_options": {"dashboard_address": ":0"}}
    with SLURMCluster(**options) as cluster:  # no job is submitted
        script = cluster.job_script()
    assert "--resources GPU=1 --lifetime 225m --lifetime-stagger 5m" in script
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -t 04:00:00" in script


@pytest.fixture
def quick_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lost workers noticed within a second (the default waits 15 s, then 2 s)."""
    import geoseg.batch.cluster

    monkeypatch.setattr(geoseg.batch.cluster, "KEEP_WORKERS_INTERVAL_S", 0.5)
    import distributed  # noqa: F401  (its defaults must be in dask.config first)

    monkeypatch.setitem(dask.config.config["distributed"]["deploy"], "lost-worker-timeout", "300ms")


def run_in_thread(target: Any, timeout_s: float) -> Any:
    """``target()``, failing the test instead of hanging when it does not return in time."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = target()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"the batch still waits after {timeout_s} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_a_batch_outlives_workers_retired_by_their_lifetime(
    tmp_path: Path, quick_loss: None
) -> None:
    """Workers retire every ~2.5 s and the cluster, held at two by adapt, never replaces
    them by itself (its target equals its plan): the batch must still finish."""
    inputs = scenes(tmp_path / "in", 8)
    section = {
        "class": "distributed.LocalCluster",
        "options": {
            "n_workers": 2,
            "threads_per_worker": 1,
            "processes": False,
            "lifetime": "2.5s",
            "lifetime_stagger": "0.5s",
            "dashboard_address": ":0",
        },
        "adapt": {"minimum": 2, "maximum": 2, "interval": "200ms"},
    }
    options = RunOptions(
        model="tests.test_workflows:address_recording_slow_oracle",
        tile_px=64,
        overlap_px=16,
        batch_size=2,
    )
    PREDICTED_BY.clear()
    with start_cluster(section) as cluster:
        report = run_in_thread(
            lambda: run_batch(inputs, tmp_path / "out", options=options, scheduler=cluster), 150
        )
    assert [o.status for o in report.outcomes] == ["done"] * len(inputs), report.failed
    assert done_lines(tmp_path / "out") == {p.name: 1 for p in inputs}
    assert all(o.counts == {"building": 1, "field": 1, "ship": 0} for o in report.outcomes)
    assert len(PREDICTED_BY) > 2  # workers came and went


def test_a_batch_outlives_worker_jobs_killed_midway(tmp_path: Path, quick_loss: None) -> None:
    """SLURM's walltime, emulated with dask-jobqueue's own job machinery on this machine:
    two jobs (a fixed scale), both SIGKILLed once the first scene is written."""
    pytest.importorskip("dask_jobqueue")
    import signal

    inputs = scenes(tmp_path / "in", 6)
    section = {
        "class": "dask_jobqueue.local:LocalCluster",
        "options": {
            "cores": 1,
            "processes": 1,
            "memory": "1GB",
            "nanny": False,  # the job is the worker: killing it kills the worker
            "local_directory": str(tmp_path / "dask"),
            "scheduler_options": {"dashboard_address": ":0"},
        },
        "scale": {"jobs": 2},
    }
    options = RunOptions(
        model="tests.models:slow_oracle",
        tile_px=64,
        overlap_px=16,
        batch_size=3,
    )
    killed: list[int] = []
    with start_cluster(section) as cluster:

        def kill_jobs(kind: str, payload: Any) -> None:
            if kind == "scene" and payload.status == "done" and not killed:
                for job in list(cluster.workers.values()):
                    os.kill(int(job.job_id), signal.SIGKILL)
                    killed.append(int(job.job_id))

        report = run_in_thread(
            lambda: run_batch(
                inputs, tmp_path / "out", options=options, scheduler=cluster, on_event=kill_jobs
            ),
            240,
        )
        new_jobs = {int(job.job_id) for job in cluster.workers.values()}
    assert len(killed) == 2 and len(new_jobs) == 2 and not new_jobs & set(killed)
    assert [o.status for o in report.outcomes] == ["done"] * len(inputs), report.failed
    assert done_lines(tmp_path / "out") == {p.name: 1 for p in inputs}


def test_a_cluster_package_does_not_change_what_ctrl_c_does() -> None:
    import signal
    import sys

    pytest.importorskip("dask_jobqueue")
    for name in [m for m in sys.modules if m.split(".")[0] == "dask_jobqueue"]:
        del sys.modules[name]  # imported afresh: dask_jobqueue.runner sets its handler again
    before = signal.getsignal(signal.SIGINT)
    cluster = start_cluster(
        {
            "class": "dask_jobqueue.local:LocalCluster",
            "options": {
                "cores": 1,
                "memory": "1GB",
                "scheduler_options": {"dashboard_address": ":0"},
            },
        }
    )
    cluster.close()
    assert signal.getsignal(signal.SIGINT) is before
