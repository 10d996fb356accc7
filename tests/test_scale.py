"""Scenes outside the model's GSD range are read resampled; polygons stay in the scene's CRS."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from affine import Affine

from geoseg.config import RunOptions
from geoseg.errors import UserInputError
from geoseg.pipeline import plan_scene, run_scene
from geoseg.testing import write_coded_scene
from tests.conftest import assert_same_shape, truth_polygon, utm_transform

FINE = Affine(0.25, 0, 500_000, 0, -0.25, 4_000_000)


def fine_scene(tmp_path: Path) -> tuple[Path, np.ndarray]:
    ids = np.zeros((400, 360), dtype=np.int32)
    ids[20:120, 40:300] = 1  # aligned to 2-pixel blocks: exact at half resolution
    ids[200:360, 100:180] = 2
    path = write_coded_scene(
        tmp_path / "fine.tif", ids, {1: 0, 2: 2}, transform=FINE, crs="EPSG:32633"
    )
    return path, ids


def test_scene_finer_than_the_model_is_read_at_the_models_finest_gsd(tmp_path: Path) -> None:
    path, ids = fine_scene(tmp_path)
    options = RunOptions(
        model="tests.models:scale_aware_oracle", tile_px=64, overlap_px=16, simplify_px=0
    )
    plan = plan_scene(path, options)
    assert plan.scene.resampled and plan.scene.gsd_m == 0.5
    assert plan.scene.shape_yx == (200, 180)
    run_scene(path, tmp_path / "out", options=options)
    frame = gpd.read_file(tmp_path / "out" / "fine.gpkg", layer="building")
    assert frame.crs.to_epsg() == 32633
    (got,) = frame.geometry
    assert_same_shape(got, truth_polygon(ids, 1, FINE))
    assert gpd.read_file(tmp_path / "out" / "fine.gpkg", layer="ship").shape[0] == 1


def test_gsd_option_overrides_and_scene_inside_range_is_untouched(tmp_path: Path) -> None:
    path, _ = fine_scene(tmp_path)
    plan = plan_scene(path, RunOptions(model="tests.models:scale_aware_oracle", gsd_m=1.0))
    assert plan.scene.gsd_m == 1.0 and plan.scene.shape_yx == (100, 90)
    plan = plan_scene(path, RunOptions(model="geoseg.testing:OracleSegmenter"))
    assert not plan.scene.resampled


def test_each_class_is_read_at_its_own_gsd_and_stitched_on_its_grid(tmp_path: Path) -> None:
    """Fields are read at 2 m (4 x coarser) on a 0.5 m coded scene, buildings and ships at
    0.5 m: every object comes out once, whole and exact, though fields cross many tiles."""
    transform = Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000)
    ids = np.zeros((480, 440), dtype=np.int32)
    # everything aligned to 4-pixel blocks, so that a 2 m reading averages no codes together:
    # a pass that kept every class would give each building and ship twice
    ids[8:232, 16:424] = 1  # a field
    ids[240:472, 20:200] = 2  # another field, crossing tile seams at 2 m
    ids[300:320, 248:264] = 3  # a building
    ids[400:412, 300:308] = 4  # a ship
    ids[244:260, 228:252] = 5  # a building beside the second field
    class_of = {1: 1, 2: 1, 3: 0, 4: 2, 5: 0}
    path = write_coded_scene(
        tmp_path / "mixed.tif", ids, class_of, transform=transform, crs="EPSG:32633"
    )
    options = RunOptions(
        model="tests.models:class_scale_oracle", tile_px=64, overlap_px=16, simplify_px=0
    )
    plan = plan_scene(path, options)
    assert [p.scene.gsd_m for p in plan.passes] == [0.5, 2.0]
    assert plan.class_gsd_m() == {"building": 0.5, "ship": 0.5, "field": 2.0}
    assert len(plan.passes[1].grid) > 1  # the fields cross tile seams at 2 m too
    result = run_scene(path, tmp_path / "out", options=options)
    assert result.counts == {"building": 2, "field": 2, "ship": 1}
    assert result.class_gsd_m["field"] == 2.0
    for name, wanted in (("building", (3, 5)), ("field", (1, 2)), ("ship", (4,))):
        frame = gpd.read_file(tmp_path / "out" / "mixed.gpkg", layer=name)
        assert frame.crs.to_epsg() == 32633
        for k in wanted:
            truth = truth_polygon(ids, k, transform)
            (got,) = [g for g in frame.geometry if g.intersects(truth.representative_point())]
            assert_same_shape(got, truth)


def test_a_scene_far_coarser_than_every_class_is_refused(tmp_path: Path) -> None:
    ids = np.zeros((64, 64), dtype=np.int32)
    ids[10:20, 10:20] = 1
    coarse = Affine(300.0, 0, 500_000, 0, -300.0, 4_000_000)
    path = write_coded_scene(tmp_path / "c.tif", ids, {1: 1}, transform=coarse, crs="EPSG:32633")
    with pytest.raises(UserInputError, match=r"c\.tif: GSD 300 m is too coarse"):
        plan_scene(path, RunOptions(model="tests.models:class_scale_oracle"))
    # --gsd still reads it, at the user's word
    plan = plan_scene(path, RunOptions(model="tests.models:class_scale_oracle", gsd_m=300.0))
    assert plan.n_tiles == 1


def test_a_class_too_fine_for_the_scene_is_left_out_with_a_note(tmp_path: Path) -> None:
    ids = np.zeros((64, 64), dtype=np.int32)
    ids[8:40, 8:40] = 1
    at_25m = Affine(25.0, 0, 500_000, 0, -25.0, 4_000_000)
    path = write_coded_scene(tmp_path / "m.tif", ids, {1: 1}, transform=at_25m, crs="EPSG:32633")
    plan = plan_scene(path, RunOptions(model="tests.models:fine_buildings_oracle"))
    assert plan.class_gsd_m() == {"field": 10.0, "ship": 10.0}
    (note,) = plan.notes
    assert note.startswith("building not searched") and "5 m" in note
    result = run_scene(path, tmp_path / "out", options=plan.options)
    assert result.counts == {"building": 0, "field": 1, "ship": 0}


def test_a_small_scene_is_read_no_coarser_than_half_a_tile_across(tmp_path: Path) -> None:
    """Fields (2 m or coarser) on a 0.5 m scene 200 px across with 128 px tiles: 2 m would
    leave 50 px, so they are read at 0.5 * 200 / 64 = 1.5625 m; still exact and whole."""
    transform = Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000)
    ids = np.zeros((200, 240), dtype=np.int32)
    ids[16:112, 24:200] = 1  # a field
    ids[150:170, 60:80] = 2  # a building
    path = write_coded_scene(
        tmp_path / "small.tif", ids, {1: 1, 2: 0}, transform=transform, crs="EPSG:32633"
    )
    options = RunOptions(
        model="tests.models:class_scale_oracle", tile_px=128, overlap_px=32, simplify_px=0
    )
    plan = plan_scene(path, options)
    assert plan.class_gsd_m() == {"building": 0.5, "ship": 0.5, "field": 1.5625}
    assert min(plan.passes[1].scene.shape_yx) == 64
    result = run_scene(path, tmp_path / "out", options=options)
    assert result.counts == {"building": 1, "field": 1, "ship": 0}
    # with bigger tiles the cap would be finer than the scene: the scene is read as it is
    plan = plan_scene(path, replace(options, tile_px=512, overlap_px=64))
    assert [p.scene.gsd_m for p in plan.passes] == [0.5]


@pytest.mark.parametrize(
    ("gsd_m", "min_score", "ships"),
    [(0.5, None, 1), (2.0, None, 0), (2.0, {"ship": 0.55}, 1), (0.5, {"ship": 0.65}, 0)],
)
def test_a_class_threshold_can_depend_on_the_gsd_it_is_read_at(
    tmp_path: Path,
    coded_scene: Callable[..., Path],
    gsd_m: float,
    min_score: dict[str, float] | None,
    ships: int,
) -> None:
    """Ships scored 0.6: kept when read at 0.5 m (threshold 0.5 up to 1 m), dropped at 2 m
    (0.7); ``--min-score`` overrides both."""
    ids = np.zeros((128, 128), dtype=np.int32)
    ids[40:56, 40:72] = 1  # a ship
    ids[80:112, 80:112] = 2  # a building, scored 0.6 too: kept everywhere
    path = coded_scene(ids, {1: 2, 2: 0}, name="s.tif", transform=utm_transform(gsd_m))
    options = RunOptions(
        model="tests.models:gsd_threshold_oracle", tile_px=64, overlap_px=16, min_score=min_score
    )
    plan = plan_scene(path, options)
    ship_pass = next(p for p in plan.passes if 2 in p.classes)
    if min_score is None:
        assert ship_pass.min_score == {"building": 0.5, "field": 0.5, "ship": 0.5 if ships else 0.7}
    else:
        assert ship_pass.min_score is None
    result = run_scene(path, tmp_path / "out", options=options)
    assert result.counts["ship"] == ships and result.counts["building"] == 1
    wanted = (min_score or ship_pass.min_score)["ship"]
    assert result.class_min_score["ship"] == wanted == plan.class_min_score()["ship"]
    metadata = pyogrio.read_info(tmp_path / "out" / "s.gpkg", layer="ship")["layer_metadata"]
    assert json.loads(metadata["geoseg_class_min_score"])["ship"] == wanted


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ("misnamed_threshold_oracle", "min_score_by_gsd names boat"),
        ("misnamed_mask_oracle", "mask_threshold names boat"),
        ("misnamed_views_oracle", "class_tta_views names boat"),
        ("misnamed_views_by_gsd_oracle", "tta_views_by_gsd names boat"),
    ],
)
def test_thresholds_for_an_unknown_class_are_refused(
    tmp_path: Path, model: str, match: str
) -> None:
    path, _ = fine_scene(tmp_path)
    with pytest.raises(UserInputError, match=match):
        plan_scene(path, RunOptions(model=f"tests.models:{model}"))


@pytest.mark.parametrize(("gsd_m", "grown"), [(0.5, True), (2.0, False)])
def test_a_class_mask_threshold_can_depend_on_the_gsd_it_is_read_at(
    tmp_path: Path, coded_scene: Callable[..., Path], gsd_m: float, grown: bool
) -> None:
    """Masks 0.6 on each object and 0.4 in a ring around it: buildings read at 1 m or finer
    are cut at 0.35 and come out with the ring, elsewhere at 0.5 and exact; ships never."""
    ids = np.zeros((128, 128), dtype=np.int32)
    ids[40:56, 40:72] = 1  # a ship
    ids[80:112, 80:112] = 2  # a building
    path = coded_scene(ids, {1: 2, 2: 0}, name="s.tif", transform=utm_transform(gsd_m))
    options = RunOptions(
        model="tests.models:soft_mask_oracle", tile_px=64, overlap_px=16, simplify_px=0
    )
    plan = plan_scene(path, options)
    cut = 0.35 if grown else 0.5
    building_pass = next(p for p in plan.passes if 0 in p.classes)
    assert building_pass.mask_threshold == {"building": cut, "field": 0.5, "ship": 0.5}
    run_scene(path, tmp_path / "out", options=options)
    found = {
        name: gpd.read_file(tmp_path / "out" / "s.gpkg", layer=name).geometry.union_all()
        for name in ("building", "ship")
    }
    ring = 4 * 32 * gsd_m**2  # one pixel along each side of a 32 x 32 square, no corners
    want_building = 32 * 32 * gsd_m**2 + (ring if grown else 0.0)
    assert found["building"].area == pytest.approx(want_building)
    assert found["ship"].area == pytest.approx(16 * 32 * gsd_m**2)
    metadata = pyogrio.read_info(tmp_path / "out" / "s.gpkg", layer="building")["layer_metadata"]
    assert json.loads(metadata["geoseg_class_mask_threshold"])["building"] == cut


def test_classes_at_nearly_the_same_gsd_share_one_reading(
    tmp_path: Path, coded_scene: Callable[..., Path]
) -> None:
    """Buildings from 0.2986 m and ships from 0.3 m on a 0.2986 m scene: one reading at
    0.2986 m for both (not a second pass over the scene for 0.5%), each object once."""
    transform = utm_transform(0.2986)
    ids = np.zeros((256, 256), dtype=np.int32)
    ids[20:60, 30:90] = 1  # a building
    ids[150:170, 100:180] = 2  # a ship
    path = coded_scene(ids, {1: 0, 2: 2}, name="z19.tif", transform=transform)
    options = RunOptions(
        model="tests.models:nearly_same_scale_oracle", tile_px=128, overlap_px=32, simplify_px=0
    )
    plan = plan_scene(path, options)
    first = plan.passes[0]
    assert (first.scene.gsd_m, first.classes) == (0.2986, (0, 2))
    assert not first.scene.resampled
    result = run_scene(path, tmp_path / "out", options=options)
    assert result.counts["building"] == 1 and result.counts["ship"] == 1
    for name, k in (("building", 1), ("ship", 2)):
        (got,) = gpd.read_file(tmp_path / "out" / "z19.gpkg", layer=name).geometry
        assert_same_shape(got, truth_polygon(ids, k, transform))


@pytest.mark.parametrize(
    ("tta", "building_views", "field_views"),
    [(None, {"building": 4}, None), (1, None, None), (8, {"building": 8, "ship": 8}, {"field": 8})],
)
def test_each_reading_asks_for_its_classes_views(
    tmp_path: Path,
    coded_scene: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    tta: int | None,
    building_views: dict[str, int] | None,
    field_views: dict[str, int] | None,
) -> None:
    """On a 0.5 m scene buildings and ships are read at 0.5 m, fields at 2 m. The model
    recommends 4 views for buildings: only the 0.5 m reading asks for them, and for buildings
    only; ``--tta 1`` asks for none, ``--tta 8`` for 8 of every class. The summary and the
    layers' metadata say so; the objects come out as without views (the oracle is exact).
    Each reading tells ``predict`` its GSD."""
    from geoseg.cli import main
    from tests import models

    ids = np.zeros((128, 128), dtype=np.int32)
    ids[40:56, 40:72] = 1
    ids[80:112, 80:112] = 2
    path = coded_scene(ids, {1: 2, 2: 0}, name="s.tif", transform=utm_transform(0.5))
    options = RunOptions(model="tests.models:views_oracle", tile_px=64, overlap_px=16, tta=tta)
    plan = plan_scene(path, options)
    fine, coarse = plan.passes
    assert fine.classes == (0, 2) and coarse.classes == (1,)
    assert (fine.tta_views, coarse.tta_views) == (building_views, field_views)
    models.VIEWS_SEEN.clear()
    args = ["run", str(path), "-o", str(tmp_path / "out"), "--model", options.model]
    args += ["--tile-size", "64", "--overlap", "16", "--no-preview", "--no-webmap"]
    with pytest.raises(SystemExit) as done:
        main([*args, *(["--tta", str(tta)] if tta else [])])
    assert done.value.code == 0
    asked = [v for _, v in models.VIEWS_SEEN if v]
    # each call is told the GSD its tiles were read at
    assert {(gsd, str(v)) for gsd, v in models.VIEWS_SEEN} == {
        (0.5, str(building_views)),
        (2.0, str(field_views)),
    }
    if tta == 1:
        assert not asked
    else:
        assert building_views in asked
        assert all(v in (building_views, field_views) for v in asked)
    summary = capsys.readouterr().out
    assert "1 ship (" in summary and "1 building (" in summary
    views = building_views or {}
    assert ("building (at 0.5 m, score >= 0.50, 4 views)" in summary) == (views == {"building": 4})
    metadata = pyogrio.read_info(tmp_path / "out" / "s.gpkg", layer="building")["layer_metadata"]
    recorded = json.loads(metadata.get("geoseg_class_tta_views", "{}"))
    assert recorded == {**views, **(field_views or {})}


@pytest.mark.parametrize(
    ("gsd", "tta", "building_views", "field_views"),
    [
        (0.5, None, {"building": 4}, {"field": 4}),
        (0.25, None, {"building": 8}, {"field": 4}),
        (4.0, None, {"building": 4}, None),
        (0.5, 2, {"building": 2, "ship": 2}, {"field": 2}),
    ],
)
def test_views_by_gsd_follow_the_reading(
    tmp_path: Path,
    coded_scene: Callable[..., Path],
    gsd: float,
    tta: int | None,
    building_views: dict[str, int] | None,
    field_views: dict[str, int] | None,
) -> None:
    """A model's ``tta_views_by_gsd`` sets a class's views by the GSD it is read at: fields
    read at 2 m (a 0.5 m or 0.25 m scene) are seen in 4 views, at 4 m in one; buildings read at
    0.25 m in 8, at 0.5 m or 4 m in their ``class_tta_views``'s 4. ``--tta`` replaces both. The
    objects come out as without views, and the layers' metadata records the views."""
    from geoseg.cli import main

    ids = np.zeros((128, 128), dtype=np.int32)
    ids[40:56, 40:72] = 1
    ids[80:112, 80:112] = 2
    transform = utm_transform(gsd)
    path = coded_scene(ids, {1: 0, 2: 1}, name="s.tif", transform=transform)
    model = "tests.models:views_by_gsd_oracle"
    plan = plan_scene(path, RunOptions(model=model, tile_px=64, overlap_px=16, tta=tta))
    names = plan.model.classes
    views = {
        names[k]: (reading.tta_views or {}).get(names[k], 1)
        for reading in plan.passes
        for k in reading.classes
    }
    assert views == {
        "building": (building_views or {}).get("building", 1),
        "ship": (building_views or {}).get("ship", 1),
        "field": (field_views or {}).get("field", 1),
    }
    args = ["run", str(path), "-o", str(tmp_path / "out"), "--model", model]
    args += ["--tile-size", "64", "--overlap", "16", "--no-preview", "--no-webmap"]
    with pytest.raises(SystemExit) as done:
        main([*args, *(["--tta", str(tta)] if tta else [])])
    assert done.value.code == 0
    for name, k in (("building", 1), ("field", 2)):
        (got,) = gpd.read_file(tmp_path / "out" / "s.gpkg", layer=name).geometry
        assert_same_shape(got, truth_polygon(ids, k, transform))
    metadata = pyogrio.read_info(tmp_path / "out" / "s.gpkg", layer="field")["layer_metadata"]
    recorded = json.loads(metadata.get("geoseg_class_tta_views", "{}"))
    assert recorded == {**(building_views or {}), **(field_views or {})}


