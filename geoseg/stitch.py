"""Stitching: every object once and whole, from the fragments that overlapping tiles saw.

Input: :class:`Fragment` values, one per instance per tile, as pixel-exact polygons in the
scene's (working-grid) pixel coordinates, so polygons from different tiles share one integer
lattice and their intersections and unions are exact.

The algorithm, in three steps:

1. **Link.** Two fragments from neighbouring tiles are linked when, *inside the strip their
   two tiles share*, their IoU reaches ``merge_iou`` (or, of one class, when the smaller lies
   :data:`CONTAINED_SHARE` inside the larger and each is the other's best match). Both tiles
   see the same pixels there, so one object gives two nearly equal shapes in the strip,
   however much of it each tile saw; two distinct objects that touch (terraced houses,
   adjacent fields) share an edge but no area, so their IoU in the strip is about 0 and they
   are never linked. Links are grouped transitively with union-find, so an object several
   tiles wide becomes one group.
2. **Own.** Each group is kept only if one of its fragments has area inside the *core* of the
   tile that saw it (see :mod:`geoseg.grid`): the cores partition the scene, so the tile that
   owns a place decides whether an object is there, and a copy seen only in another tile's
   halo is dropped when the owner did not see it.
3. **Shape.** A group with a *complete* fragment (one that comes no nearer than
   :data:`~geoseg.fragments.SEAM_MARGIN_PX` to a seam side of its tile, and whose tile window
   holds every other fragment of the group, so the tile saw the whole object) is drawn by its
   best-scored complete fragment. A group with
   none (an object larger than what any tile sees whole) is the union of each fragment clipped
   to its own tile's core: pieces that meet exactly on the core boundaries.

A last pass drops an object of the same class as a better-scored one that it overlaps by
the same rule (a duplicate that linking missed because a model drew the two copies apart):
a greedy suppression in *rank* order, by score and then by a key of the outline. Each tile's
fragments are taken in a fixed order too (class, better score first, outline), so ties of
best match, sums of scores and so the result never depend on the order fragments came in.

**Streaming.** :class:`StreamingStitcher` takes tiles as they finish, in any order, and hands
back each object as soon as no unfinished tile can change it, forgetting it then; it gives
exactly the objects of :func:`stitch` (which is the same machinery fed everything at once).
An object is final when:

- *its group is complete*: links only join 8-neighbouring tiles and depend only on the
  fragments of those two tiles, so a group gains no member once every tile around each of
  its members' tiles is finished; its ownership and shape depend on the group alone;
- *its duplicate test is decided*: an object lies inside the union of its members' tile
  windows, so any object that overlaps it has a member in a tile whose window meets its
  bounding box. Once those tiles are finished and hold no incomplete group, every possible
  rival is known; it is decided when every better-ranked rival of its class that it
  overlaps by the rule is decided (kept: it is dropped; dropped: it does not count), which
  is exactly what the greedy pass over the whole scene decides;
- a kept object is remembered (not emitted again) until every object with a member in a
  tile over its bounding box is decided, as a later one may still be its duplicate.

Held in memory: the fragments of incomplete groups and the objects near unfinished tiles,
about three tile rows when tiles finish row by row.

Limits: an object whose parts in the shared strip are drawn too differently by the two tiles
(IoU below ``merge_iou``) comes out as two pieces cut at the core boundary; an object larger
than a tile whose owner tile missed part of it comes out with that part missing. Both are
rare when the overlap exceeds the size of the objects (see :mod:`geoseg.grid`).
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from geoseg.grid import Tile, TileGrid

__all__ = [
    "CONTAINED_SHARE",
    "Fragment",
    "StitchedObject",
    "StreamingStitcher",
    "same_object",
    "stitch",
    "union_find_groups",
]

#: Two fragments of one class are also one object when this share of the smaller one's area
#: (in the strip) lies inside the larger: thin objects (a ship 3 px wide) drawn one pixel
#: wider or narrower by two tiles have a low IoU but are still nested (the IoU must still
#: reach half of the merge IoU, see :func:`same_object`).
CONTAINED_SHARE = 0.8

TileIndex = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Fragment:
    """One instance as one tile saw it: a polygon in scene pixel coordinates (x = column)."""

    tile: Tile
    polygon_px: BaseGeometry
    label: int
    score: float
    touches_seam: bool


@dataclass(frozen=True, slots=True)
class StitchedObject:
    """One object of the scene: its polygon in scene pixel coordinates, class and score."""

    polygon_px: BaseGeometry
    label: int
    score: float
    n_fragments: int


def union_find_groups(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components of ``n`` items linked by ``pairs``, each sorted, in first-item order.

    >>> union_find_groups(5, [(0, 2), (3, 4), (2, 4)])
    [[0, 2, 3, 4], [1]]
    """
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def _link_tiles(
    a: Sequence[Fragment], b: Sequence[Fragment], merge_iou: float
) -> list[tuple[int, int]]:
    """Links ``(index in a, index in b)`` between the fragments of two neighbouring tiles,
    each list in a fixed order (ties of best match go to the first), by :func:`same_object`
    inside the strip the two tiles share. A link by nesting alone must also be mutual: each
    fragment is the other's best match (highest strip IoU) among the fragments of the other
    tile, so a neighbour's sliver nested in a too-large outline loses to the object that
    outline really belongs to. Depends on these two tiles' fragments only.
    """
    if not a or not b:
        return []
    shared = a[0].tile.window.intersection(b[0].tile.window)
    if shared is None:
        return []
    clips = []
    for frags in (a, b):
        polygons = np.array([f.polygon_px for f in frags], dtype=object)
        x0, y0, x1, y1 = shapely.bounds(polygons).T
        inside = np.flatnonzero(
            (x0 < shared.col_stop)
            & (x1 > shared.col_off)
            & (y0 < shared.row_stop)
            & (y1 > shared.row_off)
        )
        clips.append((inside, shapely.clip_by_rect(polygons[inside], *shared.bbox_xyxy)))
    (in_a, clip_a), (in_b, clip_b) = clips
    if not len(in_a) or not len(in_b):
        return []
    left, right = shapely.STRtree(clip_b).query(clip_a, predicate="intersects")
    order = np.lexsort((right, left))
    left, right = left[order], right[order]
    ious, nests = _overlaps(clip_a[left], clip_b[right])  # all pairs in one call each
    pairs, nested = [], []
    best_a: dict[int, tuple[float, int]] = {}
    best_b: dict[int, tuple[float, int]] = {}
    for i, j, iou, is_nested in zip(
        left.tolist(), right.tolist(), ious.tolist(), nests.tolist(), strict=True
    ):
        if iou > best_a.get(i, (0.0, -1))[0]:
            best_a[i] = (iou, j)
        if iou > best_b.get(j, (0.0, -1))[0]:
            best_b[j] = (iou, i)
        if iou >= merge_iou:
            pairs.append((i, j))
        elif a[in_a[i]].label == b[in_b[j]].label and is_nested and iou >= merge_iou / 2:
            nested.append((i, j))
    pairs += [(i, j) for i, j in nested if best_a[i][1] == j and best_b[j][1] == i]
    return [(int(in_a[i]), int(in_b[j])) for i, j in pairs]


