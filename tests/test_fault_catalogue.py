"""The bad-input and fault catalogue (issue 12): every case ends cleanly.

``CATALOGUE`` lists each case and the tests that hold it; to add a case, add a row and its
tests (here, or in ``test_faults_processes.py`` when it needs real processes). The cases that
need subprocesses, signals or a Dask cluster live there; the rest are here, in-process.
"""

from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine

from geoseg import commit
from geoseg.config import RunOptions
from geoseg.errors import LabelError, OutputError, SceneError, UserInputError
from geoseg.output import write_outputs
from geoseg.pipeline import plan_scene, run_scene
from tests.conftest import ORACLE, UTM

REPO = Path(__file__).resolve().parents[1]
_P = "tests.test_faults_processes"
_C = "tests.test_fault_catalogue"

#: case number -> (what was wrong, the tests that hold it as "module::test")
CATALOGUE: dict[int, tuple[str, list[str]]] = {
    1: (
        "two runs of one scene into one folder",
        [f"{_P}::test_case01_two_runs_of_one_scene_never_corrupt_each_other",
         f"{_C}::test_case01_a_held_scene_lock_refuses_a_second_writer",
         f"{_C}::test_case01_orphaned_staging_is_removed_but_a_live_one_is_kept"],
    ),
    2: ("stale class files of an earlier run", [f"{_C}::test_case02_stale_class_files_go"]),
    3: (
        "outputs committed all or nothing",
        [f"{_C}::test_case03_a_folder_in_the_way_leaves_the_old_outputs",
         f"{_C}::test_case03_a_failing_writer_leaves_the_old_outputs"],
    ),
    4: (
        "unwritable output folder, before the model runs",
        [f"{_C}::test_case04_outdir_under_a_file_is_refused_before_planning",
         f"{_C}::test_case04_read_only_outdir_is_refused_before_planning",
         f"{_C}::test_case04_immutable_outdir_exits_2"],
    ),
    5: (
        "CRS that does not fit the scene's coordinates",
        [f"{_C}::test_case05_implausible_bounds_exit_2"],
    ),
    6: (
        "numbers that slip through option checks",
        [f"{_C}::test_case06_huge_tile_is_clamped_to_the_scene",
         f"{_C}::test_case06_gsd_upsampling_is_bounded",
         f"{_C}::test_case06_non_finite_numbers_exit_2",
         f"{_C}::test_case06_non_finite_numbers_in_the_library"],
    ),
    7: (
        "schedulers",
        [f"{_C}::test_case07_unknown_scheduler_exits_2",
         f"{_C}::test_case07_refused_connection_is_a_user_error"],
    ),
    8: ("STAC-looking JSON that is not an object", [f"{_C}::test_case08_json_not_an_object"]),
    9: (
        "one line means one line",
        [f"{_C}::test_case09_click_errors_are_one_line",
         f"{_C}::test_case09_checkpoint_errors_say_what_the_file_is"],
    ),
    10: (
        "Ctrl-C and SIGTERM",
        [f"{_P}::test_case10_signal_exits_cleanly"],
    ),
    11: (
        "disk full",
        [f"{_C}::test_case11_no_space_left_simulated",
         f"{_C}::test_case11_no_space_left_on_a_real_tmpfs"],
    ),
    12: (
        "geoseg eval accepts mistakes silently",
        [f"{_C}::test_case12_points_only_reference_is_an_error",
         f"{_C}::test_case12_class_in_neither_file_is_an_error",
         f"{_C}::test_case12_repairs_are_counted_in_one_warning",
         f"{_C}::test_case12_iou_ties_go_as_in_pycocotools"],
    ),
    13: ("README's metadata example", [f"{_C}::test_case13_readme_metadata_example_works"]),
    14: (
        "a Dask worker dies mid-run",
        [f"{_P}::test_case14_worker_death_in_run_gives_the_same_outputs",
         f"{_P}::test_case14_worker_death_in_batch_loses_and_repeats_no_scene"],
    ),
    15: (
        "journal fingerprints miss a same-size, same-mtime edit",
        [f"{_C}::test_case15_verify_content_sees_an_edit_that_quick_misses"],
    ),
    16: (
        "a scene that changes during a run",
        [f"{_C}::test_case16_scene_replaced_during_a_run",
         f"{_C}::test_case16_scene_truncated_during_a_run"],
    ),
}  # fmt: skip


