"""Buildings: rows of houses, L/T-shapes and terraces along the street blocks, their
shadows and roofs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import shapely
from affine import Affine
from shapely.geometry import LineString, Polygon, box

from geoseg.learn.synth.constants import (
    _BUILDING,
    _NARROWEST_HOUSE_M,
    _SETBACK_M,
    _SLOT_DEPTH_M,
    CONCRETE_ROOF_COLOURS,
    FLAT_ROOF_COLOURS,
    MAX_BUILDINGS,
    ROOF_COLOURS,
    Rgb,
)
from geoseg.learn.synth.geometry import _apply, _log_uniform, _Scales
from geoseg.learn.synth.layout import _Layout
from geoseg.learn.synth.objects import _jitter, _Objects, _pick
from geoseg.learn.synth.roofs import add_flat_roof_details, roof_look

_DENSE_DEPTH_M = (6.0, 13.0)  # the depth of a dense row's houses


@dataclass(slots=True)
class _House:
    """One building in its row frame: street edge at y = 0, depth along +y, from x = 0."""

    footprint: Any
    wings: list[tuple[float, float, float, float]]
    height_m: float
    roof: Rgb
    flat: bool
    hip: bool
    row_ridge: bool = False  # terraces: one ridge along the row, across every unit
    party_wall: bool = False  # terraces: a dark wall line along the unit's west edge


def _add_buildings(
    rng: np.random.Generator,
    layout: _Layout,
    sc: _Scales,
    objects: _Objects,
    details: np.random.Generator | None = None,
    dense: bool = False,
) -> None:
    """Rows of houses, L/T-shapes and terraces along both sides of every street block;
    ``details`` draws their roof details (``roofs``; none without it). A ``dense`` town
    fills its blocks with rows of small houses a metre or two apart, many with flat roofs
    (the informal and mixed housing of the OpenAerialMap clusters)."""
    town = layout.town.intersection(layout.scene.buffer(_SLOT_DEPTH_M * sc.urban))
    if town.is_empty:
        return
    inner = layout.town.buffer(-1.0)
    shapely.prepare(town)
    shapely.prepare(inner)
    (px, py), half = layout.pitch_xy, layout.street_px / 2
    reach = max(town.bounds[2] - town.bounds[0], town.bounds[3] - town.bounds[1], 1.0)
    cells = [(i, j) for i in range(-int(reach / px) - 2, int(reach / px) + 3)
             for j in range(-int(reach / py) - 2, int(reach / py) + 3)]  # fmt: skip
    for k in rng.permutation(len(cells)):
        i, j = cells[k]
        block = box(i * px + half, j * py + half, (i + 1) * px - half, (j + 1) * py - half)
        if not town.intersects(_apply(block, layout.grid)):
            continue
        for row in _block_rows(block, sc, rng, dense):
            for house in _row_houses(rng, sc, row[2], dense):
                if objects.count(_BUILDING) >= MAX_BUILDINGS:
                    return
                _place_house(house, layout.grid @ row[0], inner, layout, objects, sc, details)


def _block_rows(
    block: Polygon, sc: _Scales, rng: np.random.Generator, dense: bool = False
) -> list[tuple[Affine, float, float]]:
    """The rows of a block: (row frame -> grid frame, row start, row length); two, one along
    each street, or in a ``dense`` block as many as fit back to back."""
    x0, y0, x1, y1 = block.bounds
    side = sc.urban * rng.uniform(2, 6)
    rows = []
    for y_edge, flip in ((y0, 1), (y1, -1)):
        if not dense:
            setback = sc.urban * rng.uniform(*_SETBACK_M)
            frame = Affine.translation(x0 + side, y_edge + flip * setback) @ Affine.scale(1, flip)
            rows.append((frame, 0.0, x1 - x0 - 2 * side))
            continue
        offset, half = sc.urban * rng.uniform(0.5, 2.5), (y1 - y0) / 2
        while offset + _DENSE_DEPTH_M[1] * sc.urban <= half:
            frame = Affine.translation(x0 + side, y_edge + flip * offset) @ Affine.scale(1, flip)
            rows.append((frame, 0.0, x1 - x0 - 2 * side))
            offset += sc.urban * (_DENSE_DEPTH_M[1] + rng.uniform(0.5, 2.5))
    return rows


def _row_houses(
    rng: np.random.Generator, sc: _Scales, length: float, dense: bool = False
) -> Iterator[_House]:
    """Houses along one row, left to right, with gaps; terrace units touch. In a ``dense``
    row the houses are shallow (``_DENSE_DEPTH_M``) and the gaps 0.3-2.5 m."""
    x = 0.0
    while True:
        if dense:
            kind = rng.choice(2, p=[0.75, 0.25])
            houses = (_dense_house, _terrace)[kind](rng, sc)
        else:
            kind = rng.choice(4, p=[0.4, 0.17, 0.1, 0.33])
            houses = (_simple_house, _l_house, _t_house, _terrace)[kind](rng, sc)
        right = max(h.footprint.bounds[2] for h in houses)
        if x + right > length:
            return
        for house in houses:
            yield _shift(house, x)
        if dense:
            x += right + sc.urban * rng.uniform(0.3, 2.5)
        else:
            x += right + sc.urban * rng.uniform(2, 10) + (0 if rng.random() > 0.1 else right)


def _dense_house(rng: np.random.Generator, sc: _Scales) -> list[_House]:
    """A house of a dense block: 5-22 m along the row, as deep as a dense row allows, its
    roof flat (concrete, often) in half of cases."""
    depth = rng.uniform(*_DENSE_DEPTH_M)
    frontage = _log_uniform(rng, 5, 22)
    house = _house(rng, sc, [(0, 0, frontage, depth)], rng.uniform(3, 12))
    if rng.random() < 0.5:
        colour = _pick(rng, FLAT_ROOF_COLOURS + CONCRETE_ROOF_COLOURS)
        house = replace(house, flat=True, roof=_jitter(rng, colour))
    return [house]


def _shift(house: _House, dx: float) -> _House:
    wings = [(a + dx, b, c + dx, d) for a, b, c, d in house.wings]
    footprint = shapely.affinity.translate(house.footprint, dx, 0)
    return replace(house, footprint=footprint, wings=wings)


def _roof(rng: np.random.Generator, flat: bool) -> Rgb:
    return _jitter(rng, _pick(rng, FLAT_ROOF_COLOURS if flat else ROOF_COLOURS))


def _house(rng: np.random.Generator, sc: _Scales, wings_m: list, height_m: float) -> _House:
    wings = [tuple(v * sc.urban for v in w) for w in wings_m]
    footprint = shapely.union_all([box(*w) for w in wings])
    flat = rng.random() < (0.45 if footprint.area > (18 * sc.urban) ** 2 else 0.1)
    return _House(footprint, wings, height_m, _roof(rng, flat), flat, rng.random() < 0.4)


def _simple_house(rng: np.random.Generator, sc: _Scales) -> list[_House]:
    width = rng.uniform(8, 14)
    length = _log_uniform(rng, width * 1.1, 30)
    depth_first = rng.random() < 0.35 and length <= _SLOT_DEPTH_M
    wing = (0, 0, width, length) if depth_first else (0, 0, length, width)
    return [_house(rng, sc, [wing], rng.uniform(4, 12))]


def _l_house(rng: np.random.Generator, sc: _Scales, centred: bool = False) -> list[_House]:
    length, width = rng.uniform(14, 28), rng.uniform(8, 12)
    wing_w, wing_d = rng.uniform(7, 10), rng.uniform(5, _SLOT_DEPTH_M - width)
    x = (length - wing_w) * (0.5 if centred else float(rng.random() < 0.5))
    wings = [(0, 0, length, width), (x, width, x + wing_w, width + wing_d)]
    return [_house(rng, sc, wings, rng.uniform(5, 9))]


def _t_house(rng: np.random.Generator, sc: _Scales) -> list[_House]:
    return _l_house(rng, sc, centred=True)


def _terrace(rng: np.random.Generator, sc: _Scales) -> list[_House]:
    """2-6 touching houses sharing walls: distinct instances, similar roofs, and the party
    wall between two units visible as a dark line (as parapets and gutters are from above)."""
    depth, height = rng.uniform(9, 12), rng.uniform(6, 10)
    base = _pick(rng, ROOF_COLOURS)
    hip = rng.random() < 0.3
    houses, x = [], 0.0
    for unit in range(int(rng.integers(2, 7))):
        frontage = rng.uniform(_NARROWEST_HOUSE_M, 10)
        wing = tuple(v * sc.urban for v in (x, 0, x + frontage, depth))
        colour = _roof(rng, False) if rng.random() < 0.25 else _jitter(rng, base, 0.08)
        houses.append(
            _House(box(*wing), [wing], height, colour, False, hip, True, party_wall=unit > 0)
        )
        x += frontage
    return houses


def _place_house(
    house: _House,
    to_px: Affine,
    inner: Any,
    layout: _Layout,
    objects: _Objects,
    sc: _Scales,
    details: np.random.Generator | None = None,
) -> None:
    footprint = _apply(house.footprint, to_px)
    if not inner.contains(footprint) or not layout.scene.intersects(footprint):
        return
    colour, ribs = house.roof, (0.0, 1.0, 0.0)
    if details is not None:
        look = roof_look(details, house.flat, _ridge_direction(house, to_px), sc)
        colour, ribs = look.colour or colour, look.ribs
    owner = objects.add(footprint, _BUILDING, colour, rows=ribs)
    if details is not None and house.flat:
        add_flat_roof_details(details, footprint, owner, colour, objects, sc, layout.shadow_ratio)
    wings = _apply(np.array([box(*w) for w in house.wings], dtype=object), to_px)
    objects.cast_shadow(wings, house.height_m * sc.urban, layout.shadow_ratio)
    if not house.flat:
        inverse = ~Affine(to_px.a, to_px.b, 0, to_px.d, to_px.e, 0)
        sun_local = inverse @ objects.sun_xy
        overlays = [
            g for w in house.wings for g in _roof_parts(w, house.hip, sun_local, house.row_ridge)
        ]
        for k, geom in enumerate(_apply(np.array(overlays, dtype=object), to_px)):
            objects.shade.append((geom, owner, 0.74 if k % 2 == 0 else 1.25))
    if house.party_wall:
        x0, y0, _, y1 = house.wings[0]
        wall = LineString([(x0 + 0.5, y0), (x0 + 0.5, y1)])  # half a pixel inside this unit
        objects.shade.append((_apply(wall, to_px), owner, 0.45))


def _ridge_direction(house: _House, to_px: Affine) -> tuple[float, float]:
    """The pixel direction of the first wing's ridge (along its long axis, or along the
    row for terraces)."""
    x0, y0, x1, y1 = house.wings[0]
    dx, dy = (1.0, 0.0) if house.row_ridge or (x1 - x0) >= (y1 - y0) else (0.0, 1.0)
    return (to_px.a * dx + to_px.b * dy, to_px.d * dx + to_px.e * dy)


def _roof_parts(
    wing: tuple[float, float, float, float],
    hip: bool,
    sun_local: tuple[float, float],
    along_x: bool = False,
) -> tuple[Polygon, LineString]:
    """The roof half that faces away from the sun, and the ridge along the wing's long axis
    (along x, the street, when ``along_x``)."""
    x0, y0, x1, y1 = wing
    if along_x or (x1 - x0) >= (y1 - y0):
        mid, inset = (y0 + y1) / 2, (y1 - y0) / 2 if hip and not along_x else 0.0
        ridge = LineString([(x0 + inset, mid), (x1 - inset, mid)])
        half = box(x0, mid, x1, y1) if sun_local[1] > 0 else box(x0, y0, x1, mid)
    else:
        mid, inset = (x0 + x1) / 2, (x1 - x0) / 2 if hip else 0.0
        ridge = LineString([(mid, y0 + inset), (mid, y1 - inset)])
        half = box(mid, y0, x1, y1) if sun_local[0] > 0 else box(x0, y0, mid, y1)
    return half, ridge
