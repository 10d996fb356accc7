"""The Dask graph for one scene: read -> predict -> vectorize per batch of tiles, then assemble.

One batch of tiles (``batch_size`` tiles) is the unit of work: three small tasks per batch,

- ``read``: windowed reads of the batch's tiles, normalized; tiles with no valid pixel dropped;
- ``predict``: the model on the batch, loaded once per worker process by
  :func:`geoseg.model.load_segmenter` (only the model's *name* is in the graph, never the
  model), results cut to mask crops;
- ``vectorize``: each crop to a pixel-exact polygon, a :class:`~geoseg.stitch.Fragment`.

The graph runs on Dask's threaded scheduler by default, on processes, or on a ``distributed``
cluster (:mod:`geoseg.compute`). Results are consumed as the batches finish: the calling
process stitches them, writes the objects that are final and forgets them
(:mod:`geoseg.assemble`), so memory follows the frontier of unfinished tiles, not the number of
objects. Planning (passes at each class's GSD, tiles, batches) is :mod:`geoseg.plan`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
from dask.delayed import Delayed

from geoseg.assemble import (
    REGULAR_CLASSES,
    RunResult,
    SceneAssembler,
    objects_to_layers,
    stitch_passes,
)
from geoseg.commit import check_writable, scene_lock
from geoseg.compute import (
    Progress,
    compute_tasks,
    connected,
    iter_results,
    model_copies,
    sized_for_cluster,
)
from geoseg.config import RunOptions, mask_cut_array, score_thresholds
from geoseg.fragments import MaskCrop, instances_to_crops
from geoseg.grid import Tile
from geoseg.model.protocol import Instances, load_segmenter, match_input_bands, predict_accepts
from geoseg.plan import (
    MAX_UPSAMPLING,
    NEVER,
    STITCH_FLOOR_SHARE,
    BatchResult,
    ScenePass,
    ScenePlan,
    check_numbers,
    plan_scene,
)
from geoseg.scene import SceneInfo, read_tiles
from geoseg.stitch import Fragment
from geoseg.vectorize import crops_to_polygons

__all__ = [
    "MAX_UPSAMPLING",
    "REGULAR_CLASSES",
    "BatchResult",
    "RunResult",
    "SceneAssembler",
    "ScenePass",
    "ScenePlan",
    "assemble_scene",
    "check_numbers",
    "compute_tasks",
    "iter_results",
    "objects_to_layers",
    "plan_scene",
    "run_scene",
    "scene_tasks",
    "stitch_passes",
]


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


def predict_stage(
    batch: ReadBatch,
    model_spec: str,
    device: str,
    min_score: float | dict[str, float],
    mask_threshold: dict[str, float] | None = None,
    tta_views: dict[str, int] | None = None,
    gsd_m: float | None = None,
) -> PredictedBatch:
    """Run the model on a batch (loaded once per process) and cut its output to mask crops
    (each class's masks at its ``mask_threshold`` where given). ``tta_views`` and ``gsd_m``
    (the GSD the batch was read at) go to a model whose ``predict`` takes them; a model that
    takes no ``tta_views`` is run once per tile."""
    if not batch.tiles:
        return PredictedBatch([], 0, batch.n_skipped)
    model = load_segmenter(model_spec, device=device)
    pixels = match_input_bands(batch.pixels, model)
    tiles = np.ascontiguousarray(pixels, dtype=np.float32)
    thresholds = score_thresholds(min_score, model.classes)
    keywords: dict[str, Any] = {}
    if predict_accepts(model, "min_score"):
        keywords["min_score"] = float(thresholds.min())
    if tta_views and predict_accepts(model, "tta_views"):
        keywords["tta_views"] = tta_views
    if gsd_m is not None and predict_accepts(model, "gsd_m"):
        keywords["gsd_m"] = gsd_m
    outputs = model.predict(tiles, **keywords)
    if len(outputs) != len(batch.tiles):
        from geoseg.errors import ModelError

        raise ModelError(f"model returned {len(outputs)} results for {len(batch.tiles)} tiles")
    shape_hw = pixels.shape[2:]
    cuts = mask_cut_array(mask_threshold, model.classes)
    crops = []
    for tile, valid, raw in zip(batch.tiles, batch.valid, outputs, strict=True):
        instances = Instances.from_any(
            raw, shape_hw=shape_hw, n_classes=len(model.classes), class_mask_thresholds=cuts
        )
        crops.append((tile, instances_to_crops(instances, tile, valid, min_score=thresholds)))
    return PredictedBatch(crops, len(batch.tiles), batch.n_skipped)


def vectorize_stage(
    batch: PredictedBatch, pass_index: int = 0, batch_index: int = 0
) -> BatchResult:
    """Each mask crop to a pixel-exact polygon fragment (the batch polygonized at once)."""
    pairs = [(tile, crop) for tile, crops in batch.crops for crop in crops]
    polygons = crops_to_polygons([crop for _, crop in pairs])
    fragments = [
        Fragment(tile, polygon, crop.label, crop.score, crop.touches_seam)
        for (tile, crop), polygon in zip(pairs, polygons, strict=True)
    ]
    return BatchResult(fragments, batch.n_tiles, batch.n_skipped, pass_index, batch_index)


def scene_tasks(
    plan: ScenePlan,
    *,
    predict_resources: dict[str, float] | None = None,
    batches: Iterable[int] | None = None,
) -> list[Delayed]:
    """One delayed :class:`BatchResult` per batch of tiles (read -> predict -> vectorize).

    ``predict_resources`` (e.g. ``{"GPU": 1}``) annotates the inference tasks so that a
    ``distributed`` cluster runs them only on workers started with those resources.
    ``batches``: only these batches (indexes into ``plan.batches``; default all).
    """
    opts = plan.options
    tasks = []
    scene_token = dask.base.tokenize(plan.passes, plan.options)
    last = len(plan.batches) - 1
    pass_scores = [  # each pass's floors for stitching, the same for all its batches
        {
            name: float(t * STITCH_FLOOR_SHARE if t < NEVER else NEVER)
            for name, t in zip(plan.model.classes, thresholds, strict=True)
        }
        for thresholds in plan.pass_thresholds()
    ]
    for number in range(len(plan.batches)) if batches is None else batches:
        index, tiles = plan.batches[number]
        reading, min_score = plan.passes[index], pass_scores[index]
        # Batches run in plan order (the stitcher's frontier then stays a band of tiles):
        # the local schedulers order independent chains by their keys, highest first;
        # distributed follows the priority.
        suffix = f"{scene_token}-{last - number:07d}"
        with dask.annotate(priority=-number):
            read = dask.delayed(read_stage)(
                reading.scene, tiles, opts.tile_px, dask_key_name=f"geoseg-read-{suffix}"
            )
            annotate = (  # a fresh context per batch: dask.annotate cannot be re-entered
                dask.annotate(resources=predict_resources)
                if predict_resources
                else contextlib.nullcontext()
            )
            with annotate:
                pred = dask.delayed(predict_stage)(
                    read,
                    opts.model,
                    opts.device,
                    min_score,
                    reading.mask_threshold,
                    reading.tta_views,
                    reading.scene.gsd_m,
                    dask_key_name=f"geoseg-predict-{suffix}",
                )
            tasks.append(
                dask.delayed(vectorize_stage)(
                    pred, index, number, dask_key_name=f"geoseg-vectorize-{suffix}"
                )
            )
    return tasks


def assemble_scene(
    plan: ScenePlan,
    results: Iterable[BatchResult],
    outdir: str | Path,
    *,
    started: float,
    stem: str | None = None,
) -> RunResult:
    """Stitch and write the batch results as they come, then commit the outputs
    (``started``: the :func:`time.perf_counter` at which the run began)."""
    with SceneAssembler(plan, outdir, stem=stem) as assembler:
        for result in results:
            assembler.add(result)
        return assembler.finish(seconds=time.perf_counter() - started)


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
    with connected(scheduler) as scheduler:
        options = sized_for_cluster(options or RunOptions(), scheduler)
        plan = plan_scene(scene, options, model_copies=model_copies(scheduler))
        with scene_lock(outdir, plan.scene.stem):
            results = iter_results(scene_tasks(plan), scheduler, progress)
            return assemble_scene(plan, results, outdir, started=start)
