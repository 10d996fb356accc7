"""Scales (pixels per metre) and the geometry helpers every part of a scene uses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry import Polygon

from geoseg.learn.synth.constants import _NARROWEST_HOUSE_M, MIN_BUILDING_WIDTH_PX


@dataclass(frozen=True, slots=True)
class _Scales:
    """Pixels per metre: ``natural`` for land, water, fields and ships, ``urban`` for the
    town (larger than natural when houses would be narrower than 6 px)."""

    gsd_m: float
    natural: float
    urban: float

    @classmethod
    def from_gsd(cls, gsd_m: float) -> _Scales:
        enlarge = max(1.0, MIN_BUILDING_WIDTH_PX * gsd_m / _NARROWEST_HOUSE_M)
        return cls(gsd_m, 1.0 / gsd_m, enlarge / gsd_m)

    def px(self, metres: float, floor: float = 0.0) -> float:
        return max(metres * self.natural, floor)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(max(hi, lo)))))


def _apply(geom: Any, m: Affine) -> Any:
    """Geometry (or array of them) mapped by an affine matrix."""
    linear = np.array([[m.a, m.d], [m.b, m.e]])
    offset = np.array([m.xoff, m.yoff])
    return shapely.transform(geom, lambda xy: xy @ linear + offset)


def _largest_polygon(geom: Any) -> Polygon:
    if isinstance(geom, Polygon):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon) and not g.is_empty]
    return max(parts, key=lambda g: g.area) if parts else Polygon()


def _polygons(geom: Any) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    return [p for g in getattr(geom, "geoms", []) for p in _polygons(g)]


def _sample_points(rng: np.random.Generator, region: Any, n: int, tries: int = 8) -> np.ndarray:
    """Up to ``n`` uniform random points inside ``region``, shape ``(k, 2)``."""
    if region.is_empty or n <= 0:
        return np.zeros((0, 2))
    x0, y0, x1, y1 = region.bounds
    shapely.prepare(region)
    found = np.zeros((0, 2))
    for _ in range(tries):
        xy = rng.uniform((x0, y0), (x1, y1), size=(4 * n, 2))
        found = np.vstack([found, xy[shapely.contains_xy(region, xy[:, 0], xy[:, 1])]])
        if len(found) >= n:
            break
    return found[:n]


def _burn(
    shapes: list[tuple[Any, float]] | list[Any],
    shape_yx: tuple[int, int],
    dtype: str = "uint8",
    transform: Affine | None = None,
) -> np.ndarray:
    """Rasterize geometries (or ``(geometry, value)`` pairs) by pixel centre; later wins."""
    shapes = [s for s in shapes if not (s[0] if isinstance(s, tuple) else s).is_empty]
    if not shapes:
        return np.zeros(shape_yx, dtype=dtype)
    return features.rasterize(
        shapes,
        out_shape=shape_yx,
        transform=transform or Affine.identity(),
        fill=0,
        dtype=dtype,
    )
