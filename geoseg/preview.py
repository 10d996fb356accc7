"""The quick-look picture of a run, ``SCENE_preview.png``: the scene with its objects.

The scene is read decimated, at most :data:`PREVIEW_PX` pixels on its long side, with
rasterio's ``out_shape`` (GDAL then reads the nearest overview when the file has overviews,
so a Cloud-Optimized GeoTIFF costs only its overview blocks), stretched like the model sees it.
Objects are outlined in one colour per class (:func:`geoseg.styles.class_colours`), over a
light fill; a legend gives the counts and a scale bar the ground distance.

Drawn with Pillow, which geoseg already has through torchvision: outlines, text and boxes are
all it needs, and matplotlib would add tens of MB and seconds of import for nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from PIL import Image, ImageDraw, ImageFont
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geoseg.errors import SceneError, first_line
from geoseg.scene import SceneInfo, normalize, read_env
from geoseg.styles import class_colours

__all__ = [
    "PREVIEW_PX",
    "PreviewCanvas",
    "QuickLook",
    "nice_length",
    "read_quicklook",
]

PREVIEW_PX = 2048
"""The long side of the preview, in pixels, at most."""

_NODATA_RGB = (40, 40, 40)


@dataclass(frozen=True, slots=True)
class QuickLook:
    """The scene decimated: ``rgb`` ``(H, W, 3)`` uint8, ``valid`` ``(H, W)`` bool, the affine
    ``transform`` of its pixels in the scene's ``crs``, and its pixel size in metres."""

    rgb: np.ndarray
    valid: np.ndarray
    transform: Affine
    crs: CRS
    gsd_m: float


def read_quicklook(scene: SceneInfo, max_px: int = PREVIEW_PX) -> QuickLook:
    """Read the scene's bands at most ``max_px`` on the long side (never enlarged); a scene
    that cannot be read is a one-line :class:`~geoseg.errors.SceneError`."""
    try:
        return _read_quicklook(scene, max_px)
    except RasterioError as exc:
        raise SceneError(f"{scene.path}: cannot be read ({first_line(exc)})") from None


def _read_quicklook(scene: SceneInfo, max_px: int) -> QuickLook:
    with rasterio.Env(**read_env(scene.path)), rasterio.open(scene.path) as src:
        factor = max(1.0, max(src.height, src.width) / max_px)
        shape = (max(1, round(src.height / factor)), max(1, round(src.width / factor)))
        bands = list(scene.bands[:3])
        data, mask = _read_decimated(src, bands, shape)
        transform = src.transform @ Affine.scale(src.width / shape[1], src.height / shape[0])
        gsd = scene.file_gsd_m * src.width / shape[1]
    if np.issubdtype(data.dtype, np.floating):
        mask &= np.all(np.isfinite(data), axis=0)
    stretch = scene.stretch[: len(bands)] if scene.stretch else None
    pixels = normalize(data, "uint8" if stretch is None else scene.dtype, stretch)
    rgb = np.repeat(pixels, 3, axis=0) if len(bands) < 3 else pixels[:3]
    rgb = np.moveaxis(np.rint(rgb * 255), 0, -1).astype(np.uint8)
    rgb[~mask] = _NODATA_RGB
    return QuickLook(rgb, mask, transform, scene.crs, gsd)


_STRIP_ROWS = 128  # quick-look rows read at a time


