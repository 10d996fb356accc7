"""Which candidate tiles to label: uncertain ones, unlike each other, never overlapping.

:func:`pick_uncertain_diverse` combines uncertainty and diversity in two steps:

1. the *pool*: the ``pool_factor * n`` most uncertain candidates (``pool_factor`` 4 by
   default), so that only tiles the model is unsure of can be picked;
2. greedy *k-center* (the coreset rule of Sener and Savarese, 2018) inside the pool, seeded
   by its most uncertain tile: each next pick is the pooled tile farthest, in embedding
   space, from every pick so far (ties go to the more uncertain). Tiles that the model sees
   alike (the same harbour, ten times) are then picked once, and the picks spread over what
   the archive shows among the tiles that puzzle the model.

Embeddings are standardized per dimension over all candidates first, so that no feature's
scale dominates the distances. A pick removes every candidate whose window overlaps it (in
the same scene); when overlap removals empty the pool before ``n`` picks, it is refilled with
the next most uncertain candidates. :func:`pick_random` is the baseline: candidates in a
random order (from ``seed``), skipping overlaps. Both are deterministic for their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geoseg.grid import PixelWindow

__all__ = ["Candidate", "pick_random", "pick_uncertain_diverse"]


@dataclass(frozen=True, slots=True, eq=False)
class Candidate:
    """A small summary of one candidate tile: its scene (an index), its window on the
    scene's working grid, the share of valid pixels, the model's uncertainty and detection
    count, and its embedding (float32, a few hundred bytes)."""

    scene: int
    window: PixelWindow
    valid_fraction: float
    uncertainty: float
    n_detections: int
    embedding: np.ndarray


def _overlapping(candidates: Sequence[Candidate], k: int) -> np.ndarray:
    """Which candidates overlap candidate ``k`` (itself included)."""
    mine = candidates[k]
    return np.array(
        [
            c.scene == mine.scene and c.window.intersection(mine.window) is not None
            for c in candidates
        ]
    )


def _standardized(candidates: Sequence[Candidate]) -> np.ndarray:
    emb = np.stack([c.embedding for c in candidates]).astype(np.float64)
    std = emb.std(axis=0)
    return (emb - emb.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)


def _by_uncertainty(candidates: Sequence[Candidate]) -> list[int]:
    """Most uncertain first; ties in scene, row, column order (deterministic)."""
    return sorted(
        range(len(candidates)),
        key=lambda k: (
            -candidates[k].uncertainty,
            candidates[k].scene,
            candidates[k].window.row_off,
            candidates[k].window.col_off,
        ),
    )


def pick_uncertain_diverse(
    candidates: Sequence[Candidate], n: int, *, pool_factor: int = 4
) -> list[int]:
    """Indexes of up to ``n`` candidates, in pick order (see the module docstring)."""
    if n < 1 or not candidates:
        return []
    emb = _standardized(candidates)
    uncertainty = np.array([c.uncertainty for c in candidates])
    order = _by_uncertainty(candidates)
    eligible = np.ones(len(candidates), dtype=bool)
    nearest = np.full(len(candidates), np.inf)
    size = max(1, pool_factor * n)
    pool: list[int] = []
    cursor = 0
    picks: list[int] = []
    while len(picks) < n:
        live = [k for k in pool if eligible[k]]
        if not live:
            while cursor < len(order) and len(live) < size:
                if eligible[order[cursor]]:
                    live.append(order[cursor])
                cursor += 1
            pool.extend(live)
            if not live:
                break
        if picks:
            best = max(live, key=lambda k: (nearest[k], uncertainty[k], -order.index(k)))
        else:
            best = live[0]
        picks.append(best)
        eligible &= ~_overlapping(candidates, best)
        nearest = np.minimum(nearest, np.linalg.norm(emb - emb[best], axis=1))
    return picks


def pick_random(candidates: Sequence[Candidate], n: int, *, seed: int) -> list[int]:
    """Indexes of up to ``n`` candidates drawn at random (from ``seed``), never overlapping."""
    eligible = np.ones(len(candidates), dtype=bool)
    picks: list[int] = []
    for k in np.random.default_rng(seed).permutation(len(candidates)):
        if len(picks) == n:
            break
        if eligible[k]:
            picks.append(int(k))
            eligible &= ~_overlapping(candidates, int(k))
    return picks
