"""Open a scene, check that it is georeferenced, and read normalized tiles from it in windows.

A scene is never read whole. :func:`open_scene` reads only the header and a decimated
overview (at most :data:`STATS_SIZE_PX` pixels on its long side) for the normalization
statistics; :func:`read_tiles` reads one window per tile.

Normalization (what a model's ``predict`` receives, float32):

- ``uint8`` bands: ``value / 255``.
- any other type (uint16, int16, float): a per-scene, per-band linear stretch that maps the
  2nd percentile of the valid pixels to 0 and the 98th to 1, clipped to ``[0, 1]``; the
  percentiles come from the decimated overview, so they are the same for every tile.
- nodata pixels (nodata value, internal mask or alpha band) are 0 and marked invalid; they
  never yield polygons, and a tile with no valid pixel is skipped without calling the model.

Scale: when the model records the ground sampling distances it was trained on and the scene's
lies outside them (or ``gsd_m`` is given), the scene is read through a ``WarpedVRT`` on a
*working grid* at that GSD, in the scene's CRS. Tiles, masks and pixel-space polygons live on
the working grid; its affine transform takes them to the scene's CRS.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS, Geod
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT

from geoseg.errors import (
    MissingCRSError,
    MissingTransformError,
    SceneError,
    UserInputError,
    first_line,
)
from geoseg.grid import PixelWindow
from geoseg.remote import REMOTE_ENV, gdal_path, is_remote, scene_stem

__all__ = [
    "STATS_SIZE_PX",
    "SceneInfo",
    "clamp_gsd",
    "fit_gsd",
    "normalize",
    "open_scene",
    "read_tiles",
]

log = logging.getLogger(__name__)

STATS_SIZE_PX = 1024
_STRETCH_PERCENTILES = (2.0, 98.0)


@dataclass(frozen=True, slots=True)
class SceneInfo:
    """What the pipeline knows about a scene; small and picklable (sent to every task).

    ``shape_yx`` and ``transform`` describe the working grid (equal to the file's grid unless
    the scene is resampled); ``crs_wkt`` is the scene's CRS (or the one assumed by ``--crs``).
    ``stretch`` holds ``(low, high)`` per selected band, or ``None`` for uint8 data.
    """

    path: str
    shape_yx: tuple[int, int]
    transform: Affine
    crs_wkt: str
    bands: tuple[int, ...]
    dtype: str
    stretch: tuple[tuple[float, float], ...] | None
    file_shape_yx: tuple[int, int]
    file_gsd_m: float
    gsd_m: float
    assumed_crs: bool = False

    @property
    def resampled(self) -> bool:
        return self.shape_yx != self.file_shape_yx

    @property
    def crs(self) -> CRS:
        return CRS.from_wkt(self.crs_wkt)

    @property
    def stem(self) -> str:
        return scene_stem(self.path)

    def __dask_tokenize__(self) -> tuple:
        return ("SceneInfo", self.path, self.shape_yx, tuple(self.transform), self.bands)


def open_scene(
    path: str | Path,
    *,
    bands: tuple[int, ...] | None = None,
    crs: str | None = None,
    gsd_m: float | None = None,
) -> SceneInfo:
    """Open ``path``, validate its georeferencing and bands, and compute normalization stats.

    Raises :class:`~geoseg.errors.SceneError` (or a subclass) with a one-line message naming the
    file when it cannot be read, has no geotransform, or has no CRS and ``crs`` is not given.
    ``path`` may be an ``https://`` or ``s3://`` URL (see :mod:`geoseg.remote`).
    """
    if is_remote(path):
        remote = gdal_path(path)
        try:
            with rasterio.Env(**REMOTE_ENV), rasterio.open(remote) as src:
                return _inspect(src, remote, bands, crs, gsd_m)
        except SceneError:
            raise
        except RasterioError as exc:
            raise SceneError(f"{path}: not a readable remote raster ({first_line(exc)})") from exc
    path = Path(path)
    if not path.exists():
        raise SceneError(f"{path}: no such file")
    if path.is_dir():
        raise SceneError(f"{path}: is a directory, not a GeoTIFF")
    try:
        with rasterio.open(path) as src:
            return _inspect(src, path, bands, crs, gsd_m)
    except SceneError:
        raise
    except RasterioError as exc:
        raise SceneError(f"{path}: not a readable raster ({first_line(exc)})") from exc


def _inspect(
    src: Any,
    path: Path | str,
    bands: tuple[int, ...] | None,
    crs: str | None,
    gsd_m: float | None,
) -> SceneInfo:
    if src.transform == Affine.identity() and not src.gcps[0] and not src.rpcs:
        raise MissingTransformError(
            f"{path}: has no geotransform, so its pixels have no place on Earth; "
            "georeference it first (e.g. gdal_translate -a_ullr ... -a_srs ...)"
        )
    if src.transform == Affine.identity():
        raise MissingTransformError(
            f"{path}: is georeferenced only by GCPs or RPCs; orthorectify it first "
            "(gdalwarp -tps or -rpc) and run on the result"
        )
    scene_crs = _scene_crs(src, path, crs)
    selected = _select_bands(src, path, bands)
    file_gsd = pixel_size_m(src.transform, scene_crs, src.shape)
    dtype = src.dtypes[selected[0] - 1]
    stretch = None if dtype == "uint8" else _stretch_stats(src, selected, path)
    scene = SceneInfo(
        path=str(path),
        shape_yx=(int(src.height), int(src.width)),
        transform=src.transform,
        crs_wkt=scene_crs.to_wkt(),
        bands=selected,
        dtype=dtype,
        stretch=stretch,
        file_shape_yx=(src.height, src.width),
        file_gsd_m=file_gsd,
        gsd_m=file_gsd,
        assumed_crs=src.crs is None,
    )
    return fit_gsd(scene, gsd_m=gsd_m)


def fit_gsd(
    scene: SceneInfo,
    *,
    gsd_m: float | None = None,
    model_gsd_range_m: tuple[float, float] | None = None,
) -> SceneInfo:
    """The scene on the working grid to read it at: ``gsd_m`` if given, else the file's own
    GSD clamped to ``model_gsd_range_m`` (the range a model was trained on), else unchanged.
    """
    target = _target_gsd(scene.file_gsd_m, gsd_m, model_gsd_range_m)
    if target is None:
        return scene
    height, width = scene.file_shape_yx
    factor = scene.file_gsd_m / target
    shape_yx = (max(1, round(height * factor)), max(1, round(width * factor)))
    file_transform = scene.transform @ Affine.scale(
        scene.shape_yx[1] / scene.file_shape_yx[1], scene.shape_yx[0] / scene.file_shape_yx[0]
    )
    transform = file_transform @ Affine.scale(width / shape_yx[1], height / shape_yx[0])
    log.info("%s: GSD %.3g m read at %.3g m", scene.path, scene.file_gsd_m, target)
    return replace(scene, shape_yx=shape_yx, transform=transform, gsd_m=target)


def _scene_crs(src: Any, path: Path | str, crs: str | None) -> CRS:
    if src.crs is not None and crs is not None:
        given = _parse_crs(crs)
        if CRS.from_wkt(src.crs.to_wkt()) != given:
            raise UserInputError(
                f"{path}: has CRS {src.crs.to_string()}; --crs {crs} may only name the CRS of a "
                "scene that has none (reproject with gdalwarp to change it)"
            )
    if src.crs is not None:
        return CRS.from_wkt(src.crs.to_wkt())
    if crs is None:
        raise MissingCRSError(
            f"{path}: has a geotransform but no CRS; give the CRS it is in with --crs "
            "(for example --crs EPSG:32633)"
        )
    return _parse_crs(crs)


def _parse_crs(crs: str) -> CRS:
    try:
        return CRS.from_user_input(crs)
    except Exception as exc:
        raise UserInputError(f"--crs {crs!r} is not a CRS pyproj knows ({exc})") from exc


def _select_bands(src: Any, path: Path | str, bands: tuple[int, ...] | None) -> tuple[int, ...]:
    if bands:
        bad = [b for b in bands if not 1 <= b <= src.count]
        if bad:
            raise UserInputError(
                f"{path}: has {src.count} band(s); --bands {','.join(map(str, bands))} asks for "
                f"band {bad[0]}"
            )
        return tuple(bands)
    interp = list(src.colorinterp)
    rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(c in interp for c in rgb):
        return tuple(interp.index(c) + 1 for c in rgb)
    data_bands = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha] or [1]
    return tuple(data_bands[:3])


def pixel_size_m(transform: Affine, crs: CRS, shape_yx: tuple[int, int]) -> float:
    """Mean ground size of a pixel in metres, for projected and geographic CRSs alike."""
    col_size = math.hypot(transform.a, transform.d)
    row_size = math.hypot(transform.b, transform.e)
    if crs.is_geographic:
        lon, lat = transform @ (shape_yx[1] / 2, shape_yx[0] / 2)
        geod = Geod(ellps="WGS84")
        _, _, dx = geod.inv(lon, lat, lon + col_size, lat)
        _, _, dy = geod.inv(lon, lat, lon, lat + row_size)
        return float((abs(dx) + abs(dy)) / 2)
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return float((col_size + row_size) / 2 * unit)


def _target_gsd(
    file_gsd: float, gsd_m: float | None, model_range: tuple[float, float] | None
) -> float | None:
    """The GSD to read at, or ``None`` to read the file's own grid."""
    if gsd_m is not None:
        if gsd_m <= 0:
            raise UserInputError(f"--gsd {gsd_m} must be a positive number of metres")
        return None if math.isclose(gsd_m, file_gsd, rel_tol=1e-3) else gsd_m
    target = clamp_gsd(file_gsd, model_range)
    return None if target == file_gsd else target


