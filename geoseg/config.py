"""Options of a run, shared by ``geoseg run``, ``geoseg batch`` and the library."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from geoseg.errors import UserInputError

__all__ = [
    "BOX_REFINEMENTS_MAX",
    "DEFAULT_MASK_THRESHOLD",
    "DEFAULT_MIN_SCORE",
    "MaskCuts",
    "RunOptions",
    "as_box_refinements",
    "as_class_ranges",
    "as_coarse_reading",
    "as_extra_gsd",
    "as_fuse_iou",
    "as_mask_threshold",
    "as_mask_threshold_by_gsd",
    "as_min_score",
    "as_min_score_by_gsd",
    "as_proposals_by_gsd",
    "as_tta_views_by_gsd",
    "coarse_read_gsd",
    "proposals_at_gsd",
    "score_thresholds",
    "threshold_at_gsd",
    "value_at_gsd",
    "views_at_gsd",
]

DEFAULT_MIN_SCORE = 0.5
"""The score threshold for a model that recommends none."""
DEFAULT_MASK_THRESHOLD = 0.5
"""The mask value from which a pixel is in, for a class whose model sets none."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything that decides what a run computes (the journal of a batch hashes these).

    ``tile_px``/``overlap_px``: tile size and the overlap (halo) between neighbours, in pixels.
    ``batch_size``: tiles per model call and per Dask task (``None``: 4 on the CPU, sized to
    the free memory on a GPU, see :func:`geoseg.gpu.auto_batch_size`).
    ``bands``: 1-based band indexes to read (``None``: RGB by colour interpretation, else the
    first three, else all). ``min_score``: drop instances scored below it, one threshold or
    one per class name (``None``: the thresholds the model was tuned to, else
    :data:`DEFAULT_MIN_SCORE`). ``simplify_px``:
    Douglas-Peucker tolerance in pixels applied to the pixel-exact outlines (0 keeps them
    exact). ``crs``: a CRS to assume for a scene that has a geotransform but no CRS.
    ``gsd_m``: read the scene resampled to this ground sampling distance (``None``: what the
    model asks for, if anything). ``merge_iou``: IoU, inside the strip two tiles share, above
    which two fragments are taken for one object. ``formats``: the vector formats to write
    (``gpkg``, ``geojson``, ``parquet``, ``fgb``). ``preview``/``webmap``: also write
    ``SCENE_preview.png`` and ``SCENE.html``. ``regularize``: square building outlines
    (right angles along their dominant directions) instead of simplifying them. ``classes``:
    the class names to search (``None``: every class of the model); the others are not read
    for, and their layers stay empty. ``tta``: see each tile in this many views (1, 2, 4 or 8:
    flipped, and turned for 8) and fuse what the model finds in them, for every class
    (``None``: as many as the model recommends per class, ``class_tta_views``, else 1).
    """

    model: str = "default"
    tile_px: int = 512
    overlap_px: int = 128
    batch_size: int | None = None
    device: str = "auto"
    min_score: float | dict[str, float] | None = None
    bands: tuple[int, ...] | None = None
    simplify_px: float = 0.5
    crs: str | None = None
    gsd_m: float | None = None
    merge_iou: float = 0.5
    formats: tuple[str, ...] = field(default=("gpkg", "geojson"))
    preview: bool = True
    webmap: bool = True
    regularize: bool = False
    classes: tuple[str, ...] | None = None
    tta: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def as_class_ranges(value: Any) -> dict[str, tuple[float, float]] | None:
    """A model's per-class GSD ranges (``{class: (min m, max m)}``) as plain values; ``None``
    when it has none."""
    if not value:
        return None
    return {str(c): (float(r[0]), float(r[1])) for c, r in dict(value).items()}


def as_min_score(value: Any) -> float | dict[str, float] | None:
    """A model's recommended ``min_score`` as plain values: ``None``, a float, or
    ``{class name: float}``."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    return float(value)