@pytest.mark.parametrize(
    ("gsd", "ship_gsd"), [(4.0, 4.0), (5.0, 5.0), (8.0, 5.0), (9.0, 5.4), (10.0, 6.0), (12.0, 6.0)]
)
def test_coarse_scenes_read_a_class_at_a_share_of_their_gsd(
    coded_scene: Callable[..., Path], gsd: float, ship_gsd: float
) -> None:
    """Ships work up to 5 m and, on coarser scenes, are read at the scene's GSD / 5 x 3 kept
    between 5 and 6 m (``class_coarse_reading``); within their range they are read at the
    scene's GSD as before. Buildings keep theirs (up to 10 m)."""
    ids = np.zeros((96, 96), dtype=np.int32)
    path = coded_scene(ids, {}, name="s.tif", transform=utm_transform(gsd))
    options = RunOptions(model="tests.models:coarse_ships_oracle", tile_px=64, overlap_px=16)
    plan = plan_scene(path, options)
    names = plan.model.classes
    read_at = {names[k]: reading.scene.gsd_m for reading in plan.passes for k in reading.classes}
    assert read_at["ship"] == pytest.approx(ship_gsd, rel=1e-3)
    assert read_at["building"] == pytest.approx(min(gsd, 10.0), rel=1e-3)  # its range: 10 m