def test_every_catalogued_case_has_its_tests() -> None:
    assert sorted(CATALOGUE) == list(range(1, len(CATALOGUE) + 1))
    for case, (_, tests) in CATALOGUE.items():
        assert tests, case
        for spec in tests:
            module, name = spec.split("::")
            assert callable(getattr(importlib.import_module(module), name, None)), spec


# -- helpers ------------------------------------------------------------------------------


def geoseg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geoseg", *args], capture_output=True, text=True, timeout=timeout
    )


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.fixture
def scene(coded_scene) -> Path:
    ids = np.zeros((128, 160), dtype=np.int32)
    ids[10:40, 20:70] = 1
    ids[60:120, 80:150] = 2
    ids[50:56, 5:40] = 3
    return coded_scene(ids, {1: 0, 2: 1, 3: 2})


OPTS = RunOptions(model=ORACLE, tile_px=64, overlap_px=16, simplify_px=0)


def layers(*names: str) -> dict[str, gpd.GeoDataFrame]:
    return {
        name: gpd.GeoDataFrame(
            {"id": [name], "class": [name], "score": [1.0], "area_m2": [1.0], "perimeter_m": [4.0]},
            geometry=[shapely.box(500_000, 4_000_000, 500_010, 4_000_010)],
            crs=UTM,
        )
        for name in names
    }


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- 1. concurrent runs ---------------------------------------------------------------------


def test_case01_a_held_scene_lock_refuses_a_second_writer(tmp_path: Path) -> None:
    with commit.scene_lock(tmp_path, "s"):
        with (
            pytest.raises(UserInputError, match=r"another geoseg run"),
            commit.scene_lock(tmp_path, "s"),
        ):
            pass
        with commit.scene_lock(tmp_path, "other"):  # another scene: its own lock
            pass
    with commit.scene_lock(tmp_path, "s"):  # released
        pass
    assert not list(tmp_path.iterdir())  # lock files go with the lock


def test_case01_orphaned_staging_is_removed_but_a_live_one_is_kept(tmp_path: Path) -> None:
    dead = tmp_path / f"{commit.STAGING_PREFIX}1-dead"
    dead.mkdir()
    (dead / ".lock").touch()
    (dead / "s.gpkg").write_text("half")
    with commit._staging(tmp_path) as live:
        assert not dead.exists()
        commit.remove_orphans(tmp_path)  # another run's clean-up
        assert live.exists()
    assert not list(tmp_path.iterdir())


# -- 2, 3. stale files, all or nothing -------------------------------------------------------


def test_case02_stale_class_files_go(tmp_path: Path) -> None:
    write_outputs(layers("building", "field", "ship"), tmp_path, "s", metadata={})
    write_outputs(layers("building", "tree"), tmp_path, "s", metadata={})
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "s.gpkg",
        "s_building.geojson",
        "s_tree.geojson",
    ]
    write_outputs(layers("building"), tmp_path / "other", "s_b", metadata={})  # no cross-talk


def test_case03_a_folder_in_the_way_leaves_the_old_outputs(tmp_path: Path) -> None:
    write_outputs(layers("building", "ship"), tmp_path, "s", metadata={"v": "old"})
    before = snapshot(tmp_path)
    (tmp_path / "s_ship.geojson").unlink()
    (tmp_path / "s_ship.geojson").mkdir()
    before.pop("s_ship.geojson")
    with pytest.raises(OutputError, match=r"s_ship.geojson"):
        write_outputs(layers("building", "ship", "field"), tmp_path, "s", metadata={"v": "new"})
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["s_ship.geojson"]