GsdThresholds = dict[str, tuple[tuple[float, float], ...]]
"""Score thresholds that depend on the GSD a class is read at: ``{class name: ((up to m,
threshold), ...)}``, finest first; a class read coarser than every step keeps its one
threshold."""


def as_min_score_by_gsd(value: Any, source: str = "model") -> GsdThresholds | None:
    """A model's ``min_score_by_gsd`` (``{class: [[up to m, threshold], ...]}``) as plain
    values, steps sorted finest first; ``None`` when it has none. A table that is not steps of
    a positive GSD and a threshold in [0, 1] is a :class:`~geoseg.errors.UserInputError`
    naming ``source``."""
    return _gsd_steps(value, source, "min_score_by_gsd", "score 0-1", lambda v: 0 <= v <= 1)


def as_mask_threshold_by_gsd(value: Any, source: str = "model") -> GsdThresholds | None:
    """A model's ``mask_threshold_by_gsd`` (``{class: [[up to m, value], ...]}``: a class read
    at that GSD or finer is cut at that mask probability) as plain values, finest first;
    ``None`` when it has none. Values must lie in (0, 1), else a
    :class:`~geoseg.errors.UserInputError` naming ``source``."""
    return _gsd_steps(
        value, source, "mask_threshold_by_gsd", "value in (0, 1)", lambda v: 0 < v < 1
    )


def _gsd_steps(
    value: Any, source: str, key: str, wanted: str, valid: Callable[[float], bool]
) -> GsdThresholds | None:
    if not value:
        return None
    table = {}
    try:
        for name, steps in dict(value).items():
            pairs = tuple(sorted((float(gsd), float(v)) for gsd, v in steps))
            if any(not (gsd > 0 and valid(v)) for gsd, v in pairs):
                raise ValueError
            table[str(name)] = pairs
    except (TypeError, ValueError):
        raise UserInputError(
            f"{source}: {key} {value!r} is not {{class: [[GSD > 0, {wanted}], ...]}}"
        ) from None
    return table


def as_extra_gsd(
    value: Any, source: str = "model", key: str = "class_extra_gsd_m"
) -> dict[str, tuple[float, ...]] | None:
    """A model's ``class_extra_gsd_m`` or ``class_fine_gsd_m`` (``key``; ``{class: [GSD m,
    ...]}``, the other GSDs a class is also read at) as plain values, sorted; ``None`` when it
    has none. Anything but positive GSDs is a :class:`~geoseg.errors.UserInputError` naming
    ``source``."""
    if not value:
        return None
    try:
        table = {str(c): tuple(sorted(float(g) for g in gsds)) for c, gsds in dict(value).items()}
        if any(not (math.isfinite(g) and g > 0) for gsds in table.values() for g in gsds):
            raise ValueError
    except (TypeError, ValueError):
        raise UserInputError(
            f"{source}: {key} {value!r} is not {{class: [GSD in m > 0, ...]}}"
        ) from None
    return {c: gsds for c, gsds in table.items() if gsds} or None


TTA_VIEW_COUNTS = (1, 2, 4, 8)
"""How many views a tile may be seen in (see :mod:`geoseg.model.flip_views`)."""


def as_tta_views(value: Any, source: str = "model") -> dict[str, int] | None:
    """A model's ``class_tta_views`` (``{class: views}``: how many views of each tile a
    class is predicted from and fused, one of :data:`TTA_VIEW_COUNTS`; 1 where unset) as
    plain values; ``None`` when it has none. Other counts are a
    :class:`~geoseg.errors.UserInputError` naming ``source``."""
    if not value:
        return None
    try:
        table = {str(c): int(n) for c, n in dict(value).items()}
        if any(n not in TTA_VIEW_COUNTS for n in table.values()):
            raise ValueError
    except (TypeError, ValueError):
        raise UserInputError(
            f"{source}: class_tta_views {value!r} is not {{class: 1, 2, 4 or 8 views}}"
        ) from None
    return table


