"""Open a scene, check that it is georeferenced, and read normalized tiles from it in windows.

A scene is never read whole. :func:`open_scene` reads only the header and a decimated
overview (at most :data:`STATS_SIZE_PX` pixels on its long side) for the normalization
statistics; :func:`read_tiles` reads one window per tile.

Normalization (what a model's ``predict`` receives, float32):

- ``uint8`` bands: ``value / 255``.
- any other type (uint16, int16, float): a per-scene, per-band linear stretch that maps the
  2nd percentile of the valid pixels to 0 and the 98th to 1, clipped to ``[0, 1]``; the
  percentiles come from the decimated overview, so they are the same for every tile.
- bands: red, green and blue by colour interpretation, else by band descriptions
  (:func:`described_rgb`), else the first three (an alpha band never counts).
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
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS, Geod, Proj, Transformer
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
    "MAX_GSD_UPSAMPLING",
    "READ_ENV",
    "STATS_SIZE_PX",
    "SceneInfo",
    "check_unchanged",
    "clamp_gsd",
    "crs_unit_m",
    "described_rgb",
    "file_stamp",
    "fit_gsd",
    "normalize",
    "open_scene",
    "projection_scale",
    "read_env",
    "read_tiles",
]

log = logging.getLogger(__name__)

STATS_SIZE_PX = 1024
MAX_GSD_UPSAMPLING = 8.0
"""How many times finer than the file ``--gsd`` may read a scene."""
_STRETCH_PERCENTILES = (2.0, 98.0)


@dataclass(frozen=True, slots=True)
class SceneInfo:
    """What the pipeline knows about a scene; small and picklable (sent to every task).

    ``shape_yx`` and ``transform`` describe the working grid (equal to the file's grid unless
    the scene is resampled); ``crs_wkt`` is the scene's CRS (or the one assumed by ``--crs``).
    ``stretch`` holds ``(low, high)`` per selected band, or ``None`` for uint8 data.
    ``file_block_yx`` is the file's block shape (a striped file's blocks span its width).
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
    stamp: tuple[int, int, int] | None = None
    file_block_yx: tuple[int, int] | None = None

    @property
    def resampled(self) -> bool:
        return self.shape_yx != self.file_shape_yx

    @property
    def crs(self) -> CRS:
        return CRS.from_wkt(self.crs_wkt)

    @property
    def file_transform(self) -> Affine:
        """The file's own geotransform (:attr:`transform` is the working grid's)."""
        return self.transform @ Affine.scale(
            self.shape_yx[1] / self.file_shape_yx[1], self.shape_yx[0] / self.file_shape_yx[0]
        )

    def projection_note(self) -> str | None:
        """A line saying how the file's pixel size in CRS units became :attr:`file_gsd_m`
        where the projection's scale changed it (see :func:`pixel_size_m`), else ``None``."""
        crs = self.crs
        if crs.is_geographic:
            return None
        units = _pixel_units(self.file_transform)
        if abs(units * crs_unit_m(crs) / self.file_gsd_m - 1) <= SCALE_TOLERANCE:
            return None
        return (
            f"Scene pixels are {units:.3g} units of {crs.name}, {self.file_gsd_m:.3g} m on the "
            "ground at its centre (the projection's scale there)"
        )

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
    _check_bounds(src, path, scene_crs, assumed=src.crs is None)
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
        stamp=file_stamp(path),
        file_block_yx=tuple(int(n) for n in src.block_shapes[selected[0] - 1]),
    )
    return fit_gsd(scene, gsd_m=gsd_m)