def test_case03_a_failing_writer_leaves_the_old_outputs(tmp_path: Path, monkeypatch) -> None:
    write_outputs(layers("building", "ship"), tmp_path, "s", metadata={"v": "old"})
    before = snapshot(tmp_path)
    from geoseg import output

    real = output._write_geojson

    def flaky(tmp: Path, *, frame, layer: str) -> None:
        if layer.endswith("ship"):
            raise RuntimeError("writer broke")
        real(tmp, frame=frame, layer=layer)

    monkeypatch.setattr(output, "_write_geojson", flaky)
    with pytest.raises(RuntimeError, match=r"writer broke"):
        write_outputs(layers("building", "ship"), tmp_path, "s", metadata={"v": "new"})
    assert snapshot(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]

    # a failure among the final renames is undone too
    monkeypatch.setattr(output, "_write_geojson", real)
    calls = []
    real_replace = os.replace

    def replace(src, dst) -> None:
        calls.append(dst)
        if str(dst).endswith("s_ship.geojson") and str(src).endswith("s_ship.geojson"):
            raise OSError(errno.EIO, "I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(commit.os, "replace", replace)
    with pytest.raises(OutputError, match=r"I/O error"):
        write_outputs(layers("building", "ship"), tmp_path, "s", metadata={"v": "new"})
    assert snapshot(tmp_path) == before


# -- 4. unwritable folder ----------------------------------------------------------------------


def _no_planning(monkeypatch) -> None:
    import geoseg.pipeline

    def fail(*args, **kwargs):
        raise AssertionError("the scene was planned (the model loaded) before the check")

    monkeypatch.setattr(geoseg.pipeline, "plan_scene", fail)


def test_case04_outdir_under_a_file_is_refused_before_planning(
    tmp_path: Path, scene: Path, monkeypatch
) -> None:
    (tmp_path / "file").write_text("x")
    proc = geoseg("run", str(scene), "-o", str(tmp_path / "file" / "out"), "--model", ORACLE)
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc) == [
        f"Error: -o {tmp_path / 'file' / 'out'}: cannot be created, {tmp_path / 'file'} is a "
        "file, not a folder"
    ]
    _no_planning(monkeypatch)
    with pytest.raises(UserInputError, match=r"not a folder"):
        run_scene(scene, tmp_path / "file", options=OPTS)


def test_case04_read_only_outdir_is_refused_before_planning(
    tmp_path: Path, scene: Path, monkeypatch
) -> None:
    # tests run as root, whom permission bits do not stop: simulate a read-only folder
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        commit.os, "access", lambda p, mode: Path(p) != readonly and real_access(p, mode)
    )
    _no_planning(monkeypatch)
    with pytest.raises(UserInputError, match=r"not writable"):
        run_scene(scene, readonly, options=OPTS)
    with pytest.raises(UserInputError, match=r"cannot be created"):
        run_scene(scene, readonly / "sub" / "out", options=OPTS)


def test_case04_immutable_outdir_exits_2(tmp_path: Path, scene: Path) -> None:
    locked = tmp_path / "immutable"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        proc = geoseg("run", str(scene), "-o", str(locked), "--model", ORACLE)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert proc.returncode == 2, proc.stderr
    assert len(error_lines(proc)) == 1 and "not writable" in proc.stderr


# -- 5. CRS plausibility -----------------------------------------------------------------------


def test_case05_implausible_bounds_exit_2(tmp_path: Path, coded_scene) -> None:
    ids = np.zeros((64, 64), dtype=np.int32)
    ids[5:20, 5:20] = 1
    no_crs = coded_scene(ids, {1: 0}, name="nocrs.tif", crs=None)
    proc = geoseg("run", str(no_crs), "-o", str(tmp_path / "a"), "--model", ORACLE, "--crs",
                  "EPSG:4326")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc)
    assert "nocrs.tif" in line and "longitudes and latitudes" in line and "--crs" in line
    assert not (tmp_path / "a").exists()

    polar = coded_scene(
        ids, {1: 0}, name="polar.tif", crs="EPSG:4326",
        transform=Affine(0.01, 0, 10.0, 0, -0.01, 95.0),
    )  # fmt: skip
    with pytest.raises(UserInputError, match=r"polar.tif.*longitudes and latitudes"):
        plan_scene(polar, OPTS)
    wrong_zone = coded_scene(
        ids, {1: 0}, name="far.tif", crs="EPSG:32633",
        transform=Affine(0.5, 0, 5e7, 0, -0.5, 4e6),
    )  # fmt: skip
    with pytest.raises(UserInputError, match=r"far.tif.*not places in EPSG:32633"):
        plan_scene(wrong_zone, OPTS)
    far_east = coded_scene(
        ids, {1: 0}, name="east.tif", crs="EPSG:32633",
        transform=Affine(0.5, 0, 3e6, 0, -0.5, 4e6),
    )  # fmt: skip
    with pytest.raises(UserInputError, match=r"east.tif.*outside the area.*longitude 12 to 18"):
        plan_scene(far_east, OPTS)