def clamp_gsd(gsd: float, gsd_range: tuple[float, float] | None) -> float:
    """``gsd`` moved into ``gsd_range`` (unchanged within 0.1 % of it, or without a range)."""
    if gsd_range is None:
        return gsd
    low, high = gsd_range
    if gsd < low * 0.999:
        return low
    if gsd > high * 1.001:
        return high
    return gsd


def _stretch_stats(
    src: Any, bands: tuple[int, ...], path: Path | str
) -> tuple[tuple[float, float], ...]:
    scale = max(src.height, src.width) / STATS_SIZE_PX
    out_shape = (max(1, int(src.height / max(scale, 1))), max(1, int(src.width / max(scale, 1))))
    try:
        data = src.read(
            list(bands),
            out_shape=(len(bands), *out_shape),
            masked=True,
            resampling=Resampling.nearest,
        )
    except RasterioError as exc:
        raise SceneError(f"{path}: cannot be read ({first_line(exc)})") from exc
    stats = []
    for band in data:
        values = band.compressed().astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            stats.append((0.0, 1.0))
            continue
        low, high = np.percentile(values, _STRETCH_PERCENTILES)
        stats.append((float(low), float(high) if high > low else float(low) + 1.0))
    return tuple(stats)


def normalize(
    data: np.ndarray, dtype: str, stretch: tuple[tuple[float, float], ...] | None
) -> np.ndarray:
    """Raw band values ``(bands, H, W)`` to float32 in 0..1 (see the module docstring)."""
    if stretch is None:
        if dtype != "uint8":
            raise ValueError("non-uint8 data needs stretch statistics")
        return data.astype(np.float32) / 255.0
    out = np.empty(data.shape, dtype=np.float32)
    for i, (low, high) in enumerate(stretch):
        band = (data[i].astype(np.float32) - low) / (high - low)
        out[i] = np.clip(np.nan_to_num(band, nan=0.0), 0.0, 1.0)
    return out


