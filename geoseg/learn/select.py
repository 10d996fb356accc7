"""``geoseg select``: the tiles of an archive most worth labelling, as chips with pre-labels.

The shortest path from "the default model is weak on my imagery" to "my model is good":
pick the tiles whose labels would teach the model most, cut them out as GeoTIFF chips,
pre-label them with the model, let a person correct the pre-labels, and fine-tune on the
chips (``geoseg train --images 'picks/chips/*.tif' --labels picks/prelabels.gpkg``).

1. **Candidates**: every scene (files, folders, globs, manifests, STAC, as ``geoseg batch``)
   is cut into non-overlapping ``tile_px`` windows on the grid ``geoseg run`` reads it on
   (the last window of a row or column is shifted back to end on the edge, and then overlaps
   its neighbour: a pick excludes every candidate it overlaps, so picks never overlap).
2. **Scoring**, streamed as ``geoseg run`` streams: one Dask task per batch of windows reads
   them (windowed reads, normalized as for the model), skips windows with no valid pixel
   without calling the model, and returns per window only a small summary
   (:class:`~geoseg.learn.coreset.Candidate`): valid share, uncertainty (model on the tile and
   its mirror image, :mod:`geoseg.learn.uncertainty`) and an embedding of a few hundred
   bytes. No scene is ever held whole. (A model that reads its classes at several GSDs is
   scored on the finest of its working grids; the pre-labels use every pass.)
3. **Picking** (:mod:`geoseg.learn.coreset`): among candidates with at least ``min_valid`` of
   valid pixels, the ``pool_factor * n`` most uncertain, then greedy k-center on their
   embeddings seeded by the most uncertain; ``random=True`` draws ``n`` at random instead
   (from ``seed``), for comparison. Both are reproducible.
4. **Writing**, in ``outdir``: ``chips/<scene>_<row>_<col>.tif`` (the file's own pixels, all
   bands, its CRS, transform and nodata; ``row``/``col`` are the window's offsets in the
   file), ``prelabels.gpkg`` (the model's polygons on each chip, through the ``geoseg run``
   pipeline, one layer per class), ``selection.gpkg`` (chip footprints with rank and
   uncertainty) and ``README.txt`` (how to correct and what to run next). Archives whose
   scenes are in several CRSs get one layer per class and CRS (``building_32633``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
import shapely
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.windows import Window

from geoseg.batch.inputs import output_stems, resolve_inputs
from geoseg.config import RunOptions
from geoseg.errors import GeoSegError, UserInputError
from geoseg.gpu import auto_batch_size
from geoseg.grid import PixelWindow, axis_offsets
from geoseg.learn.coreset import Candidate, pick_random, pick_uncertain_diverse
from geoseg.learn.uncertainty import embed_tiles, tile_uncertainty, two_views
from geoseg.model.protocol import load_segmenter
from geoseg.pipeline import (
    compute_tasks,
    objects_to_layers,
    plan_scene,
    scene_tasks,
    stitch_passes,
)
from geoseg.scene import SceneInfo, read_tiles

__all__ = [
    "Archive",
    "SceneRef",
    "SelectOptions",
    "SelectResult",
    "candidate_windows",
    "score_archive",
    "score_windows",
    "select",
    "write_picks",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SelectOptions:
    """What to pick: ``n`` tiles; ``random`` for a random pick of the same shape; ``seed``;
    ``pool_factor`` (how many times ``n`` uncertain candidates k-center chooses among);
    ``min_valid`` (the least share of valid pixels a candidate needs, above 0); ``asset``
    (the STAC asset to read)."""

    n: int = 20
    random: bool = False
    seed: int = 0
    pool_factor: int = 4
    min_valid: float = 0.5
    asset: str | None = None

    def validate(self) -> None:
        """Raise :class:`~geoseg.errors.UserInputError` for options that cannot work."""
        if self.n < 1:
            raise UserInputError(f"-n {self.n}: pick at least one tile")
        if self.pool_factor < 1:
            raise UserInputError(f"--pool-factor {self.pool_factor} must be at least 1")
        if not 0 < self.min_valid <= 1:
            raise UserInputError(f"--min-valid {self.min_valid} must be in (0, 1]")


@dataclass(slots=True)
class SelectResult:
    """What a selection did: the files it wrote and one row per pick (rank order)."""

    outdir: Path
    chips: list[Path]
    prelabels: Path
    selection: Path
    readme: Path
    picks: list[dict[str, Any]]
    n_scenes: int
    n_candidates: int
    method: str
    seconds: float
    skipped: list[str] = field(default_factory=list)


def candidate_windows(shape_yx: tuple[int, int], tile_px: int) -> list[PixelWindow]:
    """Windows of ``tile_px`` that cover the scene without overlap, except the last of each
    row and column, shifted back to end on the edge (clipped for scenes under a tile)."""
    height, width = shape_yx
    return [
        PixelWindow(row, col, min(tile_px, height - row), min(tile_px, width - col))
        for row in axis_offsets(height, tile_px, 0)
        for col in axis_offsets(width, tile_px, 0)
    ]


def score_windows(
    scene: SceneInfo,
    scene_index: int,
    windows: Sequence[PixelWindow],
    tile_px: int,
    model_spec: str,
    device: str,
    score: bool = True,
) -> list[Candidate]:
    """One Dask task: read ``windows`` and summarize each that has a valid pixel (with the
    model's uncertainty and embedding when ``score``; the model loads once per process)."""
    pixels, valid = read_tiles(scene, list(windows), tile_px)
    fractions = [float(v.sum()) / max(1, w.area_px) for v, w in zip(valid, windows, strict=True)]
    keep = [k for k, f in enumerate(fractions) if f > 0]
    if not keep:
        return []
    doubts = np.zeros(len(keep))
    counts = np.zeros(len(keep), dtype=int)
    embeddings = np.zeros((len(keep), 0), dtype=np.float32)
    if score:
        model = load_segmenter(model_spec, device=device)
        views = two_views(model, pixels[keep], valid[keep], scene.gsd_m)
        doubts = np.array([tile_uncertainty(*v) for v in views])
        counts = np.array([len(v[0].scores) for v in views])
        embeddings = embed_tiles(model, pixels[keep], valid[keep])
    return [
        Candidate(
            scene_index, windows[k], fractions[k], float(doubts[i]), int(counts[i]), embeddings[i]
        )
        for i, k in enumerate(keep)
    ]


@dataclass(slots=True)
class Archive:
    """The scenes of an archive and the small summaries of their candidate tiles."""

    scenes: list[SceneRef]
    candidates: list[Candidate]
    scored: bool
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SceneRef:
    """A scene of the archive: its path, the stem of its chips, and how it is read."""

    path: Path
    stem: str
    info: SceneInfo


def select(
    inputs: Sequence[str | Path],
    outdir: str | Path,
    *,
    options: SelectOptions | None = None,
    run: RunOptions | None = None,
    scheduler: Any = "threads",
) -> SelectResult:
    """Pick, cut and pre-label the tiles most worth labelling (see the module docstring):
    :func:`score_archive`, then :func:`write_picks`."""
    options = options or SelectOptions()
    options.validate()
    run = run or RunOptions()
    start = time.perf_counter()
    _check_outdir(Path(outdir))
    archive = score_archive(inputs, run, scheduler, asset=options.asset, score=not options.random)
    result = write_picks(archive, outdir, options=options, run=run, scheduler=scheduler)
    result.seconds = time.perf_counter() - start
    return result


def _check_outdir(outdir: Path) -> None:
    chip_dir = outdir / "chips"
    if chip_dir.is_dir() and any(chip_dir.glob("*.tif")):
        raise UserInputError(
            f"{chip_dir}: already holds chips of an earlier selection; choose another -o or "
            "delete it"
        )


def score_archive(
    inputs: Sequence[str | Path],
    run: RunOptions,
    scheduler: Any = "threads",
    *,
    asset: str | None = None,
    score: bool = True,
) -> Archive:
    """Open every scene and summarize its candidate tiles, one Dask task per batch (with the
    model's uncertainty and embeddings when ``score``)."""
    scenes, skipped = _open_scenes(inputs, asset, run)
    return Archive(scenes, _score_all(scenes, run, scheduler, score=score), score, skipped)


def write_picks(
    archive: Archive,
    outdir: str | Path,
    *,
    options: SelectOptions,
    run: RunOptions,
    scheduler: Any = "threads",
) -> SelectResult:
    """Pick from a scored archive and write the chips, pre-labels, selection and README."""
    options.validate()
    start = time.perf_counter()
    outdir = Path(outdir)
    _check_outdir(outdir)
    usable = [c for c in archive.candidates if c.valid_fraction >= options.min_valid]
    if not usable:
        raise UserInputError(
            f"no tile of {len(archive.scenes)} scene(s) has at least {options.min_valid:.0%} "
            "valid pixels (lower --min-valid?)"
        )
    if options.random:
        picked = [usable[k] for k in pick_random(usable, options.n, seed=options.seed)]
        if not archive.scored:
            picked = _rescore(picked, archive.scenes, run)
    else:
        if not archive.scored:
            raise ValueError("an uncertain+diverse pick needs an archive scored by the model")
        order = pick_uncertain_diverse(usable, options.n, pool_factor=options.pool_factor)
        picked = [usable[k] for k in order]
    if len(picked) < options.n:
        log.warning("only %d tile(s) could be picked, not %d", len(picked), options.n)
    chip_dir = outdir / "chips"
    chip_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        _write_chip(c, rank, archive.scenes[c.scene], chip_dir) for rank, c in enumerate(picked, 1)
    ]
    method = "random" if options.random else "uncertain+diverse"
    meta = {
        "geoseg_select_method": method,
        "geoseg_select_seed": str(options.seed),
        "geoseg_model": run.model,
    }
    prelabels = _write_prelabels(rows, outdir / "prelabels.gpkg", run, scheduler, meta)
    selection = _write_selection(rows, outdir / "selection.gpkg", method, meta)
    readme = _write_readme(outdir, rows, run, method)
    return SelectResult(
        outdir=outdir,
        chips=[Path(r["path"]) for r in rows],
        prelabels=prelabels,
        selection=selection,
        readme=readme,
        picks=rows,
        n_scenes=len(archive.scenes),
        n_candidates=len(usable),
        method=method,
        seconds=time.perf_counter() - start,
        skipped=list(archive.skipped),
    )


