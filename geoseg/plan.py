"""Planning a scene: validate it, describe the model, choose the working GSD of each class
(*passes*), cut each pass's tile grid and the batches of tiles that the Dask graph runs.

Each class at its own scale: a model may record the GSD range each class works at
(``class_gsd_range_m``). The scene is then read once per working GSD it needs (for example
native for buildings and ships, 4 m for fields on a 0.5 m scene); each pass keeps its own
classes and is stitched on its own grid. A small scene is never read so coarse that its
shorter side drops under half a tile (a 1,024 px scene at 0.5 m reads 4 m fields at 2 m,
with 512 px tiles). A class whose range ends far finer than the scene
(more than :data:`MAX_UPSAMPLING`) is not searched, and a scene too coarse for every class is
refused.

A model may also name other GSDs to read a class at: coarser ones (``class_extra_gsd_m``),
where the scene is at least :data:`EXTRA_READING_RATIO` times finer, and finer ones
(``class_fine_gsd_m``), read upsampled where the scene is :data:`EXTRA_READING_RATIO` to
:data:`MAX_EXTRA_UPSAMPLING` times coarser. The class is read at each, and the readings'
objects of it are merged (:mod:`geoseg.reading_merge`). The passes' batches are then
interleaved band by band, so that the merge holds a band of objects, not the scene's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from geoseg.config import (
    DEFAULT_MIN_SCORE,
    TTA_VIEW_COUNTS,
    RunOptions,
    class_values_at,
    coarse_read_gsd,
    mask_cuts_at,
    score_thresholds,
    views_at_gsd,
)
from geoseg.errors import UserInputError
from geoseg.formats import check_formats
from geoseg.gpu import auto_batch_size
from geoseg.grid import Tile, TileGrid
from geoseg.model.protocol import ModelInfo, describe_spec
from geoseg.model.read_settings import READ_SETTINGS
from geoseg.scene import READ_ENV, SceneInfo, clamp_gsd, fit_gsd, open_scene
from geoseg.stitch import Fragment

__all__ = [
    "MAX_EXTRA_UPSAMPLING",
    "MAX_UPSAMPLING",
    "BatchResult",
    "ScenePass",
    "ScenePlan",
    "check_numbers",
    "plan_scene",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

SAME_READING = 0.02
"""Classes whose GSDs differ by less than this fraction share one reading, at the finer GSD: a
z19 Web Mercator tile (0.2986 m) read at 0.30 m for ships and at its own GSD for buildings
would cost a second reading of the whole scene for a 0.5% difference."""

EXTRA_READING_RATIO = 1.5
"""A class's extra GSD is read only when it is at least this many times coarser (or, a fine
GSD, finer) than its first reading: closer, both readings see nearly the same thing, at the
cost of a whole reading."""

MAX_EXTRA_UPSAMPLING = 2.0
"""A class's fine GSD is read only up to this many times finer than the scene: each halving
of the GSD makes four times the tiles (the default model's boats read at 0.3 m on 0.45-0.6 m
scenes: model card, "Boats also read at 0.3 m")."""

NEVER = 2.0
"""A score threshold no instance reaches: how a pass drops the classes it does not keep."""

STITCH_FLOOR_SHARE = 0.6
"""Each tile's objects are kept for stitching from this share of their class's threshold, and
the threshold is applied to the stitched objects: an object that the tile owning its place
scores under the threshold, but a neighbouring tile over it, is kept (see
:mod:`geoseg.stitch`, which keeps an object only where the owner tile saw it)."""

MAX_UPSAMPLING = 3.0
"""How many times finer than the scene a class's coarsest GSD may be: beyond it the objects are
too small in the scene to be found, and upsampling would only multiply the tiles."""


@dataclass(frozen=True, slots=True)
class ScenePass:
    """One reading of the scene: its working grid (at one GSD), the tile grid on it, the
    indexes of the classes this pass keeps, where the model's thresholds depend on the GSD
    (``min_score_by_gsd``) and ``--min-score`` was not given, this pass's thresholds, and where
    the model sets mask thresholds (``mask_threshold``, ``mask_threshold_by_gsd``), the value
    each class's masks are cut at in this pass, and where a class it keeps is seen in more
    than one view (``--tta``, the model's ``class_tta_views`` and ``tta_views_by_gsd``), how
    many."""

    scene: SceneInfo
    grid: TileGrid
    classes: tuple[int, ...]
    min_score: dict[str, float] | None = None
    mask_threshold: dict[str, float] | None = None
    tta_views: dict[str, int] | None = None


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

    def class_readings(self) -> dict[str, tuple[tuple[float, float], ...]]:
        """Each class's readings as ``(GSD, score threshold)``, finest first: the run's
        ``min_score``, or the model's by read GSD (classes not searched are left out): the
        thresholds the stitched objects are kept from (:meth:`pass_thresholds`)."""
        found: dict[str, tuple[tuple[float, float], ...]] = {}
        for reading, thresholds in zip(self.passes, self.pass_thresholds(), strict=True):
            for k in reading.classes:
                name = self.model.classes[k]
                found[name] = (*found.get(name, ()), (reading.scene.gsd_m, float(thresholds[k])))
        return found

    def _class_passes(self) -> Iterator[tuple[int, str, ScenePass]]:
        """``(class index, class name, pass)`` for each pass that keeps a class, finest
        pass first."""
        for reading in self.passes:
            for k in reading.classes:
                yield k, self.model.classes[k], reading

    def class_gsd_m(self) -> dict[str, float]:
        """The GSD each class is read at, its finest where it is read at several."""
        return {name: gsds[0] for name, gsds in self.class_readings_m().items()}

    def class_readings_m(self) -> dict[str, tuple[float, ...]]:
        """Every GSD each class is read at, finest first."""
        return {name: tuple(g for g, _ in r) for name, r in self.class_readings().items()}

    def class_min_score(self) -> dict[str, float]:
        """The score threshold each class is kept from, its finest reading's where it is read
        at several."""
        return {name: scores[0] for name, scores in self.class_readings_min_score().items()}

    def class_readings_min_score(self) -> dict[str, tuple[float, ...]]:
        """The score threshold of each class in each of its readings, finest first."""
        return {name: tuple(s for _, s in r) for name, r in self.class_readings().items()}

    def class_mask_threshold(self) -> dict[str, float]:
        """The mask value each class's masks are cut at, its finest reading's where it is read
        at several; empty where the model sets none (every mask cut at 0.5, or as it says)."""
        return self._finest(lambda reading: reading.mask_threshold)

    def class_tta_views(self) -> dict[str, int]:
        """How many views each class is seen in, where more than one (its finest reading's)."""
        return self._finest(lambda reading: reading.tta_views)

    def _finest(self, table_of: Callable[[ScenePass], Mapping[str, T] | None]) -> dict[str, T]:
        """Each class's value in the table (``table_of(pass)``) of the finest pass that keeps
        the class and names it there."""
        found: dict[str, T] = {}
        for _, name, reading in self._class_passes():
            table = table_of(reading) or {}
            if name in table and name not in found:
                found[name] = table[name]
        return found

    def pass_thresholds(self) -> tuple[np.ndarray, ...]:
        """Each pass's score threshold per class index (``--min-score``, or the model's by
        read GSD); :data:`NEVER` for the classes a pass does not keep."""
        found = []
        for reading in self.passes:
            thresholds = score_thresholds(
                reading.min_score or self.options.min_score, self.model.classes
            )
            kept = np.zeros(len(thresholds), dtype=bool)
            kept[list(reading.classes)] = True
            found.append(np.where(kept, thresholds, NEVER))
        return tuple(found)

    def merged_classes(self) -> tuple[int, ...]:
        """Indexes of the classes read in more than one pass (merged across them)."""
        counts = [sum(k in p.classes for p in self.passes) for k in range(len(self.model.classes))]
        return tuple(k for k, n in enumerate(counts) if n > 1)

    def batch_tiles(self, batch_index: int) -> tuple[Tile, ...]:
        """The tiles of one batch (all of them, the skipped ones too)."""
        return self.batches[batch_index][1]


@dataclass(slots=True)
class BatchResult:
    """The fragments of one batch, how many of its tiles were run or skipped (all nodata),
    its pass and its index in :attr:`ScenePlan.batches`."""

    fragments: list[Fragment]
    n_tiles: int
    n_skipped: int
    pass_index: int = 0
    batch_index: int = 0


def plan_scene(
    path: str | Path, options: RunOptions | None = None, *, model_copies: int = 1
) -> ScenePlan:
    """Open and validate the scene, describe the model (read once per process, on the CPU or
    not built at all: see :func:`~geoseg.model.protocol.describe_spec`), cut the tile grid.
    ``model_copies``: how many models will share a GPU at once, for the batch size
    (:func:`~geoseg.gpu.auto_batch_size`; see :func:`geoseg.compute.model_copies`)."""
    options = options or RunOptions()
    options = replace(options, formats=check_formats(tuple(options.formats)))
    check_numbers(options)
    scene = open_scene(path, bands=options.bands, crs=options.crs, gsd_m=options.gsd_m)
    # only what the model says of itself: never loaded here on the workers' device
    info = describe_spec(options.model, device=options.device)
    by_gsd = info.min_score_by_gsd if options.min_score is None else None
    _check_setting_classes(info, options)
    unknown = _not_classes_of(info, options.classes or ())
    if unknown:
        raise UserInputError(
            f"--classes {unknown}: not a class of {options.model} ({', '.join(info.classes)})"
        )
    if options.min_score is None:
        tuned = info.min_score if info.min_score is not None else DEFAULT_MIN_SCORE
        options = replace(options, min_score=tuned)
    if isinstance(options.min_score, dict):
        unknown = _not_classes_of(info, options.min_score)
        if unknown:
            raise UserInputError(f"min_score names {unknown}, which the model does not know")
    if options.batch_size is None:
        size = auto_batch_size(options.device, options.tile_px, model_copies)
        options = replace(options, batch_size=size)
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
        tiles = grid.in_bands(_band_rows(working, options))
        thresholds = _thresholds_at(options.min_score, info, working.gsd_m) if by_gsd else None
        passes.append(
            ScenePass(
                working,
                grid,
                classes,
                thresholds,
                mask_cuts_at(
                    info.classes, info.mask_threshold, info.mask_threshold_by_gsd, working.gsd_m
                ),
                _tta_views(info, options, classes, working.gsd_m),
            )
        )
        batches.extend((index, tuple(tiles[k : k + size])) for k in range(0, len(tiles), size))
    plan = ScenePlan(tuple(passes), tuple(batches), options, info, tuple(notes))
    if plan.merged_classes():
        plan = replace(plan, batches=_interleaved(plan))
    return plan


def _interleaved(plan: ScenePlan) -> tuple[tuple[int, tuple[Tile, ...]], ...]:
    """The batches of all passes in the order of the scene rows they start at (each pass's
    own order kept): the passes then advance down the scene together, so that a class merged
    across them waits for a band of rows, not for a whole pass."""
    finest = plan.passes[0].scene.shape_yx[0]

    def start(batch: tuple[int, tuple[Tile, ...]]) -> float:
        index, tiles = batch
        scale = finest / plan.passes[index].scene.shape_yx[0]
        return min(t.window.row_off for t in tiles) * scale

    return tuple(sorted(plan.batches, key=start))


def _not_classes_of(info: ModelInfo, names: Iterable[str]) -> str:
    """Those of ``names`` that are not classes of the model, sorted, comma-separated ("" if
    none)."""
    return ", ".join(sorted(set(names) - set(info.classes)))


def _check_setting_classes(info: ModelInfo, options: RunOptions) -> None:
    """The model's per-class read settings name only its classes (its score thresholds only
    where ``--min-score`` does not replace them)."""
    for setting in READ_SETTINGS:
        if not setting.per_class or (setting.score and options.min_score is not None):
            continue
        unknown = _not_classes_of(info, getattr(info, setting.attribute) or {})
        if unknown:
            raise UserInputError(f"{options.model}: {setting.key} names {unknown}, not its class")


def _tta_views(
    info: ModelInfo, options: RunOptions, classes: Iterable[int], gsd_m: float
) -> dict[str, int] | None:
    """How many views each of a pass's classes (read at ``gsd_m``) is seen in, where more than
    one: ``--tta`` for every class, else the model's step of ``tta_views_by_gsd`` that reaches
    ``gsd_m``, else its ``class_tta_views``."""
    names = [info.classes[k] for k in classes]
    if options.tta is not None:
        return dict.fromkeys(names, options.tta) if options.tta > 1 else None
    return views_at_gsd(names, info.class_tta_views, info.tta_views_by_gsd, gsd_m)


def _thresholds_at(
    min_score: float | dict[str, float], info: ModelInfo, gsd_m: float
) -> dict[str, float]:
    """The model's thresholds for classes read at ``gsd_m`` (its ``min_score_by_gsd``)."""
    base = score_thresholds(min_score, info.classes)
    return class_values_at(info.classes, base, info.min_score_by_gsd, gsd_m)


BAND_CACHE_BYTES = READ_ENV["GDAL_CACHEMAX"] * 2**20 // 2
"""A striped file is swept in bands only when a band's strips fit in half of GDAL's block cache
for scene reads (:data:`geoseg.scene.READ_ENV`, in MB): each strip is then decoded once."""


def _band_rows(scene: SceneInfo, options: RunOptions) -> int:
    """How many tile rows a band holds (see :meth:`TileGrid.in_bands`): one batch's worth,
    so a batch is a column of a band. A striped file (blocks as wide as the scene) whose band
    of strips would not stay in the block cache is swept row by row instead."""
    rows = options.batch_size or 1  # resolved by plan_scene
    block = scene.file_block_yx
    if rows == 1 or block is None or block[1] < scene.file_shape_yx[1]:
        return rows
    scale = scene.file_shape_yx[0] / scene.shape_yx[0]  # file rows per working row
    stride = options.tile_px - options.overlap_px
    band_px = (rows * stride + options.overlap_px) * scale + block[0]
    itemsize = np.dtype(scene.dtype).itemsize
    band_bytes = band_px * scene.file_shape_yx[1] * len(scene.bands) * itemsize
    return rows if band_bytes <= BAND_CACHE_BYTES else 1


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
    if options.tta is not None and options.tta not in TTA_VIEW_COUNTS:
        raise UserInputError(f"--tta {options.tta}: give 1, 2, 4 or 8 views")


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


def _coarsest_for_size(scene: SceneInfo, target: float, tile_px: int) -> float:
    """``target``, or a finer GSD that leaves the scene at least half a tile on its shorter side
    (never finer than the scene): reading a small scene coarser than that only loses detail
    (the synthetic 0.5 m fields: F1 0.40 on 128 px at 4 m, 0.67-0.71 on 256 px at 2 m)."""
    native = scene.file_gsd_m
    if target <= native:
        return target
    coarsest = native * min(scene.file_shape_yx) / (tile_px / 2)
    return max(native, min(target, coarsest))


def _add_reading(targets: dict[float, list[int]], gsd: float, k: int) -> None:
    """Read class ``k`` at ``gsd``: in a reading within :data:`SAME_READING` of it if there is
    one (which moves to the finer of the two GSDs), else in a new one."""
    same = next((t for t in targets if abs(t - gsd) <= SAME_READING * min(t, gsd)), None)
    if same is None:
        targets[gsd] = [k]
    elif gsd < same:  # the shared reading moves to the finer GSD
        shared = targets.pop(same)
        targets[gsd] = shared if k in shared else [*shared, k]
    elif k not in targets[same]:
        targets[same].append(k)


def _readings(
    scene: SceneInfo, info: ModelInfo, options: RunOptions
) -> tuple[list[tuple[SceneInfo, tuple[int, ...]]], list[str]]:
    """The scene's working grids, finest first, each with the class indexes read on it."""
    wanted = options.classes
    searched = tuple(k for k, name in enumerate(info.classes) if wanted is None or name in wanted)
    if options.gsd_m is not None:  # --gsd: one reading of every class at that GSD
        return [(scene, searched)], []
    ranges = [(info.class_gsd_range_m or {}).get(name, info.gsd_range_m) for name in info.classes]
    if all(r is None for r in ranges):
        return [(scene, searched)], []
    native = scene.file_gsd_m
    notes, targets = [], {}
    for k in searched:
        gsd_range = ranges[k]
        if gsd_range is not None and native > gsd_range[1] * MAX_UPSAMPLING:
            notes.append(
                f"{info.classes[k]} not searched: the scene's GSD ({native:.3g} m) is more than "
                f"{MAX_UPSAMPLING:g} times the coarsest the model finds it at "
                f"({gsd_range[1]:.3g} m)"
            )
            continue
        coarse = (info.class_coarse_reading or {}).get(info.classes[k])
        read_at = coarse_read_gsd(native, gsd_range, coarse) or clamp_gsd(native, gsd_range)
        first = _coarsest_for_size(scene, read_at, options.tile_px)
        _add_reading(targets, first, k)
        for extra in (info.class_extra_gsd_m or {}).get(info.classes[k], ()):
            gsd = _coarsest_for_size(scene, clamp_gsd(extra, gsd_range), options.tile_px)
            if gsd >= first * EXTRA_READING_RATIO:
                _add_reading(targets, gsd, k)
        for fine in (info.class_fine_gsd_m or {}).get(info.classes[k], ()):
            gsd = clamp_gsd(fine, gsd_range)
            if first >= gsd * EXTRA_READING_RATIO and native <= gsd * MAX_EXTRA_UPSAMPLING:
                _add_reading(targets, gsd, k)
    if not targets:
        coarsest = max(ranges[k][1] for k in searched if ranges[k] is not None)
        names = ", ".join(info.classes[k] for k in searched)
        raise UserInputError(
            f"{scene.path}: GSD {native:.3g} m is too coarse for this model, which finds "
            f"{names} at {coarsest:.3g} m or finer; objects would be under "
            "a pixel. Give --gsd to read it anyway"
        )
    readings = [
        (fit_gsd(scene, model_gsd_range_m=(gsd, gsd)), tuple(classes))
        for gsd, classes in sorted(targets.items())
    ]
    for name in notes:
        log.warning("%s", name)
    return readings, notes
