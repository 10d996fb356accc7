"""Benchmark ``geoseg run`` on a dense city: 100,000+ buildings, every one exactly once.

What it does:

1. Writes a coded city scene (see :mod:`geoseg.testing`) of ``--size`` x ``--size`` pixels at
   0.5 m, block by block (:func:`bench_scene.write_scene`: never the whole scene in memory).
   Buildings are rectangles of 6-30 px, one in most cells of a 34 px lattice (17 m: about
   2,900 buildings per km², 105,000 on 12,000 px); in about one cell row in six, pairs of
   neighbours are stretched to touch (no background pixel between them, two ids), and many
   buildings cross tile seams. A few large fields (300-1,000 px, wider than the overlap) fill
   lattice blocks of their own, and a harbour strip along the bottom holds ships.
2. Runs ``python -m geoseg run`` on it with the oracle model (``--simplify 0``), polled for
   memory, and with the model timed (:func:`bench_scene.run_geoseg`), so the run splits into
   start-up, tiles and the *tail* after the last tile (the last vectorizing, stitching and
   writing the outputs): the issue's target is a tail under 10 % of the run.
3. Does the same on a quarter of the area (``--size`` halved), for the ratio of peak RSS
   (a run whose memory stays flat holds about the same at both sizes).
4. Checks that every painted object comes out exactly once, per class.

Object ids: a coded scene holds 65,535 ids (two bytes, :func:`geoseg.testing.encode_instances`),
fewer than a city's objects. The oracle only needs ids that are unique within what one tile
reads (the model sees one tile at a time; stitching works on the masks, never on the ids), so
ids are given in raster order and reused every 65,535 objects: objects that share an id are
thousands of pixels apart (checked against the tile and its halo before the run).

    python benchmarks/bench_city.py --size 12000            # 105,000 buildings, and 6,000 px
    python benchmarks/bench_city.py --size 2048 --no-quarter  # a quick check

Run it with ``nice`` on a shared machine; ``--json`` appends the figures to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import bench_scene
import numpy as np
from bench_scene import CLASSES, Objects, count_outputs, run_geoseg

CELL_PX = 34  # building lattice (17 m at 0.5 m)
FIELD_BLOCK_PX = 1088  # a field fills part of such a block (32 cells), cleared of buildings
HARBOUR_PX = 256  # the bottom strip: ships, no buildings
MAX_IDS = 65535  # what a coded scene holds (two bytes)


def city_objects(size_px: int, seed: int) -> Objects:
    """Buildings on a dense lattice (some touching), a few fields, ships in a harbour strip."""
    rng = np.random.default_rng(seed)
    boxes: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    # Fields: in about 1 block in 12 (at least one when the scene holds a block).
    n_blocks = (size_px - HARBOUR_PX) // FIELD_BLOCK_PX
    fields = rng.random((n_blocks, n_blocks)) < 1 / 12
    if n_blocks and not fields.any():
        fields[n_blocks // 2, n_blocks // 2] = True
    for bi, bj in zip(*np.nonzero(fields), strict=True):
        h, w = rng.integers(300, 1001, size=2)
        r0 = bi * FIELD_BLOCK_PX + rng.integers(4, FIELD_BLOCK_PX - h - 3)
        c0 = bj * FIELD_BLOCK_PX + rng.integers(4, FIELD_BLOCK_PX - w - 3)
        boxes.append(np.array([[r0, c0, r0 + h, c0 + w]]))
        labels.append(np.array([1]))
    # Buildings: one in 95 % of the lattice cells outside fields and harbour.
    n_cells = (size_px - HARBOUR_PX) // CELL_PX
    ci, cj = (a.ravel() for a in np.meshgrid(np.arange(n_cells), np.arange(n_cells), indexing="ij"))
    per_block = FIELD_BLOCK_PX // CELL_PX
    bi, bj = ci // per_block, cj // per_block
    inside = (bi < n_blocks) & (bj < n_blocks)
    in_field = np.zeros(ci.shape, dtype=bool)
    in_field[inside] = fields[bi[inside], bj[inside]]
    keep = (rng.random(ci.shape) < 0.95) & ~in_field
    ci, cj = ci[keep], cj[keep]
    h = rng.integers(6, 31, size=ci.size)
    w = rng.integers(6, 31, size=ci.size)
    r0 = ci * CELL_PX + 2 + (rng.random(ci.size) * (CELL_PX - h - 3)).astype(np.int64)
    c0 = cj * CELL_PX + 2 + (rng.random(ci.size) * (CELL_PX - w - 3)).astype(np.int64)
    c1 = c0 + w
    # Touching neighbours: in one cell row in six, a building and its right neighbour in the
    # same row are stretched to meet at the cell boundary (terraced houses).
    terraced = (ci % 6 == 0) & (cj % 2 == 0)
    neighbour = np.searchsorted(ci * n_cells + cj, ci * n_cells + cj + 1)
    pair = terraced & (neighbour < ci.size)
    pair[pair] &= (ci[neighbour[pair]] == ci[pair]) & (cj[neighbour[pair]] == cj[pair] + 1)
    boundary = (cj[pair] + 1) * CELL_PX
    c1[pair] = boundary
    c0[neighbour[pair]] = boundary
    boxes.append(np.column_stack([r0, c0, r0 + h, c1]))
    labels.append(np.zeros(ci.size, dtype=np.int64))
    # Ships: a loose lattice in the harbour strip.
    n_ships = size_px // 64
    sr0 = size_px - HARBOUR_PX + 16 + rng.integers(0, HARBOUR_PX - 64, n_ships)
    sc0 = np.arange(n_ships) * 64 + 4
    sh, sw = rng.integers(8, 40, size=(2, n_ships))
    boxes.append(np.column_stack([sr0, sc0, sr0 + sh, sc0 + np.minimum(sw, 56)]))
    labels.append(np.full(n_ships, 2))
    box = np.concatenate(boxes).astype(np.int64)
    label = np.concatenate(labels).astype(np.int64)
    order = np.lexsort((box[:, 1], box[:, 0]))  # raster order, for the ids
    box, label = box[order], label[order]
    ids = np.arange(len(box)) % MAX_IDS + 1
    return Objects(box, ids, label)


def check_ids(objects: Objects, window_px: int) -> None:
    """Objects sharing an id must never meet in one tile's window (tile + halo)."""
    box = objects.box_yxyx
    if len(box) <= MAX_IDS:
        return
    gap = box[MAX_IDS:, 0] - box[:-MAX_IDS, 2]  # raster order: same id, 65,535 objects apart
    if gap.min() <= window_px:
        raise SystemExit(
            f"objects sharing an id are only {gap.min()} px apart (a tile reads {window_px} px):"
            " the scene is too wide for two-byte ids"
        )


