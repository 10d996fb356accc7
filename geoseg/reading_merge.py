"""One class read at two GSDs, merged: every object once, from whichever reading saw it best.

A model may find a class better at two scales than at either (the default model's buildings:
some found at 0.3 m, others only at 0.6 m), so :mod:`geoseg.plan` can read that class in more
than one pass (``class_extra_gsd_m``). Each pass is stitched on its own grid as before; their
objects of the class then meet here. The rule is a greedy one over the class's objects from all
its readings, best score first: an object is dropped when it overlaps a kept one by
:data:`MERGE_IOU` or shares more than :data:`MERGE_SHARE` of the smaller one's area with it
(two readings draw one object at different sizes, so IoU alone misses nested copies).

**Streaming.** The readings' objects are compared in the finest pass's pixel space (the
working grids are the scene's grid scaled, so this is a scale and an offset). Each pass's
stitcher tells the lowest row its future objects may start at
(:meth:`~geoseg.stitch.StreamingStitcher.frontier_row`); an object whose box ends above every
pass's frontier has met every object that can overlap it, and is decided as soon as its better
rivals are. A kept object is remembered only until no waiting or future object can reach it.
With the passes' batches interleaved band by band (the plan does this), memory holds about a
band of the coarsest reading, not the scene's objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from shapely.geometry.base import BaseGeometry

from geoseg.stitch import StitchedObject

__all__ = ["MERGE_IOU", "MERGE_SHARE", "ReadingMerger", "merge_readings", "seen_twice"]

MERGE_IOU = 0.3
"""Two readings' outlines with at least this IoU are one object (measured: model card,
"Reading Sentinel-2 finer": Nairobi buildings 0.20 -> 0.32, training strips unchanged)."""

MERGE_SHARE = 0.5
"""...or when their intersection is more than this share of the smaller outline."""


def seen_twice(a: BaseGeometry, b: BaseGeometry) -> bool:
    """Whether two readings' outlines are one object (see the module doc)."""
    shared = shapely.area(shapely.intersection(a, b))
    if shared <= 0:
        return False
    smaller = min(a.area, b.area)
    return shared >= MERGE_IOU * (a.area + b.area - shared) or shared > MERGE_SHARE * smaller


@dataclass(slots=True)
class _Entry:
    pass_index: int
    obj: StitchedObject
    outline: BaseGeometry  # in the common (finest pass's) pixel space
    top: float
    bottom: float
    rank: tuple
    kept: bool | None = None


class ReadingMerger:
    """Merge the objects of the classes read in several passes (see the module doc).

    ``transforms``: each pass's working-grid transform (pass pixels to scene coordinates);
    ``classes``: the class indexes to merge. :meth:`add` takes a pass's final objects of those
    classes; :meth:`advance` takes the passes' frontiers and returns the objects now kept, as
    ``(pass index, object)``; :meth:`finish` returns the rest.
    """

    def __init__(self, transforms: Sequence[Affine], classes: Sequence[int]) -> None:
        base = ~transforms[0]
        self._to_common = [base @ t for t in transforms]
        # the working grids are one grid scaled: rows map to rows. Otherwise nothing is
        # final before finish() (correct, only not bounded in memory).
        self._rows_map = all(abs(t.b) < 1e-9 and abs(t.d) < 1e-9 for t in self._to_common)
        self.classes = frozenset(classes)
        self._pending: list[_Entry] = []
        self._kept: list[_Entry] = []
        self._serial = 0

    @property
    def n_held(self) -> int:
        """Objects waiting for a decision, or kept and remembered for later ones."""
        return len(self._pending) + len(self._kept)

    def add(self, pass_index: int, objects: Sequence[StitchedObject]) -> None:
        """Take final objects of the merged classes from one pass's stitcher."""
        if not objects:
            return
        t = self._to_common[pass_index]
        matrix, offset = np.array([[t.a, t.d], [t.b, t.e]]), np.array([t.c, t.f])
        polygons = np.array([o.polygon_px for o in objects], dtype=object)
        outlines = shapely.transform(polygons, lambda xy: xy @ matrix + offset)  # one call
        bounds = shapely.bounds(outlines)
        keys = shapely.to_wkb(outlines).tolist()
        for obj, outline, box, key in zip(objects, outlines, bounds.tolist(), keys, strict=True):
            self._serial += 1
            rank = (-obj.score, pass_index, obj.label, *box, key, self._serial)
            self._pending.append(_Entry(pass_index, obj, outline, box[1], box[3], rank))

    def advance(self, frontiers: Sequence[float]) -> list[tuple[int, StitchedObject]]:
        """Decide what the passes' frontiers (each in its own pass's rows, see
        :meth:`~geoseg.stitch.StreamingStitcher.frontier_row`) allow; the objects kept."""
        if not self._rows_map:
            return []
        line = min(
            (t.e * row + t.f if np.isfinite(row) else row)
            for t, row in zip(self._to_common, frontiers, strict=True)
        )
        return self._decide(line)

    def finish(self) -> list[tuple[int, StitchedObject]]:
        """Decide everything left (every pass has finished)."""
        out = self._decide(float("inf"))
        self._kept.clear()
        return out

    def _decide(self, line: float) -> list[tuple[int, StitchedObject]]:
        ready = sorted((e for e in self._pending if e.bottom <= line), key=lambda e: e.rank)
        out: list[tuple[int, StitchedObject]] = []
        if ready:
            held = self._pending + self._kept
            tree = shapely.STRtree(np.array([e.outline for e in held], dtype=object))
            hits = tree.query(np.array([e.outline for e in ready], dtype=object), "intersects")
            rivals: dict[int, list[_Entry]] = {}
            for i, j in zip(*hits, strict=True):
                rivals.setdefault(int(i), []).append(held[int(j)])
            for k, entry in enumerate(ready):  # rank order: better rivals are decided first
                entry.kept = self._verdict(entry, rivals.get(k, []))
                if entry.kept:
                    out.append((entry.pass_index, entry.obj))
                    self._kept.append(entry)
            self._pending = [e for e in self._pending if e.kept is None]
        # a kept object is forgotten once nothing waiting or to come can overlap it
        reach = min([line, *(e.top for e in self._pending)])
        self._kept = [e for e in self._kept if e.bottom > reach]
        return out

    @staticmethod
    def _verdict(entry: _Entry, rivals: list[_Entry]) -> bool | None:
        waits = False
        for rival in rivals:
            if (
                rival is entry
                or rival.obj.label != entry.obj.label
                or rival.rank >= entry.rank
                or rival.kept is False
                or not seen_twice(rival.outline, entry.outline)
            ):
                continue
            if rival.kept:
                return False
            waits = True
        return None if waits else True


def merge_readings(
    per_pass: Sequence[Sequence[StitchedObject]],
    transforms: Sequence[Affine],
    classes: Sequence[int],
) -> list[list[StitchedObject]]:
    """All passes' objects at once (each pass's stitched objects), the merged classes' copies
    dropped: one list per pass, in the order given."""
    merger = ReadingMerger(transforms, classes)
    out: list[list[StitchedObject]] = [[] for _ in per_pass]
    for k, objects in enumerate(per_pass):
        merger.add(k, [o for o in objects if o.label in merger.classes])
        out[k] = [o for o in objects if o.label not in merger.classes]
    for k, obj in merger.finish():
        out[k].append(obj)
    return out
