"""A tile's instances as compact mask crops: filtered by score, cut to valid pixels, deduped.

This is what travels from the inference stage to the vectorizing stage: a bounding-box crop of
each mask with its offset, never a full-tile mask per instance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoseg.grid import Tile
from geoseg.model.protocol import Instances

__all__ = ["MaskCrop", "instances_to_crops", "touches_seam"]

TILE_NMS_IOU = 0.5
SEAM_MARGIN_PX = 2


@dataclass(frozen=True, slots=True)
class MaskCrop:
    """One instance in one tile: ``mask`` covers scene pixels ``row_off:...``, ``col_off:...``."""

    row_off: int
    col_off: int
    mask: np.ndarray
    label: int
    score: float
    touches_seam: bool


def touches_seam(tile: Tile, row0: int, col0: int, row1: int, col1: int) -> bool:
    """Whether a bbox (tile-local, exclusive stops) comes within :data:`SEAM_MARGIN_PX` of a
    side of the tile that lies inside the scene (models often stop a pixel short of a cut)."""
    height, width = tile.window.height, tile.window.width
    m = SEAM_MARGIN_PX
    return (
        ("top" in tile.seam_sides and row0 < m)
        or ("bottom" in tile.seam_sides and row1 > height - m)
        or ("left" in tile.seam_sides and col0 < m)
        or ("right" in tile.seam_sides and col1 > width - m)
    )


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def instances_to_crops(
    instances: Instances, tile: Tile, valid: np.ndarray, *, min_score: float | np.ndarray
) -> list[MaskCrop]:
    """Keep instances scored at least ``min_score`` (one threshold, or one per label), on valid
    pixels, without in-tile duplicates.

    ``valid`` is the tile's validity ``(tile_px, tile_px)``; masks are cut to the tile's window
    (padding dropped) and to valid pixels. Of two instances of one tile whose masks overlap with
    IoU >= 0.5, the lower-scored is dropped.
    """
    height, width = tile.window.height, tile.window.width
    keep_valid = valid[:height, :width]
    order = np.argsort(-instances.scores, kind="stable")
    thresholds = np.asarray(min_score, dtype=np.float64)
    kept: list[tuple[tuple[int, int, int, int], np.ndarray, int, float]] = []
    for k in order:
        score = float(instances.scores[k])
        if score < (thresholds if thresholds.ndim == 0 else thresholds[instances.labels[k]]):
            continue
        mask = instances.masks[k, :height, :width] & keep_valid
        box = _bbox(mask)
        if box is None:
            continue
        if any(
            _box_iou(mask, box, other_mask, other_box) >= TILE_NMS_IOU
            for other_box, other_mask, _, _ in kept
        ):
            continue
        crop = mask[box[0] : box[2], box[1] : box[3]]
        kept.append((box, crop, int(instances.labels[k]), score))
    return [
        MaskCrop(
            row_off=tile.window.row_off + r0,
            col_off=tile.window.col_off + c0,
            mask=crop,
            label=label,
            score=score,
            touches_seam=touches_seam(tile, r0, c0, r1, c1),
        )
        for (r0, c0, r1, c1), crop, label, score in kept
    ]


def _box_iou(
    mask: np.ndarray,
    box: tuple[int, int, int, int],
    other_crop: np.ndarray,
    other_box: tuple[int, int, int, int],
) -> float:
    r0, c0 = max(box[0], other_box[0]), max(box[1], other_box[1])
    r1, c1 = min(box[2], other_box[2]), min(box[3], other_box[3])
    if r1 <= r0 or c1 <= c0:
        return 0.0
    a = mask[r0:r1, c0:c1]
    b = other_crop[r0 - other_box[0] : r1 - other_box[0], c0 - other_box[1] : c1 - other_box[1]]
    inter = np.count_nonzero(a & b)
    if inter == 0:
        return 0.0
    union = np.count_nonzero(mask) + np.count_nonzero(other_crop) - inter
    return inter / union