def as_fuse_iou(value: Any, source: str = "model") -> dict[str, float] | None:
    """A model's ``class_fuse_iou`` (``{class: IoU}``: the box IoU from which the boxes that
    a class's views find are one object, :data:`~geoseg.model.flip_views.FUSE_IOU` where
    unset) as plain values; ``None`` when it has none. Values outside (0, 1) are a
    :class:`~geoseg.errors.UserInputError` naming ``source``."""
    return _class_fractions(value, source, "class_fuse_iou", "IoU")


def as_tta_views_by_gsd(value: Any, source: str = "model") -> GsdThresholds | None:
    """A model's ``tta_views_by_gsd`` (``{class: [[up to m, views], ...]}``: a class read at
    that GSD or finer is seen in that many views, one of :data:`TTA_VIEW_COUNTS`, in place of
    its ``class_tta_views``) as plain values, finest first; ``None`` when it has none. Other
    counts are a :class:`~geoseg.errors.UserInputError` naming ``source``."""
    return _gsd_steps(value, source, "tta_views_by_gsd", "1, 2, 4 or 8 views", _view_count)


def _view_count(value: float) -> bool:
    return value in TTA_VIEW_COUNTS


def views_at_gsd(
    names: Iterable[str],
    class_tta_views: Mapping[str, int] | None,
    tta_views_by_gsd: GsdThresholds | None,
    gsd_m: float,
) -> dict[str, int] | None:
    """How many views each class of ``names`` read at ``gsd_m`` is seen in, where more than
    one: its step of ``tta_views_by_gsd`` that reaches ``gsd_m``, else its ``class_tta_views``,
    else 1; ``None`` where every class is seen once."""
    names = list(names)
    base = [(class_tta_views or {}).get(name, 1) for name in names]
    counts = class_values_at(names, base, tta_views_by_gsd, gsd_m)
    return {name: int(n) for name, n in counts.items() if n > 1} or None


CoarseReading = dict[str, tuple[float, float]]
"""``{class name: (upsampling, up to m)}``: see :func:`as_coarse_reading`."""


def as_coarse_reading(value: Any, source: str = "model") -> CoarseReading | None:
    """A model's ``class_coarse_reading`` (``{class: [upsampling, up to m]}``: where the scene
    is coarser than the class's GSD range, the class is read at the scene's GSD divided by
    ``upsampling``, no finer than the range's top and no coarser than ``up to m``) as plain
    values; ``None`` when it has none. An upsampling under 1 or a GSD that is not positive is a
    :class:`~geoseg.errors.UserInputError` naming ``source``."""
    if not value:
        return None
    try:
        table = {}
        for name, (upsampling, up_to) in dict(value).items():
            upsampling, up_to = float(upsampling), float(up_to)
            if not (math.isfinite(upsampling) and upsampling >= 1):
                raise ValueError
            if not (math.isfinite(up_to) and up_to > 0):
                raise ValueError
            table[str(name)] = (upsampling, up_to)
    except (TypeError, ValueError):
        raise UserInputError(
            f"{source}: class_coarse_reading {value!r} is not "
            "{class: [upsampling >= 1, up to m > 0]}"
        ) from None
    return table


def coarse_read_gsd(
    native_m: float, gsd_range: tuple[float, float] | None, coarse: tuple[float, float] | None
) -> float | None:
    """The GSD a class with ``class_coarse_reading`` ``coarse`` is read at on a scene of
    ``native_m`` coarser than its ``gsd_range``: ``native_m / upsampling`` kept between the
    range's top and ``up to m``; ``None`` where the rule does not apply (no rule, no range, or a
    scene within the range)."""
    if coarse is None or gsd_range is None or native_m <= gsd_range[1] * 1.001:
        return None
    upsampling, up_to = coarse
    top = gsd_range[1]
    return min(max(native_m / upsampling, top), max(up_to, top))


