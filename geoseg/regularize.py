"""Square building outlines: right angles along each building's dominant directions.

A pixel-exact outline (a staircase along any wall that is not parallel to the pixel grid) is
regularized by `buildingregulariser <https://pypi.org/project/buildingregulariser/>`_ (MIT):
edges are snapped to the polygon's main direction, its perpendicular, or (for walls that
clearly are) 45 degrees to it, and neighbouring parallel edges closer than a pixel merge.
It works in scene pixels, before the outline is mapped to the CRS, so its tolerances are in
pixels whatever the CRS.

An outline whose area would change by more than :data:`MAX_AREA_CHANGE` (a very irregular
shape the library cannot square) keeps its simplified outline.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import geopandas as gpd
import shapely
from shapely.geometry.base import BaseGeometry

__all__ = ["MAX_AREA_CHANGE", "regularize_outlines"]

MAX_AREA_CHANGE = 0.15
"""Largest relative change of area a regularized outline may have; beyond it, kept as was."""

_SIMPLIFY_PX = 1.5
_PARALLEL_PX = 1.0


def regularize_outlines(outlines_px: Sequence[BaseGeometry]) -> list[BaseGeometry]:
    """Regularized outlines, in order (pixel coordinates in, pixel coordinates out)."""
    from buildingregulariser import regularize_geodataframe

    if not outlines_px:
        return []
    frame = gpd.GeoDataFrame({"k": range(len(outlines_px))}, geometry=list(outlines_px))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        squared = regularize_geodataframe(
            frame,
            parallel_threshold=_PARALLEL_PX,
            simplify=True,
            simplify_tolerance=_SIMPLIFY_PX,
            allow_45_degree=True,
            allow_circles=False,
            num_cores=1,
        )
    parts: dict[int, list[BaseGeometry]] = {}
    for k, geometry in zip(squared["k"], squared.geometry, strict=True):
        if geometry is not None and not geometry.is_empty:
            parts.setdefault(int(k), []).append(geometry)
    out = []
    for k, original in enumerate(outlines_px):
        fallback = shapely.simplify(original, _SIMPLIFY_PX, preserve_topology=True)
        pieces = parts.get(k)
        if not pieces:
            out.append(fallback)
            continue
        result = shapely.make_valid(shapely.union_all(pieces))
        change = abs(result.area - original.area) / max(original.area, 1e-9)
        out.append(result if change <= MAX_AREA_CHANGE else fallback)
    return out
