"""The Dask graph for one scene: read -> predict -> vectorize per batch of tiles, then stitch.

One batch of tiles (``batch_size`` tiles) is the unit of work: three small tasks per batch,

- ``read``: windowed reads of the batch's tiles, normalized; tiles with no valid pixel dropped;
- ``predict``: the model on the batch, loaded once per worker process by
  :func:`geoseg.model.load_segmenter` (only the model's *name* is in the graph, never the
  model), results cut to mask crops;
- ``vectorize``: each crop to a pixel-exact polygon, a :class:`~geoseg.stitch.Fragment`.

The graph runs on Dask's threaded scheduler by default, on processes, or on a ``distributed``
cluster; stitching and writing then happen in the calling process, on polygons only.

Each class at its own scale: a model may record the GSD range each class works at
(``class_gsd_range_m``). The scene is then read once per working GSD it needs (*passes*: for
example native for buildings and ships, 2 m for fields on a 0.5 m scene); each pass keeps its
own classes, is stitched on its own grid, and its polygons join the others in the scene's
CRS. A class whose range ends far finer than the scene (more than :data:`MAX_UPSAMPLING`) is
not searched, and a scene too coarse for every class is refused.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask
import geopandas as gpd
import numpy as np
from dask.callbacks import Callback
from dask.delayed import Delayed

from geoseg.commit import check_writable, scene_lock
from geoseg.config import DEFAULT_MIN_SCORE, RunOptions, score_thresholds
from geoseg.errors import UserInputError
from geoseg.formats import check_formats
from geoseg.fragments import MaskCrop, instances_to_crops
from geoseg.grid import Tile, TileGrid
from geoseg.measures import SHIP_CLASSES, SHIP_COLUMNS, ship_dimensions
from geoseg.model.protocol import Instances, ModelInfo, describe_spec, load_segmenter
from geoseg.output import COLUMNS, write_outputs
from geoseg.scene import (
    SceneInfo,
    check_unchanged,
    clamp_gsd,
    fit_gsd,
    open_scene,
    read_tiles,
)
from geoseg.scheduler import check_reachable
from geoseg.stitch import Fragment, StitchedObject, stitch
from geoseg.vectorize import (
    GeoMeasures,
    crop_to_polygon,
    geodesic_measures,
    stable_id,
    to_crs_polygon,
)

__all__ = [
    "MAX_UPSAMPLING",
    "BatchResult",
    "RunResult",
    "ScenePass",
    "ScenePlan",
    "finish_scene",
    "plan_scene",
    "run_scene",
    "scene_tasks",
    "stitch_passes",
]

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

REGULAR_CLASSES = frozenset({"building"})
"""Classes whose outlines ``--regularize`` squares."""

MAX_UPSAMPLING = 3.0
"""How many times finer than the scene a class's coarsest GSD may be: beyond it the objects are
too small in the scene to be found, and upsampling would only multiply the tiles."""


@dataclass(frozen=True, slots=True)
class ScenePass:
    """One reading of the scene: its working grid (at one GSD), the tile grid on it, and the
    indexes of the classes this pass keeps."""

    scene: SceneInfo
    grid: TileGrid
    classes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ScenePlan:
    """A validated scene, read in one or more passes, their tiles cut into batches (each batch
    is ``(pass index, tiles)``), and the model that will run."""

    passes: tuple[ScenePass, ...]
    batches: tuple[tuple[int, tuple[Tile, ...]], ...]
    options: RunOptions
    model: ModelInfo
    notes: tuple[str, ...] = ()

    @property
    def scene(self) -> SceneInfo:
        """The scene as the first (finest) pass reads it."""
        return self.passes[0].scene

    @property
    def grid(self) -> TileGrid:
        return self.passes[0].grid

    @property
    def path(self) -> Path:
        return Path(self.scene.path)

    @property
    def n_tiles(self) -> int:
        return sum(len(p.grid) for p in self.passes)

    def class_gsd_m(self) -> dict[str, float]:
        """The GSD each class is read at (classes not searched are left out)."""
        return {self.model.classes[k]: p.scene.gsd_m for p in self.passes for k in p.classes}


@dataclass(slots=True)
class RunResult:
    """What a run did: the files it wrote, objects per class, tiles, seconds, and the model."""

    scene: Path
    outputs: list[Path]
    counts: dict[str, int]
    n_tiles: int
    n_skipped: int
    seconds: float
    model: ModelInfo
    notes: list[str] = field(default_factory=list)
    class_gsd_m: dict[str, float] = field(default_factory=dict)

    @property
    def tiles_per_second(self) -> float:
        return self.n_tiles / self.seconds if self.seconds > 0 else float("inf")


@dataclass(slots=True)
class ReadBatch:
    tiles: list[Tile]
    pixels: np.ndarray
    valid: np.ndarray
    n_skipped: int


@dataclass(slots=True)
class PredictedBatch:
    crops: list[tuple[Tile, list[MaskCrop]]]
    n_tiles: int
    n_skipped: int


@dataclass(slots=True)
class BatchResult:
    """The fragments of one batch and how many of its tiles were run or skipped (all nodata)."""

    fragments: list[Fragment]
    n_tiles: int
    n_skipped: int
    pass_index: int = 0


def plan_scene(path: str | Path, options: RunOptions | None = None) -> ScenePlan:
    """Open and validate the scene, describe the model (read once per process, on the CPU or
    not built at all: see :func:`~geoseg.model.protocol.describe_spec`), cut the tile grid."""
    options = options or RunOptions()
    options = replace(options, formats=check_formats(tuple(options.formats)))
    check_numbers(options)
    scene = open_scene(path, bands=options.bands, crs=options.crs, gsd_m=options.gsd_m)
    # only what the model says of itself: never loaded here on the workers' device
    info = describe_spec(options.model, device=options.device)
    if options.min_score is None:
        tuned = info.min_score if info.min_score is not None else DEFAULT_MIN_SCORE
        options = replace(options, min_score=tuned)
    if isinstance(options.min_score, dict):
        unknown = ", ".join(sorted(set(options.min_score) - set(info.classes)))
        if unknown:
            raise UserInputError(f"min_score names {unknown}, which the model does not know")
    if options.batch_size < 1:
        raise UserInputError(f"--batch-size {options.batch_size} must be at least 1")
    if not 0 < options.merge_iou <= 1:
        raise UserInputError(f"merge IoU {options.merge_iou} must be in (0, 1]")
    readings, notes = _readings(scene, info, options)
    options, clamped = _clamp_tile(options, readings)
    notes = [*notes, *clamped]
    passes, batches = [], []
    size = options.batch_size
    for index, (working, classes) in enumerate(readings):
        grid = TileGrid.from_shape(
            working.shape_yx, tile_px=options.tile_px, overlap_px=options.overlap_px
        )
        tiles = list(grid)
        passes.append(ScenePass(working, grid, classes))
        batches.extend((index, tuple(tiles[k : k + size])) for k in range(0, len(tiles), size))
    return ScenePlan(tuple(passes), tuple(batches), options, info, tuple(notes))


def check_numbers(options: RunOptions) -> None:
    """Refuse numbers that are not finite (``nan``, ``inf``) or out of range."""
    scores = options.min_score.values() if isinstance(options.min_score, dict) else []
    checks = [
        ("--gsd", options.gsd_m, lambda v: v > 0),
        ("--simplify", options.simplify_px, lambda v: v >= 0),
        *(("--min-score", v, lambda v: 0 <= v <= 1) for v in scores),
    ]
    if not isinstance(options.min_score, dict):
        checks.append(("--min-score", options.min_score, lambda v: 0 <= v <= 1))
    for name, value, ok in checks:
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise UserInputError(f"{name} {value}: give a finite number in range")


def _clamp_tile(
    options: RunOptions, readings: Sequence[tuple[SceneInfo, tuple[int, ...]]]
) -> tuple[RunOptions, list[str]]:
    """A tile larger than every working grid (and than the default tile) covers it with
    room to spare: shrink it to fit, so that no huge empty tile is allocated."""
    longest = max(max(working.shape_yx) for working, _ in readings)
    limit = max(-(-longest // 32) * 32, RunOptions().tile_px)
    if options.tile_px <= limit:
        return options, []
    note = f"--tile-size {options.tile_px} is larger than the scene: tiles of {limit} px"
    log.info("%s", note)
    overlap = min(options.overlap_px, limit // 4)
    return replace(options, tile_px=limit, overlap_px=overlap), [note]


def _readings(
    scene: SceneInfo, info: ModelInfo, options: RunOptions
) -> tuple[list[tuple[SceneInfo, tuple[int, ...]]], list[str]]:
    """The scene's working grids, finest first, each with the class indexes read on it."""
    everything = tuple(range(len(info.classes)))
    if options.gsd_m is not None:  # --gsd: one reading of every class at that GSD
        return [(scene, everything)], []
    ranges = [(info.class_gsd_range_m or {}).get(name, info.gsd_range_m) for name in info.classes]
    if all(r is None for r in ranges):
        return [(scene, everything)], []
    native = scene.file_gsd_m
    notes, targets = [], {}
    for k, gsd_range in enumerate(ranges):
        if gsd_range is not None and native > gsd_range[1] * MAX_UPSAMPLING:
            notes.append(
                f"{info.classes[k]} not searched: the scene's GSD ({native:.3g} m) is more than "
                f"{MAX_UPSAMPLING:g} times the coarsest the model finds it at "
                f"({gsd_range[1]:.3g} m)"
            )
            continue
        target = clamp_gsd(native, gsd_range)
        key = next((t for t in targets if abs(t - target) <= 1e-3 * target), target)
        targets.setdefault(key, []).append(k)
    if not targets:
        coarsest = max(r[1] for r in ranges if r is not None)
        raise UserInputError(
            f"{scene.path}: GSD {native:.3g} m is too coarse for this model, which finds "
            f"{', '.join(info.classes)} at {coarsest:.3g} m or finer; objects would be under "
            "a pixel. Give --gsd to read it anyway"
        )
    readings = [
        (fit_gsd(scene, model_gsd_range_m=(gsd, gsd)), tuple(classes))
        for gsd, classes in sorted(targets.items())
    ]
    for name in notes:
        log.warning("%s", name)
    return readings, notes


