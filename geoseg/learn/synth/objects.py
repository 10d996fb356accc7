"""The objects of a scene (polygons in pixel coordinates and what paints them), and
colour draws."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

from geoseg.learn.synth.constants import Rgb


@dataclass(slots=True)
class _Objects:
    """Polygons (pixel coordinates) and what paints them; id = index + 1."""

    sun_xy: tuple[float, float]
    geoms: list[Polygon] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    colours: list[Rgb] = field(default_factory=list)
    rows: list[tuple[float, float, float]] = field(default_factory=list)  # angle, period, amp
    shade: list[tuple[Any, int, float]] = field(default_factory=list)  # geom, owner, factor
    paint: list[tuple[Any, int, Rgb]] = field(default_factory=list)  # geom, owner, colour
    shadows: list[Any] = field(default_factory=list)
    wakes: list[tuple[Any, float]] = field(default_factory=list)
    trees: list[np.ndarray] = field(default_factory=list)  # (x, y, radius) rows
    woods: list[Any] = field(default_factory=list)

    def add(self, geom: Polygon, cls: int, colour: Rgb, rows: tuple = (0.0, 1.0, 0.0)) -> int:
        self.geoms.append(geom)
        self.classes.append(cls)
        self.colours.append(colour)
        self.rows.append(rows)
        return len(self.geoms)

    def count(self, cls: int) -> int:
        return sum(1 for c in self.classes if c == cls)

    def cast_shadow(self, geoms: Any, height_px: float, ratio: float) -> None:
        """Shadows of convex shapes: the hull of each and its copy moved down-sun."""
        xy, index = shapely.get_coordinates(geoms, return_index=True)
        moved = xy + np.multiply(self.sun_xy, height_px * ratio)
        order = np.argsort(np.concatenate([index, index]), kind="stable")
        points = shapely.multipoints(
            np.vstack([xy, moved])[order], indices=np.sort(np.concatenate([index, index]))
        )
        self.shadows.extend(shapely.convex_hull(points))


def _jitter(rng: np.random.Generator, colour: Rgb, amount: float = 0.06) -> Rgb:
    scale = rng.uniform(1 - amount, 1 + amount)
    r, g, b = (float(np.clip(c * scale + rng.normal(0, amount / 4), 0, 1)) for c in colour)
    return (r, g, b)


def _pick(rng: np.random.Generator, palette: tuple[Rgb, ...]) -> Rgb:
    return palette[int(rng.integers(len(palette)))]