def _around(index: TileIndex) -> Iterator[TileIndex]:
    """The tile and its 8 neighbours (some may lie outside the grid): links join only tiles
    side by side or corner to corner. Two tiles further apart share pixels only when the
    overlap exceeds half the stride, in a thin strip at the far edge of both (where both
    views are least reliable); the tile between them sees that strip too, so links go
    through it."""
    i, j = index
    for di, dj in itertools.product((-1, 0, 1), repeat=2):
        yield i + di, j + dj


def _overlap(a: BaseGeometry, b: BaseGeometry) -> tuple[float, bool]:
    """IoU of two shapes, and whether :data:`CONTAINED_SHARE` of the smaller lies in the other."""
    ious, nested = _overlaps(np.array([a], dtype=object), np.array([b], dtype=object))
    return float(ious[0]), bool(nested[0])


def _overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_overlap` of each pair ``a[k], b[k]``, in bulk: the union's area is
    ``area(a) + area(b) - area(a & b)`` (exact for polygons), one intersection per pair."""
    inter = shapely.area(shapely.intersection(a, b))
    area_a, area_b = shapely.area(a), shapely.area(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(inter > 0, inter / (area_a + area_b - inter), 0.0)
        nested = (inter > 0) & (inter / np.minimum(area_a, area_b) >= CONTAINED_SHARE)
    return iou, nested


def same_object(a: BaseGeometry, b: BaseGeometry, merge_iou: float, same_label: bool) -> bool:
    """IoU reaches ``merge_iou``, or (same class) the smaller is nearly inside the larger and
    their IoU still reaches half of ``merge_iou``: a sliver of a neighbour that touches a
    slightly too large outline is nested in it too, but its IoU with it is near 0."""
    iou, nested = _overlap(a, b)
    return iou >= merge_iou or (same_label and nested and iou >= merge_iou / 2)


def _in_core(fragment: Fragment) -> BaseGeometry:
    """The fragment's part in its tile's core (itself when it lies inside: no GEOS call)."""
    x0, y0, x1, y1 = fragment.polygon_px.bounds
    core = fragment.tile.core
    if core.col_off <= x0 and x1 <= core.col_stop and core.row_off <= y0 and y1 <= core.row_stop:
        return fragment.polygon_px
    if x1 <= core.col_off or x0 >= core.col_stop or y1 <= core.row_off or y0 >= core.row_stop:
        return shapely.Polygon()
    return shapely.clip_by_rect(fragment.polygon_px, *core.bbox_xyxy)


def _complete_views(members: list[Fragment]) -> list[Fragment]:
    """Fragments that saw the whole object: they touch no seam side of their tile, and the
    whole group (every tile's view of the object) lies inside their tile's window."""
    bounds = shapely.bounds(np.array([m.polygon_px for m in members], dtype=object))
    x0, y0 = bounds[:, 0].min(), bounds[:, 1].min()
    x1, y1 = bounds[:, 2].max(), bounds[:, 3].max()
    return [
        m
        for m in members
        if not m.touches_seam
        and m.tile.window.col_off <= x0
        and x1 <= m.tile.window.col_stop
        and m.tile.window.row_off <= y0
        and y1 <= m.tile.window.row_stop
    ]


def _shape_group(members: list[Fragment]) -> StitchedObject | None:
    """The object of one complete group (members in a fixed order), or ``None`` when no
    member lies in its own tile's core."""
    in_core = [(m, clip) for m in members if (clip := _in_core(m)).area > 0]
    if not in_core:
        return None
    complete = _complete_views(members)
    if complete:
        best = max(complete, key=lambda m: (m.score, m.polygon_px.area))
        polygon, score = best.polygon_px, best.score
    else:
        polygon = shapely.union_all([clip for _, clip in in_core])
        areas = np.array([clip.area for _, clip in in_core])
        score = float(np.average([m.score for m, _ in in_core], weights=areas))
    polygon = _polygonal(polygon)
    if polygon.is_empty:
        return None
    votes: dict[int, float] = {}
    for m in members:
        votes[m.label] = votes.get(m.label, 0.0) + m.score * m.polygon_px.area
    label = max(votes, key=lambda k: votes[k])
    return StitchedObject(polygon, label, float(score), len(members))


def _polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """Keep only the polygonal parts (clipping can leave lines and points on core edges)."""
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [g for g in shapely.get_parts(geometry) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


@dataclass(slots=True)
class _Candidate:
    """A shaped object waiting for (or past) its duplicate test."""

    obj: StitchedObject
    tiles: frozenset[TileIndex]  # its members' tiles
    #: smaller first: higher score, then a key of the outline; a serial number last only
    #: tells apart objects that are equal in every output field
    rank: tuple = ()
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    kept: bool | None = None  # None while undecided
    blocked_by: TileIndex | None = None  # the tile that last kept it from being settled


class StreamingStitcher:
    """Stitch tile by tile: :meth:`add` finished tiles in any order and in batches of any
    size, and get back each object as soon as no unfinished tile can change it (see the
    module doc for why that is safe); :meth:`finish` at the end. Together they give the
    objects of :func:`stitch` over all fragments, in another order.

    ``grid`` is the grid the fragments' tiles belong to; without one (``None``), nothing is
    final before :meth:`finish` and no tile is known to be missing (how :func:`stitch` uses
    it).

    >>> grid = TileGrid.from_shape((300, 200), tile_px=128, overlap_px=32)
    >>> stitcher = StreamingStitcher(grid)
    >>> stitcher.add([(0, 0), (0, 1)], [])
    []
    >>> stitcher.finish()
    Traceback (most recent call last):
    ...
    ValueError: 4 of 6 tiles were never added to the stitcher, e.g. [(1, 0), (1, 1), (2, 0), (2, 1)]
    """

    def __init__(self, grid: TileGrid | None, *, merge_iou: float = 0.5) -> None:
        if not 0 < merge_iou <= 1:
            raise ValueError(f"merge_iou {merge_iou} must be in (0, 1]")
        self._grid = grid
        self._merge_iou = merge_iou
        self._done = False
        self._finished: set[TileIndex] = set()
        self._open_around: dict[TileIndex, int] = {}  # unfinished tiles in each one's 3 x 3
        self._axes: tuple[list[int], list[int], list[int], list[int]] | None = None
        if grid is not None:
            n_rows, n_cols = grid.shape_tiles_yx
            rows = [grid.tile(i, 0).window for i in range(n_rows)]
            cols = [grid.tile(0, j).window for j in range(n_cols)]
            self._axes = (
                [w.row_off for w in rows],
                [w.row_stop for w in rows],
                [w.col_off for w in cols],
                [w.col_stop for w in cols],
            )
        # fragments of incomplete groups: by id, their fixed order, union-find forest
        self._fragments: dict[int, Fragment] = {}
        self._order: dict[int, tuple] = {}
        self._parent: dict[int, int] = {}
        self._members: dict[int, list[int]] = {}  # root -> ids
        self._group_tiles: dict[int, set[TileIndex]] = {}  # root -> its members' tiles
        self._by_tile: dict[TileIndex, list[int]] = {}  # ids, until every neighbour is in
        self._next_id = 0
        # per tile: fragments of incomplete groups, undecided objects with a member there
        self._live = Counter[TileIndex]()
        self._undecided = Counter[TileIndex]()
        self._pending: list[_Candidate] = []
        self._kept: list[_Candidate] = []
        self._first_open_row = 0  # tile rows above it are all finished

    @property
    def n_tiles_added(self) -> int:
        return len(self._finished)

    @property
    def n_fragments_held(self) -> int:
        """Fragments of groups that may still grow."""
        return len(self._fragments)

    @property
    def n_objects_held(self) -> int:
        """Objects waiting for their duplicate test, or kept and remembered for later ones."""
        return len(self._pending) + len(self._kept)

    def frontier_row(self) -> float:
        """No object this stitcher hands back from now on starts above this row (its
        bounding box's top, in working-grid pixels): every later object is made of fragments
        it holds or of tiles not yet added. ``inf`` once it has finished; without a grid,
        ``-inf`` until then."""
        if self._done:
            return float("inf")
        if self._grid is None:
            return float("-inf")
        tops = [c.bounds[1] for c in self._pending]
        if self._fragments:
            polygons = np.array([f.polygon_px for f in self._fragments.values()], dtype=object)
            tops.append(float(shapely.bounds(polygons)[:, 1].min()))
        assert self._axes is not None
        row_starts = self._axes[0]
        n_cols = len(self._axes[2])
        while self._first_open_row < len(row_starts) and all(
            (self._first_open_row, j) in self._finished for j in range(n_cols)
        ):
            self._first_open_row += 1
        if self._first_open_row < len(row_starts):
            tops.append(float(row_starts[self._first_open_row]))  # an unfinished tile's top
        return min(tops, default=float("inf"))

    def add(
        self, tiles: Iterable[TileIndex], fragments: Sequence[Fragment]
    ) -> list[StitchedObject]:
        """Mark these tiles (``index_yx``) finished, with every fragment they produced (a
        tile may have none), and return the objects that are now final (and forget them)."""
        if self._done:
            raise ValueError("the stitcher has finished: add() after finish()")
        new = sorted({(int(i), int(j)) for i, j in tiles})
        self._check_new(new)
        by_tile: dict[TileIndex, list[Fragment]] = {t: [] for t in new}
        for fragment in fragments:
            if fragment.tile.index_yx not in by_tile:
                raise ValueError(
                    f"a fragment of tile {fragment.tile.index_yx} came with tiles {new[:8]}: "
                    "add a tile's fragments in the call that marks it finished"
                )
            by_tile[fragment.tile.index_yx].append(fragment)
        if self._grid is not None:
            for index, frags in by_tile.items():
                tile = self._grid.tile(*index) if frags else None
                if any(f.tile != tile for f in frags):
                    raise ValueError(f"a fragment of tile {index} comes from another grid")
        for index in new:
            self._add_tile(index, by_tile[index])
        return self._settle(self._closed_by(new))

    def finish(self) -> list[StitchedObject]:
        """The objects left (all of them when there is no grid); every tile of the grid must
        have been added."""
        if self._grid is not None and len(self._finished) < len(self._grid):
            missing = [t.index_yx for t in self._grid if t.index_yx not in self._finished]
            raise ValueError(
                f"{len(missing)} of {len(self._grid)} tiles were never added to the "
                f"stitcher, e.g. {missing[:5]}"
            )
        self._done = True
        out = self._settle(list(self._by_tile))
        self._kept.clear()
        return out

    # -- tiles and links ------------------------------------------------------------------

    def _check_new(self, new: list[TileIndex]) -> None:
        for index in new:
            if index in self._finished:
                raise ValueError(f"tile {index} was already added to the stitcher")
            if self._grid is not None:
                n_rows, n_cols = self._grid.shape_tiles_yx
                if not (0 <= index[0] < n_rows and 0 <= index[1] < n_cols):
                    raise ValueError(f"tile {index} is not in a grid of {n_rows} x {n_cols}")

    def _add_tile(self, index: TileIndex, fragments: list[Fragment]) -> None:
        """Hold a finished tile's fragments (in a fixed order) and link them with those of
        its finished neighbours."""
        if fragments:  # better scores first, so that they win ties of best match
            wkb = shapely.to_wkb(np.array([f.polygon_px for f in fragments], dtype=object))
            keys = [(f.label, -f.score, w) for f, w in zip(fragments, wkb.tolist(), strict=True)]
            fragments = [fragments[k] for k in sorted(range(len(keys)), key=keys.__getitem__)]
        ids = list(range(self._next_id, self._next_id + len(fragments)))
        self._next_id += len(fragments)
        for k, (fid, fragment) in enumerate(zip(ids, fragments, strict=True)):
            self._fragments[fid] = fragment
            self._order[fid] = (index, k)
            self._parent[fid] = fid
            self._members[fid] = [fid]
            self._group_tiles[fid] = {index}
        self._live[index] += len(ids)
        self._by_tile[index] = ids
        for other in _around(index):
            if other == index or other not in self._finished or other not in self._by_tile:
                continue
            first, second = sorted((index, other))  # one orientation, whatever came first
            a, b = self._by_tile[first], self._by_tile[second]
            links = _link_tiles(
                [self._fragments[k] for k in a],
                [self._fragments[k] for k in b],
                self._merge_iou,
            )
            for i, j in links:
                self._union(a[i], b[j])
        self._finished.add(index)

    def _find(self, i: int) -> int:
        parent = self._parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        if len(self._members[ra]) < len(self._members[rb]):
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._members[ra] += self._members.pop(rb)
        self._group_tiles[ra] |= self._group_tiles.pop(rb)

    def _closed_by(self, new: list[TileIndex]) -> list[TileIndex]:
        """Tiles whose 3 x 3 neighbourhood (in the grid) the new tiles completed: no fragment
        of theirs can gain a link any more."""
        if self._grid is None:
            return []
        n_rows, n_cols = self._grid.shape_tiles_yx
        closed = []
        for index in new:
            for i, j in _around(index):
                if not (0 <= i < n_rows and 0 <= j < n_cols):
                    continue
                if (i, j) not in self._open_around:
                    self._open_around[(i, j)] = sum(
                        0 <= y < n_rows and 0 <= x < n_cols for y, x in _around((i, j))
                    )
                self._open_around[(i, j)] -= 1
                if self._open_around[(i, j)] == 0:
                    del self._open_around[(i, j)]
                    closed.append((i, j))
        return closed

    def _is_closed(self, index: TileIndex) -> bool:
        return self._done or (index in self._finished and index not in self._open_around)

    # -- groups to objects, objects to decisions -------------------------------------------

    def _settle(self, closed: list[TileIndex]) -> list[StitchedObject]:
        """Shape the groups that closed tiles completed, then decide what can be decided."""
        roots = set()
        for index in closed:
            roots.update(self._find(k) for k in self._by_tile.pop(index, []))
        new = [
            c
            for root in sorted(roots)
            if all(self._is_closed(t) for t in self._group_tiles[root])
            and (c := self._complete_group(root)) is not None
        ]
        if new:  # rank: better score, then a key of the outline, then a serial number
            outlines = np.array([c.obj.polygon_px for c in new], dtype=object)
            bounds, wkb = shapely.bounds(outlines).tolist(), shapely.to_wkb(outlines).tolist()
            for c, box, key in zip(new, bounds, wkb, strict=True):
                self._next_id += 1
                c.bounds = tuple(box)
                c.rank = (-c.obj.score, c.obj.label, c.obj.n_fragments, *box, key, self._next_id)
            self._pending += new
        out = self._decide()
        self._kept = [c for c in self._kept if not self._settled(c, rivals_too=True)]
        return out

    def _complete_group(self, root: int) -> _Candidate | None:
        ids = sorted(self._members.pop(root), key=self._order.__getitem__)
        tiles = self._group_tiles.pop(root)
        members = [self._fragments[k] for k in ids]
        for k, fragment in zip(ids, members, strict=True):
            del self._fragments[k], self._order[k], self._parent[k]
            self._live[fragment.tile.index_yx] -= 1
        obj = _shape_group(members)
        if obj is None:
            return None
        for index in tiles:
            self._undecided[index] += 1
        return _Candidate(obj, frozenset(tiles))

    def _tiles_over(self, bounds: tuple[float, float, float, float]) -> Iterator[TileIndex]:
        """Tiles whose window meets this box with some area."""
        assert self._axes is not None
        row_starts, row_stops, col_starts, col_stops = self._axes
        x0, y0, x1, y1 = bounds
        rows = range(bisect.bisect_right(row_stops, y0), bisect.bisect_left(row_starts, y1))
        cols = range(bisect.bisect_right(col_stops, x0), bisect.bisect_left(col_starts, x1))
        return itertools.product(rows, cols)

    def _settled(self, candidate: _Candidate, *, rivals_too: bool = False) -> bool:
        """Whether every object that may overlap this one is shaped (and, ``rivals_too``,
        decided): the tiles over its box are finished and hold no incomplete group."""
        if self._done:
            return True
        if self._grid is None:
            return False

        def blocks(t: TileIndex) -> bool:
            return (
                t not in self._finished
                or self._live[t] > 0
                or (rivals_too and self._undecided[t] > 0)
            )

        if candidate.blocked_by is not None and blocks(candidate.blocked_by):
            return False  # the usual answer, at the cost of one look-up
        candidate.blocked_by = next(
            (t for t in self._tiles_over(candidate.bounds) if blocks(t)), None
        )
        return candidate.blocked_by is None

    def _decide(self) -> list[StitchedObject]:
        """The greedy duplicate drop, for the objects whose rivals are all known: an object
        is dropped by a better-ranked kept object of its class that :func:`same_object`
        joins it with, waits while such a rival is undecided, and is kept otherwise."""
        ready = sorted((c for c in self._pending if self._settled(c)), key=lambda c: c.rank)
        if not ready:
            return []
        held = self._pending + self._kept
        polygons = np.array([c.obj.polygon_px for c in held], dtype=object)
        hits = shapely.STRtree(polygons).query(
            np.array([c.obj.polygon_px for c in ready], dtype=object), predicate="intersects"
        )
        rivals: dict[int, list[_Candidate]] = {}
        for i, j in zip(*hits, strict=True):
            rivals.setdefault(int(i), []).append(held[int(j)])
        out = []
        for k, candidate in enumerate(ready):  # in rank order: better rivals' turns come first
            candidate.kept = self._verdict(candidate, rivals.get(k, []))
            if candidate.kept is None:
                continue
            for index in candidate.tiles:
                self._undecided[index] -= 1
            if candidate.kept:
                out.append(candidate.obj)
                self._kept.append(candidate)
        self._pending = [c for c in self._pending if c.kept is None]
        return out

    def _verdict(self, candidate: _Candidate, rivals: list[_Candidate]) -> bool | None:
        waits = False
        for rival in rivals:
            if (
                rival.obj.label != candidate.obj.label
                or rival.rank >= candidate.rank
                or rival.kept is False
                or not same_object(
                    rival.obj.polygon_px, candidate.obj.polygon_px, self._merge_iou, True
                )
            ):
                continue
            if rival.kept:
                return False
            waits = True
        return None if waits else True


def stitch(fragments: Sequence[Fragment], *, merge_iou: float = 0.5) -> list[StitchedObject]:
    """Merge the fragments of all tiles into objects, each once and whole (see module doc).

    The result does not depend on the order of ``fragments``: it comes in rank order
    (better score first)."""
    stitcher = StreamingStitcher(None, merge_iou=merge_iou)
    stitcher.add({f.tile.index_yx for f in fragments}, fragments)
    return stitcher.finish()
