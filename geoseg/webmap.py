"""The offline web map of a run, ``SCENE.html``: one self-contained file, no network needed.

Leaflet (vendored from its npm package under ``geoseg/static/leaflet/``, BSD 2-Clause) is
inlined with its stylesheet; the quick-look (:mod:`geoseg.preview`) is warped to Web Mercator
and embedded as a PNG image overlay; each class is a GeoJSON layer (WGS84, 7 decimals) in its
class colour that the layer control switches on and off, and clicking an object shows its
attributes. Each class's paths carry the CSS class ``geoseg-<class>``, except on a map of more
than :data:`CANVAS_OBJECTS` objects, which is drawn on a canvas.
"""

from __future__ import annotations

import base64
import io
import json
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import IO, Any

import geopandas as gpd
import numpy as np
from PIL import Image
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds

from geoseg.output import geojson_features
from geoseg.preview import QuickLook
from geoseg.styles import class_colours

__all__ = ["CANVAS_OBJECTS", "WebMapBuilder", "css_class"]

_WEB_MERCATOR = "EPSG:3857"

CANVAS_OBJECTS = 5_000
"""Above this many objects the map draws on one canvas (Leaflet's ``preferCanvas``) instead of
one SVG element per object, which browsers cannot pan smoothly at city scale; the paths then
carry no CSS class."""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<!-- The map is drawn by Leaflet 1.9.4 (https://leafletjs.com), inlined below, under this
licence:

__LEAFLET_LICENSE__-->
<style>__LEAFLET_CSS__</style>
<style>
html, body, #map { height: 100%; margin: 0; background: #202020; }
.geoseg-popup table { border-collapse: collapse; font: 12px sans-serif; }
.geoseg-popup td { padding: 1px 6px; border-bottom: 1px solid #ddd; }
.geoseg-popup td:first-child { font-weight: bold; }
.geoseg-swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
</style>
</head>
<body>
<div id="map"></div>
<script>__LEAFLET_JS__</script>
<script>
"use strict";
const DATA = __DATA__;
function esc(v) {
  return String(v).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;", "'": "&#39;"})[c]);
}
function popup(props) {
  const rows = Object.entries(props).map(([k, v]) =>
    "<tr><td>" + esc(k) + "</td><td>" + esc(typeof v === "number" ?
      Math.round(v * 1000) / 1000 : v) + "</td></tr>");
  return "<div class='geoseg-popup'><table>" + rows.join("") + "</table></div>";
}
const map = L.map("map", {preferCanvas: DATA.canvas});
const overlays = {};
let bounds = null;
if (DATA.image) {
  const image = L.imageOverlay(DATA.image.url, DATA.image.bounds).addTo(map);
  overlays["scene (quick-look)"] = image;
  bounds = L.latLngBounds(DATA.image.bounds);
}
for (const c of DATA.classes) {
  const layer = L.geoJSON(c.geojson, {
    style: {color: c.colour, weight: 2, opacity: 1, fillOpacity: 0.25, className: c.css},
    onEachFeature: (feature, lyr) => lyr.bindPopup(popup(feature.properties)),
  }).addTo(map);
  const label = "<span class='geoseg-swatch' style='background:" + c.colour + "'></span>" +
    esc(c.name) + " (" + c.count + ")";
  overlays[label] = layer;
  if (c.count > 0) {
    bounds = bounds ? bounds.extend(layer.getBounds()) : layer.getBounds();
  }
}
L.control.layers(null, overlays, {collapsed: false}).addTo(map);
L.control.scale().addTo(map);
map.attributionControl.addAttribution(esc(DATA.title));
map.fitBounds(bounds || [[-60, -170], [75, 170]]);
document.body.setAttribute("data-geoseg-ready", "1");
</script>
</body>
</html>
"""


def css_class(class_name: str) -> str:
    """The CSS class of a class's paths in the map: ``geoseg-<class>``, safe characters only."""
    return "geoseg-" + re.sub(r"[^A-Za-z0-9_-]", "_", class_name)


class WebMapBuilder:
    """The web map gathered a chunk of objects at a time (:meth:`add`) into one temporary
    file per class, so that a run converts its objects as it writes them and only copies
    text at the end."""

    def __init__(self, look: QuickLook | None, classes: Sequence[str], *, title: str) -> None:
        self.look = look
        self.title = title
        self.counts = dict.fromkeys(classes, 0)
        self._files = {  # closed by close()
            name: tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
            for name in classes
        }

    def add(self, name: str, frame: gpd.GeoDataFrame) -> None:
        if not len(frame):
            return
        file = self._files[name]
        if self.counts[name]:
            file.write(",")
        file.write(_features_text(frame))
        self.counts[name] += len(frame)

    def write(self, path: Path) -> None:
        classes = [
            (name, count, _read_back(self._files[name])) for name, count in self.counts.items()
        ]
        with path.open("w", encoding="utf-8") as out:
            for part in _page_parts(classes, self.look, title=self.title):
                out.write(part)

    def close(self) -> None:
        for file in self._files.values():
            file.close()


def _read_back(file: IO[str]) -> Iterator[str]:
    file.seek(0)
    while chunk := file.read(1 << 20):
        yield chunk


ClassText = tuple[str, int, Iterable[str]]
"""A class of the map: its name, its number of objects, and its GeoJSON features as text
pieces that join into a comma-separated list."""


def _page_parts(
    classes: Sequence[ClassText], look: QuickLook | None, *, title: str
) -> Iterator[str]:
    static = resources.files("geoseg") / "static" / "leaflet"
    page = _PAGE.replace("__TITLE__", _html_escape(title))
    page = page.replace("__LEAFLET_LICENSE__", (static / "LICENSE").read_text().replace("--", "-"))
    page = page.replace("__LEAFLET_CSS__", (static / "leaflet.css").read_text())
    before, after = page.split("__DATA__")
    yield before.replace("__LEAFLET_JS__", (static / "leaflet.js").read_text())
    colours = class_colours([name for name, _, _ in classes])
    image = _image_overlay(look) if look is not None else None
    canvas = sum(count for _, count, _ in classes) > CANVAS_OBJECTS
    head = json.dumps(
        {"title": title, "image": image, "canvas": canvas}, separators=(",", ":"), allow_nan=False
    )
    yield _script_safe(head[:-1]) + ',"classes":['
    for k, (name, count, texts) in enumerate(classes):
        meta = {"name": name, "css": css_class(name), "colour": colours[name], "count": count}
        yield ("," if k else "") + _script_safe(json.dumps(meta, separators=(",", ":"))[:-1])
        yield ',"geojson":{"type":"FeatureCollection","features":['
        yield from texts
        yield "]}}"
    yield "]}" + after


def _script_safe(text: str) -> str:
    """``"</"`` never appears inside a ``<script>`` element: it could close it."""
    return text.replace("</", "<\\/")


def _features_text(frame: gpd.GeoDataFrame) -> str:
    """The GeoJSON features of ``frame`` in WGS84 (7 decimals), comma-separated, no brackets:
    the same text as the GeoJSON outputs (:func:`geoseg.output.geojson_features`)."""
    return _script_safe(",".join(geojson_features(frame)))


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _image_overlay(look: QuickLook) -> dict[str, Any]:
    """The quick-look warped to Web Mercator, as a PNG data URL and its lat/lon bounds."""
    height, width = look.valid.shape
    corners = np.array([(0, 0), (width, 0), (0, height), (width, height)], dtype=float)
    xs, ys = look.transform @ (corners[:, 0], corners[:, 1])
    left, bottom, right, top = min(xs), min(ys), max(xs), max(ys)
    dst_transform, dst_w, dst_h = calculate_default_transform(
        look.crs, _WEB_MERCATOR, width, height, left=left, bottom=bottom, right=right, top=top
    )
    source = np.concatenate(
        [np.moveaxis(look.rgb, -1, 0), (look.valid * 255).astype(np.uint8)[None]]
    )
    warped = np.zeros((4, dst_h, dst_w), dtype=np.uint8)
    reproject(
        source,
        warped,
        src_transform=look.transform,
        src_crs=look.crs,
        dst_transform=dst_transform,
        dst_crs=_WEB_MERCATOR,
        resampling=Resampling.bilinear,
    )
    buffer = io.BytesIO()
    Image.fromarray(np.moveaxis(warped, 0, -1), "RGBA").save(buffer, format="PNG")
    west, north = dst_transform @ (0, 0)
    east, south = dst_transform @ (dst_w, dst_h)
    lon0, lat0, lon1, lat1 = transform_bounds(_WEB_MERCATOR, "EPSG:4326", west, south, east, north)
    return {
        "url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
        "bounds": [[lat0, lon0], [lat1, lon1]],
    }