def _open_scenes(
    inputs: Sequence[str | Path], asset: str | None, run: RunOptions
) -> tuple[list[SceneRef], list[str]]:
    paths = resolve_inputs(inputs, asset=asset)
    stems = output_stems(paths)
    scenes, skipped = [], []
    for path in paths:
        try:
            plan = plan_scene(path, run)
        except UserInputError:
            raise
        except GeoSegError as exc:  # one unreadable scene of an archive: skip it, say so
            log.warning("skipped %s", exc)
            skipped.append(str(exc))
            continue
        scenes.append(SceneRef(path, stems[path], plan.scene))
    if not scenes:
        raise UserInputError(f"no readable scene in {', '.join(map(str, inputs))}")
    return scenes, skipped


def _score_all(
    scenes: Sequence[SceneRef], run: RunOptions, scheduler: Any, *, score: bool
) -> list[Candidate]:
    tasks = []
    size = run.batch_size or auto_batch_size(run.device, run.tile_px)
    for index, scene in enumerate(scenes):
        windows = candidate_windows(scene.info.shape_yx, run.tile_px)
        for k in range(0, len(windows), size):
            tasks.append(
                dask.delayed(score_windows, pure=True)(
                    scene.info,
                    index,
                    windows[k : k + size],
                    run.tile_px,
                    run.model,
                    run.device,
                    score,
                )
            )
    return [c for batch in compute_tasks(tasks, scheduler) for c in batch]


