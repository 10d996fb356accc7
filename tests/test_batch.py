"""geoseg batch on real Dask clusters: failure isolation, resume, SIGKILL, STAC, merging."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pystac
import pytest
from affine import Affine

from geoseg.batch import run_batch
from geoseg.batch.inputs import output_stems, resolve_inputs
from geoseg.batch.journal import JOURNAL_NAME, Journal
from geoseg.config import RunOptions
from geoseg.testing import write_coded_scene
from tests.conftest import ORACLE

REPO = Path(__file__).resolve().parents[1]
OPTIONS = RunOptions(model=ORACLE, tile_px=96, overlap_px=24, simplify_px=0)


def make_scenes(folder: Path, count: int, *, shift_m: float = 1000.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        ids = np.zeros((160, 200), dtype=np.int32)
        ids[10:50, 20 + 5 * k : 90] = 1
        ids[80:150, 60:190] = 2
        ids[60:70, 10:50] = 3
        transform = Affine(0.5, 0, 500_000 + k * shift_m, 0, -0.5, 4_000_000)
        paths.append(
            write_coded_scene(
                folder / f"scene{k}.tif",
                ids,
                {1: 0, 2: 1, 3: 2},
                transform=transform,
                crs="EPSG:32633",
            )
        )
    return paths


def read_all(outdir: Path, stem: str) -> pd.DataFrame:
    gpkg = outdir / f"{stem}.gpkg"
    frames = [pyogrio.read_dataframe(gpkg, layer=name) for name in ("building", "field", "ship")]
    frame = pd.concat(frames, ignore_index=True)
    frame["wkt"] = frame.geometry.to_wkt()
    return frame.drop(columns="geometry").sort_values("id").reset_index(drop=True)


def journal_lines(outdir: Path) -> list[dict]:
    path = outdir / JOURNAL_NAME
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_local_cluster_with_processes_isolates_a_corrupt_scene_and_resumes(tmp_path: Path) -> None:
    scenes = make_scenes(tmp_path / "in", 3)
    corrupt = tmp_path / "in" / "corrupt.tif"
    corrupt.write_bytes(scenes[0].read_bytes()[:900])  # a truncated GeoTIFF
    inputs = resolve_inputs([tmp_path / "in"])
    assert len(inputs) == 4
    out = tmp_path / "out"
    report = run_batch(inputs, out, options=OPTIONS, scheduler="processes", workers=2)
    status = {o.scene.name: o.status for o in report.outcomes}
    assert status == {
        "corrupt.tif": "failed",
        "scene0.tif": "done",
        "scene1.tif": "done",
        "scene2.tif": "done",
    }
    assert "corrupt.tif" in report.failed[0].error
    for k in range(3):
        assert (out / f"scene{k}.gpkg").exists()
    assert not (out / "corrupt.gpkg").exists()
    failed = [e for e in journal_lines(out) if e["status"] == "failed"]
    assert failed and failed[0]["error"]

    lines_before = len(journal_lines(out))
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("scene*")}
    again = run_batch(inputs, out, options=OPTIONS, scheduler="processes", workers=2)
    assert {o.scene.name: o.status for o in again.outcomes if o.status != "failed"} == {
        "scene0.tif": "skipped",
        "scene1.tif": "skipped",
        "scene2.tif": "skipped",
    }
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("scene*")} == mtimes
    assert len(journal_lines(out)) == lines_before + 1  # only the corrupt scene, retried


def test_changed_scene_or_parameters_are_redone(tmp_path: Path) -> None:
    scenes = make_scenes(tmp_path / "in", 2)
    out = tmp_path / "out"
    run_batch(scenes, out, options=OPTIONS, scheduler="threads")
    os.utime(scenes[1], ns=(time.time_ns(), time.time_ns() + 10**9))
    report = run_batch(scenes, out, options=OPTIONS, scheduler="threads")
    assert [o.status for o in report.outcomes] == ["skipped", "done"]
    other = RunOptions(model=ORACLE, tile_px=128, overlap_px=24, simplify_px=0)
    report = run_batch(scenes, out, options=other, scheduler="threads")
    assert [o.status for o in report.outcomes] == ["done", "done"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_finished_batch_reports_its_scenes_without_its_cluster(tmp_path: Path) -> None:
    scenes = make_scenes(tmp_path / "in", 2)
    out = tmp_path / "out"
    run_batch(scenes, out, options=OPTIONS, scheduler="threads")
    gone = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    report = run_batch(scenes, out, options=OPTIONS, scheduler=gone)
    assert [o.status for o in report.outcomes] == ["skipped", "skipped"]


def test_batch_joins_an_existing_dask_scheduler(tmp_path: Path) -> None:
    scenes = make_scenes(tmp_path / "in", 2)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            ":0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            address,
            "--nworkers",
            "1",
            "--nthreads",
            "1",
            "--no-dashboard",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "geoseg",
                "batch",
                str(tmp_path / "in"),
                "-o",
                str(tmp_path / "out"),
                "--scheduler",
                address,
                "--model",
                ORACLE,
                "--tile-size",
                "96",
                "--overlap",
                "24",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
    finally:
        worker.terminate()
        scheduler.terminate()
        worker.wait(30)
        scheduler.wait(30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 done" in proc.stdout
    for scene in scenes:
        assert (tmp_path / "out" / f"{scene.stem}.gpkg").exists()


def batch_cmd(inputs: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "geoseg",
        "-q",
        "batch",
        str(inputs),
        "-o",
        str(out),
        "--model",
        "tests.models:slow_oracle",
        "--tile-size",
        "96",
        "--overlap",
        "24",
        "--simplify",
        "0",
        "--scheduler",
        "sync",  # one worker thread: scenes finish one after another, the kill lands midway
    ]


def test_sigkill_midway_then_rerun_equals_a_clean_run(tmp_path: Path) -> None:
    scenes = make_scenes(tmp_path / "in", 4)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    clean = subprocess.run(
        batch_cmd(tmp_path / "in", tmp_path / "clean"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert clean.returncode == 0, clean.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        batch_cmd(tmp_path / "in", out),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(e["status"] == "done" for e in journal_lines(out)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    done_before = sum(e["status"] == "done" for e in journal_lines(out))
    assert 1 <= done_before < len(scenes), "the kill should land midway"

    rerun = subprocess.run(
        batch_cmd(tmp_path / "in", out), env=env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    done_after = [e for e in journal_lines(out) if e["status"] == "done"]
    assert len({e["scene"] for e in done_after}) == len(scenes)
    assert len(done_after) <= len(scenes) + 1  # at most the scene cut mid-write is redone
    for scene in scenes:
        pd.testing.assert_frame_equal(
            read_all(out, scene.stem), read_all(tmp_path / "clean", scene.stem)
        )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (tmp_path / "clean").iterdir()
    )


def write_item_collection(folder: Path, scenes: list[Path]) -> Path:
    items = []
    for k, scene in enumerate(scenes):
        item = pystac.Item(
            id=f"item{k}",
            geometry=None,
            bbox=None,
            datetime=pd.Timestamp("2024-05-01", tz="UTC").to_pydatetime(),
            properties={},
        )
        item.add_asset(
            "visual",
            pystac.Asset(
                href=os.path.relpath(scene, folder),
                media_type=pystac.MediaType.GEOTIFF,
                roles=["visual"],
            ),
        )
        item.add_asset("thumbnail", pystac.Asset(href="thumb.png", roles=["thumbnail"]))
        items.append(item)
    path = folder / "items.json"
    collection = pystac.ItemCollection(items)
    collection.save_object(dest_href=str(path))
    return path


def test_stac_item_collection_on_disk(tmp_path: Path) -> None:
    scenes = make_scenes(tmp_path / "stac" / "data", 2)
    collection = write_item_collection(tmp_path / "stac", scenes)
    resolved = resolve_inputs([collection])
    assert resolved == [s.resolve() for s in scenes]
    report = run_batch(resolved, tmp_path / "out", options=OPTIONS, scheduler="threads")
    assert [o.status for o in report.outcomes] == ["done", "done"]
    with pytest.raises(Exception, match="no asset 'B04'"):
        resolve_inputs([collection], asset="B04")


def test_inputs_from_globs_manifests_and_folders(tmp_path: Path) -> None:
    scenes = make_scenes(tmp_path / "a" / "b", 3)
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# scenes\n{scenes[0]}\n\na/b/{scenes[1].name}\n")
    assert resolve_inputs([manifest]) == [scenes[0].resolve(), scenes[1].resolve()]
    assert resolve_inputs([str(tmp_path / "**" / "*.tif")]) == [s.resolve() for s in scenes]
    assert resolve_inputs([tmp_path, scenes[0]]) == [s.resolve() for s in scenes]
    with pytest.raises(Exception, match="no such file"):
        resolve_inputs([tmp_path / "nope.tif"])
    twins = [tmp_path / "x" / "s.tif", tmp_path / "y" / "s.tif"]
    stems = output_stems(twins)
    assert len(set(stems.values())) == 2


def test_merge_keeps_objects_of_overlapping_scenes_once(tmp_path: Path) -> None:
    # two scenes 50 m apart (100 px of 0.5 m): their footprints overlap by 100 px
    scenes = make_scenes(tmp_path / "in", 1)
    ids = np.zeros((160, 200), dtype=np.int32)
    ids[10:50, 20:90] = 1
    ids[80:150, 60:190] = 2
    ids[60:70, 10:50] = 3
    shifted = np.zeros_like(ids)
    shifted[:, :100] = ids[:, 100:]  # the same ground, seen 100 px further east
    scenes.append(
        write_coded_scene(
            tmp_path / "in" / "east.tif",
            shifted,
            {1: 0, 2: 1, 3: 2},
            transform=Affine(0.5, 0, 500_050, 0, -0.5, 4_000_000),
            crs="EPSG:32633",
        )
    )
    report = run_batch(scenes, tmp_path / "out", options=OPTIONS, scheduler="threads", merge=True)
    assert report.merged is not None
    merged = pd.concat(
        [gpd.read_file(report.merged, layer=n) for n, _ in pyogrio.list_layers(report.merged)]
    )
    per_scene = sum(sum(o.counts.values()) for o in report.outcomes)
    assert per_scene == 4  # the field is seen by both scenes (cut by the edge of one)
    assert len(merged) == 3 and set(merged["scene"]) <= {"scene0.tif", "east.tif"}
    field = merged[merged["class"] == "field"].geometry.iloc[0]
    assert field.area == pytest.approx(70 * 130 * 0.25)  # the whole field, once


def test_journal_ignores_a_torn_last_line(tmp_path: Path) -> None:
    scenes = make_scenes(tmp_path / "in", 1)
    out = tmp_path / "out"
    run_batch(scenes, out, options=OPTIONS, scheduler="threads")
    with open(out / JOURNAL_NAME, "a") as f:
        f.write('{"scene": "half')
    journal = Journal(out)
    assert journal.last(scenes[0].resolve()) is not None


def test_spec_file_runs_like_the_options(tmp_path: Path) -> None:
    make_scenes(tmp_path / "in", 1)
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "inputs: [in]\noutdir: out\nmodel: geoseg.testing:OracleSegmenter\n"
        "tile_size: 96\noverlap: 24\nscheduler: threads\nclasses: [building, field]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "geoseg", "-q", "batch", "--spec", str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    gpkg = tmp_path / "out" / "scene0.gpkg"
    assert not gpd.read_file(gpkg, layer="building").empty
    assert gpd.read_file(gpkg, layer="ship").empty  # not in the spec's classes
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [in]\ntile_sise: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "geoseg", "batch", "--spec", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "tile_sise" in proc.stderr


@pytest.mark.parametrize("spec", sorted((REPO / "workflows").glob("*.*ml")), ids=lambda p: p.name)
def test_shipped_job_specs_are_valid(spec: Path) -> None:
    from geoseg.cli.batch import load_spec

    values = load_spec(spec)
    assert values["inputs"] and "outdir" in values
