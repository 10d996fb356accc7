"""Right coordinates and true measures in projected, geographic and non-north-up scenes."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Geod

from geoseg.config import RunOptions
from geoseg.grid import PixelWindow
from geoseg.pipeline import plan_scene, run_scene
from geoseg.scene import normalize, open_scene, read_tiles
from geoseg.testing import write_coded_scene
from tests.conftest import ORACLE, assert_same_shape, truth_polygon

GEOGRAPHIC = Affine(1e-5, 0, 12.0, 0, -1e-5, 55.0)  # ~1.1 m x 0.64 m pixels in Denmark
ROTATED = Affine.translation(600_000, 6_100_000) @ Affine.rotation(25) @ Affine.scale(2, -2)
SOUTH_UP = Affine(3.0, 0, 400_000, 0, 3.0, 5_000_000)  # rows go north


def two_objects() -> tuple[np.ndarray, dict[int, int]]:
    ids = np.zeros((300, 260), dtype=np.int32)
    ids[40:90, 30:200] = 1  # crosses seams with 128-px tiles
    ids[150:280, 100:230] = 2
    return ids, {1: 0, 2: 1}


@pytest.mark.parametrize(
    ("transform", "crs"),
    [
        (Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000), "EPSG:32633"),
        (GEOGRAPHIC, "EPSG:4326"),
        (ROTATED, "EPSG:25832"),
        (SOUTH_UP, "EPSG:32633"),
    ],
    ids=["utm", "geographic", "rotated", "south-up"],
)
def test_polygons_land_where_the_pixels_are(tmp_path: Path, transform: Affine, crs: str) -> None:
    ids, class_of = two_objects()
    path = write_coded_scene(tmp_path / "s.tif", ids, class_of, transform=transform, crs=crs)
    run_scene(
        path,
        tmp_path / "out",
        options=RunOptions(model=ORACLE, tile_px=128, overlap_px=32, simplify_px=0),
    )
    for instance_id, layer in [(1, "building"), (2, "field")]:
        frame = gpd.read_file(tmp_path / "out" / "s.gpkg", layer=layer)
        assert frame.crs == rasterio.crs.CRS.from_user_input(crs)
        (got,) = frame.geometry
        assert_same_shape(got, truth_polygon(ids, instance_id, transform))
        # an independent check: the centre of each corner pixel lies inside the polygon
        rows, cols = np.nonzero(ids == instance_id)
        for r, c in [(rows.min(), cols.min()), (rows.max(), cols.max())]:
            assert got.contains(shapely.Point(transform @ (c + 0.5, r + 0.5)))
        geojson = gpd.read_file(tmp_path / "out" / f"s_{layer}.geojson")
        assert geojson.crs.to_epsg() == 4326
        assert_same_shape(geojson.geometry.iloc[0], frame.to_crs(4326).geometry.iloc[0], 1e-3)
        lonlat = frame.to_crs(4326).geometry.iloc[0]
        area, perimeter = Geod(ellps="WGS84").geometry_area_perimeter(lonlat)
        assert frame["area_m2"].iloc[0] == pytest.approx(abs(area), rel=1e-6)
        assert frame["perimeter_m"].iloc[0] == pytest.approx(perimeter, rel=1e-6)


def test_geographic_area_is_in_square_metres(tmp_path: Path) -> None:
    ids, class_of = two_objects()
    path = write_coded_scene(
        tmp_path / "g.tif", ids, class_of, transform=GEOGRAPHIC, crs="EPSG:4326"
    )
    run_scene(
        path,
        tmp_path / "out",
        options=RunOptions(model=ORACLE, tile_px=128, overlap_px=32, simplify_px=0),
    )
    field = gpd.read_file(tmp_path / "out" / "g.gpkg", layer="field")
    # 130 x 130 pixels of 1e-5 degrees at 55 N: 0.64 m east-west, 1.11 m north-south
    px_ew = 1e-5 * 111_320 * np.cos(np.radians(54.998))
    px_ns = 1e-5 * 111_360
    assert field["area_m2"].iloc[0] == pytest.approx(130 * 130 * px_ew * px_ns, rel=0.01)


def test_utm_area_is_geodesic_not_planar(tmp_path: Path) -> None:
    ids, class_of = two_objects()
    # far from the central meridian of UTM 33N the planar area is inflated by the scale factor
    transform = Affine(1.0, 0, 800_000, 0, -1.0, 5_000_000)
    path = write_coded_scene(
        tmp_path / "u.tif", ids, class_of, transform=transform, crs="EPSG:32633"
    )
    run_scene(
        path,
        tmp_path / "out",
        options=RunOptions(model=ORACLE, tile_px=128, overlap_px=32, simplify_px=0),
    )
    field = gpd.read_file(tmp_path / "out" / "u.gpkg", layer="field")
    planar = 130 * 130.0
    assert field.geometry.area.iloc[0] == pytest.approx(planar)
    assert field["area_m2"].iloc[0] < planar * 0.9995  # scale factor ~1.0006 here


def uint16_scene(path: Path) -> Path:
    data = np.zeros((2, 64, 80), dtype=np.uint16)
    data[0] = np.linspace(100, 4100, 80, dtype=np.uint16)[None, :]
    data[1] = 7
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=64,
        width=80,
        count=2,
        dtype="uint16",
        crs="EPSG:32616",
        transform=Affine(0.5, 0, 7e5, 0, -0.5, 3.7e6),
        nodata=0,
    ) as dst:
        dst.write(data)
        dst.write(np.zeros((64, 5), np.uint16), 1, window=((0, 64), (0, 5)))
    return path


@pytest.mark.parametrize(
    ("descriptions", "bands"),
    [
        (("B02", "B03", "B04", "B08"), (3, 2, 1)),  # a Sentinel-2 stack, blue first
        (("NIR", "Red", "Green", "Blue"), (2, 3, 4)),
        (("red edge", "red", "green", "blue"), (1, 2, 3)),  # two reds: not told, the first three
        ((None, None, None, None), (1, 2, 3)),
    ],
)
def test_bands_are_picked_by_their_descriptions_where_colours_are_not_set(
    tmp_path: Path, descriptions: tuple[str | None, ...], bands: tuple[int, ...]
) -> None:
    path = tmp_path / "stack.tif"
    profile = {"driver": "GTiff", "height": 32, "width": 32, "count": 4, "dtype": "uint16"}
    transform = Affine(10, 0, 6e5, 0, -10, 5e6)
    with rasterio.open(path, "w", crs="EPSG:32632", transform=transform, **profile) as dst:
        dst.write(np.arange(4 * 32 * 32, dtype=np.uint16).reshape(4, 32, 32))
        for index, text in enumerate(descriptions, start=1):
            if text:
                dst.set_band_description(index, text)
    assert open_scene(path).bands == bands
    assert open_scene(path, bands=(4, 1)).bands == (4, 1)  # --bands wins


def test_uint16_is_stretched_per_band_and_nodata_is_invalid(tmp_path: Path) -> None:
    scene = open_scene(uint16_scene(tmp_path / "u16.tif"))
    assert scene.bands == (1, 2) and scene.stretch is not None
    pixels, valid = read_tiles(scene, [PixelWindow(0, 0, 64, 80)], tile_px=96)
    assert pixels.shape == (1, 2, 96, 96) and pixels.dtype == np.float32
    assert not valid[0, :, :5].any() and valid[0, :64, 5:80].all() and not valid[0, 64:].any()
    band = pixels[0, 0, 0, 5:80]
    assert band.min() == 0.0 and band.max() == 1.0 and np.all(np.diff(band) >= 0)


def test_uint8_is_value_over_255() -> None:
    data = np.array([[[0, 51, 255]]], dtype=np.uint8)
    assert np.allclose(normalize(data, "uint8", None), [[[0, 0.2, 1.0]]])


def test_band_selection_and_small_scene(tmp_path: Path) -> None:
    ids = np.zeros((40, 50), dtype=np.int32)
    ids[5:20, 5:30] = 1
    path = write_coded_scene(
        tmp_path / "small.tif",
        ids,
        {1: 2},
        transform=Affine(10, 0, 4e5, 0, -10, 5e6),
        crs="EPSG:32632",
    )
    result = run_scene(
        path,
        tmp_path / "out",
        options=RunOptions(model=ORACLE, tile_px=128, overlap_px=32, bands=(1, 2, 3)),
    )
    assert result.counts["ship"] == 1 and result.n_tiles == 1


def test_web_mercator_pixels_are_measured_on_the_ground(tmp_path: Path) -> None:
    """A z19 Web Mercator tile is 0.2986 units a pixel: 0.2986 m on the ground at the equator,
    half that at 60 degrees north, where the model then reads it coarser. UTM's scale (0.9996
    on the central meridian) is not applied: a 0.5 m UTM pixel stays 0.5 m."""
    from pyproj import Transformer

    ids, class_of = two_objects()
    to_mercator = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    for lat, ground in ((0.0, 0.2986), (60.0, 0.1493)):
        x, y = to_mercator.transform(10.0, lat)
        transform = Affine(0.2986, 0, x, 0, -0.2986, y + 150 * 0.2986)  # centred on lat
        path = write_coded_scene(
            tmp_path / f"m{lat:g}.tif", ids, class_of, transform=transform, crs="EPSG:3857"
        )
        scene = open_scene(path)
        assert scene.file_gsd_m == pytest.approx(ground, rel=2e-3)
        note = scene.projection_note()  # what geoseg run says of it
        assert (
            (note is None)
            if lat == 0
            else note.startswith(
                "Scene pixels are 0.299 units of WGS 84 / Pseudo-Mercator, 0.149 m on the ground"
            )
        )
    plan = plan_scene(
        path, RunOptions(model="tests.models:class_scale_oracle", tile_px=128, overlap_px=32)
    )
    assert plan.class_gsd_m()["building"] == 0.25  # the oracle's finest: read coarser
    assert plan.scene.shape_yx == (round(300 * 0.1493 / 0.25), round(260 * 0.1493 / 0.25))
    utm = Affine(0.5, 0, 500_000, 0, -0.5, 5_000_000)
    path = write_coded_scene(tmp_path / "u.tif", ids, class_of, transform=utm, crs="EPSG:32633")
    assert open_scene(path).file_gsd_m == 0.5 and open_scene(path).projection_note() is None
