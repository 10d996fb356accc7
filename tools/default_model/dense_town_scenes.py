"""Write synthetic dense-town crops for training: rows of small houses a metre or two apart,
flat concrete roofs with tanks and stair houses, corrugated metal, at 0.25-0.6 m GSD.

Each seed renders a 1,024 px synthetic scene with a dense town (``render_scene(...,
dense_town=True)``) at a GSD drawn log-uniformly from ``--gsd-range``; a seed whose crop
holds at least 40 buildings gives a 512 px crop centred on its buildings: a GeoTIFF and a
GeoPackage of every label in it (clipped).

    python tools/default_model/dense_town_scenes.py OUT_DIR --seeds 9700 9800 --count 60
"""

from __future__ import annotations

from scene_crops import centred_window, crop_arguments, crop_labels, seeds_and_gsds, write_crop

from geoseg.learn.synth import render_scene

SCENE_PX = 1024
CROP_PX = 512
MIN_BUILDINGS = 40


def main() -> None:
    args = crop_arguments(__doc__, (9700, 9800), 60, (0.25, 0.6))
    written = 0
    for seed, gsd in seeds_and_gsds(args):
        if written >= args.count:
            break
        scene = render_scene((SCENE_PX, SCENE_PX), gsd_m=gsd, seed=seed, dense_town=True)
        buildings = scene.labels[scene.labels["class"] == "building"]
        if len(buildings) < MIN_BUILDINGS:
            continue
        window = centred_window(scene, buildings.geometry.representative_point(), CROP_PX)
        labels = crop_labels(scene, window)
        inside = int((labels["class"] == "building").sum())
        if inside < MIN_BUILDINGS:
            continue
        name = args.out / f"dense_{seed}"
        write_crop(scene, window, name, labels)
        written += 1
        print(f"{name}: {gsd:.2f} m, {inside} buildings")


if __name__ == "__main__":
    main()
