"""The run settings a model may recommend for how ``geoseg run`` reads with it, in one table.

Each :class:`ReadSetting` names the attribute a segmenter (and
:class:`~geoseg.model.protocol.ModelInfo`) holds it as, the key a checkpoint stores it under,
and the parser (in :mod:`geoseg.config`) that checks it and makes it plain values. The
protocol, the checkpoint and the Mask R-CNN read and write every setting through
:data:`READ_SETTINGS`, so a new setting is one more row there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from geoseg.config import (
    as_box_refinements,
    as_class_ranges,
    as_coarse_reading,
    as_extra_gsd,
    as_fuse_iou,
    as_mask_threshold,
    as_mask_threshold_by_gsd,
    as_min_score,
    as_min_score_by_gsd,
    as_proposals_by_gsd,
    as_tta_views,
    as_tta_views_by_gsd,
)

__all__ = [
    "READ_SETTINGS",
    "ReadSetting",
    "parse_settings",
    "settings_from_model",
    "settings_from_payload",
    "to_payload",
]


@dataclass(frozen=True, slots=True)
class ReadSetting:
    """One setting: ``attribute`` on a segmenter, ``key`` in a checkpoint, ``parse(value,
    source)`` to plain values or ``None`` when unset (bad values name ``source``).
    ``per_class``: a table whose classes must be the model's (``geoseg run`` checks them);
    ``score``: a score threshold, which ``--min-score`` replaces and a fine-tune tunes anew;
    ``kept``: a fine-tune keeps it for the classes it trains (the GSD ranges it merges with
    its own chips' instead, the score thresholds it tunes anew)."""

    attribute: str
    key: str
    parse: Callable[[Any, str], Any]
    per_class: bool = False
    score: bool = False
    kept: bool = False


READ_SETTINGS: tuple[ReadSetting, ...] = (
    ReadSetting("class_gsd_range_m", "class_gsd_m", lambda value, _: as_class_ranges(value)),
    ReadSetting("min_score", "min_score", lambda value, _: as_min_score(value), score=True),
    ReadSetting(
        "min_score_by_gsd", "min_score_by_gsd", as_min_score_by_gsd, per_class=True, score=True
    ),
    ReadSetting("class_extra_gsd_m", "class_extra_gsd_m", as_extra_gsd, per_class=True, kept=True),
    ReadSetting(
        "class_coarse_reading",
        "class_coarse_reading",
        as_coarse_reading,
        per_class=True,
        kept=True,
    ),
    ReadSetting(
        "class_fine_gsd_m",
        "class_fine_gsd_m",
        lambda value, source: as_extra_gsd(value, source, "class_fine_gsd_m"),
        per_class=True,
        kept=True,
    ),
    ReadSetting("mask_threshold", "mask_threshold", as_mask_threshold, per_class=True, kept=True),
    ReadSetting(
        "mask_threshold_by_gsd",
        "mask_threshold_by_gsd",
        as_mask_threshold_by_gsd,
        per_class=True,
        kept=True,
    ),
    ReadSetting("class_tta_views", "class_tta_views", as_tta_views, per_class=True, kept=True),
    ReadSetting(
        "tta_views_by_gsd", "tta_views_by_gsd", as_tta_views_by_gsd, per_class=True, kept=True
    ),
    ReadSetting("class_fuse_iou", "class_fuse_iou", as_fuse_iou, per_class=True, kept=True),
    ReadSetting("rpn_proposals_by_gsd", "rpn_proposals_by_gsd", as_proposals_by_gsd, kept=True),
    ReadSetting(
        "class_box_refinements",
        "class_box_refinements",
        as_box_refinements,
        per_class=True,
        kept=True,
    ),
)
"""Every read setting, in the order a checkpoint stores them."""


def parse_settings(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Settings given by attribute name, parsed: every setting's, ``None`` where not given. A
    name that is no setting's attribute is a :class:`TypeError`."""
    _check_names(values, {s.attribute for s in READ_SETTINGS})
    return {s.attribute: s.parse(values.get(s.attribute), source) for s in READ_SETTINGS}


def settings_from_model(model: Any, source: str) -> dict[str, Any]:
    """The settings a segmenter holds as attributes, parsed, by attribute name."""
    return {s.attribute: s.parse(getattr(model, s.attribute, None), source) for s in READ_SETTINGS}


def settings_from_payload(payload: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The settings a checkpoint payload holds, parsed, by attribute name."""
    return {s.attribute: s.parse(payload.get(s.key), source) for s in READ_SETTINGS}


def to_payload(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Settings given by checkpoint key, parsed and made what a checkpoint holds (lists, dicts
    and floats), by key; unset ones are left out. A name that is no setting's key is a
    :class:`TypeError`."""
    _check_names(values, {s.key for s in READ_SETTINGS})
    parsed = ((s.key, s.parse(values.get(s.key), source)) for s in READ_SETTINGS)
    return {key: _plain(value) for key, value in parsed if value is not None}


def _check_names(values: Mapping[str, Any], names: set[str]) -> None:
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"not a model read setting: {', '.join(unknown)}")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
