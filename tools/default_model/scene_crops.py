"""A square crop of a synthetic scene, written for training: a GeoTIFF and a GeoPackage of
every label in it (clipped). Shared by ``marina_scenes.py`` and ``dense_town_scenes.py``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geoseg.learn.synth import LABEL_LAYER, SyntheticScene


def crop_arguments(
    doc: str, seeds: tuple[int, int], count: int, gsd_range: tuple[float, float]
) -> argparse.Namespace:
    """The command line of a crop script: ``out``, ``--seeds``, ``--count``, ``--gsd-range``
    (``out`` created)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs=2, default=seeds)
    parser.add_argument("--count", type=int, default=count)
    parser.add_argument("--gsd-range", type=float, nargs=2, default=gsd_range)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def seeds_and_gsds(args: argparse.Namespace) -> Iterator[tuple[int, float]]:
    """Each seed of ``--seeds`` with its GSD, drawn log-uniformly from ``--gsd-range`` by a
    generator seeded with it."""
    low, high = args.gsd_range
    for seed in range(*args.seeds):
        rng = np.random.default_rng(seed)
        yield seed, float(math.exp(rng.uniform(math.log(low), math.log(high))))


def centred_window(scene: SyntheticScene, points: gpd.GeoSeries, size_px: int) -> Window:
    """The ``size_px`` square window centred on the median pixel of ``points``, kept inside
    the scene."""
    inverse = ~scene.transform
    cols, rows = zip(*(inverse * (p.x, p.y) for p in points), strict=True)
    _, height, width = scene.image.shape
    top = int(np.clip(np.median(rows) - size_px / 2, 0, height - size_px))
    left = int(np.clip(np.median(cols) - size_px / 2, 0, width - size_px))
    return Window(left, top, size_px, size_px)


def crop_labels(scene: SyntheticScene, window: Window) -> gpd.GeoDataFrame:
    """The scene's labels clipped to ``window`` (polygons only)."""
    x0, y0, x1, y1 = rasterio.windows.bounds(window, scene.transform)
    labels = scene.labels.clip(shapely.box(x0, y0, x1, y1))
    return labels[labels.geom_type.isin(["Polygon", "MultiPolygon"])]


def write_crop(
    scene: SyntheticScene, window: Window, name: Path, labels: gpd.GeoDataFrame | None = None
) -> None:
    """``name``.tif (the window's pixels, deflated) and ``name``.gpkg (``labels``, by default
    the scene's clipped to the window)."""
    top, left = int(window.row_off), int(window.col_off)
    height, width = int(window.height), int(window.width)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": scene.crs,
        "transform": window_transform(window, scene.transform),
        "compress": "deflate",
    }
    with rasterio.open(name.with_suffix(".tif"), "w", **profile) as dst:
        dst.write(scene.image[:, top : top + height, left : left + width])
    labels = crop_labels(scene, window) if labels is None else labels
    labels.to_file(name.with_suffix(".gpkg"), layer=LABEL_LAYER, driver="GPKG")