def as_mask_threshold(value: Any, source: str = "model") -> dict[str, float] | None:
    """A model's ``mask_threshold`` (``{class: value}``: the mask probability from which a
    pixel of the class is in, 0.5 where unset) as plain values; ``None`` when it has none.
    Anything but values in (0, 1) is a :class:`~geoseg.errors.UserInputError` naming
    ``source``."""
    return _class_fractions(value, source, "mask_threshold", "value")


def _class_fractions(value: Any, source: str, key: str, what: str) -> dict[str, float] | None:
    """``{class: number in (0, 1)}`` as plain values, ``None`` when empty; anything else is a
    :class:`~geoseg.errors.UserInputError` naming ``source`` and ``key`` (``what`` names
    the number)."""
    if not value:
        return None
    try:
        table = {str(c): float(t) for c, t in dict(value).items()}
        if any(not 0 < t < 1 for t in table.values()):
            raise ValueError
    except (TypeError, ValueError):
        raise UserInputError(
            f"{source}: {key} {value!r} is not {{class: {what} between 0 and 1}}"
        ) from None
    return table


BOX_REFINEMENTS_MAX = 4
"""The most times a model may move its objects' boxes by its box head again."""


def as_box_refinements(value: Any, source: str = "model") -> dict[str, int] | None:
    """A model's ``class_box_refinements`` (``{class: n}``: how many more times the box head
    moves a kept object's box, from the box it is; 0 where unset) as plain values, classes
    of 0 left out; ``None`` when none is above 0. Anything but whole counts from 0 to
    :data:`BOX_REFINEMENTS_MAX` is a :class:`~geoseg.errors.UserInputError` naming
    ``source``."""
    if not value:
        return None
    try:
        table = {str(c): _whole(n) for c, n in dict(value).items()}
        if any(n > BOX_REFINEMENTS_MAX for n in table.values()):
            raise ValueError
    except (TypeError, ValueError):
        raise UserInputError(
            f"{source}: class_box_refinements {value!r} is not "
            f"{{class: 0 to {BOX_REFINEMENTS_MAX} refinements}}"
        ) from None
    return {c: n for c, n in table.items() if n} or None


ProposalSteps = tuple[tuple[float, int, int], ...]
"""Steps ``(up to m, proposals before NMS, after NMS)``, finest first."""


def as_proposals_by_gsd(value: Any, source: str = "model") -> ProposalSteps | None:
    """A model's ``rpn_proposals_by_gsd`` (``[[up to m, before NMS, after NMS], ...]``: a
    reading at that GSD or finer keeps that many region proposals per pyramid level before
    the RPN's NMS and per tile after it) as plain values, finest first; ``None`` when it has
    none. Anything but a positive GSD and two whole counts of at least 1 is a
    :class:`~geoseg.errors.UserInputError` naming ``source``."""
    if not value:
        return None
    try:
        steps = tuple(sorted((float(gsd), _count(pre), _count(post)) for gsd, pre, post in value))
        if any(not gsd > 0 for gsd, _, _ in steps):
            raise ValueError
    except (TypeError, ValueError):
        raise UserInputError(
            f"{source}: rpn_proposals_by_gsd {value!r} is not "
            "[[GSD > 0, proposals before NMS, after NMS], ...]"
        ) from None
    return steps


def _count(value: Any) -> int:
    if _whole(value) < 1:
        raise ValueError
    return int(value)


def _whole(value: Any) -> int:
    """``value`` as a whole number from 0 (a bool or a fraction is a ``ValueError``)."""
    if isinstance(value, bool) or float(value) != int(value) or int(value) < 0:
        raise ValueError
    return int(value)


T = TypeVar("T")


def value_at_gsd(steps: Iterable[tuple[float, T]], gsd_m: float, default: T) -> T:
    """The value of the first ``(GSD, value)`` step whose GSD is at least ``gsd_m`` (to float
    rounding), else ``default``: how every by-GSD table of a model is read."""
    return next((value for up_to, value in steps if gsd_m <= up_to * (1 + 1e-9)), default)