def _rescore(
    picked: Sequence[Candidate], scenes: Sequence[SceneRef], run: RunOptions
) -> list[Candidate]:
    """The random picks with their uncertainty (for the record), in the same order."""
    out = []
    for c in picked:
        scored = score_windows(
            scenes[c.scene].info, c.scene, [c.window], run.tile_px, run.model, run.device
        )
        out.append(scored[0] if scored else c)
    return out


def _file_window(scene: SceneInfo, window: PixelWindow, src: Any) -> Window:
    """A working-grid window as a window of the file (the same one unless resampled)."""
    if not scene.resampled:
        return Window(window.col_off, window.row_off, window.width, window.height)
    to_file = ~src.transform * scene.transform
    c0, r0 = to_file * (window.col_off, window.row_off)
    c1, r1 = to_file * (window.col_stop, window.row_stop)
    c0, c1 = sorted((round(c0), round(c1)))
    r0, r1 = sorted((round(r0), round(r1)))
    c0, r0 = max(0, c0), max(0, r0)
    c1, r1 = min(src.width, max(c1, c0 + 1)), min(src.height, max(r1, r0 + 1))
    return Window(c0, r0, c1 - c0, r1 - r0)


def _write_chip(c: Candidate, rank: int, scene: SceneRef, chip_dir: Path) -> dict[str, Any]:
    """Write one chip (the file's own pixels) and return its row of the selection."""
    with rasterio.open(scene.path) as src:
        win = _file_window(scene.info, c.window, src)
        row, col = int(win.row_off), int(win.col_off)
        path = chip_dir / f"{scene.stem}_{row}_{col}.tif"
        profile = {
            "driver": "GTiff",
            "height": int(win.height),
            "width": int(win.width),
            "count": src.count,
            "dtype": src.dtypes[0],
            "crs": scene.info.crs_wkt,
            "transform": src.window_transform(win),
            "nodata": src.nodata,
            "compress": "deflate",
        }
        data = src.read(window=win)
        per_dataset_mask = all(MaskFlags.per_dataset in f for f in src.mask_flag_enums)
        alpha = ColorInterp.alpha in src.colorinterp
        mask = src.read_masks(1, window=win) if per_dataset_mask and not alpha else None
        tmp = path.with_name(f".{path.name}.partial")
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            dst.colorinterp = src.colorinterp
            if mask is not None:
                dst.write_mask(mask)
        os.replace(tmp, path)
        bounds = rasterio.windows.bounds(win, src.transform)
    return {
        "rank": rank,
        "chip": path.name,
        "path": str(path),
        "scene": str(scene.path),
        "row": row,
        "col": col,
        "width": int(win.width),
        "height": int(win.height),
        "uncertainty": round(c.uncertainty, 4),
        "detections": c.n_detections,
        "valid_fraction": round(c.valid_fraction, 4),
        "crs_wkt": scene.info.crs_wkt,
        "geometry": shapely.box(*bounds),
    }