# -- 6. numbers -------------------------------------------------------------------------------


def test_case06_huge_tile_is_clamped_to_the_scene(tmp_path: Path, scene: Path) -> None:
    plan = plan_scene(scene, RunOptions(model=ORACLE, tile_px=100_000, overlap_px=50_000))
    assert plan.options.tile_px == 512 and plan.n_tiles == 1
    assert any("larger than the scene" in note for note in plan.notes)
    result = run_scene(scene, tmp_path / "out", options=plan.options)
    assert result.counts == {"building": 1, "field": 1, "ship": 1}


def test_case06_gsd_upsampling_is_bounded(scene: Path) -> None:
    with pytest.raises(UserInputError, match=r"--gsd 0.0001 .* times finer; at most"):
        plan_scene(scene, RunOptions(model=ORACLE, gsd_m=0.0001))
    assert plan_scene(scene, RunOptions(model=ORACLE, gsd_m=0.25)).scene.shape_yx == (256, 320)


@pytest.mark.parametrize(
    "args",
    [
        ["--gsd", "nan"],
        ["--gsd", "inf"],
        ["--min-score", "nan"],
        ["--simplify", "inf"],
        ["--simplify", "nan"],
    ],
)
def test_case06_non_finite_numbers_exit_2(tmp_path: Path, scene: Path, args: list[str]) -> None:
    proc = geoseg("run", str(scene), "-o", str(tmp_path / "out"), "--model", ORACLE, *args)
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc)
    assert args[0] in line and "finite" in line


@pytest.mark.parametrize(
    "field", [{"simplify_px": float("inf")}, {"gsd_m": float("nan")}, {"min_score": np.nan}]
)
def test_case06_non_finite_numbers_in_the_library(scene: Path, field: dict) -> None:
    with pytest.raises(UserInputError, match=r"finite"):
        plan_scene(scene, RunOptions(model=ORACLE, **field))


# -- 7. schedulers ----------------------------------------------------------------------------


def test_case07_unknown_scheduler_exits_2(tmp_path: Path, scene: Path) -> None:
    proc = geoseg("run", str(scene), "-o", str(tmp_path / "o"), "--scheduler", "foo")
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc)
    assert "'foo'" in line and "threads, processes" in line and "tcp://host:8786" in line


def test_case07_refused_connection_is_a_user_error(tmp_path: Path, scene: Path) -> None:
    from geoseg.scheduler import check_reachable, check_scheduler

    assert check_scheduler("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert check_scheduler("localhost:8786") == "localhost:8786"
    with pytest.raises(UserInputError, match=r"cannot reach a Dask scheduler"):
        check_reachable("tcp://127.0.0.1:1")
    with pytest.raises(UserInputError, match=r"cannot reach"):
        run_scene(scene, tmp_path / "out", options=OPTS, scheduler="tcp://127.0.0.1:1")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# -- 8. batch inputs --------------------------------------------------------------------------


@pytest.mark.parametrize("document", [[1, 2, 3], "hello", 7, None])
def test_case08_json_not_an_object(tmp_path: Path, document: object) -> None:
    from geoseg.batch.inputs import resolve_inputs

    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(document))
    with pytest.raises(UserInputError, match=r"catalog.json: holds a JSON .*not a STAC object"):
        resolve_inputs([path])


# -- 9. one line -------------------------------------------------------------------------------


def test_case09_click_errors_are_one_line(tmp_path: Path, scene: Path) -> None:
    proc = geoseg("run", str(scene), "-o", str(tmp_path / "o"), "--tile-size", "8")
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert line.startswith("Error: Invalid value for '--tile-size'")
    assert line.endswith(" run --help')")
    proc = geoseg("nosuchcommand")
    assert proc.returncode == 2 and len(error_lines(proc)) == 1


