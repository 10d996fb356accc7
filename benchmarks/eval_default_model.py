"""Score a model through ``geoseg run`` + ``geoseg eval`` on held-out scenes (model card figures).

Held out from the default model's training:

- synthetic scenes made by ``geoseg synth`` with seeds 0-3 (seeds 0-99 are never used for
  training), 1024 x 1024 px, uint8, at 0.5, 2, 5 and 10 m, seed 6 at 0.5 m (53 ships, most
  of them boats at a marina's berths) and seed 5 at 0.3 m (a marina: the proxy of the
  very-high-resolution marina);
- the eastern 15% of the SpaceNet Atlanta sample (columns 765-899, the strip ``geoseg train
  --val-fraction 0.15`` kept out), with its building outlines clipped to it;
- the sen2ships Casablanca scene (ships; never trained on);
- with ``--shared ../shared/data``: the OpenAerialMap cluster ``nairobi_2`` at 0.3 m
  (buildings) and the ten NAIP test chips of ``fields-naip/split.json`` (fields, 1 m), which
  the default model never trained on, and the Danish Sentinel-2 fields of the eastern 15% of
  ``denmark_west.tif`` (the strip ``--val-fraction 0.15`` kept out): the scene is run whole
  (the strip alone is 41 px wide) and only objects whose representative point lies in the
  strip are scored, predictions and references alike.

(The Nebraska centre-pivot sample labels only a third of its fields, so it cannot score a
model.)

Each scene goes through the commands a user runs (``geoseg run SCENE --model M -o OUT`` then
``geoseg eval OUT/SCENE.gpkg REF --json``) and the figures are printed as a Markdown table::

    python benchmarks/eval_default_model.py --model default --workdir /tmp/geoseg-eval \
        --shared ../shared/data
    python benchmarks/eval_default_model.py --model my.pt --min-score 0.5 --only real
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import rasterio
import shapely
from rasterio.windows import Window

from geoseg.learn.chips import validation_column

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = ((0, 0.5), (6, 0.5), (1, 2.0), (2, 5.0), (3, 10.0), (5, 0.3))
VAL_FRACTION = 0.15  # the default model's --val-fraction: its eastern strips were never trained on


def held_out_window(src: rasterio.DatasetReader) -> Window:
    """The eastern strip of an image that training with ``VAL_FRACTION`` kept out."""
    first = validation_column(src.width, VAL_FRACTION)
    return Window(first, 0, src.width - first, src.height)


def geoseg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "geoseg", *args], check=True)


def atlanta_east(data: Path, workdir: Path) -> tuple[Path, Path]:
    """The held-out eastern strip of the Atlanta sample and its clipped building outlines."""
    image, labels = workdir / "atlanta_east.tif", workdir / "atlanta_east_buildings.gpkg"
    if image.is_file() and labels.is_file():
        return image, labels
    with rasterio.open(data / "atlanta_pan.tif") as src:
        window = held_out_window(src)
        profile = src.profile | {
            "width": window.width,
            "height": window.height,
            "transform": src.window_transform(window),
        }
        for key in ("blockxsize", "blockysize", "tiled"):
            profile.pop(key, None)
        with rasterio.open(image, "w", **profile) as dst:
            dst.write(src.read(window=window))
        bounds, crs = rasterio.windows.bounds(window, src.transform), src.crs
    outlines = gpd.read_file(data / "atlanta_buildings.geojson").to_crs(crs)
    clipped = outlines.clip(bounds)
    clipped = clipped[clipped.geom_type.isin(["Polygon", "MultiPolygon"]) & (clipped.area > 0)]
    clipped[["geometry"]].assign(**{"class": "building"}).to_file(labels)
    return image, labels


OAM_HELD_OUT = "nairobi_2_z19"


def held_out_strip(scene: Path, pred: Path, ref: Path, cls: str) -> tuple[Path, Path]:
    """Predictions and references of class ``cls`` whose representative point lies in the
    eastern strip of ``scene`` that training kept out, written beside ``pred``."""
    with rasterio.open(scene) as src:
        bounds = rasterio.windows.bounds(held_out_window(src), src.transform)
        strip, crs = shapely.box(*bounds), src.crs
    out = []
    for path, layer, name in ((pred, cls, "strip_pred.gpkg"), (ref, None, "strip_ref.gpkg")):
        frame = gpd.read_file(path, layer=layer).to_crs(crs)
        frame = frame[frame.representative_point().within(strip)]
        frame = frame.drop(columns="class", errors="ignore").assign(**{"class": cls})
        frame.to_file(pred.with_name(name), layer=cls if layer else None)
        out.append(pred.with_name(name))
    return out[0], out[1]


def cases(
    workdir: Path, data: Path, shared: Path | None, only: str
) -> list[tuple[str, Path, Path, str, bool]]:
    """``(name, scene, reference, class or '', scored in the held-out strip only)`` for every
    held-out scene."""
    out = []
    for seed, gsd in SYNTHETIC if only in ("all", "synthetic") else ():
        image = workdir / f"synth_seed{seed}_gsd{gsd:g}.tif"
        if not image.is_file():
            size = ("--size", "1024", "1024", "--dtype", "uint8")
            geoseg("synth", str(image), "--seed", str(seed), "--gsd", f"{gsd:g}", *size)
        out.append((image.stem, image, image.with_suffix(".gpkg"), "", False))
    if only == "synthetic":
        return out
    image, labels = atlanta_east(data, workdir)
    out.append(("atlanta_east (real)", image, labels, "building", False))
    casablanca = (data / "casablanca.tif", data / "casablanca_ships.geojson")
    out.append(("casablanca (real)", *casablanca, "ship", False))
    if shared is not None:
        oam = shared / "buildings-oam" / OAM_HELD_OUT
        out.append(
            (
                f"oam {OAM_HELD_OUT} (real)",
                oam.with_suffix(".tif"),
                oam.with_suffix(".gpkg"),
                "building",
                False,
            )
        )
        denmark = shared / "fields-denmark"
        scene, labels = denmark / "denmark_west.tif", denmark / "denmark_west_fields.gpkg"
        out.append(("denmark_west east strip (real)", scene, labels, "field", True))
        naip = shared / "fields-naip"
        for stem in json.loads((naip / "split.json").read_text())["test"]:
            out.append(
                (f"{stem} (real)", naip / f"{stem}.tif", naip / f"{stem}.gpkg", "field", False)
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/geoseg-eval"))
    parser.add_argument("--data", type=Path, default=REPO / "sample_data")
    parser.add_argument("--shared", type=Path, default=None, help="../shared/data")
    parser.add_argument("--only", choices=("all", "synthetic", "real"), default="all")
    parser.add_argument("--min-score", type=float, default=None)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, scene, ref, cls, strip in cases(args.workdir, args.data, args.shared, args.only):
        out = args.workdir / "out" / scene.stem
        run = ["-q", "run", str(scene), "--model", args.model, "-o", str(out)]
        if args.min_score is not None:
            run += ["--min-score", str(args.min_score)]
        geoseg(*run)
        report, pred = out / "eval.json", out / f"{scene.stem}.gpkg"
        if strip:
            pred, ref = held_out_strip(scene, pred, ref, cls)
        evaluate = ["eval", str(pred), str(ref), "--json", str(report)]
        if cls:
            evaluate += ["--ref-class", cls, "--classes", cls]
        geoseg(*evaluate)
        for klass, m in json.loads(report.read_text())["classes"].items():
            rows.append((name, klass, m))
    metrics = ("precision", "recall", "f1", "ap50", "ap", "boundary_iou", "boundary_ap")
    print("| scene | class | refs | preds | precision | recall | F1 | AP50 | AP | BIoU | BAP |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, klass, m in rows:
        text = " | ".join("-" if m.get(k) is None else f"{m[k]:.3f}" for k in metrics)
        print(f"| {name} | {klass} | {m['n_ref']} | {m['n_pred']} | {text} |")
    pooled: dict[str, list[int]] = {}
    for name, _, m in rows:
        if name.startswith("naip"):
            counts = pooled.setdefault("naip test chips (fields)", [0, 0, 0])
            counts[0] += m["tp"]
            counts[1] += m["n_pred"] - m["tp"]
            counts[2] += m["n_ref"] - m["tp"]
    for name, (tp, fp, fn) in pooled.items():
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        print(f"\n{name}, pooled: {tp} tp, {fp} fp, {fn} fn, F1 {f1:.3f}")


if __name__ == "__main__":
    main()
