"""Write synthetic dense-town crops for training: rows of small houses a metre or two apart,
flat concrete roofs with tanks and stair houses, corrugated metal, at 0.25-0.6 m GSD.

Each seed renders a 1,024 px synthetic scene with a dense town (``render_scene(...,
dense_town=True)``) at a GSD drawn log-uniformly from ``--gsd-range``; a seed whose crop
holds at least 40 buildings gives a 512 px crop centred on its buildings: a GeoTIFF and a
GeoPackage of every label in it (clipped).

    python tools/default_model/dense_town_scenes.py OUT_DIR --seeds 9700 9800 --count 60
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geoseg.learn.synth import LABEL_LAYER, render_scene

SCENE_PX = 1024
CROP_PX = 512
MIN_BUILDINGS = 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs=2, default=(9700, 9800))
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--gsd-range", type=float, nargs=2, default=(0.25, 0.6))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    for seed in range(*args.seeds):
        if written >= args.count:
            break
        rng = np.random.default_rng(seed)
        low, high = args.gsd_range
        gsd = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        scene = render_scene((SCENE_PX, SCENE_PX), gsd_m=gsd, seed=seed, dense_town=True)
        buildings = scene.labels[scene.labels["class"] == "building"]
        if len(buildings) < MIN_BUILDINGS:
            continue
        inverse = ~scene.transform
        points = buildings.geometry.representative_point()
        cols, rows = zip(*(inverse * (p.x, p.y) for p in points), strict=True)
        top = int(np.clip(np.median(rows) - CROP_PX / 2, 0, SCENE_PX - CROP_PX))
        left = int(np.clip(np.median(cols) - CROP_PX / 2, 0, SCENE_PX - CROP_PX))
        window = Window(left, top, CROP_PX, CROP_PX)
        crop_transform = window_transform(window, scene.transform)
        x0, y0 = crop_transform * (0, 0)
        x1, y1 = crop_transform * (CROP_PX, CROP_PX)
        area = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        labels = scene.labels.clip(area)
        labels = labels[labels.geom_type.isin(["Polygon", "MultiPolygon"])]
        inside = int((labels["class"] == "building").sum())
        if inside < MIN_BUILDINGS:
            continue
        name = args.out / f"dense_{seed}"
        profile = {
            "driver": "GTiff",
            "width": CROP_PX,
            "height": CROP_PX,
            "count": 3,
            "dtype": "uint8",
            "crs": scene.crs,
            "transform": crop_transform,
            "compress": "deflate",
        }
        with rasterio.open(name.with_suffix(".tif"), "w", **profile) as dst:
            dst.write(scene.image[:, top : top + CROP_PX, left : left + CROP_PX])
        labels.to_file(name.with_suffix(".gpkg"), layer=LABEL_LAYER, driver="GPKG")
        written += 1
        print(f"{name}: {gsd:.2f} m, {inside} buildings")


if __name__ == "__main__":
    main()
