"""Ships: rafted at the piers and free at sea (some under way, with a wake); at 1 m GSD or
finer, some piers are marina berths lined with small boats (5-15 m) moored bow-in."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from shapely.geometry import LineString, Polygon, box

from geoseg.learn.synth.constants import (
    _SHIP,
    BOAT_COLOURS,
    CARGO_COLOURS,
    HULL_COLOURS,
    MARINA_MAX_GSD_M,
    MAX_BOATS_PER_BERTH,
    MAX_SHIPS,
    MIN_SHIP_BEAM_PX,
    Rgb,
)
from geoseg.learn.synth.geometry import _apply, _log_uniform, _sample_points, _Scales
from geoseg.learn.synth.layout import _Layout
from geoseg.learn.synth.objects import _jitter, _Objects, _pick


@dataclass(slots=True)
class _Ship:
    hull: Polygon
    colour: Rgb
    details: list[tuple[Polygon, Rgb]]
    wake: list[tuple[Any, float]]
    height_px: float
    beam: float


def _add_ships(rng: np.random.Generator, layout: _Layout, sc: _Scales, objects: _Objects) -> None:
    """Ships moored side by side at the piers (or, at fine GSDs, small boats at marina
    berths), then free ships (some under way) at sea."""
    water = layout.water.buffer(-1.0)
    sea = water.intersection(layout.scene)
    if sea.is_empty:
        return
    shapely.prepare(water)
    placed: list[Any] = [*layout.piers]
    for pier in layout.piers:
        marina = sc.gsd_m <= MARINA_MAX_GSD_M and rng.random() < 0.5
        for ship, to_px in _marina(rng, pier, sc) if marina else _moored(rng, pier, sc):
            _place_ship(ship, to_px, water, placed, layout, objects, clearance=0.0)
    spacing = 5 * max(sc.px(60), 8.0)
    n_free = int(np.clip(round(sea.area / spacing**2), 2, MAX_SHIPS))
    placed_free = 0
    for centre in _sample_points(rng, sea, n_free * 15):
        if placed_free >= n_free or objects.count(_SHIP) >= MAX_SHIPS:
            break
        ship = _ship(rng, sc, moving=rng.random() < 0.4)
        to_px = Affine.translation(*centre) @ Affine.rotation(rng.uniform(0, 360))
        placed_free += _place_ship(ship, to_px, water, placed, layout, objects, clearance=2.0)


def _ship_size(
    rng: np.random.Generator,
    sc: _Scales,
    length_m: float | None = None,
    slenderness: tuple[float, float] = (4.5, 7.0),
) -> tuple:
    """Length and beam in pixels (beam at least ``MIN_SHIP_BEAM_PX``), length in metres."""
    length_m = length_m or _log_uniform(rng, 20, 250)
    length = sc.px(length_m)
    beam = length / rng.uniform(*slenderness)
    grow = max(1.0, MIN_SHIP_BEAM_PX / beam)
    return length * grow, beam * grow, length_m


def _hull(length: float, beam: float, bow: float) -> Polygon:
    """A hull along +x centred on 0: square stern, parallel sides, pointed bow."""
    x_stern, x_bow = -length / 2, length / 2 - bow * length
    half = beam / 2
    top = [
        (x_stern, 0.8 * half),
        (x_stern + 0.04 * length, half),
        (x_bow, half),
        (x_bow + 0.6 * bow * length, 0.65 * half),
        (length / 2, 0.0),
    ]
    return Polygon(top + [(x, -y) for x, y in reversed(top[:-1])])


def _ship(
    rng: np.random.Generator, sc: _Scales, *, moving: bool, length_m: float | None = None
) -> _Ship:
    """A ship heading along +x, centred on 0."""
    length, beam, length_m = _ship_size(rng, sc, length_m)
    hull = _hull(length, beam, rng.uniform(0.12, 0.28))
    colour = _jitter(rng, _pick(rng, HULL_COLOURS))
    details = _ship_details(rng, length, beam, length_m)
    wake = _wake(rng, length, beam) if moving else []
    return _Ship(hull, colour, details, wake, 0.05 * length, beam)


def _ship_details(
    rng: np.random.Generator, length: float, beam: float, length_m: float
) -> list[tuple[Polygon, Rgb]]:
    """A bridge near the stern; hatches or containers on the deck of large ships."""
    x = -length / 2 + 0.05 * length
    bridge_len = length * rng.uniform(0.08, 0.2)
    details = [(box(x, -0.38 * beam, x + bridge_len, 0.38 * beam), _jitter(rng, (0.9, 0.9, 0.88)))]
    if length_m > 80:
        x, stop = x + bridge_len + 0.03 * length, length / 2 - 0.3 * length
        n = int(rng.integers(3, 9))
        step = (stop - x) / n
        for k in range(n):
            hatch = box(x + k * step + 0.1 * step, -0.33 * beam, x + (k + 0.9) * step, 0.33 * beam)
            details.append((hatch, _jitter(rng, _pick(rng, CARGO_COLOURS))))
    return details


def _wake(rng: np.random.Generator, length: float, beam: float) -> list[tuple[Any, float]]:
    """Foam behind the stern: a turbulent centre and two diverging arms, fading."""
    reach = length * rng.uniform(0.8, 2.5)
    spread = math.tan(math.radians(rng.uniform(6, 16)))
    width = max(0.7, 0.12 * beam)
    pieces = []
    for k, value in enumerate((0.8, 0.45, 0.15)):
        a, b = -length / 2 - reach * k / 3, -length / 2 - reach * (k + 1) / 3
        ta, tb = reach * k / 3 * spread, reach * (k + 1) / 3 * spread
        pieces.append((box(b, -0.25 * beam, a, 0.25 * beam), 0.6 * value))
        for s in (-1, 1):
            arm = LineString([(a, s * (beam / 2 + ta)), (b, s * (beam / 2 + tb))])
            pieces.append((arm.buffer(width), value))
    return pieces


def _moored(rng: np.random.Generator, pier: Polygon, sc: _Scales) -> Iterator[tuple[_Ship, Affine]]:
    """Up to 4 ships of similar size rafted side by side along each side of a pier."""
    centre, along, across, pier_len, half_width, heading = _pier_frame(pier)
    length_m = _log_uniform(rng, 20, 150)
    for side in (-1, 1):
        offset = half_width
        for _ in range(int(rng.integers(0, 4)) + (side == 1)):
            size_m = length_m * rng.uniform(0.85, 1.15)
            ship = _ship(rng, sc, moving=False, length_m=size_m)
            offset += (0.0 if rng.random() < 0.5 else rng.uniform(0.6, 2.0)) + ship.beam / 2
            xy = centre + across * side * offset + along * rng.uniform(-0.2, 0.2) * pier_len
            offset += ship.beam / 2
            yield ship, Affine.translation(*xy) @ Affine.rotation(heading)


def _boat(rng: np.random.Generator, sc: _Scales, length_m: float) -> _Ship:
    """A small boat heading along +x: beamy hull, most often white, a cabin and a cockpit."""
    length, beam, _ = _ship_size(rng, sc, length_m, slenderness=(2.6, 3.6))
    hull = _hull(length, beam, rng.uniform(0.18, 0.32))
    cabin_colour = _jitter(
        rng, _pick(rng, ((0.95, 0.95, 0.94), (0.70, 0.72, 0.74), (0.22, 0.32, 0.48)))
    )
    x0 = -0.25 * length + rng.uniform(-0.05, 0.05) * length
    details = [
        (box(x0, -0.3 * beam, x0 + rng.uniform(0.25, 0.4) * length, 0.3 * beam), cabin_colour),
        (box(-0.46 * length, -0.32 * beam, x0 - 0.02 * length, 0.32 * beam), (0.3, 0.3, 0.31)),
    ]
    colour = _jitter(rng, _pick(rng, BOAT_COLOURS))
    return _Ship(hull, colour, details, [], sc.px(1.5), beam)


def _marina(rng: np.random.Generator, pier: Polygon, sc: _Scales) -> Iterator[tuple[_Ship, Affine]]:
    """Small boats (5-15 m) moored bow-in or stern-in side by side along both sides of a pier,
    a few berths empty, as in a marina."""
    centre, along, across, pier_len, half_width, heading = _pier_frame(pier)
    base_m = _log_uniform(rng, 5.0, 12.0)
    for side in (-1, 1):
        pos, n = -pier_len / 2 + rng.uniform(0, sc.px(4.0)), 0
        while n < MAX_BOATS_PER_BERTH:
            boat = _boat(rng, sc, base_m * rng.uniform(0.75, 1.3))
            pos += boat.beam / 2
            if pos + boat.beam / 2 > pier_len / 2:
                break
            if rng.random() < 0.85:
                length = float(boat.hull.bounds[2] - boat.hull.bounds[0])
                off = half_width + sc.px(rng.uniform(0.3, 1.5)) + length / 2
                xy = centre + along * pos + across * side * off
                turn = 90.0 * side + (180.0 if rng.random() < 0.3 else 0.0)
                n += 1
                yield boat, Affine.translation(*xy) @ Affine.rotation(heading + turn)
            pos += boat.beam / 2 + sc.px(rng.uniform(0.3, 1.2))


def _pier_frame(pier: Polygon) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, float]:
    """A pier's centre, unit vectors along and across it, its length, half its width and its
    heading in degrees (pixel coordinates)."""
    corners = list(pier.minimum_rotated_rectangle.exterior.coords)
    edges = [(corners[0], corners[1]), (corners[1], corners[2])]
    (ax, ay), (bx, by) = max(edges, key=lambda e: math.dist(*e))
    pier_len, heading = math.dist((ax, ay), (bx, by)), math.atan2(by - ay, bx - ax)
    along = np.array([math.cos(heading), math.sin(heading)])
    across = np.array([-along[1], along[0]])
    centre = np.array([pier.centroid.x, pier.centroid.y])
    half_width = min(math.dist(*e) for e in edges) / 2
    return centre, along, across, pier_len, half_width, math.degrees(heading)


def _place_ship(
    ship: _Ship,
    to_px: Affine,
    water: Any,
    placed: list[Any],
    layout: _Layout,
    objects: _Objects,
    *,
    clearance: float,
) -> bool:
    """Add a ship that lies in the water, in the scene, and clear of the others (touching
    is allowed when ``clearance`` is 0: ships rafted together)."""
    hull = _apply(ship.hull, to_px)
    if not water.contains(hull) or not layout.scene.intersects(hull):
        return False
    probe = hull.buffer(clearance) if clearance else hull
    others = np.array(placed, dtype=object)
    hits = others[shapely.intersects(others, probe)] if len(others) else others
    if len(hits) and (shapely.area(shapely.intersection(hits, probe)) > 1e-6).any():
        return False
    placed.append(hull)
    owner = objects.add(hull, _SHIP, ship.colour)
    objects.cast_shadow(np.array([hull]), ship.height_px, layout.shadow_ratio)
    details = _apply(np.array([g for g, _ in ship.details], dtype=object), to_px)
    objects.paint.extend((g, owner, c) for g, (_, c) in zip(details, ship.details, strict=True))
    if ship.wake:
        wake = _apply(np.array([g for g, _ in ship.wake], dtype=object), to_px)
        objects.wakes.extend((g, v) for g, (_, v) in zip(wake, ship.wake, strict=True))
    return True
