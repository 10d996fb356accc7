"""Benchmark ``geoseg run`` on a large coded scene: wall time, model time, overhead, peak memory.

What it does:

1. Writes a coded test scene (see :mod:`geoseg.testing`: band 1 = class + 1, bands 2 and 3 = the
   instance id) of ``--size`` x ``--size`` pixels, window by window, so the scene is never in
   memory: a tiled (512 px blocks), deflate-compressed, 3-band uint8 GeoTIFF in EPSG:32633 at
   0.5 m. Objects are random rectangles, one in most cells of a 128 px lattice (8-100 px,
   buildings and ships), plus a few large fields (300-1000 px, wider than the overlap, so they
   are stitched from pieces). It is cached in ``--workdir`` and reused.
2. Runs ``python -m geoseg run`` on it in a subprocess and measures the wall time of the whole
   process (start-up, model load and writing included) and its peak RSS: the process tree is
   polled with psutil every 50 ms, and the kernel's own peak (``ru_maxrss`` from ``wait4``) is
   read when it exits. The model is wrapped by ``timed_model.py`` so the time spent inside
   ``predict`` during the run is known too.
3. Times the model alone on the same tiles, in a fresh process: the batches of tiles are read
   first (not timed), then ``model.predict`` is timed on them, called from as many threads as
   the run's scheduler uses (one per core for ``threads``).
4. Checks the output: with the oracle model, every painted object must come out exactly once.

Overhead = (run wall time - model-alone time) / model-alone time: what reading, vectorizing,
stitching, writing, start-up and scheduling add to the model. The run's time is also split
into start-up (to the first ``predict`` call: imports, model load, planning), the tiles (first
call to last return) and the tail (stitching and writing), so ``overhead_tiles_pct`` is what
the per-tile work alone (reading, post-processing, vectorizing, scheduling) adds.

    python benchmarks/bench_scene.py --size 20000 --model geoseg.testing:OracleSegmenter
    python benchmarks/bench_scene.py --size 2048 --model default --device cpu
    python benchmarks/bench_scene.py --size 2048 --model default --profile   # where time goes

Run it with ``nice`` on a shared machine; ``--json`` appends the figures to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from geoseg.config import RunOptions

HERE = Path(__file__).resolve().parent
CELL_PX = 128  # lattice of small objects
FIELD_BLOCK_PX = 1024  # a large object fills part of such a block
BLOCK_PX = 512  # GeoTIFF block size, and the window written at a time
GSD_M = 0.5
CRS = "EPSG:32633"
CLASSES = ("building", "field", "ship")


# --------------------------------------------------------------------------- the scene


@dataclass(frozen=True)
class Objects:
    """Non-overlapping rectangles ``[row0, row1) x [col0, col1)`` with an id and a class."""

    box_yxyx: np.ndarray  # (N, 4) int64: row0, col0, row1, col1
    ids: np.ndarray  # (N,) 1..65535
    labels: np.ndarray  # (N,) class index

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == k).sum()) for k, name in enumerate(CLASSES)}


def random_objects(size_px: int, seed: int, *, p_small: float = 0.6) -> Objects:
    """Small rectangles on a jittered 128 px lattice and a few large fields, never touching."""
    rng = np.random.default_rng(seed)
    boxes: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    # Large fields: in about 1 of 6 blocks of 1024 px; the small objects keep out of that block.
    n_big = size_px // FIELD_BLOCK_PX
    big = rng.random((n_big, n_big)) < 1 / 6
    for bi, bj in zip(*np.nonzero(big), strict=True):
        h, w = rng.integers(300, 1001, size=2)
        r0 = bi * FIELD_BLOCK_PX + rng.integers(4, FIELD_BLOCK_PX - h - 3)
        c0 = bj * FIELD_BLOCK_PX + rng.integers(4, FIELD_BLOCK_PX - w - 3)
        boxes.append(np.array([[r0, c0, r0 + h, c0 + w]]))
        labels.append(np.array([1]))
    n_cells = size_px // CELL_PX
    ci, cj = np.meshgrid(np.arange(n_cells), np.arange(n_cells), indexing="ij")
    ci, cj = ci.ravel(), cj.ravel()
    per_block = FIELD_BLOCK_PX // CELL_PX
    bi, bj = ci // per_block, cj // per_block
    in_field = np.zeros(ci.shape, dtype=bool)
    inside = (bi < n_big) & (bj < n_big)
    in_field[inside] = big[bi[inside], bj[inside]]
    keep = (rng.random(ci.shape) < p_small) & ~in_field
    ci, cj = ci[keep], cj[keep]
    h = rng.integers(8, 101, size=ci.size)
    w = rng.integers(8, 101, size=ci.size)
    r0 = ci * CELL_PX + 2 + (rng.random(ci.size) * (CELL_PX - h - 3)).astype(np.int64)
    c0 = cj * CELL_PX + 2 + (rng.random(ci.size) * (CELL_PX - w - 3)).astype(np.int64)
    boxes.append(np.column_stack([r0, c0, r0 + h, c0 + w]))
    labels.append(np.where(rng.random(ci.size) < 0.8, 0, 2))
    box = np.concatenate(boxes).astype(np.int64)
    if len(box) > 65535:
        raise SystemExit(f"{len(box)} objects: a coded scene holds at most 65535; use --size less")
    return Objects(box, np.arange(1, len(box) + 1), np.concatenate(labels).astype(np.int64))


def write_scene(path: Path, size_px: int, objects: Objects) -> None:
    """Write the coded scene block by block (never more than one block in memory)."""
    import rasterio
    from affine import Affine

    from geoseg.testing import encode_instances

    profile = {
        "driver": "GTiff",
        "height": size_px,
        "width": size_px,
        "count": 3,
        "dtype": "uint8",
        "crs": CRS,
        "transform": Affine(GSD_M, 0, 500_000, 0, -GSD_M, 4_000_000 + size_px * GSD_M),
        "compress": "deflate",
        "tiled": True,
        "blockxsize": BLOCK_PX,
        "blockysize": BLOCK_PX,
        "BIGTIFF": "IF_SAFER",
    }
    box = objects.box_yxyx
    tmp = path.with_name(path.stem + ".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for row0 in range(0, size_px, BLOCK_PX):
            row1 = min(row0 + BLOCK_PX, size_px)
            in_rows = (box[:, 0] < row1) & (box[:, 2] > row0)
            for col0 in range(0, size_px, BLOCK_PX):
                col1 = min(col0 + BLOCK_PX, size_px)
                hit = np.flatnonzero(in_rows & (box[:, 1] < col1) & (box[:, 3] > col0))
                ids = np.zeros((row1 - row0, col1 - col0), dtype=np.int64)
                for k in hit:
                    r0, c0, r1, c1 = box[k]
                    ids[max(r0, row0) - row0 : min(r1, row1) - row0,
                        max(c0, col0) - col0 : min(c1, col1) - col0] = objects.ids[k]  # fmt: skip
                class_of = {int(objects.ids[k]): int(objects.labels[k]) for k in hit}
                window = rasterio.windows.Window(col0, row0, col1 - col0, row1 - row0)
                dst.write(encode_instances(ids, class_of), window=window)
    tmp.replace(path)


def scene_for(
    size_px: int,
    seed: int,
    workdir: Path,
    make: Callable[[int, int], Objects] = random_objects,
    prefix: str = "coded",
) -> tuple[Path, Objects]:
    """The coded scene ``make(size_px, seed)`` draws, written once into ``workdir``."""
    objects = make(size_px, seed)
    path = workdir / f"{prefix}_{size_px}_s{seed}.tif"
    if not path.exists():
        start = time.perf_counter()
        write_scene(path, size_px, objects)
        print(
            f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {len(objects.ids)} objects) "
            f"in {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
    return path, objects


# --------------------------------------------------------------------------- the run


@dataclass
class RunFigures:
    wall_s: float
    peak_rss_tree_mib: float  # polled, process and children summed
    peak_rss_kernel_mib: float  # ru_maxrss of the largest process of the tree
    cpu_s: float  # user + system CPU seconds of the process tree
    run_s: float  # what geoseg reports: plan + tiles + stitch + write, without start-up
    returncode: int
    predict_calls: int
    predict_sum_s: float  # sum of the durations of the predict calls
    predict_busy_s: float  # wall time during which at least one predict call ran
    # perf_counter is CLOCK_MONOTONIC on Linux, the same clock in both processes:
    startup_s: float  # process start -> first predict call (imports, model load, plan, 1st read)
    tiles_s: float  # first predict call -> last predict return
    tail_s: float  # last predict return -> exit (last vectorize, stitch, write, exit)
    summary: str


def _tree_rss(proc: object) -> int:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]  # type: ignore[attr-defined]
    except psutil.Error:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _busy_time(intervals: list[tuple[float, float]]) -> float:
    busy, end = 0.0, -float("inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        busy += stop - max(start, end)
        end = stop
    return busy


def run_geoseg(scene: Path, outdir: Path, args: argparse.Namespace) -> RunFigures:
    """``python -m geoseg run`` in a subprocess, polled for memory, with a timed model."""
    import psutil

    times = outdir.parent / f"{outdir.name}.predict-times.jsonl"
    times.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env["GEOSEG_BENCH_INNER"] = args.model
    env["GEOSEG_BENCH_TIMES"] = str(times)
    cmd = [
        sys.executable, "-m", "geoseg", "run", str(scene), "-o", str(outdir),
        "--model", "timed_model:timed", "--device", args.device,
        "--tile-size", str(args.tile_size), "--overlap", str(args.overlap),
        "--batch-size", str(args.batch_size), "--scheduler", args.scheduler,
        "--min-score", str(args.min_score),
    ]  # fmt: skip
    print("$", " ".join(cmd), file=sys.stderr)
    log = outdir.parent / f"{outdir.name}.log"
    with open(log, "w") as out:
        start = time.perf_counter()
        popen = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        proc = psutil.Process(popen.pid)
        peak = 0
        while True:
            pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _tree_rss(proc))
            time.sleep(0.05)
        wall = time.perf_counter() - start
    popen.returncode = os.waitstatus_to_exitcode(status)
    end = start + wall
    calls = []
    if times.exists():
        for line in times.read_text().splitlines():
            calls += [(a, b) for a, b, _ in json.loads(line)["calls"]]
    summary = log.read_text().replace("\r", "\n")
    match = re.search(r"^Tiles: .* in ([0-9.]+) s", summary, flags=re.MULTILINE)
    if popen.returncode != 0:
        print(summary, file=sys.stderr)
    return RunFigures(
        wall_s=wall,
        peak_rss_tree_mib=peak / 2**20,
        peak_rss_kernel_mib=usage.ru_maxrss / 1024,  # Linux: kilobytes
        cpu_s=usage.ru_utime + usage.ru_stime,
        returncode=popen.returncode,
        predict_calls=len(calls),
        predict_sum_s=sum(b - a for a, b in calls),
        predict_busy_s=_busy_time(calls),
        startup_s=min(a for a, _ in calls) - start if calls else float("nan"),
        tiles_s=max(b for _, b in calls) - min(a for a, _ in calls) if calls else float("nan"),
        tail_s=end - max(b for _, b in calls) if calls else float("nan"),
        run_s=float(match.group(1)) if match else float("nan"),
        summary="\n".join(
            line for line in summary.splitlines() if line.strip() and not line.startswith("tiles:")
        ),
    )


@dataclass
class ModelFigures:
    wall_s: float  # model.predict only, batch after batch
    cpu_s: float  # CPU seconds of this process (all its threads) inside model.predict
    read_s: float  # reading the tiles beforehand (not part of the model's time)
    tiles: int
    peak_rss_mib: float  # of this process, model loaded and run
    threads: int  # threads calling predict at once


def model_alone(scene: Path, args: argparse.Namespace) -> ModelFigures:
    """``model.predict`` on the run's own batches of tiles, read beforehand.

    The calls are made as the run makes them: on ``os.cpu_count()`` worker threads for the
    threads scheduler (Dask's default pool), in this thread for ``sync``. This matters: on a
    busy 2-core machine, torch's Mask R-CNN took 2-3 times longer called from the main thread
    (with its 2 intra-op threads) than from a worker thread (see README). Batches are read in
    chunks of a few per worker (not timed) so memory stays bounded; tiles with no valid pixel
    are skipped, as the pipeline skips them.
    """
    from geoseg.model.protocol import load_segmenter
    from geoseg.pipeline import plan_scene
    from geoseg.scene import read_tiles

    plan = plan_scene(scene, run_options(args))
    model = load_segmenter(args.model, device=args.device)
    want = getattr(model, "input_bands", None)
    workers = 1 if args.scheduler == "sync" else os.cpu_count() or 1

    def read(indexed: tuple) -> np.ndarray:
        index, batch = indexed
        scene_pass = plan.passes[index].scene
        pixels, valid = read_tiles(scene_pass, [t.window for t in batch], args.tile_size)
        pixels = pixels[valid.reshape(len(batch), -1).any(axis=1)]
        if want and want != pixels.shape[1]:
            pixels = pixels[:, [i % pixels.shape[1] for i in range(want)]]
        return np.ascontiguousarray(pixels, dtype=np.float32)

    wall = cpu = read_s = 0.0
    n_tiles = 0
    chunk = 4 * workers
    with ThreadPoolExecutor(workers) as pool:
        for k in range(0, len(plan.batches), chunk):
            t0 = time.perf_counter()
            arrays = [a for a in map(read, plan.batches[k : k + chunk]) if len(a)]
            t1, c1 = time.perf_counter(), time.process_time()
            if workers == 1:
                for a in arrays:
                    model.predict(a)
            else:
                list(pool.map(model.predict, arrays))
            wall += time.perf_counter() - t1
            cpu += time.process_time() - c1
            read_s += t1 - t0
            n_tiles += sum(len(a) for a in arrays)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return ModelFigures(wall, cpu, read_s, n_tiles, peak, workers)


def model_alone_process(argv: list[str], scene: Path, workdir: Path) -> ModelFigures:
    """:func:`model_alone` in a fresh process, like the run: its memory stays out of this one.

    (A child started from this process inherits its peak RSS: the kernel counts the parent's
    pages in the child's ``ru_maxrss`` up to ``exec``, so this process must stay small.)
    """
    out = workdir / "model-alone.json"
    cmd = [sys.executable, __file__, *argv, "--model-alone-only", str(out), "--scene", str(scene)]
    subprocess.run(cmd, check=True)
    return ModelFigures(**json.loads(out.read_text()))


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        model=args.model,
        tile_px=args.tile_size,
        overlap_px=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        min_score=args.min_score,
    )


def count_outputs(outdir: Path, stem: str) -> dict[str, int]:
    import pyogrio

    gpkg = outdir / f"{stem}.gpkg"
    return {
        name: int(pyogrio.read_info(gpkg, layer=name)["features"])
        for name, kind in pyogrio.list_layers(gpkg)
        if kind is not None  # not layer_styles
    }


def profile_run(scene: Path, outdir: Path, args: argparse.Namespace) -> str:
    """cProfile of the run on Dask's synchronous scheduler (all work in one thread)."""
    import cProfile
    import io
    import pstats

    from geoseg.pipeline import run_scene

    options = run_options(args)
    profiler = cProfile.Profile()
    profiler.enable()
    run_scene(scene, outdir, options=options, scheduler="sync")
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(25)
    return text.getvalue()


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20000, help="scene side in pixels")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default="geoseg.testing:OracleSegmenter")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--scheduler", default="threads")
    parser.add_argument("--min-score", type=float, default=0.5)
    workdir = Path(tempfile.gettempdir()) / "geoseg-bench"
    parser.add_argument("--workdir", type=Path, default=workdir)
    parser.add_argument("--repeat", type=int, default=1, help="runs to take the fastest of")
    parser.add_argument("--no-model-alone", action="store_true", help="skip step 3")
    parser.add_argument("--profile", action="store_true", help="also profile a run (sync)")
    parser.add_argument("--max-rss-gib", type=float, default=None, help="fail above this peak")
    parser.add_argument("--json", type=Path, default=None, help="append the figures here")
    parser.add_argument("--model-alone-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scene", type=Path, default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.model_alone_only:  # step 3, in a process of its own (see model_alone_process)
        args.model_alone_only.write_text(json.dumps(asdict(model_alone(args.scene, args))))
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    scene, objects = scene_for(args.size, args.seed, args.workdir)
    tag = f"{scene.stem}_{args.model.replace(':', '.').replace('/', '_')}"
    outdir = args.workdir / f"out_{tag}"
    runs: list[RunFigures] = []
    alones: list[ModelFigures] = []
    for _ in range(args.repeat):  # alternate, so both see the same spells of load
        runs.append(run_geoseg(scene, outdir, args))
        if runs[-1].returncode != 0:
            print(f"geoseg run failed with exit code {runs[-1].returncode}", file=sys.stderr)
            return 1
        if not args.no_model_alone:
            alones.append(model_alone_process(argv, scene, args.workdir))
    # The fastest of the repeats (the least disturbed by other work), and the worst memory.
    run = min(runs, key=lambda r: r.wall_s)
    found = count_outputs(outdir, scene.stem)
    figures: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        "scene_px": args.size,
        "scene_mib": round(scene.stat().st_size / 2**20, 1),
        "model": args.model,
        "tile_px": args.tile_size,
        "overlap_px": args.overlap,
        "batch_size": args.batch_size,
        "scheduler": args.scheduler,
        "min_score": args.min_score,
        "repeats": args.repeat,
        "objects_painted": objects.counts(),
        "objects_found": found,
        **asdict(run),
        "all_wall_s": [round(r.wall_s, 1) for r in runs],
        "peak_rss_tree_mib": max(r.peak_rss_tree_mib for r in runs),
        "peak_rss_kernel_mib": max(r.peak_rss_kernel_mib for r in runs),
        # throughput, and the share of the tiles phase during which the model (the GPU, on
        # --device cuda) was busy with at least one batch
        "megapixels_per_s": args.size**2 / 1e6 / run.wall_s,
        "megapixels_per_s_tiles": args.size**2 / 1e6 / run.tiles_s,
        "model_busy_share": run.predict_busy_s / run.tiles_s,
    }
    if alones:
        alone = min(alones, key=lambda m: m.wall_s)
        figures.update({f"model_alone_{k}": v for k, v in asdict(alone).items()})
        figures["model_alone_all_wall_s"] = [round(m.wall_s, 1) for m in alones]
        figures.update(
            overhead_pct=100 * (run.wall_s - alone.wall_s) / alone.wall_s,
            overhead_run_pct=100 * (run.run_s - alone.wall_s) / alone.wall_s,
            overhead_cpu_pct=100 * (run.cpu_s - alone.cpu_s) / alone.cpu_s,
            overhead_tiles_pct=100 * (run.tiles_s - alone.wall_s) / alone.wall_s,
        )
    figures = {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
    if args.profile:
        figures["profile_file"] = str(args.workdir / f"profile_{tag}.txt")
        Path(str(figures["profile_file"])).write_text(
            profile_run(scene, args.workdir / f"prof_{tag}", args)
        )
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(figures) + "\n")
    ok = True
    if args.model == "geoseg.testing:OracleSegmenter" and found != objects.counts():
        print(f"MISMATCH: painted {objects.counts()}, found {found}", file=sys.stderr)
        ok = False
    peak_gib = max(max(r.peak_rss_tree_mib, r.peak_rss_kernel_mib) for r in runs) / 1024
    if args.max_rss_gib is not None and peak_gib >= args.max_rss_gib:
        print(f"peak RSS {peak_gib:.2f} GiB >= {args.max_rss_gib} GiB", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