def read_stage(scene: SceneInfo, tiles: Sequence[Tile], tile_px: int) -> ReadBatch:
    """Read a batch's tiles; drop the ones with no valid pixel."""
    pixels, valid = read_tiles(scene, [t.window for t in tiles], tile_px)
    keep = valid.reshape(len(tiles), -1).any(axis=1)
    return ReadBatch(
        [t for t, k in zip(tiles, keep, strict=True) if k],
        pixels[keep],
        valid[keep],
        int((~keep).sum()),
    )


def _match_bands(pixels: np.ndarray, want: int | None) -> np.ndarray:
    have = pixels.shape[1]
    if not want or want == have:
        return pixels
    return pixels[:, [i % have for i in range(want)]] if want > have else pixels[:, :want]


def predict_stage(
    batch: ReadBatch, model_spec: str, device: str, min_score: float | dict[str, float]
) -> PredictedBatch:
    """Run the model on a batch (loaded once per process) and cut its output to mask crops."""
    if not batch.tiles:
        return PredictedBatch([], 0, batch.n_skipped)
    model = load_segmenter(model_spec, device=device)
    pixels = _match_bands(batch.pixels, getattr(model, "input_bands", None))
    tiles = np.ascontiguousarray(pixels, dtype=np.float32)
    thresholds = score_thresholds(min_score, model.classes)
    if _accepts_min_score(model):
        outputs = model.predict(tiles, min_score=float(thresholds.min()))
    else:
        outputs = model.predict(tiles)
    if len(outputs) != len(batch.tiles):
        from geoseg.errors import ModelError

        raise ModelError(f"model returned {len(outputs)} results for {len(batch.tiles)} tiles")
    shape_hw = pixels.shape[2:]
    crops = []
    for tile, valid, raw in zip(batch.tiles, batch.valid, outputs, strict=True):
        instances = Instances.from_any(raw, shape_hw=shape_hw, n_classes=len(model.classes))
        crops.append((tile, instances_to_crops(instances, tile, valid, min_score=thresholds)))
    return PredictedBatch(crops, len(batch.tiles), batch.n_skipped)