def _read_decimated(
    src: rasterio.DatasetReader, bands: list[int], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``bands`` and the dataset mask averaged down to ``shape``, read in strips of rows, so
    that GDAL never holds more than a strip of the full-resolution scene."""
    height, width = shape
    data = np.empty((len(bands), height, width), dtype=src.dtypes[bands[0] - 1])
    mask = np.empty((height, width), dtype=bool)
    scale = src.height / height
    for top in range(0, height, _STRIP_ROWS):
        rows = min(_STRIP_ROWS, height - top)
        window = Window(0, top * scale, src.width, rows * scale)
        data[:, top : top + rows] = src.read(
            bands, window=window, out_shape=(len(bands), rows, width), resampling=Resampling.average
        )
        strip = src.dataset_mask(
            window=window, out_shape=(rows, width), resampling=Resampling.nearest
        )
        mask[top : top + rows] = strip > 0
    return data, mask


class PreviewCanvas:
    """The preview drawn a chunk of objects at a time (:meth:`add`), so that a run draws its
    objects as they are written and a city's preview costs nothing at the end."""

    def __init__(self, look: QuickLook, classes: Sequence[str]) -> None:
        self.look = look
        self._base = Image.fromarray(look.rgb, "RGB").convert("RGBA")
        self._overlay = Image.new("RGBA", self._base.size, (0, 0, 0, 0))
        self._draw = ImageDraw.Draw(self._overlay)
        self._colours = class_colours(list(classes))
        self._width = max(2, round(max(self._base.size) / 700))
        self._to_pixels = ~look.transform
        self.counts = dict.fromkeys(classes, 0)

    def add(self, name: str, frame: gpd.GeoDataFrame) -> None:
        """Outline the objects of ``frame`` (class ``name``) in the class colour."""
        rgb = _hex(self._colours[name])
        if frame.crs is not None and frame.crs != self.look.crs:
            frame = frame.to_crs(self.look.crs)
        self.counts[name] += len(frame)
        for geometry in frame.geometry:
            for polygon in shapely.get_parts(geometry):
                _draw_polygon(self._draw, polygon, self._to_pixels, rgb, self._width)

    def image(self) -> Image.Image:
        """The picture: quick-look, outlines, and the band with the legend and scale bar."""
        image = Image.alpha_composite(self._base, self._overlay).convert("RGB")
        return _with_footer(image, self.counts, self._colours, self.look.gsd_m)

    def save(self, path: Path) -> None:
        self.image().save(path, format="PNG")


def _hex(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _draw_polygon(
    draw: ImageDraw.ImageDraw,
    polygon: shapely.Polygon,
    to_pixels: Affine,
    rgb: tuple[int, int, int],
    width: int,
) -> None:
    rings = [polygon.exterior, *polygon.interiors]
    outlines = []
    for ring in rings:
        xy = np.asarray(ring.coords)
        cols, rows = to_pixels @ (xy[:, 0], xy[:, 1])
        points = zip(np.asarray(cols).tolist(), np.asarray(rows).tolist(), strict=True)
        outlines.append(list(points))
    exterior = outlines[0]
    xs, ys = zip(*exterior, strict=True)
    if max(xs) - min(xs) < 3 and max(ys) - min(ys) < 3:  # too small to see: a marker
        cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
        r = width + 1
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), outline=(*rgb, 255), width=width)
        return
    draw.polygon(exterior, fill=(*rgb, 60))
    for ring in outlines:
        draw.line([*ring, ring[0]], fill=(*rgb, 255), width=width, joint="curve")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def nice_length(metres: float) -> float:
    """The largest 1, 2 or 5 times a power of ten not above ``metres``."""
    power = 10 ** math.floor(math.log10(metres))
    return max(m * power for m in (1, 2, 5) if m * power <= metres)


def _with_footer(
    image: Image.Image, counts: Mapping[str, int], colours: Mapping[str, str], gsd_m: float
) -> Image.Image:
    """The image above a white band with the legend (class: count) and a scale bar, so that
    neither hides an object."""
    width, height = image.size
    size = max(12, round(max(width, 400) / 50))
    font = _font(size)
    pad = size // 2
    measure = ImageDraw.Draw(image)
    metres = nice_length(max(gsd_m, width * gsd_m / 4))
    bar = metres / gsd_m
    label = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    scale_w = max(bar, measure.textlength(label, font=font)) + 2 * pad
    rows: list[list[tuple[str, str, float]]] = [[]]
    x = pad
    for name, count in counts.items():
        text = f"{name}: {count}"
        item_w = size + pad + measure.textlength(text, font=font) + 2 * pad
        if rows[-1] and x + item_w > width - scale_w:
            rows.append([])
            x = pad
        rows[-1].append((name, text, x))
        x += item_w
    line_h = size + pad
    footer_h = max(len(rows) * line_h + pad, 2 * line_h + pad)
    out = Image.new("RGB", (width, height + footer_h), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for r, row in enumerate(rows):
        y = height + pad + r * line_h
        for name, text, x0 in row:
            draw.rectangle((x0, y, x0 + size, y + size), fill=colours[name], outline=(0, 0, 0))
            draw.text((x0 + size + pad, y), text, fill=(0, 0, 0), font=font)
    x0 = width - scale_w + pad
    draw.text((x0, height + pad), label, fill=(0, 0, 0), font=font)
    y0 = height + pad + line_h
    draw.rectangle((x0, y0, x0 + bar, y0 + size // 2), fill=(0, 0, 0))
    return out