def _write_prelabels(
    rows: Sequence[dict[str, Any]],
    path: Path,
    run: RunOptions,
    scheduler: Any,
    meta: dict[str, str],
) -> Path:
    """The model's polygons on every chip (as ``geoseg run`` finds them), one layer per
    class (and CRS), each with the chip it lies on."""
    plans = [plan_scene(r["path"], run) for r in rows]
    per_plan = [scene_tasks(p) for p in plans]
    flat = compute_tasks([t for tasks in per_plan for t in tasks], scheduler)
    frames: dict[str, list[gpd.GeoDataFrame]] = {}
    classes: tuple[str, ...] = ()
    at = 0
    for row, plan, tasks in zip(rows, plans, per_plan, strict=True):
        results, at = flat[at : at + len(tasks)], at + len(tasks)
        classes = plan.model.classes
        for name, frame in objects_to_layers(stitch_passes(plan, results), plan).items():
            frame = frame.assign(chip=row["chip"])
            frames.setdefault(name, []).append(frame)
    crs_of = {r["crs_wkt"] for r in rows}
    layers: dict[str, gpd.GeoDataFrame] = {}
    for name in classes:
        parts = frames.get(name, [])
        for crs_wkt in sorted(crs_of):
            mine = [f for f in parts if f.crs is not None and f.crs.to_wkt() == crs_wkt]
            mine = [f for f in mine if len(f)] or mine[:1]
            frame = (
                gpd.GeoDataFrame({"class": [], "score": [], "chip": []}, geometry=[], crs=crs_wkt)
                if not mine
                else gpd.GeoDataFrame(_concat(mine), crs=crs_wkt)
            )
            layers[_layer_name(name, crs_wkt, len(crs_of))] = frame
    _write_layers(path, layers, meta)
    return path


