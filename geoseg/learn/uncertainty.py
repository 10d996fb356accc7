"""How unsure a model is of a tile, and what the tile looks like to it (for ``geoseg select``).

**Uncertainty** of a tile, 0 (sure) to 1: the model is run on the tile and on its mirror
image (left-right), at the lowest score it reports (:data:`SCORE_FLOOR`), and each
detection ``i`` of either view gets a *doubt*

    ``d_i = 1 - (1 - H(s_i)) * c_i``

where ``s_i`` is its score, ``H`` the binary entropy in bits (1 at a score of 0.5, 0 at 0 or
1) and ``c_i`` its agreement with the other view: the mask IoU of its best match of the same
class there, mirrored back (0 when the other view has nothing like it). A detection is sure
only when its score is decided *and* the mirrored tile shows the same object with the same
outline; a middling score, an object that comes and goes under a flip, or an outline that
moves all raise the doubt. The tile's uncertainty is the score-weighted mean doubt, with a
prior of :data:`PRIOR_WEIGHT` detections of doubt 0:

    ``U = sum(s_i * d_i) / (sum(s_i) + PRIOR_WEIGHT)``

so a tile of open water with one faint detection (score 0.15) stays low (0.23) while a tile of
fields the model half sees scores high. Why these two signals: score entropy alone misses a
confidently wrong outline, and flip disagreement alone is dominated by faint clutter;
together they point at tiles whose labels would change the model most, and the mirrored
view also tests outlines, which Boundary IoU measures.

**Embedding**: the model's own ``embed(tiles)`` when it has one (the Mask R-CNN average-pools
its feature pyramid), else :func:`pixel_embedding`; either is projected to at most
:data:`EMBED_DIM` numbers by a fixed random projection (distances are kept, Johnson and
Lindenstrauss), so a tile's summary stays small.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geoseg.config import MaskCuts
from geoseg.model.protocol import (
    Instances,
    describe_model,
    match_input_bands,
    predict_accepts,
)

__all__ = [
    "EMBED_DIM",
    "PRIOR_WEIGHT",
    "SCORE_FLOOR",
    "binary_entropy",
    "embed_tiles",
    "pixel_embedding",
    "tile_uncertainty",
    "two_views",
]

SCORE_FLOOR = 0.15
"""The lowest score asked of the model: faint detections are evidence of doubt too (lower
floors cost masks for hundreds of clutter detections per tile, 3 times the time)."""
PRIOR_WEIGHT = 0.5
"""Detections of doubt 0 added to every tile, so that a tile of faint clutter stays sure."""
EMBED_DIM = 128
"""The most numbers kept per tile embedding."""
_IOU_STRIDE = 4  # masks are compared on every 4th pixel: cheap, and plenty for IoU


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a yes/no event of probability ``p`` (0 at 0 and 1, 1 at 0.5)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1 - 1e-9)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def two_views(
    model: Any, tiles: np.ndarray, valid: np.ndarray, gsd_m: float | None = None
) -> list[tuple[Instances, ...]]:
    """Per tile, the model's instances on the tile and on its mirror image (mirrored back),
    scored at least :data:`SCORE_FLOOR`, masks cut to the valid pixels. Tiles read at
    ``gsd_m`` have their mask probabilities cut where ``geoseg run`` would cut them there
    (the model's mask thresholds); without a GSD, at 0.5."""
    tiles = match_input_bands(np.ascontiguousarray(tiles, dtype=np.float32), model)
    mirrored = np.ascontiguousarray(tiles[..., ::-1])
    plain, flipped = _predict(model, tiles), _predict(model, mirrored)
    shape_hw = tiles.shape[2:]
    n_classes = len(model.classes)
    cuts = _mask_cuts(model, gsd_m)
    out = []
    for k in range(len(tiles)):
        a, b = (
            Instances.from_any(
                view[k], shape_hw=shape_hw, n_classes=n_classes, class_mask_thresholds=cuts
            )
            for view in (plain, flipped)
        )
        b = Instances(np.ascontiguousarray(b.masks[..., ::-1]), b.labels, b.scores)
        out.append(tuple(_cut(v, valid[k]) for v in (a, b)))
    return out


def _mask_cuts(model: Any, gsd_m: float | None) -> np.ndarray | None:
    """The mask value of each class index at ``gsd_m``; ``None`` (0.5) where unset."""
    if gsd_m is None:
        return None
    info = describe_model(model, str(getattr(model, "name", "model")))
    return MaskCuts(info.classes, info.mask_threshold, info.mask_threshold_by_gsd).at(gsd_m)


def _cut(found: Instances, valid: np.ndarray) -> Instances:
    keep = found.scores >= SCORE_FLOOR
    return Instances(found.masks[keep] & valid, found.labels[keep], found.scores[keep])


def _predict(model: Any, tiles: np.ndarray) -> Sequence[Any]:
    if predict_accepts(model, "min_score"):
        return model.predict(tiles, min_score=SCORE_FLOOR)
    return model.predict(tiles)


def tile_uncertainty(plain: Instances, mirrored: Instances) -> float:
    """The uncertainty ``U`` of one tile from its two views (see the module docstring)."""
    n_a, n_b = len(plain.scores), len(mirrored.scores)
    if n_a + n_b == 0:
        return 0.0
    ious = _mask_ious(plain.masks, mirrored.masks)
    ious[plain.labels[:, None] != mirrored.labels[None, :]] = 0.0
    agree = np.concatenate(
        [
            ious.max(axis=1) if n_b else np.zeros(n_a),
            ious.max(axis=0) if n_a else np.zeros(n_b),
        ]
    )
    scores = np.concatenate([plain.scores, mirrored.scores]).astype(np.float64)
    doubt = 1.0 - (1.0 - binary_entropy(scores)) * agree
    return float((scores * doubt).sum() / (scores.sum() + PRIOR_WEIGHT))


def _mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    s = _IOU_STRIDE
    fa, fb = (m[:, ::s, ::s] for m in (a, b))
    fa, fb = (m.reshape(m.shape[0], m.shape[1] * m.shape[2]).astype(np.float32) for m in (fa, fb))
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return (inter / np.maximum(union, 1.0)).astype(np.float64)


def pixel_embedding(tiles: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A model-free description of each tile ``(N, bands * 66)``: per band, the mean and
    standard deviation of its valid pixels and an 8 x 8 thumbnail (block means)."""
    n, bands, height, width = tiles.shape
    out = np.zeros((n, bands * 66), dtype=np.float32)
    rows = np.linspace(0, height, 9).astype(int)
    cols = np.linspace(0, width, 9).astype(int)
    for k in range(n):
        ok = valid[k]
        for b in range(bands):
            band = tiles[k, b]
            values = band[ok] if ok.any() else band.reshape(-1)
            thumb = [
                band[rows[i] : rows[i + 1], cols[j] : cols[j + 1]].mean()
                for i in range(8)
                for j in range(8)
            ]
            out[k, b * 66 : (b + 1) * 66] = [values.mean(), values.std(), *thumb]
    return out


def embed_tiles(model: Any, tiles: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float32 ``(N, <= EMBED_DIM)``: the model's ``embed`` (or :func:`pixel_embedding`),
    randomly projected to :data:`EMBED_DIM` numbers when longer."""
    if callable(getattr(model, "embed", None)):
        raw = np.asarray(model.embed(match_input_bands(tiles, model)), dtype=np.float32)
    else:
        raw = pixel_embedding(tiles, valid)
    raw = raw.reshape(len(tiles), -1)
    dim = raw.shape[1]
    if dim <= EMBED_DIM:
        return raw
    rng = np.random.default_rng(dim)  # the same projection in every process
    projection = rng.normal(size=(dim, EMBED_DIM)).astype(np.float32) / np.sqrt(EMBED_DIM)
    return (raw @ projection).astype(np.float32)
