"""Outputs written as a stream (:class:`geoseg.output.OutputStream`): the same files as
:func:`~geoseg.output.write_outputs` of everything at once, put in place all or none, and no
more than a chunk of objects in memory."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely

from geoseg import output
from geoseg.commit import STAGING_PREFIX
from geoseg.errors import OutputError
from geoseg.output import OutputStream, empty_layer, layer_columns, write_outputs
from tests.conftest import UTM

ALL = ("gpkg", "geojson", "parquet", "fgb")
CLASSES = ("building", "field", "ship")
META = {"geoseg_model": "oracle", "geoseg_options": '{"tile_px": 512}'}


def objects(class_name: str, n: int, seed: int, crs=UTM, x0: float = 500_000.0) -> gpd.GeoDataFrame:
    """``n`` objects of a class as the pipeline makes them: normalized MultiPolygons (some
    with a hole, some of two parts) and the class's columns."""
    rng = np.random.default_rng(seed)
    x = x0 + rng.uniform(0, 2_000, n)
    y = 4_000_000 + rng.uniform(0, 2_000, n)
    w, h = rng.uniform(3, 30, (2, n))
    geoms = []
    for k in range(n):
        box = shapely.box(x[k], y[k], x[k] + w[k], y[k] + h[k])
        if k % 5 == 1:
            box = box.difference(box.centroid.buffer(1.0, quad_segs=2))
        parts = [box, shapely.box(x[k] + w[k] + 2, y[k], x[k] + w[k] + 5, y[k] + 3)]
        geoms.append(shapely.MultiPolygon(parts if k % 7 == 3 else parts[:1]))
    frame = empty_layer(class_name, crs)
    data = {"id": [f"{class_name}-{seed}-{k}" for k in range(n)], "class": [class_name] * n}
    data |= {c: np.round(rng.uniform(1, 500, n), 3) for c in layer_columns(class_name)[2:]}
    if class_name == "ship" and n:
        data["heading_deg"][0] = np.nan  # a missing value
    data["score"] = np.round(rng.uniform(0.5, 1, n), 4)
    return gpd.GeoDataFrame(
        data, geometry=shapely.normalize(np.array(geoms, dtype=object)), crs=crs
    ).astype(frame.dtypes.drop("geometry").to_dict())


