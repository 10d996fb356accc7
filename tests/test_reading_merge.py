"""A class read at two GSDs comes out once per object, merged across the readings, while the
readings stream: the merge holds a band of objects, not the scene's."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import dask
import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from affine import Affine
from shapely.geometry import box

from geoseg.assemble import SceneAssembler
from geoseg.config import RunOptions, as_extra_gsd
from geoseg.errors import UserInputError
from geoseg.pipeline import plan_scene, run_scene, scene_tasks
from geoseg.reading_merge import ReadingMerger, merge_readings, seen_twice
from geoseg.stitch import StitchedObject
from tests.conftest import UTM_TRANSFORM, assert_same_shape, truth_polygon, utm_transform

TWO_READINGS = RunOptions(
    model="tests.models:two_reading_oracle", tile_px=64, overlap_px=16, simplify_px=0
)
FINE, COARSE = Affine(1, 0, 0, 0, -1, 0), Affine(2, 0, 0, 0, -2, 0)  # pass 1 is twice coarser


def obj(x0: float, y0: float, x1: float, y1: float, score: float, label: int = 0):
    return StitchedObject(box(x0, y0, x1, y1), label, score, 1)


def test_two_outlines_are_one_object_by_iou_or_by_nesting() -> None:
    square = box(0, 0, 10, 10)
    assert seen_twice(square, box(5, 0, 15, 10))  # IoU 50 / 150 = 0.33
    assert not seen_twice(square, box(6, 0, 16, 10))  # IoU 0.25, 40% of the smaller
    assert seen_twice(square, box(0, 0, 2, 2))  # IoU 0.04, but wholly inside
    assert not seen_twice(square, box(8, 8, 12, 12))  # 4 of 16: a quarter of the smaller
    assert not seen_twice(box(0, 0, 1, 1), box(1, 0, 2, 1))  # touching: no shared area


def test_the_best_scored_reading_wins_and_the_greedy_order_decides_chains() -> None:
    fine = [obj(0, 0, 10, 10, 0.6), obj(30, 0, 40, 10, 0.9), obj(44, 0, 54, 10, 0.7)]
    # in the coarse pass's pixels (2 x): the first square again, better scored; a copy of the
    # second, worse scored, drawn wider so that it also overlaps the third
    coarse = [obj(0, 0, 5, 5, 0.8), obj(15, 0, 25, 5, 0.75), obj(60, 0, 65, 5, 0.5, label=1)]
    got = merge_readings([fine, coarse], [FINE, COARSE], [0])
    assert [o.score for o in got[0]] == [0.9, 0.7]  # 0.6 lost to the coarse copy
    # the coarse 0.75 lost to the fine 0.9, so it does not count against the fine 0.7
    assert sorted(o.score for o in got[1]) == [0.5, 0.8]  # class 1 is not merged: kept


def test_streaming_gives_the_objects_of_the_merge_at_once_and_holds_a_band() -> None:
    rng = np.random.default_rng(0)
    per_pass: list[list[StitchedObject]] = [[], []]
    for k, scale in ((0, 1.0), (1, 2.0)):
        for _ in range(300):
            y, x = rng.uniform(0, 3000), rng.uniform(0, 200)
            h, w = rng.uniform(4, 30, size=2)
            per_pass[k].append(
                obj(
                    x / scale,
                    y / scale,
                    (x + w) / scale,
                    (y + h) / scale,
                    float(rng.uniform(0.3, 1.0)),
                    label=int(rng.integers(0, 2)),
                )
            )
    want = merge_readings(per_pass, [FINE, COARSE], [0, 1])
    merger = ReadingMerger([FINE, COARSE], [0, 1])
    got: list[list[StitchedObject]] = [[], []]
    most = 0
    for row in range(0, 3100, 50):  # both passes finish everything that starts above row
        for k, scale in ((0, 1.0), (1, 2.0)):
            merger.add(
                k, [o for o in per_pass[k] if row - 50 <= o.polygon_px.bounds[1] * scale < row]
            )
        for k, o in merger.advance([row, row / 2]):
            got[k].append(o)
        most = max(most, merger.n_held)
    for k, o in merger.finish():
        got[k].append(o)
    assert merger.n_held == 0
    for mine, theirs in zip(got, want, strict=True):
        assert sorted(o.polygon_px.wkb for o in mine) == sorted(o.polygon_px.wkb for o in theirs)
    assert most < 100  # of 600: about the objects within reach of a 50-row band


def tall_scene(coded_scene: Callable[..., Path]) -> tuple[Path, np.ndarray]:
    """A 0.5 m scene 960 px tall: 12 buildings (ids 2-13) down its length, aligned to 4-pixel
    blocks (so that the 2 m reading sees them exactly too), a field (14) and a ship (1) in
    open water, coded 1 so that a finer (bilinear) reading decodes it as itself."""
    ids = np.zeros((960, 160), dtype=np.int32)
    for k in range(12):
        ids[8 + 80 * k : 48 + 80 * k, 16 + 8 * k : 80 + 8 * k] = k + 2
    ids[40:120, 112:156] = 14  # a field
    ids[500:512, 140:148] = 1  # a ship
    class_of = {k + 2: 0 for k in range(12)} | {14: 1, 1: 2}
    return coded_scene(ids, class_of, name="tall.tif"), ids


def test_a_class_read_at_two_gsds_comes_out_once_and_exact(
    tmp_path: Path, coded_scene: Callable[..., Path]
) -> None:
    path, ids = tall_scene(coded_scene)
    plan = plan_scene(path, TWO_READINGS)
    assert [(p.scene.gsd_m, p.classes) for p in plan.passes] == [(0.5, (0, 2)), (2.0, (0, 1))]
    assert plan.merged_classes() == (0,)
    starts = [  # the passes' batches interleaved down the scene
        min(t.window.row_off for t in tiles) * (4 if k else 1) for k, tiles in plan.batches
    ]
    assert starts == sorted(starts) and {k for k, _ in plan.batches[:6]} == {0, 1}
    result = run_scene(path, tmp_path / "out", options=TWO_READINGS)
    assert result.counts == {"building": 12, "field": 1, "ship": 1}
    assert result.class_readings_m == {"building": (0.5, 2.0), "field": (2.0,), "ship": (0.5,)}
    frame = gpd.read_file(tmp_path / "out" / "tall.gpkg", layer="building")
    for k in range(2, 14):
        truth = truth_polygon(ids, k, UTM_TRANSFORM)
        (got,) = [g for g in frame.geometry if g.intersects(truth.representative_point())]
        assert_same_shape(got, truth)
    meta = pyogrio.read_info(tmp_path / "out" / "tall.gpkg", layer="building")["layer_metadata"]
    assert json.loads(meta["geoseg_class_readings_m"]) == {"building": [[0.5, 0.5], [2.0, 0.5]]}


def test_the_merge_streams_as_the_batches_finish(
    tmp_path: Path, coded_scene: Callable[..., Path]
) -> None:
    path, _ = tall_scene(coded_scene)
    plan = plan_scene(path, replace(TWO_READINGS, batch_size=1))
    (results,) = dask.compute(scene_tasks(plan), scheduler="threads")
    held = []
    with SceneAssembler(plan, tmp_path / "out") as assembler:
        for result in results:  # in plan order, as the batches are run
            assembler.add(result)
            held.append(assembler.n_merging)
        assert assembler.finish(seconds=1.0).counts["building"] == 12
    # 24 buildings come in (12 from each reading): the merge holds those near the frontier
    assert 0 < max(held) <= 6


def test_extra_readings_only_where_the_scene_is_finer_enough(
    coded_scene: Callable[..., Path],
) -> None:
    ids = np.zeros((256, 256), dtype=np.int32)
    ids[20:60, 30:90] = 1
    path = coded_scene(ids, {1: 0}, name="s.tif", transform=utm_transform(1.5))
    plan = plan_scene(
        path, RunOptions(model="tests.models:two_reading_oracle", tile_px=128, overlap_px=32)
    )
    assert plan.class_readings_m()["building"] == (1.5,)  # 2 m is only 1.33 x coarser
    path, _ = tall_scene(coded_scene)
    plan = plan_scene(path, RunOptions(model="tests.models:two_reading_oracle", gsd_m=1.0))
    assert len(plan.passes) == 1 and not plan.merged_classes()  # --gsd: one reading


@pytest.mark.parametrize(
    ("gsd_m", "ship_readings"),
    [(0.3, (0.3, 2.0)), (0.4, (0.25, 0.4, 2.0)), (0.5, (0.25, 0.5, 2.0)), (0.6, (0.6, 2.0))],
)
def test_a_finer_extra_reading_only_up_to_twice_the_scene_s_detail(
    coded_scene: Callable[..., Path], gsd_m: float, ship_readings: tuple[float, ...]
) -> None:
    ids = np.zeros((1024, 1024), dtype=np.int32)  # wide enough for 2 m
    ids[100:112, 40:48] = 1
    path = coded_scene(ids, {1: 2}, name="s.tif", transform=utm_transform(gsd_m))
    options = RunOptions(model="tests.models:fine_ships_oracle", tile_px=128, overlap_px=32)
    readings = plan_scene(path, options).class_readings_m()
    # 0.3 m: 0.25 m is only 1.2 x finer; 0.6 m: it would be 2.4 x the scene's detail
    assert readings["ship"] == ship_readings and readings["building"] == (gsd_m,)


def test_a_class_also_read_finer_comes_out_once_and_whole(
    tmp_path: Path, coded_scene: Callable[..., Path], capsys: pytest.CaptureFixture
) -> None:
    from geoseg.cli import main

    path, ids = tall_scene(coded_scene)
    options = replace(TWO_READINGS, model="tests.models:fine_ships_oracle")
    plan = plan_scene(path, options)
    assert [(p.scene.gsd_m, p.classes) for p in plan.passes] == [
        (0.25, (2,)),
        (0.5, (0, 2)),
        (2.0, (1, 2)),
    ]
    assert plan.merged_classes() == (2,)
    args = ["run", str(path), "-o", str(tmp_path / "out"), "--tile-size", "64", "--overlap", "16"]
    with pytest.raises(SystemExit) as done:
        main([*args, "--model", "tests.models:fine_ships_oracle", "--no-webmap"])
    assert done.value.code == 0
    summary = capsys.readouterr().out
    assert "12 building (at 0.5 m" in summary and "1 field (at 2 m" in summary
    assert "1 ship (at 0.25, 0.5 and 2 m, merged, score >= 0.50)" in summary
    (got,) = gpd.read_file(tmp_path / "out" / "tall.gpkg", layer="ship").geometry
    assert_same_shape(got, truth_polygon(ids, 1, UTM_TRANSFORM))


def test_extra_readings_of_an_unknown_class_or_bad_gsds_are_refused(
    coded_scene: Callable[..., Path],
) -> None:
    path, _ = tall_scene(coded_scene)
    with pytest.raises(UserInputError, match="class_extra_gsd_m names boat"):
        plan_scene(path, RunOptions(model="tests.models:misnamed_extra_oracle"))
    with pytest.raises(UserInputError, match=r"m\.pt: class_extra_gsd_m"):
        as_extra_gsd({"building": [0.6, -1]}, "m.pt")
    with pytest.raises(UserInputError, match=r"m\.pt: class_fine_gsd_m"):
        as_extra_gsd({"ship": [0]}, "m.pt", "class_fine_gsd_m")
    assert as_extra_gsd({"building": [1.2, 0.6]}) == {"building": (0.6, 1.2)}


def test_the_summary_names_both_readings(
    tmp_path: Path, coded_scene: Callable[..., Path], capsys: pytest.CaptureFixture
) -> None:
    from geoseg.cli import main

    path, _ = tall_scene(coded_scene)
    args = ["run", str(path), "-o", str(tmp_path / "out"), "--tile-size", "64", "--overlap", "16"]
    with pytest.raises(SystemExit) as done:
        main([*args, "--model", "tests.models:two_reading_oracle", "--no-webmap"])
    assert done.value.code == 0
    assert "12 building (at 0.5 and 2 m, merged, score >= 0.50)" in capsys.readouterr().out
