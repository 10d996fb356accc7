"""Write synthetic marina crops for training: small boats at 0.3-1 m GSD (stage 7).

Each seed renders a 1,024 px synthetic scene at a GSD drawn log-uniformly from 0.3-1.0 m
(``--gsd-range``); a
seed whose scene holds at least 10 boats shorter than 16 m gives a 384 px crop centred on
them: a GeoTIFF and a GeoPackage of every label in it (clipped; boats, ships and the rest).

    python tools/default_model/marina_scenes.py OUT_DIR --seeds 8000 8200 --count 40
    python tools/default_model/marina_scenes.py OUT_DIR --seeds 8200 8400 --count 40 \
        --gsd-range 0.35 0.8
"""

from __future__ import annotations

import numpy as np
import shapely
from scene_crops import centred_window, crop_arguments, seeds_and_gsds, write_crop

from geoseg.learn.synth import render_scene

CROP_PX = 384


def main() -> None:
    args = crop_arguments(__doc__, (8000, 8200), 40, (0.3, 1.0))
    written = 0
    for seed, gsd in seeds_and_gsds(args):
        if written >= args.count:
            break
        scene = render_scene((1024, 1024), gsd_m=gsd, seed=seed)
        ships = scene.labels[scene.labels["class"] == "ship"]
        rects = shapely.oriented_envelope(ships.geometry.to_numpy())
        coords = shapely.get_coordinates(rects).reshape(len(rects), 5, 2)
        lengths = np.linalg.norm(coords[:, 1:3] - coords[:, 0:2], axis=2).max(axis=1)
        boats = ships[lengths < 16]
        if len(boats) < 10:
            continue
        window = centred_window(scene, boats.geometry.centroid, CROP_PX)
        name = args.out / f"marina_{seed}"
        write_crop(scene, window, name)
        written += 1
        print(f"{name}: {gsd:.2f} m, {len(boats)} boats")


if __name__ == "__main__":
    main()