@contextmanager
def open_working_grid(scene: SceneInfo) -> Iterator[Any]:
    """The scene as a dataset on its working grid (the file itself, or a resampling VRT)."""
    env = REMOTE_ENV if is_remote(scene.path) else {}
    with rasterio.Env(**env), rasterio.open(scene.path) as src:
        if not scene.resampled:
            yield src
            return
        height, width = scene.shape_yx
        # Averaging when shrinking (no aliasing), bilinear when enlarging.
        shrinking = scene.gsd_m > scene.file_gsd_m
        resampling = Resampling.average if shrinking else Resampling.bilinear
        with WarpedVRT(
            src,
            crs=src.crs,
            transform=scene.transform,
            width=width,
            height=height,
            resampling=resampling,
        ) as vrt:
            yield vrt


def read_tiles(
    scene: SceneInfo, windows: list[PixelWindow], tile_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read normalized pixels ``(N, bands, tile_px, tile_px)`` and validity for ``windows``.

    Windows smaller than ``tile_px`` (scene edges of small scenes) are padded with invalid
    zeros at the bottom and right.
    """
    n_bands = len(scene.bands)
    pixels = np.zeros((len(windows), n_bands, tile_px, tile_px), dtype=np.float32)
    valid = np.zeros((len(windows), tile_px, tile_px), dtype=bool)
    try:
        with open_working_grid(scene) as src:
            for k, win in enumerate(windows):
                rio_win = rasterio.windows.Window(win.col_off, win.row_off, win.width, win.height)
                masks = src.read_masks(list(scene.bands), window=rio_win)
                ok = np.all(masks > 0, axis=0)
                if not ok.any():  # all nodata: its pixels are never read (nor fetched)
                    continue
                data = src.read(list(scene.bands), window=rio_win)
                if np.issubdtype(data.dtype, np.floating):
                    ok &= np.all(np.isfinite(data), axis=0)
                norm = normalize(data, scene.dtype, scene.stretch)
                norm[:, ~ok] = 0.0
                pixels[k, :, : win.height, : win.width] = norm
                valid[k, : win.height, : win.width] = ok
    except RasterioError as exc:
        raise SceneError(f"{scene.path}: cannot be read ({first_line(exc)})") from None
    return pixels, valid
