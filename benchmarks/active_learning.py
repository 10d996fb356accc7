"""Does ``geoseg select`` pick better chips to label than chance? Fine-tune and measure.

The pool is the training chips of ``fields-naip`` (real NAIP, 1 m, hand-drawn fields;
``--pool K``: the first K of the 30), the test set its 10 test chips (``split.json``). The
pool is scored once by the default model (as ``geoseg select`` does:
:func:`geoseg.learn.select.score_archive`); then, for each N and seed, N tiles are picked by
uncertainty and diversity and N at random (:func:`~geoseg.learn.select.write_picks`, as
``geoseg select`` and ``geoseg select --random`` write them), each pick is labelled with the
pool's reference polygons (standing in for a person's corrections), the default model is
fine-tuned on the chips with the same steps (``geoseg train --images 'chips/*.tif'
--all-labelled ...``), and every model runs on the test chips (``geoseg run``) and is scored
(``geoseg eval``: F1 at IoU 0.5 and Boundary IoU, pooled over the test chips). The
uncertain+diverse pick does not depend on the seed; its fine-tuning does.

    nice -n 10 python benchmarks/active_learning.py --out /tmp/al_bench --pool 10 --steps 30
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path
from typing import Any

DATA = Path("/work/shared/data/fields-naip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("/tmp/al_bench"))
    parser.add_argument("--sizes", default="4,8", help="values of N")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--tile", type=int, default=256, help="tile and chip side, pixels")
    parser.add_argument("--min-score", type=float, default=0.5)
    parser.add_argument("--pool", type=int, default=0, help="only the first K pool chips")
    parser.add_argument("--test", type=int, default=0, help="only the first K test chips")
    parser.add_argument("--batch", type=int, default=2, help="chips per training step")
    parser.add_argument(
        "--eval-tile", type=int, default=1024, help="tile side of the test runs (1024: whole)"
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from geoseg.config import RunOptions
    from geoseg.learn.select import SelectOptions, score_archive, write_picks

    split = json.loads((args.data / "split.json").read_text())
    pool = [args.data / f"{name}.tif" for name in split["train"]]
    test = [args.data / f"{name}.tif" for name in split["test"]]
    pool, test = pool[: args.pool or None], test[: args.test or None]
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.jsonl"
    done = _done(results_path)
    run = RunOptions(model="default", tile_px=args.tile, overlap_px=64, device="cpu")

    if "baseline" not in done:
        _record(results_path, {"arm": "baseline", **_evaluate("default", test, args)})
    cache = args.out / "archive.pkl"  # the pool scored once; a rerun resumes after it
    if cache.is_file():
        archive = pickle.loads(cache.read_bytes())
    else:
        started = time.perf_counter()
        archive = score_archive(pool, run, "sync")
        cache.write_bytes(pickle.dumps(archive))
        print(f"scored {len(archive.candidates)} tiles in {time.perf_counter() - started:.0f} s")
    for seed in [int(v) for v in args.seeds.split(",")]:  # seeds outermost: early rows span N
        for n in [int(v) for v in args.sizes.split(",")]:
            for method in ("select", "random"):
                key = f"{method}-n{n}-s{seed}"
                if key in done:
                    continue
                picks = args.out / f"{method}-n{n}" if method == "select" else args.out / key
                if not (picks / "selection.gpkg").is_file():
                    options = SelectOptions(n=n, random=method == "random", seed=seed)
                    write_picks(archive, picks, options=options, run=run, scheduler="sync")
                model = _fine_tune(picks, args.out / f"{key}.pt", seed, args)
                row = {"arm": key, "method": method, "n": n, "seed": seed}
                row |= _picks_summary(picks) | _evaluate(str(model), test, args)
                _record(results_path, row)
    _table(results_path)


def _done(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {json.loads(line)["arm"] for line in path.read_text().splitlines() if line}


def _record(path: Path, row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _selection(picks: Path) -> Any:
    """Every layer of ``selection.gpkg`` (one per CRS when the picks span several)."""
    import pandas as pd
    import pyogrio

    path = picks / "selection.gpkg"
    layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    frames = [pyogrio.read_dataframe(path, layer=name, read_geometry=False) for name in layers]
    return pd.concat(frames, ignore_index=True)


def _picks_summary(picks: Path) -> dict[str, Any]:
    sel = _selection(picks)
    return {
        "chips": sorted(sel["chip"]),
        "mean_uncertainty": round(float(sel["uncertainty"].mean()), 4),
        "scenes": int(sel["scene"].nunique()),
    }


def _fine_tune(picks: Path, output: Path, seed: int, args: argparse.Namespace) -> Path:
    """``geoseg train --images 'picks/chips/*.tif' --labels <the pool's polygons of those
    scenes> --init default --all-labelled``, the same steps for every arm."""
    if output.is_file():
        return output
    from geoseg.learn.train import LabelSource, TrainOptions, train

    sel = _selection(picks)
    labels = sorted({str(Path(s).with_suffix(".gpkg")) for s in sel["scene"]})
    images = sorted((picks / "chips").glob("*.tif"))
    options = TrainOptions(
        epochs=1,
        steps_per_epoch=args.steps,
        batch_size=args.batch,
        init="default",
        chip_px=args.tile,
        val_fraction=0.0,
        seed=seed,
        device="cpu",
        all_labelled=True,
        lr=5e-4,
    )
    started = time.perf_counter()
    train(images, [LabelSource(p) for p in labels], output, options=options)
    print(f"trained {output.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return output


def _evaluate(model: str, test: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Run ``model`` on every test chip and pool F1 (IoU 0.5) and Boundary IoU of fields."""
    from geoseg.config import RunOptions
    from geoseg.learn.evaluate import evaluate_files
    from geoseg.pipeline import run_scene

    outdir = args.out / "runs" / Path(model).stem
    tp = fp = fn = 0
    biou_sum = 0.0
    for scene in test:
        options = RunOptions(
            model=model,
            tile_px=args.eval_tile,
            overlap_px=128,
            device="cpu",
            min_score=args.min_score,
            formats=("gpkg",),
        )
        pred = outdir / f"{scene.stem}.gpkg"
        if not pred.is_file():
            run_scene(scene, outdir, options=options, scheduler="sync")
        m = evaluate_files(pred, scene.with_suffix(".gpkg"), classes=("field",))["classes"]["field"]
        tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
        biou_sum += (m["boundary_iou"] or 0.0) * m["tp"]
    return {
        "f1": round(2 * tp / max(1, 2 * tp + fp + fn), 4),
        "boundary_iou": round(biou_sum / tp, 4) if tp else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def _table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    base = next(r for r in rows if r["arm"] == "baseline")
    print(f"\nbaseline (default model): F1 {base['f1']:.3f}  BoundIoU {base['boundary_iou']}")
    print(f"{'N':>3} {'method':8} {'F1 per seed':24} {'mean F1':>8} {'mean BoundIoU':>14}")
    for n in sorted({r["n"] for r in rows if "n" in r}):
        for method in ("select", "random"):
            mine = [r for r in rows if r.get("n") == n and r.get("method") == method]
            if not mine:
                continue
            f1 = [r["f1"] for r in mine]
            biou = [r["boundary_iou"] or 0.0 for r in mine]
            print(
                f"{n:>3} {method:8} {' '.join(f'{v:.3f}' for v in f1):24} "
                f"{sum(f1) / len(f1):8.3f} {sum(biou) / len(biou):14.3f}"
            )


if __name__ == "__main__":
    main()
