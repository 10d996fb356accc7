"""Scenes outside the model's GSD range are read resampled; polygons stay in the scene's CRS."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
from affine import Affine

from geoseg.config import RunOptions
from geoseg.pipeline import plan_scene, run_scene
from geoseg.testing import write_coded_scene
from tests.conftest import assert_same_shape, truth_polygon

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
