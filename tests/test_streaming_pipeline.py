"""Batch results consumed as they complete: same outputs as all at once, a bounded frontier,
and a consumer that stops early stops the scheduler."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dask
import numpy as np
import pyogrio
import pytest
from dask.system import CPU_COUNT

from geoseg.assemble import WRITE_OBJECTS, SceneAssembler, objects_to_layers, stitch_passes
from geoseg.compute import EXTRA_THREADS, compute_tasks, iter_results
from geoseg.config import RunOptions
from geoseg.pipeline import plan_scene, run_scene, scene_tasks
from geoseg.plan import BatchResult
from geoseg.testing import write_coded_scene
from tests.conftest import ORACLE, UTM, UTM_TRANSFORM


def _tall_city(rows: int, seed: int = 0) -> tuple[np.ndarray, dict[int, int]]:
    """A 192 px wide, ``rows`` px tall coded scene packed with small buildings, some of them
    crossing tile seams, and a few long ones spanning several tiles."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, 192), dtype=np.int32)
    class_of, next_id = {}, 1
    for y in range(2, rows - 12, 14):
        for x in range(2, 180, 14):
            h, w = rng.integers(4, 12, size=2)
            ids[y : y + h, x : x + w] = next_id
            class_of[next_id] = 0
            next_id += 1
    for x in (40, 120):  # two long ships down the scene
        ids[10 : rows - 10, x + 13 : x + 14] = 0
        ids[30 : rows // 2, x + 13 : x + 14] = next_id
        class_of[next_id] = 2
        next_id += 1
    return ids, class_of


@pytest.fixture
def tall(tmp_path: Path) -> Path:
    ids, class_of = _tall_city(768)
    return write_coded_scene(tmp_path / "tall.tif", ids, class_of, transform=UTM_TRANSFORM, crs=UTM)


OPTIONS = RunOptions(model=ORACLE, tile_px=64, overlap_px=16, batch_size=2, simplify_px=0)


def _read(path: Path, layer: str) -> list[tuple[str, bytes]]:
    frame = pyogrio.read_dataframe(path, layer=layer)
    return sorted(zip(frame["id"], frame.geometry.normalize().to_wkb(), strict=True))


@pytest.mark.parametrize("scheduler", ["threads", "sync", "processes"])
def test_streamed_run_writes_what_the_global_stitch_finds(
    tmp_path: Path, tall: Path, scheduler: str
) -> None:
    result = run_scene(tall, tmp_path / "out", options=OPTIONS, scheduler=scheduler)
    plan = plan_scene(tall, OPTIONS)
    everything = compute_tasks(scene_tasks(plan), "sync")
    layers = objects_to_layers(stitch_passes(plan, everything), plan)
    for name, frame in layers.items():
        got = _read(tmp_path / "out" / "tall.gpkg", name)
        assert sorted(frame["id"]) == [i for i, _ in got], name
        assert result.counts[name] == len(frame)
    assert result.counts["building"] > 500 and result.counts["ship"] == 2


def test_frontier_stays_a_few_tile_rows(tmp_path: Path, tall: Path) -> None:
    plan = plan_scene(tall, OPTIONS)
    results = compute_tasks(scene_tasks(plan), "sync")
    held = []
    with SceneAssembler(plan, tmp_path / "out") as assembler:
        for result in results:  # in batch (row-major) order
            assembler.add(result)
            held.append(assembler.n_held)
            assert assembler.n_unwritten < WRITE_OBJECTS * len(plan.passes)
        outcome = assembler.finish(seconds=1.0)
    n_rows = plan.grid.shape_tiles_yx[0]
    per_row = sum(len(r.fragments) for r in results) / n_rows
    assert n_rows >= 15
    # a few rows of tiles (fragments of ~2 rows, objects waiting on ~3), not the scene, and
    # no growth from the first half of the scene to the second
    assert max(held) <= 6 * per_row < 0.4 * n_rows * per_row
    half = len(held) // 2
    assert max(held[half:]) <= 1.5 * max(held[:half])
    assert sum(outcome.counts.values()) > 500


def test_results_come_as_batches_finish_and_each_once(tall: Path) -> None:
    plan = plan_scene(tall, OPTIONS)
    got = [r.batch_index for r in iter_results(scene_tasks(plan), "threads")]
    assert sorted(got) == list(range(len(plan.batches)))


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_batches_run_in_plan_order(tall: Path, scheduler: str) -> None:
    """The stitcher's frontier stays a band of tiles only if batches finish near plan order
    (Dask's own order for independent tasks follows their hashed keys)."""
    plan = plan_scene(tall, OPTIONS)
    got = [r.batch_index for r in iter_results(scene_tasks(plan), scheduler)]
    assert len(got) > 20
    if scheduler == "sync":
        assert got == sorted(got)
    else:  # tasks in flight may finish out of turn, never far
        assert max(abs(k - index) for k, index in enumerate(got)) <= 2 * CPU_COUNT + 2


def test_threads_run_a_task_per_core_and_a_few_more() -> None:
    running, most = [0], [0]
    lock = threading.Lock()

    def busy(k: int) -> BatchResult:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return BatchResult([], 1, 0, 0, k)

    # iter_results calls Dask from a helper thread, where dask.threaded's default would be
    # min(32, cores + 4) threads
    list(iter_results([dask.delayed(busy)(k) for k in range(40)], "threads"))
    assert CPU_COUNT <= most[0] <= CPU_COUNT + EXTRA_THREADS


def test_a_task_error_reaches_the_consumer_with_its_type() -> None:
    def boom(k: int) -> BatchResult:
        if k == 3:
            raise ValueError("tile 3 is bad")
        return BatchResult([], 1, 0, 0, k)

    tasks = [dask.delayed(boom)(k) for k in range(6)]
    with pytest.raises(ValueError, match="tile 3 is bad"):
        list(iter_results(tasks, "threads"))


def test_a_consumer_that_stops_stops_the_scheduler() -> None:
    started = []
    lock = threading.Lock()

    def slow(k: int) -> BatchResult:
        with lock:
            started.append(k)
        time.sleep(0.05)
        return BatchResult([], 1, 0, 0, k)

    tasks = [dask.delayed(slow)(k) for k in range(200)]
    results = iter_results(tasks, "threads")
    next(results)
    results.close()  # joins the scheduler's thread
    # tasks the scheduler handed to its pool before it stopped may still be starting (on a
    # busy machine, late): wait until none starts for 0.3 s, in which a scheduler still
    # going would start ~24 more, and would run all 200 before the deadline
    settled, deadline = -1, time.monotonic() + 5
    while settled != len(started) and time.monotonic() < deadline:
        settled = len(started)
        time.sleep(0.3)
    assert settled == len(started) < 50