def scene_layers(n: int = 60) -> dict[str, gpd.GeoDataFrame]:
    return {"building": objects("building", n, 1), "field": objects("field", 0, 2),
            "ship": objects("ship", n // 4, 3)}  # fmt: skip


def chunked(layers: dict[str, gpd.GeoDataFrame], rows: int) -> list[dict[str, gpd.GeoDataFrame]]:
    """The layers cut into chunks of ``rows`` rows per class (classes missing from some)."""
    longest = max(len(f) for f in layers.values())
    return [
        {name: f.iloc[k : k + rows] for name, f in layers.items() if k < len(f) or k == 0}
        for k in range(0, longest, rows)
    ]


def stream(outdir: Path, chunks, *, formats=ALL, chunk_rows: int = 7, **kwargs) -> list[Path]:
    with OutputStream(outdir, "city", classes=CLASSES, crs=UTM, metadata=META,
                      formats=formats, chunk_rows=chunk_rows, **kwargs) as s:  # fmt: skip
        for chunk in chunks:
            s.write(chunk)
        return s.commit()


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_frames_equal(got: pd.DataFrame, want: pd.DataFrame, *, tol: float = 0.0) -> None:
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for column in want.columns.drop("geometry"):
        if want[column].dtype.kind == "f":
            np.testing.assert_allclose(got[column], want[column], rtol=1e-12, equal_nan=True)
        else:
            assert got[column].tolist() == want[column].tolist(), column
    g, w = np.asarray(got.geometry.array), np.asarray(want.geometry.array)
    if tol:
        assert shapely.equals_exact(shapely.normalize(g), shapely.normalize(w), tolerance=tol).all()
    else:
        assert shapely.equals(g, w).all()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same scene written whole by write_outputs and streamed in chunks of 3 rows."""
    root = tmp_path_factory.mktemp("streamed")
    layers = scene_layers()
    write_outputs(layers, root / "whole", "city", metadata=META, formats=ALL)
    stream(root / "stream", chunked(layers, 3))
    return root / "whole", root / "stream"


def test_streamed_files_are_the_files_written_whole(written: tuple[Path, Path]) -> None:
    whole, streamed = written
    assert visible(whole) == visible(streamed)
    layers = scene_layers()
    for name in CLASSES:
        want = pyogrio.read_dataframe(whole / "city.gpkg", layer=name)
        got = pyogrio.read_dataframe(streamed / "city.gpkg", layer=name)
        assert_frames_equal(got, want)
        assert_frames_equal(got, layers[name].reset_index(drop=True))
        info = pyogrio.read_info(streamed / "city.gpkg", layer=name)
        assert info["layer_metadata"] == {
            **pyogrio.read_info(whole / "city.gpkg", layer=name)["layer_metadata"],
            **META,
            "geoseg_class": name,
        }
        assert info["geometry_type"] == "MultiPolygon"
        for suffix, read in ((".fgb", gpd.read_file), (".parquet", gpd.read_parquet)):
            got = read(streamed / f"city_{name}{suffix}")
            assert_frames_equal(got, read(whole / f"city_{name}{suffix}"))
            assert got.crs == want.crs
    with sqlite3.connect(streamed / "city.gpkg") as con:
        described = dict(con.execute("SELECT table_name, description FROM gpkg_contents"))
        styled = [r[0] for r in con.execute("SELECT f_table_name FROM layer_styles")]
    assert described["building"].startswith("60 building polygons")
    assert described["field"].startswith("0 field polygons")
    assert styled == list(CLASSES)


def test_streamed_geoparquet_has_the_metadata_of_the_whole(written: tuple[Path, Path]) -> None:
    import pyarrow.parquet as pq

    whole, streamed = written
    for name in ("building", "ship"):
        geo = [json.loads(pq.read_schema(d / f"city_{name}.parquet").metadata[b"geo"])
               for d in (whole, streamed)]  # fmt: skip
        assert geo[1] == geo[0]
        assert pq.ParquetFile(streamed / f"city_{name}.parquet").num_row_groups > 1
    empty = gpd.read_parquet(streamed / "city_field.parquet")
    assert len(empty) == 0 and list(empty.columns) == [*layer_columns("field"), "geometry"]


def gdal_geojson(path: Path, frame: gpd.GeoDataFrame, layer: str) -> None:
    """What geoseg wrote before streaming: GDAL's GeoJSON driver with RFC7946=YES."""
    pyogrio.write_dataframe(frame.to_crs("EPSG:4326"), path, layer=layer, driver="GeoJSON",
                            layer_options={"RFC7946": "YES"})  # fmt: skip


def test_streamed_geojson_reads_back_as_gdal_rfc7946(written, tmp_path: Path) -> None:
    _, streamed = written
    layers = scene_layers()
    for name in ("building", "ship"):
        gdal_geojson(tmp_path / f"{name}.geojson", layers[name], f"city_{name}")
        want = pyogrio.read_dataframe(tmp_path / f"{name}.geojson")
        got = pyogrio.read_dataframe(streamed / f"city_{name}.geojson")
        assert got.crs == want.crs == "EPSG:4326"
        assert_frames_equal(got, want, tol=1.5e-7)  # both at 7 decimals
        doc = json.loads((streamed / f"city_{name}.geojson").read_text())
        assert set(doc) == {"type", "name", "features"} and doc["name"] == f"city_{name}"
        for feature in doc["features"]:  # RFC 7946 3.1.6: exterior counter-clockwise
            for polygon in feature["geometry"]["coordinates"]:
                rings = [shapely.LinearRing(r) for r in polygon]
                assert rings[0].is_ccw and not any(r.is_ccw for r in rings[1:])
                decimals = [len(repr(c).partition(".")[2]) for r in polygon for p in r for c in p]
                assert max(decimals) <= 7
    doc = json.loads((streamed / "city_field.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"] == []


def test_geojson_across_the_antimeridian_is_split_as_gdal_does(tmp_path: Path) -> None:
    from pyproj import Transformer

    # UTM 60N, where 180 degrees east runs through the objects
    x180, y = Transformer.from_crs("EPSG:4326", "EPSG:32660", always_xy=True).transform(180, 36)
    frame = objects("building", 4, 5, crs="EPSG:32660", x0=x180 - 1_000)
    frame.geometry = [
        shapely.MultiPolygon(
            [shapely.box(x180 - 100 + 9 * k, y + 50 * k, x180 + 80, y + 50 * k + 30)]
        )
        for k in range(4)
    ]
    crossing = frame.to_crs("EPSG:4326").bounds
    assert ((crossing.maxx - crossing.minx) > 180).any()
    path = tmp_path / "a.geojson"
    output._write_geojson(path, frame=frame, layer="a")
    output._end_geojson(path, layer="a")
    gdal_geojson(tmp_path / "gdal.geojson", frame, "a")
    want = pyogrio.read_dataframe(tmp_path / "gdal.geojson")
    assert_frames_equal(pyogrio.read_dataframe(path), want)
    assert (want.geom_type == "MultiPolygon").all()


def test_a_stream_with_no_objects_writes_every_file_empty(tmp_path: Path) -> None:
    paths = stream(tmp_path, [])
    assert [p.name for p in paths] == [
        "city.gpkg",
        *(f"city_{c}.{ext}" for ext in ("geojson", "parquet", "fgb") for c in CLASSES),
    ]
    assert [n for n, _ in pyogrio.list_layers(tmp_path / "city.gpkg")] == [*CLASSES, "layer_styles"]
    for name in CLASSES:
        for path in (tmp_path / "city.gpkg", tmp_path / f"city_{name}.fgb"):
            frame = pyogrio.read_dataframe(path, layer=name)
            assert len(frame) == 0 and list(frame.columns) == [*layer_columns(name), "geometry"]
        assert len(gpd.read_parquet(tmp_path / f"city_{name}.parquet")) == 0
        assert json.loads((tmp_path / f"city_{name}.geojson").read_text())["features"] == []


def test_an_exception_mid_stream_keeps_the_old_outputs(tmp_path: Path) -> None:
    stream(tmp_path, chunked(scene_layers(20), 5))
    before = snapshot(tmp_path)
    with (
        pytest.raises(RuntimeError, match="tile failed"),
        OutputStream(
            tmp_path, "city", classes=CLASSES, crs=UTM, metadata={}, formats=ALL, chunk_rows=4
        ) as s,  # fmt: skip
    ):
        for chunk in chunked(scene_layers(40), 5):
            s.write(chunk)
        assert s.counts["building"] == 40
        assert [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]
        raise RuntimeError("tile failed")
    assert snapshot(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_a_failure_at_commit_keeps_the_old_outputs(tmp_path: Path) -> None:
    stream(tmp_path, chunked(scene_layers(20), 5))
    before = snapshot(tmp_path)

    def broken(tmp: Path) -> None:
        raise RuntimeError("preview broke")

    with pytest.raises(RuntimeError, match="preview broke"):
        stream(tmp_path, chunked(scene_layers(30), 5),
               extras=lambda: [("city_preview.png", broken)])  # fmt: skip
    assert snapshot(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_leaving_without_commit_or_writing_after_it_leaves_nothing(tmp_path: Path) -> None:
    with OutputStream(tmp_path / "out", "city", classes=CLASSES, crs=UTM, metadata={}) as s:
        s.write(scene_layers(5))
    assert visible(tmp_path / "out") == []
    with pytest.raises(RuntimeError, match="closed"):
        s.write(scene_layers(5))


def test_bad_frames_are_refused_and_nothing_is_left(tmp_path: Path) -> None:
    layers = scene_layers(5)
    for bad, match in (
        ({"tree": layers["building"]}, "not one of"),
        ({"ship": layers["building"]}, "columns"),
        ({"building": layers["building"].to_crs("EPSG:3857")}, "EPSG:3857"),
    ):
        with pytest.raises(ValueError, match=match):
            stream(tmp_path, [layers, bad])
        assert visible(tmp_path) == []


def test_a_second_stream_replaces_the_outputs_and_removes_stale_ones(tmp_path: Path) -> None:
    stream(tmp_path, chunked(scene_layers(20), 5))
    with OutputStream(tmp_path, "city", classes=["building"], crs=UTM, metadata={"v": "2"},
                      formats=("gpkg", "geojson")) as s:  # fmt: skip
        s.write({"building": objects("building", 3, 9)})
        s.commit()
    assert [n for n in visible(tmp_path) if not n.startswith(".")] == [
        "city.gpkg",
        "city_building.geojson",
    ]
    assert len(pyogrio.read_dataframe(tmp_path / "city.gpkg", layer="building")) == 3
    assert json.loads((tmp_path / ".city.outputs.json").read_text()) == [
        "city.gpkg",
        "city_building.geojson",
    ]


def test_a_folder_in_the_way_fails_before_the_first_object(tmp_path: Path) -> None:
    (tmp_path / "city_ship.geojson").mkdir()
    with pytest.raises(OutputError, match=r"city_ship\.geojson"):
        OutputStream(tmp_path, "city", classes=CLASSES, crs=UTM, metadata={})
    assert visible(tmp_path) == ["city_ship.geojson"]


def test_the_stream_holds_at_most_a_chunk_of_objects(tmp_path: Path, monkeypatch) -> None:
    appended: list[int] = []
    real = output._write_gpkg

    def spy(tmp: Path, *, layers, metadata=None) -> None:
        if metadata is None:
            appended.append(sum(len(f) for f in layers.values()))
        real(tmp, layers=layers, metadata=metadata)

    monkeypatch.setattr(output, "_write_gpkg", spy)
    layers = scene_layers(100)
    with OutputStream(tmp_path, "city", classes=CLASSES, crs=UTM, metadata={},
                      chunk_rows=10) as s:  # fmt: skip
        for chunk in chunked(layers, 1):
            s.write(chunk)
            assert s.pending_rows < 10
        s.commit()
    assert sum(appended) == 125 and max(appended) <= 10
    assert len(pyogrio.read_dataframe(tmp_path / "city.gpkg", layer="building")) == 100


def test_extras_are_written_without_a_work_geopackage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpkg_writes = []
    real = output._write_gpkg
    monkeypatch.setattr(
        output, "_write_gpkg", lambda tmp, **kw: (gpkg_writes.append(tmp), real(tmp, **kw))
    )

    def write(tmp: Path) -> None:
        tmp.write_text("drawn")

    paths = stream(tmp_path, chunked(scene_layers(20), 4), formats=("geojson",),
                   extras=lambda: [("city_preview.png", write)])  # fmt: skip
    assert [p.name for p in paths][-1] == "city_preview.png"
    assert (tmp_path / "city_preview.png").read_text() == "drawn"
    assert gpkg_writes == [] and "city.gpkg" not in visible(tmp_path)
