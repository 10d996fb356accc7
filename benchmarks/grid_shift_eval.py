"""F1 of a model on one labelled scene, pooled over shifts of the tile grid.

``geoseg run`` lays its tiles from the scene's top-left pixel, so where a tile border falls
on an object is fixed by the scene's extent. Moving that corner by a few pixels changes
which objects a tile sees whole, and the network is not exactly invariant to it: on the
held-out ``nairobi_2_z19`` the shipped default scores F1 0.419-0.500 over eight shifts
(model card, "The held-out city's F1 moves with the tile grid"). One scene's F1 at one
alignment is therefore a noisy figure to choose settings or weights by.

This script pads the scene with ``offset`` columns on the left and rows on top (nodata,
georeferenced so every pixel keeps its place on the ground), runs ``geoseg run`` on each
padded copy as a user would, scores each with :func:`geoseg.learn.evaluate.evaluate`, and
prints each shift's F1 and the pooled counts (true positives, false positives and misses
summed over the shifts)::

    python benchmarks/grid_shift_eval.py ../shared/data/buildings-oam/nairobi_2_z19.tif \
        ../shared/data/buildings-oam/nairobi_2_z19.gpkg --classes building \
        --workdir /tmp/shifts [--model cand.pt] [--offsets 0,0 3,0 0,5 8,8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from geoseg.learn.evaluate import evaluate, read_polygons

DEFAULT_OFFSETS = ("0,0", "3,0", "0,5", "8,8", "16,0", "31,17", "64,64", "128,0")
"""Columns, rows of padding: sub-stride, stride-sized and tile-overlap-sized moves."""


def padded_copy(scene: Path, columns: int, rows: int, out: Path) -> Path:
    """``scene`` with ``columns`` nodata columns on the left and ``rows`` on top, each
    pixel at its own place on the ground."""
    with rasterio.open(scene) as src:
        pixels = src.read()
        profile = src.profile.copy()
        transform = src.transform * Affine.translation(-columns, -rows)
        nodata = src.nodata if src.nodata is not None else 0
    bands, height, width = pixels.shape
    padded = np.full((bands, height + rows, width + columns), nodata, dtype=pixels.dtype)
    padded[:, rows:, columns:] = pixels
    profile.pop("photometric", None)  # a JPEG-in-TIFF source is written losslessly
    profile.update(
        width=width + columns,
        height=height + rows,
        transform=transform,
        nodata=nodata,
        compress="deflate",
        tiled=False,
    )
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(padded)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scene", type=Path)
    parser.add_argument("reference", type=Path, help="labelled polygons of the scene")
    parser.add_argument("--classes", default="building", help="classes to run and score")
    parser.add_argument("--model", default="default")
    parser.add_argument("--offsets", nargs="*", default=list(DEFAULT_OFFSETS))
    parser.add_argument("--workdir", type=Path, default=Path("grid-shifts"))
    parser.add_argument("--run-args", default="", help="more 'geoseg run' options, quoted")
    args = parser.parse_args()
    classes = args.classes.split(",")
    args.workdir.mkdir(parents=True, exist_ok=True)
    reference = read_polygons(args.reference)
    totals = {name: np.zeros(3, dtype=int) for name in classes}
    print(f"{args.scene.name}, model {args.model}, classes {args.classes}")
    for offset in args.offsets:
        columns, rows = (int(v) for v in offset.split(","))
        stem = f"{args.scene.stem}_pad{columns}_{rows}"
        scene = padded_copy(args.scene, columns, rows, args.workdir / f"{stem}.tif")
        out = args.workdir / stem
        command = [sys.executable, "-m", "geoseg", "-q", "run", str(scene), "-o", str(out)]
        command += ["--model", args.model, "--classes", args.classes]
        command += ["--no-preview", "--no-webmap", *args.run_args.split()]
        subprocess.run(command, check=True)
        found = read_polygons(out / f"{stem}.gpkg", classes=classes)
        scores = evaluate(found, reference, classes=classes, ref_class=classes[0])["classes"]
        line = []
        for name in classes:
            m = scores[name]
            totals[name] += (m["tp"], m["fp"], m["fn"])
            line.append(f"{name} {m['f1']:.3f} ({m['tp']} / {m['fp']} / {m['fn']})")
        print(f"  shift {columns:>3} x {rows:>3}: " + ", ".join(line))
    for name, (tp, fp, fn) in totals.items():
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        print(f"pooled {name}: F1 {f1:.3f} (found {tp}, false {fp}, missed {fn})")


if __name__ == "__main__":
    main()
