"""geoseg batch and its Dask cluster: spec-defined clusters, GPU resources, usage errors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from affine import Affine

from geoseg.batch import run_batch
from geoseg.batch.cluster import check_cluster_spec, start_cluster
from geoseg.batch.journal import JOURNAL_NAME, batch_lock
from geoseg.cli import main
from geoseg.config import RunOptions
from geoseg.errors import UserInputError
from geoseg.testing import OracleSegmenter, write_coded_scene
from tests.conftest import ORACLE

INFERENCE_WORKERS: set[str] = set()
_lock = threading.Lock()


class WorkerRecordingOracle(OracleSegmenter):
    """An oracle that notes the name of the Dask worker each predict call runs on."""

    def predict(self, tiles: np.ndarray) -> list:
        from distributed import get_worker

        with _lock:
            INFERENCE_WORKERS.add(str(get_worker().name))
        return super().predict(tiles)


def worker_recording_oracle() -> WorkerRecordingOracle:
    return WorkerRecordingOracle()


def small_scene(folder: Path, name: str = "scene.tif") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.zeros((120, 150), dtype=np.int32)
    ids[10:40, 20:70] = 1
    ids[60:110, 80:140] = 2
    return write_coded_scene(
        folder / name,
        ids,
        {1: 0, 2: 1},
        transform=Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000),
        crs="EPSG:32633",
    )


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return int(exit_info.value.code or 0)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"class": "distributed.LocalCluster", "size": 3}, "unknown key"),
        ({"options": {}}, "not a class name"),
        ({"class": "LocalCluster"}, "not a class name"),
        ({"class": "distributed.LocalCluster", "options": [1]}, "mapping"),
        ({"class": "distributed.LocalCluster", "scale": "many"}, "number of workers"),
        ({"class": "distributed.LocalCluster", "scale": 2, "adapt": {}}, "not both"),
        ("distributed.LocalCluster", "a mapping"),
    ],
)
def test_bad_cluster_sections_are_refused(section: object, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        check_cluster_spec(section)


def test_cluster_class_that_cannot_be_imported_says_what_to_install() -> None:
    with pytest.raises(UserInputError, match="pip install dask-jobqueue-not-here"):
        start_cluster({"class": "dask_jobqueue_not_here.SLURMCluster"})
    with pytest.raises(UserInputError, match="has no NoSuchCluster"):
        start_cluster({"class": "distributed:NoSuchCluster"})


def test_spec_with_a_cluster_section_starts_and_uses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_scene(tmp_path / "in")
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"inputs: [in]\noutdir: out\nmodel: {ORACLE}\ntile_size: 64\noverlap: 16\n"
        "cluster:\n"
        "  class: distributed.LocalCluster\n"
        "  options: {n_workers: 1, threads_per_worker: 2, processes: false,"
        " dashboard_address: ':0'}\n"
    )
    assert run_cli("batch", "--spec", str(spec)) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "out" / "scene.gpkg").exists()
    assert "Dask dashboard: http" in captured.err  # the link of the cluster the spec started
    assert "1 done, 0 already done, 0 failed" in captured.out


def test_gpu_resources_send_inference_to_gpu_workers_only(tmp_path: Path) -> None:
    from distributed import Client, Scheduler, SpecCluster, Worker

    scenes = [small_scene(tmp_path / "in", f"s{k}.tif") for k in range(2)]
    workers = {
        "gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
        "cpu": {"cls": Worker, "options": {"nthreads": 2}},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    options = RunOptions(
        model="tests.test_batch_cluster:worker_recording_oracle", tile_px=64, overlap_px=16
    )
    INFERENCE_WORKERS.clear()
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        report = run_batch(
            scenes, tmp_path / "out", options=options, scheduler=client,
            predict_resources={"GPU": 1},
        )  # fmt: skip
        assert client.status == "running"  # a client passed in is left open
    assert [o.status for o in report.outcomes] == ["done", "done"]
    assert set(INFERENCE_WORKERS) == {"gpu"}


def test_a_model_that_cannot_load_stops_the_batch_as_a_usage_error(tmp_path: Path) -> None:
    small_scene(tmp_path / "in")
    out = tmp_path / "out"
    code = run_cli("-q", "batch", str(tmp_path / "in"), "-o", str(out), "--model", "nope:none")
    assert code == 2
    assert not (out / JOURNAL_NAME).exists()  # no scene was marked failed for it


def test_a_second_batch_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    scene = small_scene(tmp_path / "in")
    options = RunOptions(model=ORACLE, tile_px=64, overlap_px=16)
    with batch_lock(tmp_path / "out"), pytest.raises(UserInputError, match="another geoseg"):
        run_batch([scene], tmp_path / "out", options=options)
    assert run_batch([scene], tmp_path / "out", options=options).failed == []


class FailOnInstanceSeven(OracleSegmenter):
    """An oracle that fails on any tile showing instance 7: a scene that opens but breaks."""

    def predict(self, tiles: np.ndarray) -> list:
        found = super().predict(tiles)
        for tile in tiles:
            codes = np.rint(tile[1:3] * 255).astype(int)
            if ((codes[0] * 256 + codes[1]) == 7).any():
                raise RuntimeError("instance 7 breaks this model")
        return found


def fail_on_seven() -> FailOnInstanceSeven:
    return FailOnInstanceSeven()


def test_a_scene_whose_tiles_fail_is_isolated_and_scenes_are_fed_in_a_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geoseg.batch.loop

    monkeypatch.setattr(geoseg.batch.loop, "MAX_PENDING_BATCHES", 2)  # a few batches at a time
    scenes = [small_scene(tmp_path / "in", f"s{k}.tif") for k in range(3)]
    ids = np.zeros((120, 150), dtype=np.int32)
    ids[90:110, 130:145] = 7  # only the last tiles see it
    bad = write_coded_scene(
        tmp_path / "in" / "bad.tif",
        ids,
        {7: 2},
        transform=Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000),
        crs="EPSG:32633",
    )
    options = RunOptions(model="tests.test_batch_cluster:fail_on_seven", tile_px=64, overlap_px=16)
    report = run_batch([scenes[0], bad, *scenes[1:]], tmp_path / "out", options=options)
    assert [o.status for o in report.outcomes] == ["done", "failed", "done", "done"]
    assert "instance 7 breaks this model" in report.failed[0].error
    assert not list((tmp_path / "out").glob("bad*"))
    lines = (tmp_path / "out" / JOURNAL_NAME).read_text().splitlines()
    assert sum('"failed"' in line and "instance 7" in line for line in lines) == 1


def test_merge_tells_apart_scenes_with_the_same_file_name(tmp_path: Path) -> None:
    import geopandas as gpd
    import pyogrio

    # the same ground seen twice (a repeated acquisition), stored under the same file name
    twins = [small_scene(tmp_path / year, "tile.tif") for year in ("2023", "2024")]
    options = RunOptions(model=ORACLE, tile_px=64, overlap_px=16)
    report = run_batch(twins, tmp_path / "out", options=options, merge=True)
    assert report.merged is not None
    assert sorted(p.name for p in (tmp_path / "out").glob("*.gpkg")) == sorted(
        [f"{o.outputs[0].name}" for o in report.outcomes] + ["merged.gpkg"]
    )
    merged = gpd.GeoDataFrame(
        pd.concat(
            [
                pyogrio.read_dataframe(report.merged, layer=n)
                for n, _ in pyogrio.list_layers(report.merged)
            ]
        )
    )
    assert len(merged) == 2  # each object once, though both scenes saw it
    assert set(merged["scene"]) <= {str(t) for t in twins}