def proposals_at_gsd(steps: ProposalSteps | None, gsd_m: float) -> tuple[int, int] | None:
    """The proposal counts of the first step of ``steps`` whose GSD is at least ``gsd_m``;
    ``None`` where none is."""
    return value_at_gsd(((up_to, (pre, post)) for up_to, pre, post in steps or ()), gsd_m, None)


def threshold_at_gsd(threshold: float, steps: Sequence[tuple[float, float]], gsd_m: float) -> float:
    """``threshold``, or the score of the first step whose GSD is at least ``gsd_m``."""
    return value_at_gsd(steps, gsd_m, threshold)


def class_values_at(
    classes: Sequence[str],
    base: Sequence[float],
    steps: GsdThresholds | None,
    gsd_m: float,
) -> dict[str, float]:
    """Each class's value when read at ``gsd_m``: its step of ``steps`` that reaches that GSD,
    else its ``base`` value (one per class, in order)."""
    return {
        name: threshold_at_gsd(float(value), (steps or {}).get(name, ()), gsd_m)
        for name, value in zip(classes, base, strict=True)
    }


def mask_cuts_at(
    classes: Sequence[str],
    mask_threshold: Mapping[str, float] | None,
    mask_threshold_by_gsd: GsdThresholds | None,
    gsd_m: float,
) -> dict[str, float] | None:
    """The mask value each class is cut at when read at ``gsd_m`` (``mask_threshold``, or a
    step of ``mask_threshold_by_gsd``; :data:`DEFAULT_MASK_THRESHOLD` where neither says);
    ``None`` where neither is set."""
    if not (mask_threshold or mask_threshold_by_gsd):
        return None
    base = [(mask_threshold or {}).get(c, DEFAULT_MASK_THRESHOLD) for c in classes]
    return class_values_at(classes, base, mask_threshold_by_gsd, gsd_m)


def mask_cut_array(cuts: Mapping[str, float] | None, classes: Sequence[str]) -> np.ndarray | None:
    """Per-class mask values (as :func:`mask_cuts_at` gives them) as one float32 per class
    index, :data:`DEFAULT_MASK_THRESHOLD` where a class has none; ``None`` stays ``None``."""
    if cuts is None:
        return None
    return np.array([cuts.get(c, DEFAULT_MASK_THRESHOLD) for c in classes], dtype=np.float32)


@dataclass(frozen=True, slots=True)
class MaskCuts:
    """The mask values a model cuts each class at (its ``mask_threshold`` and
    ``mask_threshold_by_gsd``) by the GSD a tile is read at: what ``geoseg run`` cuts at, for
    training validation and ``geoseg select`` to draw the same outlines."""

    classes: tuple[str, ...]
    base: dict[str, float] | None = None
    by_gsd: GsdThresholds | None = None

    @classmethod
    def of(cls, settings: Mapping[str, Any], classes: Sequence[str], source: str) -> MaskCuts:
        """From a checkpoint's (unchecked) settings; bad values name ``source``."""
        return cls(
            tuple(classes),
            as_mask_threshold(settings.get("mask_threshold"), source),
            as_mask_threshold_by_gsd(settings.get("mask_threshold_by_gsd"), source),
        )

    def at(self, gsd_m: float) -> np.ndarray | None:
        """One value per class index for tiles read at ``gsd_m``; ``None``: 0.5 for all."""
        return mask_cut_array(
            mask_cuts_at(self.classes, self.base, self.by_gsd, gsd_m), self.classes
        )


def score_thresholds(
    min_score: float | Mapping[str, float] | None, classes: Sequence[str]
) -> np.ndarray:
    """A ``min_score`` (one threshold, one per class name, or ``None``) as one threshold per
    class index; :data:`DEFAULT_MIN_SCORE` where it says nothing."""
    if isinstance(min_score, Mapping):
        values = [min_score.get(name, DEFAULT_MIN_SCORE) for name in classes]
    else:
        values = [DEFAULT_MIN_SCORE if min_score is None else min_score] * len(classes)
    return np.array(values, dtype=np.float64)
