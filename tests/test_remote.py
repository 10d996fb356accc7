"""Remote scenes: Cloud-Optimized GeoTIFFs over HTTP read with range requests only.

A small threaded server on 127.0.0.1 serves the files, honours ``Range`` and counts the
bytes it sends; the runs over HTTP must equal the runs over the same local files."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.enums
import shapely
from click.testing import CliRunner

from geoseg.config import RunOptions
from geoseg.pipeline import run_scene
from geoseg.remote import gdal_path, remote_path, scene_stem
from geoseg.testing import encode_instances
from tests.conftest import ORACLE, UTM, UTM_TRANSFORM


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves files with single-range ``Range`` support; adds what it sends to ``served``."""

    served: Any  # a multiprocessing.Value("q")

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._send(body=False)

    def do_GET(self) -> None:
        self._send(body=True)

    def _send(self, *, body: bool) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end, status = 0, len(data) - 1, 200
        spec = self.headers.get("Range")
        if spec and spec.startswith("bytes=") and "," not in spec:
            first, _, last = spec[len("bytes=") :].partition("-")
            if first:
                start = int(first)
                end = min(int(last), len(data) - 1) if last else len(data) - 1
            else:  # the last N bytes
                start = max(0, len(data) - int(last))
            status = 206
        chunk = data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(chunk)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(chunk)
            with self.served.get_lock():
                self.served.value += len(chunk)


def serve(root: str, served: Any, ports: Any) -> None:
    """The server process: a threaded HTTP server on 127.0.0.1 (a process of its own, so
    that GDAL calls that hold the GIL in the test process cannot block it)."""
    handler = type("Handler", (RangeHandler,), {"served": served})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=root))
    ports.put(httpd.server_address[1])
    httpd.serve_forever()


class Served:
    """Bytes the server has sent so far."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def __int__(self) -> int:
        return int(self._value.value)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Served, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    ctx = multiprocessing.get_context("spawn")
    served, ports = ctx.Value("q", 0), ctx.Queue()
    process = ctx.Process(target=serve, args=(str(root), served, ports), daemon=True)
    process.start()
    try:
        yield f"http://127.0.0.1:{ports.get(timeout=60)}", Served(served), root
    finally:
        process.terminate()
        process.join(10)


def write_cog(path: Path, bands: np.ndarray, valid: np.ndarray) -> Path:
    """A cloud-optimized GeoTIFF: tiled 256 x 256, band-interleaved (so a band is read
    without the others), deflate, an internal mask, and overviews (2, 4, 8)."""
    count, height, width = bands.shape
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": "uint8",
        "crs": UTM,
        "transform": UTM_TRANSFORM,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "interleave": "band",
        "compress": "deflate",
    }
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
        dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
        dst.build_overviews([2, 4, 8], rasterio.enums.Resampling.average)
    return path


def coded(size: int, objects_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Coded pixels of a few objects in the top-left ``objects_in`` pixels, noise elsewhere."""
    ids = np.zeros((size, size), np.int32)
    ids[20:60, 30:90] = 1
    ids[100:140, 150:200] = 2
    ids[200:215, 40:60] = 3
    pixels = encode_instances(ids, {1: 0, 2: 1, 3: 2})
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=pixels.shape, dtype=np.uint8)
    inside = np.zeros((size, size), bool)
    inside[:objects_in, :objects_in] = True
    return np.where(inside, pixels, noise), inside


def same_outputs(a: Path, b: Path, stem: str, *, preview: bool = True) -> None:
    for layer in ("building", "field", "ship"):
        got = gpd.read_file(a / f"{stem}.gpkg", layer=layer).sort_values("id")
        want = gpd.read_file(b / f"{stem}.gpkg", layer=layer).sort_values("id")
        assert len(want) == 1
        assert got.drop(columns="geometry").equals(want.drop(columns="geometry"))
        assert shapely.equals(got.geometry.values, want.geometry.values).all()
    if preview:
        assert (a / f"{stem}_preview.png").read_bytes() == (b / f"{stem}_preview.png").read_bytes()


def test_a_mostly_nodata_cog_over_http_reads_a_fraction_and_equals_the_local_run(
    tmp_path: Path, server: tuple[str, Served, Path]
) -> None:
    url, served, root = server
    pixels, valid = coded(1536, 256)
    cog = write_cog(root / "sparse.tif", pixels, valid)
    # no preview nor map: a 1536 px scene is under their 2048 px, so they read it whole
    options = RunOptions(model=ORACLE, tile_px=256, overlap_px=64, preview=False, webmap=False)
    local = run_scene(cog, tmp_path / "local", options=options)
    remote = run_scene(f"{url}/sparse.tif", tmp_path / "remote", options=options)
    assert remote.counts == local.counts == {"building": 1, "field": 1, "ship": 1}
    assert remote.n_skipped == local.n_skipped > 30  # tiles that are all nodata
    same_outputs(tmp_path / "remote", tmp_path / "local", "sparse", preview=False)
    size = cog.stat().st_size
    assert int(served) < 0.2 * size, (int(served), size)


def test_only_the_selected_bands_are_fetched(
    tmp_path: Path, server: tuple[str, Served, Path]
) -> None:
    url, served, root = server
    pixels, valid = coded(512, 512)
    rng = np.random.default_rng(1)
    extra = rng.integers(0, 256, size=(3, 512, 512), dtype=np.uint8)  # incompressible
    cog = write_cog(root / "six.tif", np.concatenate([pixels, extra]), valid)
    options = RunOptions(model=ORACLE, tile_px=256, overlap_px=64, bands=(1, 2, 3))
    run_scene(cog, tmp_path / "local", options=options)
    run_scene(f"{url}/six.tif", tmp_path / "remote", options=options)
    same_outputs(tmp_path / "remote", tmp_path / "local", "six")
    size = cog.stat().st_size
    assert int(served) < 0.2 * size, (int(served), size)


def test_batch_reads_stac_items_whose_assets_are_urls(
    tmp_path: Path, server: tuple[str, Served, Path]
) -> None:
    from geoseg.cli import cli

    url, _, root = server
    pixels, valid = coded(512, 512)
    write_cog(root / "item-scene.tif", pixels, valid)
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "item-1",
        "geometry": None,
        "properties": {"datetime": "2024-01-01T00:00:00Z"},
        "links": [],
        "assets": {"visual": {"href": f"{url}/item-scene.tif", "type": "image/tiff"}},
    }
    (tmp_path / "item.json").write_text(json.dumps(item))
    args = ["-q", "batch", str(tmp_path / "item.json"), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, [*args, "--model", ORACLE, "--tile-size", "256"])
    assert result.exit_code == 0, result.output
    out = gpd.read_file(tmp_path / "out" / "item-scene.gpkg", layer="building")
    assert len(out) == 1


def test_url_paths_and_stems() -> None:
    assert gdal_path("https://h.example/a/b.tif") == "/vsicurl/https://h.example/a/b.tif"
    assert gdal_path("s3://bucket/k/scene.tif") == "/vsis3/bucket/k/scene.tif"
    assert scene_stem("https://h.example/a/scene.tif?X-Amz-Signature=abc") == "scene"
    assert scene_stem(remote_path("https://h.example/a/scene.tif")) == "scene"
    assert str(remote_path("s3://bucket/k/scene.tif")) == "/vsis3/bucket/k/scene.tif"
