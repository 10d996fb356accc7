"""The Dask graph: model loaded once per worker, distributed clusters, failures leave nothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from geoseg.config import RunOptions
from geoseg.model.protocol import _CACHE
from geoseg.pipeline import plan_scene, run_scene, scene_tasks
from geoseg.plan import STITCH_FLOOR_SHARE
from geoseg.testing import write_coded_scene
from tests import models
from tests.conftest import ORACLE, UTM, UTM_TRANSFORM
from tests.test_stitching import street_scene


@pytest.fixture
def street(tmp_path: Path) -> Path:
    ids, class_of = street_scene()
    return write_coded_scene(
        tmp_path / "street.tif", ids, class_of, transform=UTM_TRANSFORM, crs=UTM
    )


def test_model_is_loaded_once_per_worker_not_per_task(tmp_path: Path, street: Path) -> None:
    _CACHE.clear()
    models.CALLS["factory"] = 0
    options = RunOptions(
        model="tests.models:counting_oracle", tile_px=64, overlap_px=16, batch_size=2
    )
    result = run_scene(street, tmp_path / "out", options=options, scheduler="threads")
    assert len(plan_scene(street, options).batches) > 10
    assert models.CALLS["factory"] == 1
    assert result.counts["building"] == 7


def test_graph_has_read_predict_vectorize_per_batch_and_no_model(street: Path) -> None:
    import pickle

    plan = plan_scene(street, RunOptions(model=ORACLE, tile_px=128, overlap_px=32, batch_size=4))
    tasks = scene_tasks(plan)
    assert len(tasks) == len(plan.batches) == -(-plan.n_tiles // 4)
    graph = dict(tasks[0].__dask_graph__())
    names = {str(k).split("-")[1] for k in graph}
    assert names == {"read", "predict", "vectorize"}
    assert len(pickle.dumps(tasks)) < 200_000  # specs and tiles, not a model


def test_a_batch_is_a_column_of_a_band_of_tile_rows(street: Path) -> None:

    from geoseg.plan import _band_rows

    options = RunOptions(model=ORACLE, tile_px=64, overlap_px=16, batch_size=3)
    plan = plan_scene(street, options)
    assert plan.grid.shape_tiles_yx[0] > 3
    for _, tiles in plan.batches[: plan.grid.shape_tiles_yx[1]]:
        assert [t.index_yx for t in tiles] == [(i, tiles[0].index_yx[1]) for i in range(3)]
    # a striped file so wide that a band's strips would not stay in GDAL's cache: row order
    wide = replace(plan.scene, shape_yx=(4000, 40_000), file_shape_yx=(4000, 40_000))
    default_tiles = replace(options, tile_px=512, overlap_px=128)
    assert _band_rows(replace(wide, file_block_yx=(1, 40_000)), default_tiles) == 1
    assert _band_rows(replace(wide, file_block_yx=(512, 512)), default_tiles) == 3
    assert _band_rows(replace(wide, file_block_yx=(1, 40_000)), options) == 3  # 19 MB


def test_runs_on_a_distributed_cluster(tmp_path: Path, street: Path) -> None:
    from distributed import LocalCluster

    options = RunOptions(model=ORACLE, tile_px=128, overlap_px=32, simplify_px=0)
    local = run_scene(street, tmp_path / "local", options=options)
    done = []
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        result = run_scene(
            street,
            tmp_path / "dist",
            options=options,
            scheduler=cluster.scheduler_address,
            progress=done.append,
        )
        events = cluster.scheduler.get_events("all")
    assert result.counts == local.counts
    assert sum(done) == result.n_tiles + result.n_skipped
    # the workers sized the batches (device "auto") and ran the scene over one connection
    connections = [e for _, e in events if e.get("action") == "add-client"]
    assert len(connections) == 1, connections


def test_a_failing_model_leaves_no_output(tmp_path: Path, street: Path) -> None:
    with pytest.raises(RuntimeError, match="always fails"):
        run_scene(
            street,
            tmp_path / "out",
            options=RunOptions(model="tests.models:failing", tile_px=128, overlap_px=32),
        )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_attribute_outputs_and_k1hw_masks_are_accepted(tmp_path: Path, street: Path) -> None:
    result = run_scene(
        street,
        tmp_path / "out",
        options=RunOptions(model="tests.models:attribute_output", tile_px=128, overlap_px=32),
    )
    assert result.counts == {"building": 7, "field": 1, "ship": 2}


def test_single_band_scene_is_repeated_for_a_three_band_model(tmp_path: Path) -> None:
    import rasterio

    ids, class_of = street_scene()
    path = write_coded_scene(tmp_path / "rgb.tif", ids, class_of, transform=UTM_TRANSFORM, crs=UTM)
    with rasterio.open(path) as src:
        assert src.count == 3
    plan = plan_scene(path, RunOptions(model=ORACLE, bands=(2,)))
    assert plan.scene.bands == (2,)
    from types import SimpleNamespace

    from geoseg.model.protocol import match_input_bands

    three = SimpleNamespace(input_bands=3)
    one_band = np.arange(16.0).reshape(1, 1, 4, 4)
    repeated = match_input_bands(one_band, three)
    assert repeated.shape == (1, 3, 4, 4) and (repeated == one_band).all()
    four_bands = np.arange(64.0).reshape(1, 4, 4, 4)
    assert (match_input_bands(four_bands, three) == four_bands[:, :3]).all()
    assert match_input_bands(four_bands, SimpleNamespace()) is four_bands


def test_min_score_is_passed_to_a_model_that_takes_it(tmp_path: Path, street: Path) -> None:
    models.ScoreFloorOracle.seen.clear()
    options = RunOptions(
        model="tests.models:score_floor_oracle", tile_px=128, overlap_px=32, min_score=0.7
    )
    result = run_scene(street, tmp_path / "out", options=options)
    # the floor objects are kept from for stitching; the threshold applies to stitched objects
    (seen,) = set(models.ScoreFloorOracle.seen)
    assert seen == pytest.approx(0.7 * STITCH_FLOOR_SHARE)
    assert result.counts == {"building": 7, "field": 1, "ship": 2}


@pytest.mark.parametrize(
    ("given", "passed", "used"),
    [(None, 0.7, {"building": 0.8, "field": 0.7, "ship": 0.9}), (0.3, 0.3, 0.3)],
)
def test_the_model_s_own_thresholds_apply_unless_min_score_is_given(
    tmp_path: Path, street: Path, given: float | None, passed: float, used: object
) -> None:
    import json

    import pyogrio

    models.ScoreFloorOracle.seen.clear()
    options = RunOptions(
        model="tests.models:tuned_oracle", tile_px=128, overlap_px=32, min_score=given
    )
    run_scene(street, tmp_path / "out", options=options)
    (seen,) = set(models.ScoreFloorOracle.seen)  # the floor of the lowest threshold
    assert seen == pytest.approx(passed * STITCH_FLOOR_SHARE)
    meta = pyogrio.read_info(tmp_path / "out" / "street.gpkg", layer="building")["layer_metadata"]
    assert json.loads(meta["geoseg_options"])["min_score"] == used


def test_thresholds_apply_per_class() -> None:
    from geoseg.config import score_thresholds
    from geoseg.fragments import instances_to_crops
    from geoseg.grid import TileGrid
    from geoseg.model.protocol import Instances

    classes = ("building", "field", "ship")
    thresholds = score_thresholds({"field": 0.7, "ship": 0.2}, classes)
    np.testing.assert_allclose(thresholds, [0.5, 0.7, 0.2])  # building: the default
    masks = np.zeros((3, 32, 32), dtype=bool)
    masks[0, 1:4, 1:4] = masks[1, 6:9, 6:9] = masks[2, 11:14, 11:14] = True
    instances = Instances(masks, np.array([0, 1, 2]), np.array([0.6, 0.6, 0.3], np.float32))
    (tile,) = TileGrid.from_shape((32, 32), tile_px=32, overlap_px=4)
    crops = instances_to_crops(instances, tile, np.ones((32, 32), bool), min_score=thresholds)
    assert sorted(c.label for c in crops) == [0, 2]  # the field at 0.6 < 0.7 is dropped


def test_an_object_its_owner_tile_doubts_is_kept_where_a_neighbour_is_sure(
    tmp_path: Path,
) -> None:
    """Two tiles, 64 px with 32 px of overlap; the oracle scores objects 0.9 in the right half
    of a tile and 0.3 in the left. An object in the second tile's core lies in the right half of
    the first tile (0.9) and the left half of its owner (0.3): thresholds apply to stitched
    objects, so it comes out once and whole at 0.9. An object that every tile that sees it
    doubts (the first tile's left edge) does not come out."""
    import geopandas as gpd

    from tests.conftest import UTM, UTM_TRANSFORM, assert_same_shape, truth_polygon

    ids = np.zeros((32, 96), dtype=np.int32)
    ids[8:20, 50:58] = 1  # in the second tile's core (cols 48-95)
    ids[8:20, 4:12] = 2  # only in the first tile, in its left half
    path = write_coded_scene(
        tmp_path / "s.tif", ids, {1: 2, 2: 2}, transform=UTM_TRANSFORM, crs=UTM
    )
    options = RunOptions(
        model="tests.models:side_scored_oracle",
        tile_px=64,
        overlap_px=32,
        min_score=0.5,
        simplify_px=0,
    )
    plan = plan_scene(path, options)
    assert [t.core.col_off for t in plan.grid] == [0, 48]
    result = run_scene(path, tmp_path / "out", options=options)
    assert result.counts["ship"] == 1
    ships = gpd.read_file(tmp_path / "out" / "s.gpkg", layer="ship")
    assert ships.score.tolist() == [pytest.approx(0.9)]
    assert_same_shape(ships.geometry[0], truth_polygon(ids, 1, UTM_TRANSFORM))


GPU_OPTIONS = RunOptions(model=ORACLE, tile_px=512, device="cuda")


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, free_bytes: int) -> None:
    """This process sees one CUDA GPU with ``free_bytes`` free (torch is asked, never a GPU)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _i: (free_bytes, 0))


def test_batches_are_sized_for_the_models_that_share_a_gpu(
    street: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask

    from geoseg import gpu
    from geoseg.compute import model_copies

    _fake_gpu(monkeypatch, 24 * 2**30)
    alone = plan_scene(street, GPU_OPTIONS).options.batch_size
    shared = plan_scene(street, GPU_OPTIONS, model_copies=4).options.batch_size
    per_tile = gpu.GPU_BYTES_PER_MEGAPIXEL * 512 * 512 / 1e6  # 201 MiB
    assert alone == gpu.MAX_GPU_BATCH  # 12 GiB for one model: 61 tiles, capped
    assert shared == int(gpu.GPU_SHARE * 24 * 2**30 / 4 // per_tile) == 15
    assert model_copies("threads") == 1 and model_copies("tcp://host:8786") == 1
    with dask.config.set(num_workers=3):
        assert model_copies("processes") == 3


def test_a_cluster_s_batches_are_sized_by_its_workers_gpus(
    street: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client, LocalCluster

    from geoseg import gpu
    from geoseg.compute import sized_for_cluster

    # the two in-process workers see this process's GPU (faked): they share its 12 GiB
    _fake_gpu(monkeypatch, 12 * 2**30)
    options = GPU_OPTIONS
    alone = plan_scene(street, options).options.batch_size
    with (
        LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        for scheduler in (client, cluster.scheduler_address, cluster):
            sized = sized_for_cluster(options, scheduler)
            assert sized.batch_size == 15, scheduler
        assert sized_for_cluster(replace(options, batch_size=6), client).batch_size == 6
        assert sized_for_cluster(replace(options, device="cpu"), client).batch_size is None
    per_tile = gpu.GPU_BYTES_PER_MEGAPIXEL * 512 * 512 / 1e6
    assert alone == int(gpu.GPU_SHARE * 12 * 2**30 // per_tile) == 30  # the client alone
    assert sized_for_cluster(options, "threads") is options


def test_workers_split_only_the_gpu_they_share() -> None:
    from geoseg import gpu
    from geoseg.compute import batch_for_workers

    free = gpu.GpuMemory("GPU-a", 12 * 2**30)
    seen = {
        "tcp://10.0.0.1:4001": free,
        "tcp://10.0.0.1:4002": free._replace(uuid="GPU-b"),  # its own GPU on that host
        "tcp://10.0.0.2:4001": free,  # the same model of GPU on another host
        "tcp://10.0.0.3:4001": None,  # a CPU worker
    }
    assert batch_for_workers(seen, 512) == 30
    seen["tcp://10.0.0.2:4002"] = free  # now two workers share 10.0.0.2's GPU
    assert batch_for_workers(seen, 512) == 15
    assert batch_for_workers({"tcp://10.0.0.3:4001": None}, 512) == gpu.CPU_BATCH
    assert batch_for_workers({}, 512) == gpu.CPU_BATCH


def test_a_gpu_without_a_uuid_is_named_by_its_physical_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers of one host that each see their own GPU as cuda:0 (CUDA_VISIBLE_DEVICES
    set per worker) are told apart where the driver gives no UUID."""
    from geoseg import gpu

    _fake_gpu(monkeypatch, 8 * 2**30)  # this machine has no GPU: torch gives no UUID
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    first = gpu.gpu_memory("cuda:0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2c, 3")
    second = gpu.gpu_memory("cuda")
    assert (first.uuid, second.uuid) == ("cuda:2", "cuda:GPU-8f2c")
    assert gpu.gpu_memory("cuda:1").uuid == "cuda:3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu.gpu_memory("auto").uuid == "cuda:0"
    assert gpu.physical_gpu(4, "0,1") == "4"
