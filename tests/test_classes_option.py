"""``--classes``: a run searches only the classes asked for, reads the scene only for them, and
leaves the others' layers empty; a class the model does not have is a one-line error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import pytest

from geoseg.errors import UserInputError
from geoseg.pipeline import plan_scene, run_scene
from tests.conftest import UTM_TRANSFORM, assert_same_shape, truth_polygon
from tests.test_reading_merge import TWO_READINGS, tall_scene


def test_only_the_classes_asked_for_are_read_and_found(
    tmp_path: Path, coded_scene: Callable[..., Path]
) -> None:
    path, ids = tall_scene(coded_scene)
    everything = plan_scene(path, TWO_READINGS)
    assert [(p.scene.gsd_m, p.classes) for p in everything.passes] == [
        (0.5, (0, 2)),
        (2.0, (0, 1)),
    ]
    options = replace(TWO_READINGS, classes=("field",))
    plan = plan_scene(path, options)
    assert [(p.scene.gsd_m, p.classes) for p in plan.passes] == [(2.0, (1,))]
    assert plan.n_tiles < everything.n_tiles
    result = run_scene(path, tmp_path / "out", options=options)
    assert result.counts == {"building": 0, "field": 1, "ship": 0}
    gpkg = tmp_path / "out" / "tall.gpkg"
    (field,) = gpd.read_file(gpkg, layer="field").geometry
    assert_same_shape(field, truth_polygon(ids, 14, UTM_TRANSFORM))
    assert gpd.read_file(gpkg, layer="building").empty  # the layer is there, empty


def test_ships_and_buildings_keep_their_own_readings(coded_scene: Callable[..., Path]) -> None:
    path, _ = tall_scene(coded_scene)
    plan = plan_scene(path, replace(TWO_READINGS, classes=("ship", "building")))
    assert plan.class_readings_m() == {"building": (0.5, 2.0), "ship": (0.5,)}
    plan = plan_scene(path, replace(TWO_READINGS, classes=("ship",), gsd_m=1.0))
    assert [p.classes for p in plan.passes] == [(2,)]  # --gsd: one reading, of ships only


def test_the_summary_says_which_classes_were_not_searched(
    tmp_path: Path, coded_scene: Callable[..., Path], capsys: pytest.CaptureFixture
) -> None:
    from geoseg.cli import main

    path, _ = tall_scene(coded_scene)
    args = ["run", str(path), "-o", str(tmp_path / "out"), "--model", TWO_READINGS.model]
    with pytest.raises(SystemExit) as done:
        main([*args, "--tile-size", "64", "--overlap", "16", "--classes", "field", "--no-webmap"])
    assert done.value.code == 0
    summary = capsys.readouterr().out
    assert "0 building (not searched), 1 field (at 2 m, score >= 0.50), 0 ship (not searched)" in (
        summary
    )


def test_a_class_the_model_lacks_is_refused_in_one_line(
    tmp_path: Path, coded_scene: Callable[..., Path], capsys: pytest.CaptureFixture
) -> None:
    from geoseg.cli import main

    path, _ = tall_scene(coded_scene)
    with pytest.raises(UserInputError, match=r"--classes boat: not a class of .*\(building"):
        plan_scene(path, replace(TWO_READINGS, classes=("boat", "field")))
    args = ["run", str(path), "-o", str(tmp_path / "out"), "--model", TWO_READINGS.model]
    with pytest.raises(SystemExit) as done:
        main([*args, "--classes", "boat"])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and len(err.splitlines()) == 1 and "--classes boat" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as done:
        main([*args, "--classes", ",", "--tile-size", "64", "--overlap", "16"])
    assert done.value.code == 2  # an empty list: click's usage error
