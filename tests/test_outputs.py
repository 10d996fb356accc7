"""What a run leaves for people: the preview PNG, the offline web map (rendered in a real
headless Chromium), QGIS styles in the GeoPackage, and the GeoParquet and FlatGeobuf files."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from click.testing import CliRunner
from PIL import Image

from geoseg import webmap
from geoseg.cli import cli
from geoseg.config import RunOptions
from geoseg.pipeline import run_scene
from geoseg.preview import read_quicklook
from geoseg.scene import open_scene
from geoseg.styles import class_colours
from geoseg.testing import write_coded_scene
from tests.conftest import ORACLE, UTM, UTM_TRANSFORM

# instance id -> (class index, rows, cols) painted on a 300 x 400 scene
OBJECTS = {
    1: (0, slice(20, 60), slice(30, 90)),  # building
    2: (0, slice(30, 50), slice(120, 150)),  # building
    3: (1, slice(100, 180), slice(200, 380)),  # field
    4: (2, slice(250, 270), slice(50, 70)),  # ship
    5: (2, slice(200, 230), slice(100, 110)),  # ship
    6: (2, slice(220, 240), slice(300, 340)),  # ship
}
COUNTS = {"building": 2, "field": 1, "ship": 3}
ALL_FORMATS = ("gpkg", "geojson", "parquet", "fgb")


def paint() -> tuple[np.ndarray, dict[int, int]]:
    ids = np.zeros((300, 400), np.int32)
    for k, (_, rows, cols) in OBJECTS.items():
        ids[rows, cols] = k
    return ids, {k: c for k, (c, _, _) in OBJECTS.items()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    ids, class_of = paint()
    scene = write_coded_scene(root / "town.tif", ids, class_of, transform=UTM_TRANSFORM, crs=UTM)
    options = RunOptions(model=ORACLE, tile_px=128, overlap_px=48, formats=ALL_FORMATS)
    result = run_scene(scene, root / "out", options=options)
    assert result.counts == COUNTS
    return root / "out"


def test_every_output_is_written_and_nothing_partial_is_left(run_dir: Path) -> None:
    names = {p.name for p in run_dir.iterdir()}
    assert names - {".town.outputs.json"} == {n for n in names if not n.startswith(".")}
    names.discard(".town.outputs.json")  # the record of what this run committed
    classes = ("building", "field", "ship")
    want = {"town.gpkg", "town.html", "town_preview.png"} | {
        f"town_{c}.{ext}" for c in classes for ext in ("geojson", "parquet", "fgb")
    }
    assert names == want


def test_preview_outlines_each_object_in_its_class_colour(run_dir: Path) -> None:
    image = np.asarray(Image.open(run_dir / "town_preview.png").convert("RGB"))
    assert image.shape[1] == 400 and image.shape[0] > 300  # the scene, then the legend band
    colours = {
        name: np.array([int(c[i : i + 2], 16) for i in (1, 3, 5)])
        for name, c in class_colours(list(COUNTS)).items()
    }
    names = list(COUNTS)
    for class_index, rows, cols in OBJECTS.values():
        colour = colours[names[class_index]]
        top = image[rows.start - 1 : rows.start + 2, cols.start + 2 : cols.stop - 2]
        assert (np.abs(top.astype(int) - colour).max(axis=-1) == 0).any(axis=0).all()
    scene_part = image[:300]
    for name, colour in colours.items():  # nothing in that colour far from the objects
        hits = np.argwhere(np.abs(scene_part.astype(int) - colour).max(axis=-1) == 0)
        assert ((hits[:, 0] > 285) & (hits[:, 1] > 385)).sum() == 0, name


def test_preview_reads_a_decimated_scene(tmp_path: Path) -> None:
    ids, class_of = paint()
    path = write_coded_scene(tmp_path / "s.tif", ids, class_of, transform=UTM_TRANSFORM, crs=UTM)
    look = read_quicklook(open_scene(path), max_px=100)
    assert look.rgb.shape == (75, 100, 3)
    assert look.gsd_m == pytest.approx(0.5 * 4)
    assert look.transform.a == pytest.approx(2.0)


def test_gpkg_layers_open_styled_in_qgis(run_dir: Path) -> None:
    gpkg = run_dir / "town.gpkg"
    layers = {str(n): kind for n, kind in pyogrio.list_layers(gpkg)}
    assert layers == {
        "building": "MultiPolygon", "field": "MultiPolygon", "ship": "MultiPolygon",
        "layer_styles": None,  # as QGIS registers it: a table without geometry
    }  # fmt: skip
    with sqlite3.connect(gpkg) as con:
        columns = [r[1] for r in con.execute("PRAGMA table_info(layer_styles)")]
        rows = con.execute(
            "SELECT f_table_name, f_geometry_column, styleQML, styleSLD, useAsDefault "
            "FROM layer_styles ORDER BY f_table_name"
        ).fetchall()
        described = dict(con.execute("SELECT table_name, description FROM gpkg_contents"))
    for column in (
        "f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column", "styleName",
        "styleQML", "styleSLD", "useAsDefault", "description", "owner", "ui", "update_time",
    ):  # fmt: skip
        assert column in columns
    assert [r[0] for r in rows] == ["building", "field", "ship"]
    colours = class_colours(["building", "field", "ship"])
    for name, geom_column, qml, sld, default in rows:
        assert geom_column == "geom" and default == 1
        fill = ET.fromstring(qml).find(".//layer[@class='SimpleFill']")
        options = {o.get("name"): o.get("value") for o in fill.iter("Option") if o.get("name")}
        rgb = ",".join(str(int(colours[name][i : i + 2], 16)) for i in (1, 3, 5))
        assert options["outline_color"] == f"{rgb},255"
        assert ET.fromstring(sld.encode()) is not None
        assert described[name].startswith(f"{COUNTS[name]} {name} polygon")
    # GDAL (which QGIS reads it through) opens the table by name
    styles = pyogrio.read_dataframe(gpkg, layer="layer_styles", read_geometry=False)
    assert len(styles) == 3


@pytest.mark.parametrize("fmt", ["parquet", "fgb"])
def test_parquet_and_flatgeobuf_equal_the_geopackage(run_dir: Path, fmt: str) -> None:
    for name in COUNTS:
        want = gpd.read_file(run_dir / "town.gpkg", layer=name).sort_values("id")
        path = run_dir / f"town_{name}.{fmt}"
        got = gpd.read_parquet(path) if fmt == "parquet" else gpd.read_file(path)
        got = got.sort_values("id")
        assert got.crs == want.crs
        assert list(got.columns) == list(want.columns)
        for column in want.columns.drop("geometry"):
            assert got[column].tolist() == want[column].tolist(), column
        assert shapely.equals(got.geometry.values, want.geometry.values).all()


def test_geoparquet_is_1_1_with_a_bbox_covering(run_dir: Path) -> None:
    import pyarrow.parquet as pq

    schema = pq.read_schema(run_dir / "town_building.parquet")
    geo = json.loads(schema.metadata[b"geo"])
    assert geo["version"] == "1.1.0"
    assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert "bbox" in schema.names


def test_format_option_and_switching_off_the_pictures(tmp_path: Path) -> None:
    ids, class_of = paint()
    scene = write_coded_scene(tmp_path / "s.tif", ids, class_of, transform=UTM_TRANSFORM, crs=UTM)
    runner = CliRunner()
    bad = runner.invoke(cli, ["run", str(scene), "-o", str(tmp_path / "o"), "--format", "shp"])
    assert bad.exit_code == 2 and "use one or more of gpkg, geojson, parquet, fgb" in bad.output
    args = ["-q", "run", str(scene), "-o", str(tmp_path / "o"), "--model", ORACLE]
    ok = runner.invoke(cli, [*args, "--format", "fgb", "--no-preview", "--no-webmap"])
    assert ok.exit_code == 0, ok.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.name[0] != ".") == [
        "s_building.fgb", "s_field.fgb", "s_ship.fgb"
    ]  # fmt: skip


def test_web_map_is_self_contained(run_dir: Path) -> None:
    html = (run_dir / "town.html").read_text()
    assert "<script src" not in html and "<link" not in html
    assert not re.search(r"""src=["']?(https?:)?//|url\(["']?(https?:)?//""", html)
    assert "Leaflet" in html and "data:image/png;base64," in html
    assert "BSD 2-Clause License" in html and "Volodymyr Agafonkin" in html  # Leaflet's licence


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _render(html: Path, tmp_path: Path) -> str:
    """The DOM of ``html`` once headless Chromium has run its scripts."""
    command = [
        str(_chromium()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # air-gapped: no name resolves
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        html.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.skipif(
    _chromium() is None,
    reason="needs Chromium (Debian package 'chromium'; .ci/run installs it) to render the map",
)
def test_web_map_renders_every_feature_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    dom = _render(run_dir / "town.html", tmp_path)
    assert 'data-geoseg-ready="1"' in dom  # the script ran to its end
    drawn = {
        name: len(re.findall(rf'<path class="geoseg-{name} leaflet-interactive"', dom))
        for name in COUNTS
    }
    assert drawn == COUNTS
    assert len(re.findall(r'<img [^>]*class="leaflet-image-layer', dom)) == 1
    assert "building (2)" in dom and "ship (3)" in dom  # the layer switcher


@pytest.mark.skipif(_chromium() is None, reason="needs Chromium to render the map")
def test_a_web_map_of_many_objects_is_drawn_on_a_canvas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webmap, "CANVAS_OBJECTS", 5)  # six objects: "many"
    ids, class_of = paint()
    scene = write_coded_scene(
        tmp_path / "town.tif", ids, class_of, transform=UTM_TRANSFORM, crs=UTM
    )
    options = RunOptions(model=ORACLE, tile_px=128, overlap_px=48, formats=("gpkg",))
    run_scene(scene, tmp_path / "out", options=options)
    dom = _render(tmp_path / "out" / "town.html", tmp_path)
    assert 'data-geoseg-ready="1"' in dom
    assert len(re.findall(r"<canvas ", dom)) == 1
    assert '<path class="geoseg-' not in dom  # no SVG path per object
    assert "building (2)" in dom and "field (1)" in dom and "ship (3)" in dom