def _concat(frames: Sequence[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    import pandas as pd

    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry")


def _layer_name(name: str, crs_wkt: str, n_crs: int) -> str:
    if n_crs == 1:
        return name
    from pyproj import CRS

    epsg = CRS.from_wkt(crs_wkt).to_epsg()
    return f"{name}_{epsg or hashlib.sha1(crs_wkt.encode()).hexdigest()[:6]}"


def _write_selection(
    rows: Sequence[dict[str, Any]], path: Path, method: str, meta: dict[str, str]
) -> Path:
    """Chip footprints with their rank and uncertainty (one layer per CRS)."""
    crs_of = sorted({r["crs_wkt"] for r in rows})
    layers = {}
    for crs_wkt in crs_of:
        mine = [
            {k: v for k, v in r.items() if k not in ("crs_wkt", "path")} | {"method": method}
            for r in rows
            if r["crs_wkt"] == crs_wkt
        ]
        layers[_layer_name("selection", crs_wkt, len(crs_of))] = gpd.GeoDataFrame(
            mine, geometry="geometry", crs=crs_wkt
        )
    _write_layers(path, layers, meta)
    return path


def _write_layers(path: Path, layers: dict[str, gpd.GeoDataFrame], meta: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.stem}.partial.gpkg")
    tmp.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    for k, (name, frame) in enumerate(layers.items()):
        pyogrio.write_dataframe(
            frame,
            tmp,
            layer=name,
            driver="GPKG",
            geometry_type="Polygon" if name.startswith("selection") else "MultiPolygon",
            append=k > 0,
            layer_metadata=meta,
        )
    os.replace(tmp, path)


def _write_readme(
    outdir: Path, rows: Sequence[dict[str, Any]], run: RunOptions, method: str
) -> Path:
    path = outdir / "README.txt"
    chips = outdir / "chips"
    text = f"""\
geoseg select: {len(rows)} tile(s) worth labelling ({method}), model {run.model}.

  chips/           the picked windows of your scenes as GeoTIFFs (your own pixels, CRS
                   and nodata; name: <scene>_<row>_<col>.tif, offsets in the scene)
  prelabels.gpkg   the model's polygons on the chips, one layer per class: correct these
  selection.gpkg   chip footprints, with rank (1 = most worth labelling) and uncertainty

How to label (QGIS):
  1. Open selection.gpkg, the chips (chips/*.tif) and prelabels.gpkg.
  2. On every chip, edit the class layers of prelabels.gpkg: delete false objects, fix
     outlines, and draw the missed objects (fill in 'class', or draw in that class's layer).
     Only the chips count as labelled: polygons outside every chip are ignored.
  3. Save (edit prelabels.gpkg in place, or save a copy as corrected.gpkg).

Fine-tune, then measure:
  geoseg train --images '{chips}/*.tif' --labels {outdir}/prelabels.gpkg \\
      --init default -o mine.pt --all-labelled
  geoseg run held_out.tif --model mine.pt -o out/
  geoseg eval out/held_out.gpkg held_out_truth.gpkg

--all-labelled says that every chip was corrected: a chip left with no polygon then
teaches "nothing here". Without it, chips with no polygon are skipped as unlabelled.
"""
    path.write_text(text)
    return path
