"""Catalogue cases that need real processes: concurrent runs, signals, a worker's death.

The table of cases is in ``test_fault_catalogue.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyogrio
import pytest

from geoseg.batch import run_batch
from geoseg.batch.journal import Journal
from geoseg.config import RunOptions
from geoseg.pipeline import run_scene
from tests.test_batch import make_scenes, read_all

REPO = Path(__file__).resolve().parents[1]
SLOW = "tests.models:slow_oracle"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def run_cmd(scene: Path, out: Path, *extra: str, model: str = SLOW) -> list[str]:
    return [
        sys.executable, "-m", "geoseg", "-q", "run", str(scene), "-o", str(out),
        "--model", model, "--tile-size", "64", "--overlap", "16", "--simplify", "0", *extra,
    ]  # fmt: skip


@pytest.fixture
def scene(coded_scene) -> Path:
    ids = np.zeros((160, 200), dtype=np.int32)
    ids[10:50, 20:90] = 1
    ids[80:150, 60:190] = 2
    ids[60:70, 10:50] = 3
    return coded_scene(ids, {1: 0, 2: 1, 3: 2})


def hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


# -- 1 ---------------------------------------------------------------------------------------


def test_case01_two_runs_of_one_scene_never_corrupt_each_other(tmp_path: Path, scene: Path) -> None:
    out = tmp_path / "out"
    procs = [
        subprocess.Popen(run_cmd(scene, out), env=ENV, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(180), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            assert "another geoseg run is writing the outputs of scene" in err
    frame = read_all(out, "scene")
    assert sorted(frame["class"]) == ["building", "field", "ship"]
    for name in ("building", "field", "ship"):
        assert len(pyogrio.read_dataframe(out / f"scene_{name}.geojson")) == 1
    assert hidden(out) == [".scene.outputs.json"]


# -- 10 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code", "word"), [
    (signal.SIGINT, 130, "Interrupted."), (signal.SIGTERM, 143, "Terminated."),
])  # fmt: skip
def test_case10_signal_exits_cleanly(
    tmp_path: Path, scene: Path, sig: int, code: int, word: str
) -> None:
    out = tmp_path / "out"
    err = tmp_path / "stderr"
    started = tmp_path / "predicted"  # a line per batch the model started
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            run_cmd(
                scene,
                out,
                "--scheduler",
                "processes",
                "--batch-size",
                "1",
                model="tests.models:very_slow_oracle",
            ),
            env={**ENV, "GEOSEG_TEST_PREDICT_LOG": str(started)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            # a background job's processes ignore SIGINT, and the run would inherit that
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / ".scene.lock").exists():
            time.sleep(0.05)  # the lock is taken once the model is loaded, before inference
        workers = []
        while time.monotonic() < deadline and not workers:
            workers = _workers(parent)
            time.sleep(0.05)
        assert workers, "the worker processes did not start"
        while time.monotonic() < deadline and not _started(workers, started):
            time.sleep(0.05)  # a worker still unpickling its start-up data would print an error
        assert proc.poll() is None, "the run ended before it could be interrupted"
        children = parent.children(recursive=True)  # the workers and the resource tracker
        proc.send_signal(sig)
        assert proc.wait(120) == code, err.read_text()
    lines = [line for line in err.read_text().splitlines() if line.strip()]
    assert lines[-1] == word, lines
    assert not any("Traceback" in line for line in lines)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, "worker processes were left behind"
    assert not out.exists() or not list(out.iterdir())  # no outputs, no lock, no staging
    # the scene has 12 tiles; a stop lets the running batches end and starts no new one
    # (with Dask's default of 6 tasks per hand-out to a process, every tile was predicted)
    # (no file: the stop came before any batch reached the model)
    batches = started.read_text().splitlines() if started.exists() else []
    assert len(batches) <= 2 * len(workers), batches


# -- 14 --------------------------------------------------------------------------------------


@pytest.fixture
def cluster_client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _killer(client):
    """A progress callback that SIGKILLs one worker process once some tasks have run."""
    pids = list(client.run(os.getpid).values())
    assert len(pids) == 2
    killed: list[int] = []

    def on_progress(*_: object) -> None:
        if not killed:
            killed.append(pids[0])
            os.kill(pids[0], signal.SIGKILL)

    return on_progress, killed


def test_case14_worker_death_in_run_gives_the_same_outputs(
    tmp_path: Path, scene: Path, cluster_client
) -> None:
    options = RunOptions(model=SLOW, tile_px=64, overlap_px=16, simplify_px=0, batch_size=1)
    clean = run_scene(scene, tmp_path / "clean", options=options, scheduler="threads")
    on_progress, killed = _killer(cluster_client)
    result = run_scene(
        scene, tmp_path / "out", options=options, scheduler=cluster_client, progress=on_progress
    )
    assert killed and result.n_tiles + result.n_skipped == clean.n_tiles + clean.n_skipped
    pd.testing.assert_frame_equal(
        read_all(tmp_path / "out", "scene"), read_all(tmp_path / "clean", "scene")
    )


def test_case14_worker_death_in_batch_loses_and_repeats_no_scene(
    tmp_path: Path, cluster_client
) -> None:
    scenes = make_scenes(tmp_path / "in", 3)
    options = RunOptions(model=SLOW, tile_px=64, overlap_px=16, simplify_px=0, batch_size=1)
    run_batch(scenes, tmp_path / "clean", options=options, scheduler="sync")
    on_progress, killed = _killer(cluster_client)

    def on_event(kind: str, payload: object) -> None:
        if kind == "tiles":
            on_progress()

    report = run_batch(
        scenes, tmp_path / "out", options=options, scheduler=cluster_client, on_event=on_event
    )
    assert killed and [o.status for o in report.outcomes] == ["done"] * 3
    lines = (tmp_path / "out" / "geoseg-journal.jsonl").read_text().splitlines()
    assert sum('"done"' in line for line in lines) == 3
    journal = Journal(tmp_path / "out")
    for scene in scenes:
        assert journal.last(scene).status == "done"
        pd.testing.assert_frame_equal(
            read_all(tmp_path / "out", scene.stem), read_all(tmp_path / "clean", scene.stem)
        )


def _workers(parent: psutil.Process) -> list[psutil.Process]:
    """The run's worker processes: its children but multiprocessing's resource tracker, which
    idles (it never gathers the CPU time :func:`_started` waits for)."""
    workers = []
    for child in parent.children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.NoSuchProcess:
            continue
    return workers


def _started(children: list[psutil.Process], predict_log: Path) -> bool:
    """Whether every worker process has been up for 3 s and has either done some work
    (imports) or, where one idles, the model has been given a batch (``predict_log`` holds a
    line): past its start-up, with the very slow model's run still going. (Waiting for CPU
    time alone let a fresh-clone CI run end before the stop, in session 36.)"""
    try:
        now = time.time()
        if not all(now - c.create_time() > 3.0 for c in children):
            return False
        return predict_log.exists() or all(sum(c.cpu_times()[:2]) > 0.3 for c in children)
    except psutil.NoSuchProcess:
        return False
