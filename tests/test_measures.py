"""Ship length, width and heading; --regularize keeps building areas and squares them."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry import shape

from geoseg.config import RunOptions
from geoseg.measures import ship_dimensions
from geoseg.pipeline import run_scene
from geoseg.regularize import MAX_AREA_CHANGE, regularize_outlines
from geoseg.testing import write_coded_scene
from tests.conftest import ORACLE, UTM, UTM_TRANSFORM

SHIP, BUILDING = 2, 0


def hull(length: float, width: float, heading_deg: float, centre: tuple[float, float]):
    """A rectangle ``length`` x ``width`` metres whose long axis points ``heading_deg``
    clockwise from north (UTM: grid north is true north on the central meridian)."""
    box = shapely.box(-width / 2, -length / 2, width / 2, length / 2)
    return shapely.affinity.translate(shapely.affinity.rotate(box, -heading_deg), *centre)


def test_ship_dimensions_of_an_exact_rectangle() -> None:
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    for heading in (0.0, 30.0, 95.0, 150.0):
        ship = hull(80.0, 14.0, heading, (500_050.0, 3_999_950.0))
        lonlat = shapely.transform(ship, lambda xy: np.column_stack(to_lonlat.transform(*xy.T)))
        length, width, got = ship_dimensions(lonlat)
        # UTM scale factor at the central meridian is 0.9996: ground = grid / 0.9996
        assert length == pytest.approx(80.0 / 0.9996, rel=2e-3)
        assert width == pytest.approx(14.0 / 0.9996, rel=2e-3)
        assert min(abs(got - heading % 180), 180 - abs(got - heading % 180)) < 0.1


def test_a_run_gives_ships_length_width_and_heading(tmp_path: Path) -> None:
    ids = np.zeros((200, 200), np.int32)
    west, north = UTM_TRANSFORM.c, UTM_TRANSFORM.f
    ships = {1: (60.0, 12.0, 30.0), 2: (40.0, 8.0, 120.0)}
    for k, (length, width, heading) in ships.items():
        centre = (west + 25.0 + 45.0 * (k - 1), north - 50.0)
        burn = features.rasterize(
            [hull(length, width, heading, centre)], out_shape=ids.shape, transform=UTM_TRANSFORM
        )
        ids[burn > 0] = k
    ids[150:170, 20:40] = 3  # a building: no ship columns
    class_of = {1: SHIP, 2: SHIP, 3: BUILDING}
    scene = write_coded_scene(tmp_path / "s.tif", ids, class_of, transform=UTM_TRANSFORM, crs=UTM)
    options = RunOptions(model=ORACLE, tile_px=128, overlap_px=96, preview=False, webmap=False)
    run_scene(scene, tmp_path / "out", options=options)
    got = gpd.read_file(tmp_path / "out" / "s.gpkg", layer="ship").sort_values("length_m")
    assert list(got.columns[-4:]) == ["length_m", "width_m", "heading_deg", "geometry"]
    for (_, row), (length, width, heading) in zip(
        got.iterrows(), sorted(ships.values()), strict=True
    ):
        assert row.length_m == pytest.approx(length, abs=1.5)  # pixels are 0.5 m
        assert row.width_m == pytest.approx(width, abs=1.5)
        assert abs(row.heading_deg - heading) < 2.5
    geojson = gpd.read_file(tmp_path / "out" / "s_ship.geojson")
    assert {"length_m", "width_m", "heading_deg"} <= set(geojson.columns)
    buildings = gpd.read_file(tmp_path / "out" / "s.gpkg", layer="building")
    assert "length_m" not in buildings.columns


def pixel_outline(polygon: shapely.Geometry, size: int = 120) -> shapely.Geometry:
    mask = features.rasterize([polygon], out_shape=(size, size), transform=Affine.identity())
    mask = mask.astype(np.uint8)
    parts = [shape(g) for g, _ in features.shapes(mask, mask=mask > 0)]
    return shapely.union_all(parts)


def squared(polygon: shapely.Geometry, tol_deg: float = 1.0) -> bool:
    """Every corner turns by a multiple of 45 degrees (right angles, and the diagonal walls
    the regularizer allows)."""
    xy = np.asarray(polygon.exterior.coords)[:-1]
    edges = np.roll(xy, -1, axis=0) - xy
    angles = np.degrees(np.arctan2(edges[:, 1], edges[:, 0]))
    turns = np.diff(np.append(angles, angles[0])) % 45
    return bool(np.all((turns < tol_deg) | (turns > 45 - tol_deg)))


@pytest.mark.parametrize("angle", [0, 17, 33, 60])
def test_regularize_squares_pixel_outlines_and_keeps_their_area(angle: float) -> None:
    shapes = [
        shapely.box(30, 40, 80, 70),
        shapely.union_all([shapely.box(30, 30, 75, 48), shapely.box(30, 30, 48, 80)]),  # an L
    ]
    truth = [shapely.affinity.rotate(s, angle, origin=(60, 60)) for s in shapes]
    pixels = [pixel_outline(s) for s in truth]
    squares = regularize_outlines(pixels)
    for want, before, after in zip(truth, pixels, squares, strict=True):
        assert abs(after.area - before.area) <= 0.05 * before.area  # well inside the guard
        assert len(after.exterior.coords) <= max(len(before.exterior.coords) / 3, 7)
        assert squared(after)
        iou = shapely.intersection(after, want).area / shapely.union(after, want).area
        assert iou > 0.93


def test_regularize_run_keeps_building_areas(tmp_path: Path) -> None:
    ids = np.zeros((160, 160), np.int32)
    for k, (angle, dx) in enumerate([(0, 10), (20, 60), (40, 110)], start=1):
        house = shapely.affinity.rotate(shapely.box(dx, 20, dx + 30, 40), angle)
        ids[features.rasterize([house], out_shape=ids.shape) > 0] = k
    ids[100:120, 100:112] = 4  # a ship: never regularized
    class_of = {1: BUILDING, 2: BUILDING, 3: BUILDING, 4: SHIP}
    scene = write_coded_scene(tmp_path / "s.tif", ids, class_of, transform=UTM_TRANSFORM, crs=UTM)
    base = RunOptions(model=ORACLE, tile_px=128, overlap_px=64, preview=False, webmap=False)
    run_scene(scene, tmp_path / "plain", options=base)
    from dataclasses import replace

    run_scene(scene, tmp_path / "square", options=replace(base, regularize=True))
    plain = gpd.read_file(tmp_path / "plain" / "s.gpkg", layer="building").set_index("id")
    square = gpd.read_file(tmp_path / "square" / "s.gpkg", layer="building").set_index("id")
    assert sorted(plain.index) == sorted(square.index)  # ids come from the pixel outline
    change = (square.area_m2 - plain.area_m2).abs() / plain.area_m2
    assert (change <= MAX_AREA_CHANGE).all() and change.max() < 0.05
    vertices = square.geometry.apply(shapely.get_num_coordinates)
    assert (vertices <= plain.geometry.apply(shapely.get_num_coordinates).loc[square.index]).all()
    assert all(squared(p) for g in square.geometry for p in g.geoms)
    ships = [gpd.read_file(tmp_path / d / "s.gpkg", layer="ship") for d in ("plain", "square")]
    assert shapely.equals(ships[0].geometry.values, ships[1].geometry.values).all()
    assert math.isfinite(square.area_m2.sum())


def test_bulk_geodesic_measures_and_ids_equal_the_one_by_one_ones() -> None:
    import hashlib

    from pyproj import CRS, Geod

    from geoseg.vectorize import GeoMeasures, geodesic_measures_bulk, stable_ids

    rng = np.random.default_rng(3)
    outlines = []
    for k in range(60):
        x, y = 500_000 + rng.uniform(0, 1e4), 4e6 + rng.uniform(0, 1e4)
        shape_ = shapely.box(x, y, x + rng.uniform(5, 200), y + rng.uniform(5, 200))
        if k % 3 == 0:  # a hole: its area comes off, its boundary is not in the perimeter
            shape_ = shape_.difference(shapely.box(x + 2, y + 2, x + 4, y + 4))
        if k % 4 == 0:
            shape_ = shapely.MultiPolygon([shape_, shapely.box(x - 50, y - 50, x - 40, y - 30)])
        outlines.append(shapely.normalize(shape_))
    lonlat = GeoMeasures(CRS.from_epsg(32633)).to_lonlat(np.array(outlines, dtype=object))
    areas, perimeters = geodesic_measures_bulk(lonlat)
    expected = np.array([Geod(ellps="WGS84").geometry_area_perimeter(g) for g in lonlat])
    np.testing.assert_array_equal(areas, np.abs(expected[:, 0]))
    np.testing.assert_array_equal(perimeters, expected[:, 1])
    names = ["building", "ship"] * 30
    ids = stable_ids("scene", names, np.array(outlines, dtype=object))
    one_by_one = [
        hashlib.sha1(
            b"scene\0" + n.encode() + b"\0" + shapely.to_wkb(shapely.normalize(o))
        ).hexdigest()[:16]
        for n, o in zip(names, outlines, strict=True)
    ]
    assert ids == one_by_one
    assert len(set(ids)) == len(ids)
