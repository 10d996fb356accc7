"""Test-time augmentation: a tile seen in several views (flipped, and turned a quarter), and
the fusion of the objects a detector finds in each view into one set.

A :class:`View` is one of the eight symmetries of a square (the dihedral group): an optional
transpose, then optional flips of the rows and of the columns. ``views(n)`` gives the first
``n`` of :data:`VIEW_ORDER`, each set closed under composition: 1 (the tile), 2 (and its
mirror), 4 (and its flips), 8 (and their transposes, i.e. quarter turns).

:func:`fuse_views` clusters the boxes found in the views of one image class by class: boxes
of IoU at least ``iou`` are one object, kept once. Its box is the score-weighted mean of its
views' best boxes, its score the sum of their scores over the number of views (an object
found in one view of four keeps a quarter of its score). A detector then draws each fused
object's mask in every view and averages them (as detectron2's test-time augmentation does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

from geoseg.config import TTA_VIEW_COUNTS as VIEW_COUNTS

__all__ = ["VIEW_COUNTS", "View", "fuse_views", "views"]

FUSE_IOU = 0.55
"""Boxes of two views that overlap at least this much (IoU) are one object."""


@dataclass(frozen=True, slots=True)
class View:
    """Transpose (rows become columns), then flip the rows (up-down) and the columns
    (left-right)."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def _flip_dims(self) -> tuple[int, ...]:
        return (-2,) * self.flip_rows + (-1,) * self.flip_cols

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(..., H, W)`` as this view sees it."""
        if self.transpose:
            pixels = pixels.transpose(-1, -2)
        dims = self._flip_dims()
        return torch.flip(pixels, dims) if dims else pixels

    def unview(self, pixels: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`image`: a view's ``(..., h, w)`` (e.g. box-local masks) back
        in the tile's orientation."""
        dims = self._flip_dims()
        if dims:
            pixels = torch.flip(pixels, dims)
        return pixels.transpose(-1, -2) if self.transpose else pixels

    def boxes(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Boxes ``(K, 4)`` ``x0, y0, x1, y1`` in a ``height x width`` tile, in this view."""
        if self.transpose:
            boxes, height, width = boxes[:, [1, 0, 3, 2]], width, height
        return self._flip_boxes(boxes, height, width)

    def unview_boxes(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The inverse of :meth:`boxes`: boxes found in this view of a ``height x width``
        tile, in the tile."""
        if not self.transpose:
            return self._flip_boxes(boxes, height, width)
        return self._flip_boxes(boxes, width, height)[:, [1, 0, 3, 2]]

    def _flip_boxes(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        out = boxes.clone()
        if self.flip_cols:
            out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
        if self.flip_rows:
            out[:, 1], out[:, 3] = height - boxes[:, 3], height - boxes[:, 1]
        return out


VIEW_ORDER: tuple[View, ...] = (
    View(),
    View(flip_cols=True),
    View(flip_rows=True),
    View(flip_rows=True, flip_cols=True),
    View(transpose=True),
    View(transpose=True, flip_cols=True),
    View(transpose=True, flip_rows=True),
    View(transpose=True, flip_rows=True, flip_cols=True),
)
"""The eight views, in the order :func:`views` takes them."""


def views(count: int) -> tuple[View, ...]:
    """The first ``count`` views (``count`` one of :data:`VIEW_COUNTS`)."""
    if count not in VIEW_COUNTS:
        raise ValueError(f"views: {count} is not one of {VIEW_COUNTS}")
    return VIEW_ORDER[:count]


def fuse_views(
    found: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    view_counts: Sequence[int],
    *,
    iou: float | Sequence[float] = FUSE_IOU,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fuse what each view found in one image: ``found[v]`` is ``(boxes (K, 4) in the
    image's orientation, scores (K,), labels (K,))`` of view ``v``; ``view_counts[label]``
    how many views the label's objects are fused from (the first ones; a label's detections
    in later views are ignored); ``iou`` the box IoU from which boxes are one object, for
    every label or one per label (``iou[label]``). Returns the fused ``(boxes, scores,
    labels)`` on the device of ``found``."""
    device = found[0][0].device  # fused on the CPU: a loop over small tensors
    boxes = torch.cat([b for b, _, _ in found]).float().cpu()
    scores = torch.cat([s for _, s, _ in found]).float().cpu()
    labels = torch.cat([lab for _, _, lab in found]).cpu()
    view_of = torch.cat([torch.full((len(s),), v) for v, (_, s, _) in enumerate(found)])
    fused_boxes, fused_scores, fused_labels = [], [], []
    for label in labels.unique().tolist():
        count = int(view_counts[label])
        pick = torch.nonzero((labels == label) & (view_of < count))[:, 0]
        pick = pick[torch.argsort(scores[pick], descending=True, stable=True)]
        least = iou if isinstance(iou, float | int) else iou[label]
        overlap = box_iou(boxes[pick], boxes[pick]) >= least
        taken = torch.zeros(len(pick), dtype=torch.bool)
        for first in range(len(pick)):
            if taken[first]:
                continue
            members = torch.nonzero(overlap[first] & ~taken)[:, 0]
            taken[members] = True
            best = _best_per_view(pick[members], view_of)  # sorted by score: first is best
            weights = scores[best] / scores[best].sum()
            fused_boxes.append((boxes[best] * weights[:, None]).sum(0))
            fused_scores.append(scores[best].sum() / count)
            fused_labels.append(label)
    if not fused_boxes:
        return boxes[:0].to(device), scores[:0].to(device), labels[:0].to(device)
    return (
        torch.stack(fused_boxes).to(device),
        torch.stack(fused_scores).to(device),
        torch.tensor(fused_labels, dtype=labels.dtype, device=device),
    )


def _best_per_view(members: torch.Tensor, view_of: torch.Tensor) -> torch.Tensor:
    """The first (best-scored) of ``members`` from each view."""
    seen: set[int] = set()
    best = []
    for index in members.tolist():
        view = int(view_of[index])
        if view not in seen:
            seen.add(view)
            best.append(index)
    return torch.tensor(best, dtype=torch.int64)