def _accepts_min_score(model: Any) -> bool:
    try:
        return "min_score" in inspect.signature(model.predict).parameters
    except (TypeError, ValueError):
        return False


def vectorize_stage(batch: PredictedBatch, pass_index: int = 0) -> BatchResult:
    """Each mask crop to a pixel-exact polygon fragment."""
    fragments = [
        Fragment(tile, crop_to_polygon(crop), crop.label, crop.score, crop.touches_seam)
        for tile, crops in batch.crops
        for crop in crops
    ]
    return BatchResult(fragments, batch.n_tiles, batch.n_skipped, pass_index)


def scene_tasks(
    plan: ScenePlan, *, predict_resources: dict[str, float] | None = None
) -> list[Delayed]:
    """One delayed :class:`BatchResult` per batch of tiles (read -> predict -> vectorize).

    ``predict_resources`` (e.g. ``{"GPU": 1}``) annotates the inference tasks so that a
    ``distributed`` cluster runs them only on workers started with those resources.
    """
    opts = plan.options
    tasks = []
    everything = len(plan.passes) == 1 and len(plan.passes[0].classes) == len(plan.model.classes)
    for index, tiles in plan.batches:
        reading = plan.passes[index]
        min_score = opts.min_score if everything else _pass_min_score(plan, reading.classes)
        read = dask.delayed(read_stage, pure=True)(reading.scene, tiles, opts.tile_px)
        annotate = (  # a fresh context per batch: dask.annotate cannot be re-entered
            dask.annotate(resources=predict_resources)
            if predict_resources
            else contextlib.nullcontext()
        )
        with annotate:
            pred = dask.delayed(predict_stage, pure=True)(read, opts.model, opts.device, min_score)
        tasks.append(dask.delayed(vectorize_stage, pure=True)(pred, index))
    return tasks


