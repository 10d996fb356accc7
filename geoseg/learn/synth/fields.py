"""Fields: Voronoi parcels of the farmland, some merged, and hedges along some of them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

from geoseg.learn.synth.constants import _FIELD, FIELD_COLOURS, MAX_FIELDS, MIN_OBJECT_PIXELS
from geoseg.learn.synth.geometry import _log_uniform, _polygons, _sample_points, _Scales
from geoseg.learn.synth.layout import _Layout
from geoseg.learn.synth.objects import _jitter, _Objects, _pick


def _add_fields(rng: np.random.Generator, layout: _Layout, sc: _Scales, objects: _Objects) -> None:
    """Voronoi parcels of the farmland, some merged, shrunk to leave visible boundaries."""
    side = sc.px(_log_uniform(rng, 150, 500))
    region = layout.farmland.intersection(layout.scene.buffer(0.3 * side))
    if region.is_empty:
        return
    n_seeds = int(np.clip(round(region.area / side**2), 3, MAX_FIELDS))
    seeds = _sample_points(rng, region, n_seeds)
    if len(seeds) < 2:
        cells = _polygons(region)
    else:
        cells = shapely.voronoi_polygons(shapely.MultiPoint(seeds), extend_to=region.envelope)
        cells = [p for c in cells.geoms for p in _polygons(c.intersection(region))]
    gap = sc.px(rng.uniform(3, 8), 1.5)
    for cell in _merge_some(rng, cells):
        if len(cells) > 4 and rng.random() < 0.12:
            objects.woods.append(cell)
            continue
        for part in _polygons(cell.buffer(-gap / 2, join_style="mitre")):
            if part.area >= 2 * MIN_OBJECT_PIXELS and objects.count(_FIELD) < MAX_FIELDS:
                _add_field(rng, part, sc, objects)
    _hedges(rng, objects, sc)


def _merge_some(rng: np.random.Generator, cells: list[Polygon]) -> Iterator[Any]:
    """Join about a third of the cells with a neighbour, for irregular, non-convex fields."""
    if not cells:
        return
    tree = shapely.STRtree(cells)
    used = np.zeros(len(cells), dtype=bool)
    for i in rng.permutation(len(cells)):
        if used[i]:
            continue
        used[i] = True
        merged = cells[i]
        if rng.random() < 0.35:
            for j in tree.query(cells[i], predicate="intersects"):
                if not used[j] and cells[i].intersection(cells[j]).length > 0:
                    used[j] = True
                    merged = shapely.union(merged, cells[j])
                    break
        yield merged


def _add_field(rng: np.random.Generator, part: Polygon, sc: _Scales, objects: _Objects) -> None:
    rect = part.minimum_rotated_rectangle
    (x0, y0), (x1, y1) = list(rect.exterior.coords)[:2] if not rect.is_empty else ((0, 0), (1, 0))
    angle = math.atan2(y1 - y0, x1 - x0) + (math.pi / 2 if rng.random() < 0.3 else 0.0)
    period = max(sc.px(rng.uniform(1.5, 4.0)), rng.uniform(3.0, 6.0))
    amp = rng.uniform(0.04, 0.14) * float(np.clip((period - 2.0) / 3.0, 0, 1))
    colour = _jitter(rng, _pick(rng, FIELD_COLOURS), 0.08)
    objects.add(part, _FIELD, colour, (angle, period, amp))


def _hedges(rng: np.random.Generator, objects: _Objects, sc: _Scales) -> None:
    """Rows of trees along some field boundaries (they show only in the gaps)."""
    radius = sc.px(rng.uniform(2, 4), 0.8)
    points = []
    for geom, cls in zip(objects.geoms, objects.classes, strict=True):
        if cls == _FIELD and rng.random() < 0.35:
            ring = geom.exterior
            n = min(int(ring.length / (2.2 * radius)), 150)
            points.append(shapely.line_interpolate_point(ring, np.linspace(0, ring.length, n)))
    if points:
        xy = shapely.get_coordinates(np.concatenate(points))
        objects.trees.append(np.column_stack([xy, np.full(len(xy), radius)]))
