"""Roof details at 1 m or finer: corrugated metal sheeting on pitched roofs, parapets and
rooftop clutter (water tanks, stair houses) on flat ones, as on the dense housing of East
African cities that the OpenAerialMap clusters show.

The details come from their own generator, so a seed's layout and labels do not depend on
them: they change pixels inside a roof, never the roof's outline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Point, Polygon

from geoseg.learn.synth.constants import Rgb
from geoseg.learn.synth.geometry import _sample_points, _Scales
from geoseg.learn.synth.objects import _jitter, _Objects, _pick

METAL_ROOF_COLOURS: tuple[Rgb, ...] = (
    (0.44, 0.52, 0.62),  # blue-grey painted sheet
    (0.64, 0.66, 0.68),  # bare galvanised
    (0.50, 0.55, 0.57),  # weathered galvanised
    (0.46, 0.30, 0.21),  # rusted
    (0.28, 0.43, 0.40),  # green painted
    (0.56, 0.24, 0.20),  # red painted
)
TANK_COLOURS: tuple[Rgb, ...] = (
    (0.10, 0.10, 0.11),  # black plastic
    (0.12, 0.13, 0.15),
    (0.20, 0.32, 0.58),  # blue
    (0.85, 0.85, 0.82),  # white
    (0.58, 0.60, 0.62),  # steel
)
METAL_SHARE = 0.35  # of pitched roofs
RIB_PERIOD_M = (0.7, 1.1)
FINEST_RIB_PX = 2.5  # finer ribs alias into noise: drawn plain
PARAPET_SHARE = 0.7
CLUTTER_SHARE = 0.65
CLUTTER_M2_EACH = 30.0
MAX_CLUTTER = 14


@dataclass(frozen=True, slots=True)
class RoofLook:
    """How a roof is painted: its colour (``None``: the house's own) and its ribs as the
    ``(angle, period_px, amplitude)`` of a sine across them (amplitude 0: none)."""

    colour: Rgb | None = None
    ribs: tuple[float, float, float] = (0.0, 1.0, 0.0)


def roof_look(
    rng: np.random.Generator,
    flat: bool,
    ridge_xy: tuple[float, float],
    sc: _Scales,
) -> RoofLook:
    """A pitched roof is corrugated metal in ``METAL_SHARE`` of cases: a metal colour and,
    where a rib spans ``FINEST_RIB_PX`` or more, ribs running down the slope (across the
    ridge, whose pixel direction is ``ridge_xy``)."""
    if flat or sc.urban < 1.0 or rng.random() >= METAL_SHARE:
        return RoofLook()
    colour = _jitter(rng, _pick(rng, METAL_ROOF_COLOURS))
    period_px = rng.uniform(*RIB_PERIOD_M) * sc.urban
    if period_px < FINEST_RIB_PX:
        return RoofLook(colour)
    angle = math.atan2(ridge_xy[1], ridge_xy[0])
    return RoofLook(colour, (angle, period_px, float(rng.uniform(0.08, 0.18))))


def add_flat_roof_details(
    rng: np.random.Generator,
    footprint: Polygon,
    owner: int,
    roof: Rgb,
    objects: _Objects,
    sc: _Scales,
    shadow_ratio: float,
) -> None:
    """A parapet along the edge (lighter or darker) and rooftop clutter, water tanks and
    stair houses, each with its shadow on the roof (pixel coordinates, 1 m or finer only)."""
    if sc.urban < 1.0:
        return
    if rng.random() < PARAPET_SHARE:
        width = rng.uniform(0.25, 0.6) * sc.urban
        ring = footprint.difference(footprint.buffer(-width, join_style="mitre"))
        objects.shade.append((ring, owner, float(rng.choice([0.8, 0.88, 1.12, 1.2]))))
    if rng.random() >= CLUTTER_SHARE:
        return
    count = min(int(rng.poisson(footprint.area / sc.urban**2 / CLUTTER_M2_EACH)), MAX_CLUTTER)
    inside = footprint.buffer(-1.2 * sc.urban)
    axis = _long_axis_angle(footprint)
    for x, y in _sample_points(rng, inside, count):
        if rng.random() < 0.6:
            item = Point(x, y).buffer(rng.uniform(0.5, 1.1) * sc.urban, quad_segs=4)
            colour, height_m = _pick(rng, TANK_COLOURS), rng.uniform(1.0, 2.0)
        else:
            w, h = rng.uniform(1.2, 3.5, size=2) * sc.urban
            item = shapely.affinity.rotate(
                shapely.box(x - w / 2, y - h / 2, x + w / 2, y + h / 2), axis, use_radians=True
            )
            colour = _jitter(rng, tuple(min(1.0, c * 1.15) for c in roof), 0.08)
            height_m = rng.uniform(2.0, 3.0)
        reach = height_m * sc.urban * shadow_ratio
        shadow = shapely.affinity.translate(
            item, objects.sun_xy[0] * reach, objects.sun_xy[1] * reach
        ).difference(item)
        objects.shade.append((shadow, owner, 0.55))
        objects.paint.append((item, owner, colour))


def _long_axis_angle(footprint: Polygon) -> float:
    """Direction (radians) of the longer side of the footprint's minimum rotated rectangle."""
    ring = np.asarray(shapely.oriented_envelope(footprint).exterior.coords)
    if len(ring) < 3:
        return 0.0
    sides = np.diff(ring[:3], axis=0)
    longer = sides[int(np.argmax(np.hypot(sides[:, 0], sides[:, 1])))]
    return math.atan2(longer[1], longer[0])
