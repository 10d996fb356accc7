"""A tile's instances as compact mask crops: filtered by score, cut to valid pixels, deduped.

This is what travels from the inference stage to the vectorizing stage: a bounding-box crop of
each mask with its offset, never a full-tile mask per instance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoseg.grid import Tile
from geoseg.model.protocol import Instances

__all__ = ["MaskCrop", "instances_to_crops", "tile_nms", "touches_seam"]

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
    IoU >= 0.5, the lower-scored is dropped (ties: the one the model listed first is kept).
    """
    height, width = tile.window.height, tile.window.width
    keep_valid = valid[:height, :width]
    thresholds = np.asarray(min_score, dtype=np.float64)
    floor = thresholds if thresholds.ndim == 0 else thresholds[instances.labels]
    order = np.argsort(-instances.scores, kind="stable")
    boxes: list[tuple[int, int, int, int]] = []
    crops: list[np.ndarray] = []
    picked: list[int] = []
    for k in order[(instances.scores >= floor)[order]]:
        row0, col0, mask = instances.crop(int(k))
        row1, col1 = min(row0 + mask.shape[0], height), min(col0 + mask.shape[1], width)
        if row1 <= row0 or col1 <= col0:
            continue
        cut = mask[: row1 - row0, : col1 - col0] & keep_valid[row0:row1, col0:col1]
        box = _bbox(cut)
        if box is None:
            continue
        r0, c0, r1, c1 = box
        boxes.append((row0 + r0, col0 + c0, row0 + r1, col0 + c1))
        crops.append(cut[r0:r1, c0:c1])
        picked.append(int(k))
    kept = tile_nms(np.array(boxes, dtype=np.int64).reshape(-1, 4), crops)
    return [
        MaskCrop(
            row_off=tile.window.row_off + boxes[i][0],
            col_off=tile.window.col_off + boxes[i][1],
            mask=crops[i],
            label=int(instances.labels[picked[i]]),
            score=float(instances.scores[picked[i]]),
            touches_seam=touches_seam(tile, *boxes[i]),
        )
        for i in kept
    ]


def tile_nms(
    boxes: np.ndarray, crops: list[np.ndarray], *, iou: float = TILE_NMS_IOU, chunk: int = 1024
) -> list[int]:
    """Greedy mask NMS over instances already in priority order: which to keep, in order.

    ``boxes`` ``(N, 4)`` are tight ``row0, col0, row1, col1`` (exclusive stops) of the bool
    ``crops``. Instance ``i`` is dropped when its mask IoU with a kept earlier one is >= ``iou``.
    Box overlaps and an upper bound of the IoU are computed with array operations (``chunk``
    rows at a time); masks are compared only for pairs whose bound reaches ``iou``.
    """
    count = len(crops)
    if count == 0:
        return []
    areas = np.array([np.count_nonzero(c) for c in crops], dtype=np.int64)
    kept = np.zeros(count, dtype=bool)
    for start in range(0, count, chunk):
        rows = slice(start, min(start + chunk, count))
        r0, c0, r1, c1 = (boxes[rows, i : i + 1] for i in range(4))
        inter_h = np.minimum(r1, boxes[None, :, 2]) - np.maximum(r0, boxes[None, :, 0])
        inter_w = np.minimum(c1, boxes[None, :, 3]) - np.maximum(c0, boxes[None, :, 1])
        overlap = np.clip(inter_h, 0, None) * np.clip(inter_w, 0, None)
        most = np.minimum(overlap, np.minimum(areas[rows, None], areas[None, :]))
        # IoU <= most / (a + b - most); it reaches iou only if most >= iou (a + b) / (1 + iou)
        bound = most * (1 + iou) + 1e-6  # a hair generous: the exact test follows
        maybe = (most > 0) & (bound >= iou * (areas[rows, None] + areas[None, :]))
        for i in range(rows.start, rows.stop):
            rivals = np.flatnonzero(maybe[i - start, :i] & kept[:i])
            kept[i] = not any(_iou_at_least(boxes, crops, areas, i, j, iou) for j in rivals)
    return np.flatnonzero(kept).tolist()


def _iou_at_least(
    boxes: np.ndarray, crops: list[np.ndarray], areas: np.ndarray, i: int, j: int, iou: float
) -> bool:
    (ar0, ac0, _, _), (br0, bc0, _, _) = boxes[i], boxes[j]
    r0, c0 = max(ar0, br0), max(ac0, bc0)
    r1, c1 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
    a = crops[i][r0 - ar0 : r1 - ar0, c0 - ac0 : c1 - ac0]
    b = crops[j][r0 - br0 : r1 - br0, c0 - bc0 : c1 - bc0]
    inter = int(np.count_nonzero(a & b))
    return inter > 0 and inter / (int(areas[i]) + int(areas[j]) - inter) >= iou