_NEVER = 2.0
"""A score threshold no instance reaches: how a pass drops the classes it does not keep."""


def _pass_min_score(plan: ScenePlan, keep: tuple[int, ...]) -> dict[str, float]:
    thresholds = score_thresholds(plan.options.min_score, plan.model.classes)
    return {
        name: float(thresholds[k]) if k in keep else _NEVER
        for k, name in enumerate(plan.model.classes)
    }


class _TileProgress(Callback):
    """Feeds the number of tiles of each finished batch to a progress callback."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self._progress = progress

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(result, BatchResult):
            self._progress(result.n_tiles + result.n_skipped)


def compute_tasks(
    tasks: list[Delayed], scheduler: Any, progress: Progress | None
) -> list[BatchResult]:
    """Compute batch tasks on ``threads``, ``processes``, ``sync``, an address or a Client."""
    if isinstance(scheduler, str) and scheduler in ("threads", "processes", "sync"):
        reporter = _TileProgress(progress) if progress else contextlib.nullcontext()
        with dask.config.set(scheduler=scheduler), reporter:
            return list(dask.compute(*tasks))
    return _compute_distributed(tasks, scheduler, progress)


def _compute_distributed(
    tasks: list[Delayed], scheduler: Any, progress: Progress | None
) -> list[BatchResult]:
    from distributed import Client, as_completed

    own = not isinstance(scheduler, Client)
    if own:
        check_reachable(str(scheduler))
    try:
        client = Client(scheduler, timeout="20s") if own else scheduler
    except OSError as exc:
        raise UserInputError(
            f"--scheduler {scheduler}: cannot reach a Dask scheduler ({exc})"
        ) from exc
    try:
        futures = client.compute(tasks)
        index = {f.key: k for k, f in enumerate(futures)}
        results: list[BatchResult | None] = [None] * len(futures)
        for future in as_completed(futures):
            result = future.result()
            results[index[future.key]] = result
            if progress:
                progress(result.n_tiles + result.n_skipped)
        return [r for r in results if r is not None]
    finally:
        if own:
            client.close()


def stitch_passes(plan: ScenePlan, results: Sequence[BatchResult]) -> list[list[StitchedObject]]:
    """Each pass's fragments stitched on its own grid: one list of objects per pass."""
    return [
        stitch(
            [f for r in results if r.pass_index == k for f in r.fragments],
            merge_iou=plan.options.merge_iou,
        )
        for k in range(len(plan.passes))
    ]


def objects_to_layers(
    per_pass: Sequence[Sequence[StitchedObject]], plan: ScenePlan
) -> dict[str, gpd.GeoDataFrame]:
    """Stitched pixel-space objects, one sequence per pass of ``plan`` (each on its own
    working grid, :func:`stitch_passes`), to one GeoDataFrame per class in the scene's CRS."""
    classes = plan.model.classes
    measures = GeoMeasures(plan.scene.crs)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in classes}
    for reading, found in zip(plan.passes, per_pass, strict=True):
        _add_rows(rows, found, reading.scene, classes, measures, plan.options)
    layers = {}
    for name in classes:
        columns = [*COLUMNS, *(SHIP_COLUMNS if name in SHIP_CLASSES else ())]
        floats = {c: "float64" for c in columns[2:]}
        layers[name] = gpd.GeoDataFrame(
            rows[name] or {c: [] for c in columns} | {"geometry": []},
            columns=[*columns, "geometry"],
            geometry="geometry",
            crs=plan.scene.crs,
        ).astype(floats)
    return layers


