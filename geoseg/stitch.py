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
the same rule (a duplicate that linking missed because a model drew the two copies apart).

Limits: an object whose parts in the shared strip are drawn too differently by the two tiles
(IoU below ``merge_iou``) comes out as two pieces cut at the core boundary; an object larger
than a tile whose owner tile missed part of it comes out with that part missing. Both are
rare when the overlap exceeds the size of the objects (see :mod:`geoseg.grid`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from geoseg.grid import PixelWindow, Tile

__all__ = [
    "CONTAINED_SHARE",
    "Fragment",
    "StitchedObject",
    "same_object",
    "stitch",
    "union_find_groups",
]

#: Two fragments of one class are also one object when this share of the smaller one's area
#: (in the strip) lies inside the larger: thin objects (a ship 3 px wide) drawn one pixel
#: wider or narrower by two tiles have a low IoU but are still nested (the IoU must still
#: reach half of the merge IoU, see :func:`same_object`).
CONTAINED_SHARE = 0.8


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


def _box(window: PixelWindow) -> BaseGeometry:
    return shapely.box(*window.bbox_xyxy)


def link_pairs(fragments: Sequence[Fragment], merge_iou: float) -> list[tuple[int, int]]:
    """Pairs of fragments from different tiles that :func:`same_object` joins inside their
    shared strip. A link by nesting alone must also be mutual: each fragment is the other's
    best match (highest strip IoU) among the fragments of the other tile, so a neighbour's
    sliver nested in a too-large outline loses to the object that outline really belongs to.
    """
    if len(fragments) < 2:
        return []
    polygons = np.array([f.polygon_px for f in fragments], dtype=object)
    tree = shapely.STRtree(polygons)
    left, right = tree.query(polygons, predicate="intersects")
    pairs, nested = [], []
    best: dict[tuple[int, tuple[int, int]], tuple[float, int]] = {}
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        tile_i, tile_j = fragments[i].tile.index_yx, fragments[j].tile.index_yx
        if i >= j or tile_i == tile_j or not _neighbours(tile_i, tile_j):
            continue
        shared = fragments[i].tile.window.intersection(fragments[j].tile.window)
        if shared is None:
            continue
        strip = _box(shared)
        a = shapely.intersection(polygons[i], strip)
        b = shapely.intersection(polygons[j], strip)
        iou, is_nested = _overlap(a, b)
        for me, other, other_tile in ((i, j, tile_j), (j, i, tile_i)):
            if iou > best.get((me, other_tile), (0.0, -1))[0]:
                best[(me, other_tile)] = (iou, other)
        if iou >= merge_iou:
            pairs.append((i, j))
        elif fragments[i].label == fragments[j].label and is_nested and iou >= merge_iou / 2:
            nested.append((i, j))
    for i, j in nested:
        tile_i, tile_j = fragments[i].tile.index_yx, fragments[j].tile.index_yx
        if best[(i, tile_j)][1] == j and best[(j, tile_i)][1] == i:
            pairs.append((i, j))
    return sorted(pairs)


def _neighbours(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Tiles side by side or corner to corner. Two tiles further apart share pixels only when
    the overlap exceeds half the stride, in a thin strip at the far edge of both (where both
    views are least reliable); the tile between them sees that strip too, so links go
    through it."""
    return max(abs(a[0] - b[0]), abs(a[1] - b[1])) == 1


def _overlap(a: BaseGeometry, b: BaseGeometry) -> tuple[float, bool]:
    """IoU of two shapes, and whether :data:`CONTAINED_SHARE` of the smaller lies in the other."""
    inter = shapely.intersection(a, b).area
    if inter == 0:
        return 0.0, False
    iou = inter / shapely.union(a, b).area
    return iou, inter / min(a.area, b.area) >= CONTAINED_SHARE


def same_object(a: BaseGeometry, b: BaseGeometry, merge_iou: float, same_label: bool) -> bool:
    """IoU reaches ``merge_iou``, or (same class) the smaller is nearly inside the larger and
    their IoU still reaches half of ``merge_iou``: a sliver of a neighbour that touches a
    slightly too large outline is nested in it too, but its IoU with it is near 0."""
    iou, nested = _overlap(a, b)
    return iou >= merge_iou or (same_label and nested and iou >= merge_iou / 2)


def _in_core(fragment: Fragment) -> BaseGeometry:
    return shapely.intersection(fragment.polygon_px, _box(fragment.tile.core))


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
    owned = [m for m in members if _in_core(m).area > 0]
    if not owned:
        return None
    complete = _complete_views(members)
    if complete:
        best = max(complete, key=lambda m: (m.score, m.polygon_px.area))
        polygon, score = best.polygon_px, best.score
    else:
        polygon = shapely.union_all([_in_core(m) for m in owned])
        areas = np.array([_in_core(m).area for m in owned])
        score = float(np.average([m.score for m in owned], weights=areas))
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


def _drop_duplicates(objects: list[StitchedObject], merge_iou: float) -> list[StitchedObject]:
    if len(objects) < 2:
        return objects
    order = sorted(range(len(objects)), key=lambda k: -objects[k].score)
    polygons = np.array([objects[k].polygon_px for k in order], dtype=object)
    tree = shapely.STRtree(polygons)
    dropped = np.zeros(len(order), dtype=bool)
    for rank, polygon in enumerate(polygons):
        if dropped[rank]:
            continue
        for other in tree.query(polygon, predicate="intersects"):
            if other <= rank or dropped[other]:
                continue
            if objects[order[other]].label != objects[order[rank]].label:
                continue
            if same_object(polygon, polygons[other], merge_iou, same_label=True):
                dropped[other] = True
    return [objects[order[r]] for r in range(len(order)) if not dropped[r]]


def stitch(fragments: Sequence[Fragment], *, merge_iou: float = 0.5) -> list[StitchedObject]:
    """Merge the fragments of all tiles into objects, each once and whole (see module doc)."""
    groups = union_find_groups(len(fragments), link_pairs(fragments, merge_iou))
    objects = [_shape_group([fragments[k] for k in group]) for group in groups]
    return _drop_duplicates([o for o in objects if o is not None], merge_iou)