def test_case09_checkpoint_errors_say_what_the_file_is(tmp_path: Path, scene: Path) -> None:
    import torch

    from geoseg.model.checkpoint import read_checkpoint

    text = tmp_path / "notes.pt"
    text.write_text("hello, not a model\n")
    objects = tmp_path / "objects.pt"
    torch.save({"fraction": __import__("fractions").Fraction(1, 2)}, objects)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own warnings must not get through
        with pytest.raises(UserInputError, match=r"notes.pt: not a readable PyTorch checkpoint \("):
            read_checkpoint(text)
        with pytest.raises(UserInputError) as info:
            read_checkpoint(objects)
        with pytest.raises(UserInputError, match=r"legacy.pt: not a"):
            read_checkpoint(legacy)
    message = str(info.value)
    assert "not a geoseg/torchvision checkpoint" in message
    assert "weights_only" not in message and "\n" not in message
    proc = geoseg("run", str(scene), "-o", str(tmp_path / "o"), "--model", str(text))
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "neither a zip archive nor a pickle" in line


# -- 11. disk full -----------------------------------------------------------------------------


def test_case11_no_space_left_simulated(tmp_path: Path, scene: Path, monkeypatch) -> None:
    from geoseg import output

    def full(tmp: Path, **kwargs) -> None:
        tmp.write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output, "_write_gpkg", full)
    out = tmp_path / "out"
    with pytest.raises(OutputError) as info:
        run_scene(scene, out, options=OPTS)
    assert str(info.value).startswith(f"no space left on device writing {out / 'scene.gpkg'}")
    assert not list(out.iterdir())


def test_case11_no_space_left_on_a_real_tmpfs(tmp_path: Path, scene: Path) -> None:
    out = tmp_path / "small"
    out.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the simulated test covers the logic)")
    try:
        proc = geoseg("-q", "run", str(scene), "-o", str(out), "--model", ORACLE,
                      "--tile-size", "64", "--overlap", "16")  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        (line,) = error_lines(proc)
        assert line.startswith(f"Error: no space left on device writing {out}/scene")
        assert not list(out.iterdir())
    finally:
        subprocess.run(["umount", str(out)], check=True)


# -- 12. geoseg eval ---------------------------------------------------------------------------


def _frame(geoms: list, classes: list[str] | None = None, scores=None) -> gpd.GeoDataFrame:
    data = {} if classes is None else {"class": classes}
    if scores is not None:
        data["score"] = scores
    return gpd.GeoDataFrame(data, geometry=geoms, crs=UTM)


def test_case12_points_only_reference_is_an_error(tmp_path: Path) -> None:
    from geoseg.learn.evaluate import evaluate

    pred = _frame([shapely.box(0, 0, 10, 10)], ["building"])
    ref = _frame([shapely.Point(5, 5), shapely.Point(50, 5)], ["building", "building"])
    with pytest.raises(LabelError, match=r"reference holds no polygons, only Point"):
        evaluate(pred, ref)
    ref.to_file(tmp_path / "points.gpkg")
    pred.to_file(tmp_path / "pred.gpkg")
    proc = geoseg("eval", str(tmp_path / "pred.gpkg"), str(tmp_path / "points.gpkg"))
    assert proc.returncode == 2 and len(error_lines(proc)) == 1, proc.stderr


def test_case12_class_in_neither_file_is_an_error() -> None:
    from geoseg.learn.evaluate import evaluate

    frame = _frame([shapely.box(0, 0, 10, 10)], ["building"])
    with pytest.raises(UserInputError, match=r"--classes tree: in neither file.*building"):
        evaluate(frame, frame, classes=["tree"])
    assert evaluate(frame, frame, classes=["building"])["classes"]["building"]["f1"] == 1.0


def test_case12_repairs_are_counted_in_one_warning(caplog) -> None:
    from geoseg.learn.evaluate import evaluate

    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    ref = _frame([bowtie, bowtie, shapely.box(20, 0, 30, 10)], ["ship"] * 3)
    with caplog.at_level(logging.WARNING, logger="geoseg"):
        evaluate(ref, ref)
    repaired = [r.getMessage() for r in caplog.records if "repaired" in r.getMessage()]
    assert repaired == [
        "2 invalid polygon(s) in the predictions repaired with shapely.make_valid before scoring",
        "2 invalid polygon(s) in the reference repaired with shapely.make_valid before scoring",
    ]


def _coco_assign(ious: np.ndarray, threshold: float) -> np.ndarray:
    """pycocotools' evaluateImg matching for one image and one IoU threshold (no crowds)."""
    n_pred, n_ref = ious.shape
    taken = np.zeros(n_ref, dtype=bool)
    match = np.full(n_pred, -1)
    for d in range(n_pred):
        best, m = min(threshold, 1 - 1e-10), -1
        for g in range(n_ref):
            if taken[g] or ious[d, g] < best:
                continue
            best, m = ious[d, g], g
        if m >= 0:
            taken[m], match[d] = True, m
    return match


