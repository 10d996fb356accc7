"""One synthetic scene from a seed: lay out, label, paint, and write it to disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from pyproj import CRS

from geoseg.errors import UserInputError
from geoseg.learn.synth.buildings import _add_buildings
from geoseg.learn.synth.constants import LABEL_LAYER
from geoseg.learn.synth.fields import _add_fields
from geoseg.learn.synth.geometry import _Scales
from geoseg.learn.synth.labels import _labels_and_ids
from geoseg.learn.synth.layout import _layout
from geoseg.learn.synth.objects import _Objects
from geoseg.learn.synth.render import _atmosphere, _paint, _quantize
from geoseg.learn.synth.ships import _add_ships

if TYPE_CHECKING:
    import geopandas as gpd


@dataclass(frozen=True, slots=True)
class SyntheticScene:
    """A rendered scene: ``image`` ``(3, H, W)``, its ``labels`` (columns ``id``, ``class``,
    polygons in ``crs``), the pixel-to-map ``transform`` and ``ids_yx``, the instance id of
    every pixel (0 = background; equal to rasterizing ``labels`` by ``id``)."""

    image: np.ndarray
    labels: gpd.GeoDataFrame
    transform: Affine
    crs: CRS
    ids_yx: np.ndarray


def make_scene(
    size_wh: tuple[int, int] = (1024, 1024),
    gsd_m: float = 0.5,
    seed: int = 0,
    dtype: str = "uint8",
) -> tuple[np.ndarray, gpd.GeoDataFrame, Affine, CRS]:
    """A synthetic aerial scene: ``(image (3, H, W), labels, transform, crs)``.

    >>> image, labels, transform, crs = make_scene((128, 96), gsd_m=2.0, seed=1)
    >>> image.shape, image.dtype.name, sorted(set(labels["class"])) <= list(CLASSES)
    ((3, 96, 128), 'uint8', True)
    """
    scene = render_scene(size_wh, gsd_m=gsd_m, seed=seed, dtype=dtype)
    return scene.image, scene.labels, scene.transform, scene.crs


def write_scene(
    path: str | Path,
    *,
    size_wh: tuple[int, int] = (1024, 1024),
    gsd_m: float = 0.5,
    seed: int = 0,
    dtype: str = "uint8",
    dense_town: bool = False,
    labels_path: str | Path | None = None,
) -> tuple[Path, Path]:
    """Write a scene as a tiled, deflated RGB GeoTIFF and its labels as a GeoPackage.

    The labels go to ``labels_path`` (default: ``path`` with suffix ``.gpkg``), layer
    ``"labels"``; ``dense_town`` as in :func:`render_scene`. Both files are written under
    temporary names beside their final ones and renamed into place only when both are
    complete. Returns ``(image_path, labels_path)``.
    """
    path = Path(path)
    labels_path = Path(labels_path) if labels_path is not None else path.with_suffix(".gpkg")
    for target in (path, labels_path):
        if not target.parent.is_dir():
            raise UserInputError(f"{target.parent}: no such folder; create it first")
    if path.resolve() == labels_path.resolve():
        raise UserInputError(f"{path}: the image and its labels need different file names")
    scene = render_scene(size_wh, gsd_m=gsd_m, seed=seed, dtype=dtype, dense_town=dense_town)
    staged = [(_partial(path), path), (_partial(labels_path), labels_path)]
    try:
        _write_geotiff(staged[0][0], scene, gsd_m=gsd_m, seed=seed)
        staged[1][0].unlink(missing_ok=True)
        scene.labels.to_file(staged[1][0], layer=LABEL_LAYER, driver="GPKG")
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    return path, labels_path


def render_scene(
    size_wh: tuple[int, int] = (1024, 1024),
    *,
    gsd_m: float = 0.5,
    seed: int = 0,
    dtype: str = "uint8",
    dense_town: bool = False,
) -> SyntheticScene:
    """Lay out, label and paint one scene (see the module docstring); a ``dense_town``
    packs its blocks with rows of small houses (``buildings``) whose roofs, at 1 m or finer,
    show their details (``roofs``)."""
    width, height = _check_args(size_wh, gsd_m, seed, dtype)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(9)]
    scales = _Scales.from_gsd(gsd_m)
    transform, crs = _georef(rngs[0], width, height, gsd_m)
    layout = _layout(rngs[1], width, height, scales)
    objects = _Objects(sun_xy=layout.sun_xy)
    _add_fields(rngs[2], layout, scales, objects)
    details = rngs[8] if dense_town else None
    _add_buildings(rngs[3], layout, scales, objects, details=details, dense=dense_town)
    _add_ships(rngs[4], layout, scales, objects)
    labels, ids, renumber = _labels_and_ids(objects, layout.scene, transform, crs)
    image = _paint(rngs[5], layout, objects, ids, scales)
    image = _atmosphere(rngs[6], image, scales, layout.sun_xy)
    image = _quantize(rngs[7], image, dtype)
    return SyntheticScene(image, labels, transform, crs, renumber[ids])


def _check_args(size_wh: Any, gsd_m: float, seed: int, dtype: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size_wh)
    except (TypeError, ValueError):
        raise UserInputError(f"size {size_wh!r}: give two integers, width and height") from None
    if min(width, height) < 32 or width * height > 100_000_000:
        raise UserInputError(f"size {width} x {height}: use 32 to 10000 pixels a side")
    if not 0.05 <= gsd_m <= 100:
        raise UserInputError(f"GSD {gsd_m} m: use 0.05 to 100 m per pixel (0.5 to 10 is usual)")
    if seed < 0:
        raise UserInputError(f"seed {seed}: use a non-negative integer")
    if dtype not in ("uint8", "uint16"):
        raise UserInputError(f"dtype {dtype!r}: use uint8 or uint16")
    return width, height


def _georef(rng: np.random.Generator, width: int, height: int, gsd_m: float) -> tuple[Any, CRS]:
    """A north-up grid in a UTM zone (northern hemisphere) drawn from the seed."""
    zone = int(rng.integers(1, 61))
    x0 = round(float(rng.uniform(250_000, 650_000)), -2)
    y0 = round(float(rng.uniform(1_000_000, 7_000_000)), -2)
    return Affine(gsd_m, 0.0, x0, 0.0, -gsd_m, y0), CRS.from_epsg(32600 + zone)


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def _write_geotiff(path: Path, scene: SyntheticScene, *, gsd_m: float, seed: int) -> None:
    import rasterio

    _, height, width = scene.image.shape
    block = 256 if min(width, height) >= 256 else max(16, 16 * (min(width, height) // 16))
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": scene.image.dtype.name,
        "crs": scene.crs.to_wkt(),
        "transform": scene.transform,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "predictor": 2,
        "photometric": "RGB",
        "interleave": "pixel",
    }
    path.unlink(missing_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(scene.image)
        dst.update_tags(GEOSEG_SYNTH_SEED=str(seed), GEOSEG_SYNTH_GSD_M=str(gsd_m))