def _add_rows(
    rows: dict[str, list[dict[str, Any]]],
    objects: Sequence[StitchedObject],
    scene: SceneInfo,
    classes: Sequence[str],
    measures: GeoMeasures,
    options: RunOptions,
) -> None:
    outlines = [obj.polygon_px for obj in objects]
    squared = [k for k, obj in enumerate(objects) if classes[obj.label] in REGULAR_CLASSES]
    if options.regularize and squared:
        from geoseg.regularize import regularize_outlines

        squares = regularize_outlines([outlines[k] for k in squared])
        for k, outline in zip(squared, squares, strict=True):
            outlines[k] = outline
    for obj, outline in zip(objects, outlines, strict=True):
        simplify = 0.0 if outline is not obj.polygon_px else options.simplify_px
        geometry = to_crs_polygon(outline, scene.transform, simplify_px=simplify)
        if geometry.is_empty:
            continue
        class_name = classes[obj.label]
        lonlat = measures.to_lonlat(geometry)
        area, perimeter = geodesic_measures(lonlat)
        row = {
            "id": stable_id(scene.stem, class_name, obj.polygon_px),
            "class": class_name,
            "score": round(obj.score, 4),
            "area_m2": area,
            "perimeter_m": perimeter,
        }
        if class_name in SHIP_CLASSES:
            row.update(zip(SHIP_COLUMNS, ship_dimensions(lonlat), strict=True))
        rows[class_name].append({**row, "geometry": geometry})


def finish_scene(
    plan: ScenePlan,
    results: Sequence[BatchResult],
    outdir: str | Path,
    *,
    seconds: float,
    stem: str | None = None,
) -> RunResult:
    """Stitch the fragments of all batches, vectorize, and write the outputs atomically."""
    for reading in plan.passes:
        check_unchanged(reading.scene)
    layers = objects_to_layers(stitch_passes(plan, results), plan)
    class_gsd = plan.class_gsd_m()
    metadata = {
        "geoseg_version": _version(),
        "geoseg_model": plan.model.name,
        "geoseg_model_checksum": plan.model.checksum,
        "geoseg_scene": plan.scene.path,
        "geoseg_gsd_m": f"{plan.scene.gsd_m:.6g}",
        "geoseg_class_gsd_m": json.dumps({c: round(g, 6) for c, g in class_gsd.items()}),
        "geoseg_options": json.dumps(plan.options.to_dict(), sort_keys=True),
    }
    stem = stem or plan.scene.stem
    outputs = write_outputs(
        layers,
        outdir,
        stem,
        metadata=metadata,
        formats=plan.options.formats,
        extras=visual_outputs(plan, layers, stem),
    )
    return RunResult(
        scene=plan.path,
        outputs=outputs,
        counts={k: len(v) for k, v in layers.items()},
        n_tiles=sum(r.n_tiles for r in results),
        n_skipped=sum(r.n_skipped for r in results),
        seconds=seconds,
        model=plan.model,
        notes=list(plan.notes),
        class_gsd_m=class_gsd,
    )


def visual_outputs(
    plan: ScenePlan, layers: dict[str, gpd.GeoDataFrame], stem: str
) -> list[tuple[str, Callable[[Path], None]]]:
    """The preview PNG and the web map, as ``(file name, writer)`` for :func:`write_outputs`."""
    opts = plan.options
    if not (opts.preview or opts.webmap):
        return []
    from geoseg.preview import read_quicklook, write_preview
    from geoseg.webmap import write_webmap

    look = read_quicklook(plan.scene)
    extras: list[tuple[str, Callable[[Path], None]]] = []
    if opts.preview:
        extras.append(
            (f"{stem}_preview.png", lambda tmp: write_preview(tmp, plan.scene, layers, look))
        )
    if opts.webmap:
        title = f"geoseg: {stem} ({plan.model.name})"
        extras.append((f"{stem}.html", lambda tmp: write_webmap(tmp, layers, look, title=title)))
    return extras


def _version() -> str:
    from geoseg._version import __version__

    return __version__


def run_scene(
    scene: str | Path,
    outdir: str | Path = "geoseg-out",
    *,
    options: RunOptions | None = None,
    scheduler: Any = "threads",
    progress: Progress | None = None,
) -> RunResult:
    """Segment one scene end to end and write its GeoPackage and GeoJSON files.

    ``scheduler`` is ``"threads"`` (default), ``"processes"``, ``"sync"``, the address of a
    ``distributed`` scheduler (``"tcp://host:8786"``) or a ``distributed.Client``.
    ``progress`` is called with the number of tiles each finished batch covered.
    """
    start = time.perf_counter()
    check_writable(outdir)
    plan = plan_scene(scene, options or RunOptions())
    with scene_lock(outdir, plan.scene.stem):
        results = compute_tasks(scene_tasks(plan), scheduler, progress)
        return finish_scene(plan, results, outdir, seconds=time.perf_counter() - start)