def test_a_coarse_reading_finds_its_objects(
    tmp_path: Path, coded_scene: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Through ``geoseg run``, a 10 m scene's ships read at 6 m come out once each, in the
    scene's CRS, where they lie; the summary says the GSD they were read at."""
    from geoseg.cli import main

    ids = np.zeros((96, 96), dtype=np.int32)
    ids[20:26, 30:60] = 1
    ids[60:66, 10:40] = 2
    transform = utm_transform(10.0)
    path = coded_scene(ids, {1: 2, 2: 2}, name="s.tif", transform=transform)
    args = ["run", str(path), "-o", str(tmp_path / "out"), "--model"]
    args += ["tests.models:coarse_ships_oracle", "--tile-size", "64", "--overlap", "16"]
    with pytest.raises(SystemExit) as done:
        main([*args, "--no-preview", "--no-webmap", "--classes", "ship"])
    assert done.value.code == 0
    assert "2 ship (at 6 m" in capsys.readouterr().out
    got = gpd.read_file(tmp_path / "out" / "s.gpkg", layer="ship").geometry
    for k in (1, 2):
        truth = truth_polygon(ids, k, transform)
        best = max(g.intersection(truth).area / g.union(truth).area for g in got)
        assert best > 0.8


def test_views_are_1_2_4_or_8(tmp_path: Path, coded_scene: Callable[..., Path]) -> None:
    path = coded_scene(np.zeros((64, 64), dtype=np.int32), {}, name="s.tif")
    with pytest.raises(UserInputError, match="--tta 3"):
        plan_scene(path, RunOptions(model="tests.models:views_oracle", tta=3))