def test_case12_iou_ties_go_as_in_pycocotools() -> None:
    from geoseg.learn.evaluate import greedy_assign, pairwise_iou

    # one prediction has the same IoU (2/3) with two references; the second prediction is
    # the first reference exactly: pycocotools gives the tie to the later reference
    pred = np.array([shapely.box(0, 0, 10, 10), shapely.box(-2, 0, 8, 10)])
    ref = np.array([shapely.box(-2, 0, 8, 10), shapely.box(2, 0, 12, 10)])
    assert greedy_assign(pairwise_iou(pred, ref), 2, 2, 0.5).tolist() == [1, 0]
    rng = np.random.default_rng(12)
    for _ in range(200):  # many ties on a coarse grid, in every order
        boxes = [
            shapely.box(x, y, x + w, y + h)
            for x, y, w, h in rng.integers(0, 4, size=(rng.integers(2, 7), 4))
            + np.array([0, 0, 1, 1])
        ]
        pred = np.array(boxes[: len(boxes) // 2 + 1])
        ref = np.array(boxes[len(boxes) // 2 :][::-1])
        pairs = pairwise_iou(pred, ref)
        dense = np.zeros((len(pred), len(ref)))
        dense[pairs[0], pairs[1]] = pairs[2]
        for t in (0.1, 0.5, 0.75):
            got = greedy_assign(pairs, len(pred), len(ref), t)
            assert got.tolist() == _coco_assign(dense, t).tolist()


# -- 13. README ----------------------------------------------------------------------------------


def test_case13_readme_metadata_example_works(tmp_path: Path, monkeypatch) -> None:
    import pyogrio

    line = 'pyogrio.read_info("out/SCENE.gpkg", layer="building")["layer_metadata"]'
    assert line in (REPO / "README.md").read_text()
    write_outputs(layers("building"), tmp_path / "out", "SCENE", metadata={"geoseg_model": "m"})
    monkeypatch.chdir(tmp_path)
    metadata = eval(line, {"pyogrio": pyogrio})
    assert metadata["geoseg_model"] == "m"


# -- 15. journal fingerprints --------------------------------------------------------------------


def test_case15_verify_content_sees_an_edit_that_quick_misses(
    tmp_path: Path, scene: Path, monkeypatch
) -> None:
    from geoseg.batch import journal, run_batch

    monkeypatch.setattr(journal, "_EDGE_BYTES", 64)  # a "large" file: its middle is unread

    def status(verify: str) -> list[str]:
        out = tmp_path / verify
        report = run_batch([scene], out, options=OPTS, scheduler="sync", verify=verify)
        return [o.status for o in report.outcomes]

    assert status("quick") == status("content") == ["done"]
    assert status("quick") == status("content") == ["skipped"]
    stat = scene.stat()
    data = bytearray(scene.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, and the mtime is put back
    scene.write_bytes(bytes(data))
    os.utime(scene, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert status("quick") == ["skipped"]  # the documented limit of the default
    assert status("content") != ["skipped"]
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match=r"verify"):
        run_batch([scene], out, options=OPTS, verify="mtime")


# -- 16. a scene that changes during a run -------------------------------------------------------


def _change_during_run(scene: Path, out: Path, change) -> None:
    done = []

    def progress(n: int) -> None:
        if not done:
            done.append(n)
            change(scene)

    options = RunOptions(model=ORACLE, tile_px=32, overlap_px=8, batch_size=1, simplify_px=0)
    with pytest.raises(SceneError, match=r"scene.tif: changed while it was being read"):
        run_scene(scene, out, options=options, scheduler="sync", progress=progress)
    assert not out.exists() or not list(out.iterdir())


def test_case16_scene_replaced_during_a_run(tmp_path: Path, scene: Path, coded_scene) -> None:
    other = coded_scene(np.ones((64, 64), dtype=np.int32), {1: 0}, name="other.tif")
    _change_during_run(scene, tmp_path / "out", lambda path: os.replace(other, path))


def test_case16_scene_truncated_during_a_run(tmp_path: Path, scene: Path) -> None:
    def truncate(path: Path) -> None:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)

    _change_during_run(scene, tmp_path / "out", truncate)