def scene_for(size_px: int, seed: int, workdir: Path) -> tuple[Path, Objects]:
    return bench_scene.scene_for(size_px, seed, workdir, city_objects, "city")


@contextlib.contextmanager
def extra_run_options(*options: str) -> Iterator[None]:
    """Add ``options`` to the ``geoseg run`` command that :func:`bench_scene.run_geoseg`
    starts (it has no parameter for them)."""

    def popen(cmd: list[str], **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen([*cmd, *options], **kwargs)  # type: ignore[call-overload]

    real = bench_scene.subprocess
    bench_scene.subprocess = types.SimpleNamespace(Popen=popen, STDOUT=subprocess.STDOUT)  # type: ignore[assignment]
    try:
        yield
    finally:
        bench_scene.subprocess = real


def measure(size_px: int, args: argparse.Namespace) -> dict[str, object]:
    scene, objects = scene_for(size_px, args.seed, args.workdir)
    check_ids(objects, args.tile_size + 2 * args.overlap)
    outdir = args.workdir / f"out_{scene.stem}"
    with extra_run_options("--simplify", "0"):
        run = run_geoseg(scene, outdir, args)
    if run.returncode != 0:
        raise SystemExit(f"geoseg run failed with exit code {run.returncode}")
    found = count_outputs(outdir, scene.stem)
    figures: dict[str, object] = {
        "scene_px": size_px,
        "area_km2": (size_px * bench_scene.GSD_M / 1000) ** 2,
        "scene_mib": round(scene.stat().st_size / 2**20, 1),
        "objects_painted": objects.counts(),
        "objects_found": found,
        "exactly_once": found == objects.counts(),
        **asdict(run),
        "tail_share_pct": 100 * run.tail_s / run.wall_s,
        "outputs_mib": round(sum(p.stat().st_size for p in outdir.iterdir()) / 2**20, 1),
    }
    figures.pop("summary")
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=12000, help="scene side in pixels")
    parser.add_argument("--no-quarter", action="store_true", help="skip the quarter-area run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--scheduler", default="threads")
    workdir = Path(tempfile.gettempdir()) / "geoseg-bench"
    parser.add_argument("--workdir", type=Path, default=workdir)
    parser.add_argument("--json", type=Path, default=None, help="append the figures here")
    args = parser.parse_args(argv)
    args.model = "geoseg.testing:OracleSegmenter"
    args.min_score = 0.5
    args.workdir.mkdir(parents=True, exist_ok=True)

    runs = [measure(args.size, args)]
    if not args.no_quarter:
        runs.append(measure(args.size // 2, args))
    figures: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        "tile_px": args.tile_size,
        "overlap_px": args.overlap,
        "batch_size": args.batch_size,
        "scheduler": args.scheduler,
        "runs": runs,
    }
    if len(runs) == 2:
        peak = [max(r["peak_rss_tree_mib"], r["peak_rss_kernel_mib"]) for r in runs]  # type: ignore[type-var]
        figures["peak_rss_ratio_full_to_quarter"] = round(peak[0] / peak[1], 2)  # type: ignore[operator]
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(figures) + "\n")
    bad = [r["scene_px"] for r in runs if not r["exactly_once"]]
    if bad:
        print(f"MISMATCH at {bad} px: an object was lost, cut or duplicated", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    assert set(CLASSES) == {"building", "field", "ship"}
    sys.exit(main())
