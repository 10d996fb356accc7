"""The Dask graph for one scene: read -> predict -> vectorize per batch of tiles, then stitch.

One batch of tiles (``batch_size`` tiles) is the unit of work: three small tasks per batch,

- ``read``: windowed reads of the batch's tiles, normalized; tiles with no valid pixel dropped;
- ``predict``: the model on the batch, loaded once per worker process by
  :func:`geoseg.model.load_segmenter` (only the model's *name* is in the graph, never the
  model), results cut to mask crops;
- ``vectorize``: each crop to a pixel-exact polygon, a :class:`~geoseg.stitch.Fragment`.

The graph runs on Dask's threaded scheduler by default, on processes, or on a ``distributed``
cluster; stitching and writing then happen in the calling process, on polygons only.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
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

from geoseg.config import DEFAULT_MIN_SCORE, RunOptions, score_thresholds
from geoseg.errors import UserInputError
from geoseg.fragments import MaskCrop, instances_to_crops
from geoseg.grid import Tile, TileGrid
from geoseg.model.protocol import Instances, ModelInfo, describe_model, load_segmenter
from geoseg.output import COLUMNS, write_outputs
from geoseg.scene import SceneInfo, fit_gsd, open_scene, read_tiles
from geoseg.stitch import Fragment, StitchedObject, stitch
from geoseg.vectorize import GeoMeasures, crop_to_polygon, stable_id, to_crs_polygon

__all__ = [
    "BatchResult",
    "RunResult",
    "ScenePlan",
    "finish_scene",
    "plan_scene",
    "run_scene",
    "scene_tasks",
]

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class ScenePlan:
    """A validated scene, its tile grid cut into batches, and the model that will run."""

    scene: SceneInfo
    grid: TileGrid
    batches: tuple[tuple[Tile, ...], ...]
    options: RunOptions
    model: ModelInfo

    @property
    def path(self) -> Path:
        return Path(self.scene.path)

    @property
    def n_tiles(self) -> int:
        return len(self.grid)


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


def plan_scene(path: str | Path, options: RunOptions | None = None) -> ScenePlan:
    """Open and validate the scene, load the model (once per process), cut the tile grid."""
    options = options or RunOptions()
    scene = open_scene(path, bands=options.bands, crs=options.crs, gsd_m=options.gsd_m)
    info = describe_model(load_segmenter(options.model, device=options.device), options.model)
    if options.min_score is None:
        tuned = info.min_score if info.min_score is not None else DEFAULT_MIN_SCORE
        options = replace(options, min_score=tuned)
    if isinstance(options.min_score, dict):
        unknown = ", ".join(sorted(set(options.min_score) - set(info.classes)))
        if unknown:
            raise UserInputError(f"min_score names {unknown}, which the model does not know")
    if options.gsd_m is None:
        scene = fit_gsd(scene, model_gsd_range_m=info.gsd_range_m)
    if options.batch_size < 1:
        raise UserInputError(f"--batch-size {options.batch_size} must be at least 1")
    if not 0 < options.merge_iou <= 1:
        raise UserInputError(f"merge IoU {options.merge_iou} must be in (0, 1]")
    grid = TileGrid.from_shape(
        scene.shape_yx, tile_px=options.tile_px, overlap_px=options.overlap_px
    )
    tiles = list(grid)
    size = options.batch_size
    batches = tuple(tuple(tiles[k : k + size]) for k in range(0, len(tiles), size))
    return ScenePlan(scene, grid, batches, options, info)


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


def vectorize_stage(batch: PredictedBatch) -> BatchResult:
    """Each mask crop to a pixel-exact polygon fragment."""
    fragments = [
        Fragment(tile, crop_to_polygon(crop), crop.label, crop.score, crop.touches_seam)
        for tile, crops in batch.crops
        for crop in crops
    ]
    return BatchResult(fragments, batch.n_tiles, batch.n_skipped)


def scene_tasks(
    plan: ScenePlan, *, predict_resources: dict[str, float] | None = None
) -> list[Delayed]:
    """One delayed :class:`BatchResult` per batch of tiles (read -> predict -> vectorize).

    ``predict_resources`` (e.g. ``{"GPU": 1}``) annotates the inference tasks so that a
    ``distributed`` cluster runs them only on workers started with those resources.
    """
    opts = plan.options
    tasks = []
    for tiles in plan.batches:
        read = dask.delayed(read_stage, pure=True)(plan.scene, tiles, opts.tile_px)
        annotate = (  # a fresh context per batch: dask.annotate cannot be re-entered
            dask.annotate(resources=predict_resources)
            if predict_resources
            else contextlib.nullcontext()
        )
        with annotate:
            pred = dask.delayed(predict_stage, pure=True)(
                read, opts.model, opts.device, opts.min_score
            )
        tasks.append(dask.delayed(vectorize_stage, pure=True)(pred))
    return tasks


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


def objects_to_layers(
    objects: Sequence[StitchedObject], plan: ScenePlan
) -> dict[str, gpd.GeoDataFrame]:
    """Stitched pixel-space objects to one GeoDataFrame per class, in the scene's CRS."""
    scene, classes = plan.scene, plan.model.classes
    measures = GeoMeasures(scene.crs)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in classes}
    for obj in objects:
        geometry = to_crs_polygon(
            obj.polygon_px, scene.transform, simplify_px=plan.options.simplify_px
        )
        if geometry.is_empty:
            continue
        class_name = classes[obj.label]
        area, perimeter = measures.area_perimeter(geometry)
        rows[class_name].append(
            {
                "id": stable_id(scene.stem, class_name, obj.polygon_px),
                "class": class_name,
                "score": round(obj.score, 4),
                "area_m2": area,
                "perimeter_m": perimeter,
                "geometry": geometry,
            }
        )
    return {
        name: gpd.GeoDataFrame(
            rows[name] or {c: [] for c in COLUMNS} | {"geometry": []},
            columns=[*COLUMNS, "geometry"],
            geometry="geometry",
            crs=scene.crs,
        ).astype({"score": "float64", "area_m2": "float64", "perimeter_m": "float64"})
        for name in classes
    }


def finish_scene(
    plan: ScenePlan,
    results: Sequence[BatchResult],
    outdir: str | Path,
    *,
    seconds: float,
    stem: str | None = None,
) -> RunResult:
    """Stitch the fragments of all batches, vectorize, and write the outputs atomically."""
    fragments = [f for r in results for f in r.fragments]
    objects = stitch(fragments, merge_iou=plan.options.merge_iou)
    layers = objects_to_layers(objects, plan)
    metadata = {
        "geoseg_version": _version(),
        "geoseg_model": plan.model.name,
        "geoseg_model_checksum": plan.model.checksum,
        "geoseg_scene": plan.scene.path,
        "geoseg_gsd_m": f"{plan.scene.gsd_m:.6g}",
        "geoseg_options": json.dumps(plan.options.to_dict(), sort_keys=True),
    }
    outputs = write_outputs(
        layers, outdir, stem or plan.scene.stem, metadata=metadata, formats=plan.options.formats
    )
    return RunResult(
        scene=plan.path,
        outputs=outputs,
        counts={k: len(v) for k, v in layers.items()},
        n_tiles=sum(r.n_tiles for r in results),
        n_skipped=sum(r.n_skipped for r in results),
        seconds=seconds,
        model=plan.model,
    )


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
    plan = plan_scene(scene, options or RunOptions())
    results = compute_tasks(scene_tasks(plan), scheduler, progress)
    return finish_scene(plan, results, outdir, seconds=time.perf_counter() - start)