def file_stamp(path: str | Path) -> tuple[int, int, int] | None:
    """``(size, mtime_ns, inode)`` of a local file, to see that it changed; ``None`` for a
    path only GDAL opens (``/vsis3/...``)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def check_unchanged(scene: SceneInfo) -> None:
    """Raise :class:`~geoseg.errors.SceneError` if the scene's file is not the one that was
    opened (rewritten, truncated or replaced since)."""
    if scene.stamp is not None and file_stamp(scene.path) != scene.stamp:
        raise SceneError(
            f"{scene.path}: changed while it was being read (rewritten, truncated or "
            "replaced); run again once it is complete"
        )


def _check_bounds(src: Any, path: Path, crs: CRS, *, assumed: bool) -> None:
    """Refuse a scene whose corners are not places in ``crs`` (a wrong ``--crs``, or a
    geographic scene past the poles)."""
    west, south, east, north = rasterio.transform.array_bounds(src.height, src.width, src.transform)
    hint = "; is --crs right?" if assumed else "; its georeferencing is wrong"
    where = f"{path}: bounds ({west:.6g}, {south:.6g}, {east:.6g}, {north:.6g})"
    if crs.is_geographic:
        if not (-90 <= south <= north <= 90 and -180 <= west <= east <= 360):
            raise UserInputError(
                f"{where} are not longitudes and latitudes, as {_crs_name(crs)} needs{hint}"
            )
        return
    from pyproj import Transformer

    try:
        to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        lon0, lat0, lon1, lat1 = to_lonlat.transform_bounds(west, south, east, north)
    except Exception:  # pyproj cannot invert these coordinates
        lon0 = lat0 = lon1 = lat1 = math.inf
    if not all(math.isfinite(v) for v in (lon0, lat0, lon1, lat1)):
        raise UserInputError(f"{where} are not places in {_crs_name(crs)}{hint}")
    area = _area_of_use(crs)
    margin = _AREA_OF_USE_MARGIN_DEG
    if area is not None and (
        lon1 < area.west - margin
        or lon0 > area.east + margin
        or lat1 < area.south - margin
        or lat0 > area.north + margin
    ):
        raise UserInputError(
            f"{where} are outside the area where {_crs_name(crs)} is used (longitude "
            f"{area.west:g} to {area.east:g}, latitude {area.south:g} to {area.north:g}){hint}"
        )


def _area_of_use(crs: CRS) -> Any:
    """The CRS's area of use (from its EPSG code when its WKT carries none)."""
    if crs.area_of_use is not None:
        return crs.area_of_use
    code = crs.to_epsg()
    try:
        return CRS.from_epsg(code).area_of_use if code else None
    except Exception:
        return None


def _crs_name(crs: CRS) -> str:
    code = crs.to_epsg()
    return f"EPSG:{code}" if code else crs.name


_AREA_OF_USE_MARGIN_DEG = 10.0
"""How far outside a projected CRS's area of use a scene may lie (UTM zones are used well
beyond their 6 degrees)."""


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
    transform = scene.file_transform @ Affine.scale(width / shape_yx[1], height / shape_yx[0])
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
    described = described_rgb(src.descriptions)
    if described:
        log.info("%s: bands %s by their descriptions (red, green, blue)", path, described)
        return described
    data_bands = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha] or [1]
    return tuple(data_bands[:3])


_DESCRIBED_COLOURS = (
    re.compile(r"\bred\b|^b0?4$", re.IGNORECASE),
    re.compile(r"\bgreen\b|^b0?3$", re.IGNORECASE),
    re.compile(r"\bblue\b|^b0?2$", re.IGNORECASE),
)
"""A band's description that names its colour: the word (``Red``, ``red (B4)``, ``Blue
band``), or Sentinel-2's and Landsat 8-9's band number (``B04``/``B4`` red, ``B03`` green,
``B02`` blue), as band stacks of those sensors are often labelled."""


def described_rgb(descriptions: Sequence[str | None]) -> tuple[int, ...] | None:
    """The 1-based red, green and blue bands by their descriptions, or ``None`` unless each
    colour is named by exactly one band (a band named "infrared" or "B8" names none)."""
    picked = []
    for pattern in _DESCRIBED_COLOURS:
        hits = [
            i + 1 for i, text in enumerate(descriptions) if text and pattern.search(text.strip())
        ]
        if len(hits) != 1:
            return None
        picked.append(hits[0])
    return tuple(picked) if len(set(picked)) == 3 else None


SCALE_TOLERANCE = 0.01
"""A projection whose scale at the scene's centre is further than this from 1 (Web Mercator
away from the equator: 1.2 at 34 degrees) has its pixel sizes divided by that scale; closer
(UTM's 0.9996-1.001), CRS metres are taken for ground metres."""


def pixel_size_m(transform: Affine, crs: CRS, shape_yx: tuple[int, int]) -> float:
    """Mean ground size of a pixel in metres at the scene's centre, for geographic CRSs and
    for projections that stretch the ground (a z19 Web Mercator tile is 0.30 units a pixel,
    0.26 m on the ground at 29 degrees of latitude)."""
    centre = transform @ (shape_yx[1] / 2, shape_yx[0] / 2)
    if crs.is_geographic:
        lon, lat = centre
        geod = Geod(ellps="WGS84")
        _, _, dx = geod.inv(lon, lat, lon + math.hypot(transform.a, transform.d), lat)
        _, _, dy = geod.inv(lon, lat, lon, lat + math.hypot(transform.b, transform.e))
        return float((abs(dx) + abs(dy)) / 2)
    size = _pixel_units(transform) * crs_unit_m(crs)
    scale = projection_scale(crs, centre)
    return float(size / scale if abs(scale - 1) > SCALE_TOLERANCE else size)


def _pixel_units(transform: Affine) -> float:
    """Mean of a pixel's column and row sizes in CRS units."""
    return (math.hypot(transform.a, transform.d) + math.hypot(transform.b, transform.e)) / 2


def crs_unit_m(crs: CRS) -> float:
    """Metres in one unit of a projected CRS's axes."""
    return crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0


def projection_scale(crs: CRS, xy: tuple[float, float]) -> float:
    """How many CRS lengths a metre on the ground spans at ``xy`` (the geometric mean of the
    meridional and parallel scales; 1 where PROJ cannot tell)."""
    try:
        lon, lat = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True).transform(*xy)
        factors = Proj(crs).get_factors(lon, lat)
        scale = math.sqrt(factors.meridional_scale * factors.parallel_scale)
    except Exception:  # any CRS that PROJ cannot invert or differentiate
        return 1.0
    return scale if math.isfinite(scale) and scale > 0 else 1.0


def _target_gsd(
    file_gsd: float, gsd_m: float | None, model_range: tuple[float, float] | None
) -> float | None:
    """The GSD to read at, or ``None`` to read the file's own grid."""
    if gsd_m is not None:
        if not (math.isfinite(gsd_m) and gsd_m > 0):
            raise UserInputError(f"--gsd {gsd_m} must be a positive number of metres")
        if file_gsd / gsd_m > MAX_GSD_UPSAMPLING:
            raise UserInputError(
                f"--gsd {gsd_m:g} would read this {file_gsd:.3g} m scene "
                f"{file_gsd / gsd_m:.3g} times finer; at most {MAX_GSD_UPSAMPLING:g} times "
                f"(--gsd {file_gsd / MAX_GSD_UPSAMPLING:.3g}), as resampling adds no detail, "
                "only pixels"
            )
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


READ_ENV = {"GDAL_CACHEMAX": 128}
"""GDAL settings for every read of a scene: a block cache of 128 MB (GDAL's default is 5 % of
the machine's memory, which a large scene fills: 1 GB more of resident memory on a
12,000 px scene for no gain, as each block is read about once)."""


def read_env(path: str | Path) -> dict[str, Any]:
    """The GDAL settings to read ``path`` with (:data:`READ_ENV`, and more for a remote one)."""
    return {**READ_ENV, **(REMOTE_ENV if is_remote(path) else {})}


@contextmanager
def open_working_grid(scene: SceneInfo) -> Iterator[Any]:
    """The scene as a dataset on its working grid (the file itself, or a resampling VRT)."""
    with rasterio.Env(**read_env(scene.path)), rasterio.open(scene.path) as src:
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
    check_unchanged(scene)
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
        check_unchanged(scene)
        raise SceneError(f"{scene.path}: cannot be read ({first_line(exc)})") from None
    check_unchanged(scene)
    return pixels, valid
