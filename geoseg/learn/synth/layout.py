"""The layout of a scene: coast, beach, town and its street grid, farmland, roads,
tracks, piers and the sun."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from scipy import ndimage
from shapely.geometry import LineString, Polygon, box

from geoseg.learn.synth.constants import _SETBACK_M, _SLOT_DEPTH_M
from geoseg.learn.synth.geometry import _apply, _sample_points, _Scales


@dataclass(slots=True)
class _Layout:
    """Zones of a scene in pixel coordinates, drawn on a box larger than the scene."""

    width: int
    height: int
    scene: Polygon
    water: Any
    beach: Any
    farmland: Any
    town: Any
    roads: Any
    tracks: Any
    piers: list[Polygon]
    grid: Affine  # street-grid frame -> pixels
    pitch_xy: tuple[float, float]
    street_px: float
    sun_xy: tuple[float, float]  # shadow direction, unit vector in pixels
    shadow_ratio: float  # shadow length / object height

    @property
    def shape_yx(self) -> tuple[int, int]:
        return self.height, self.width


def _layout(rng: np.random.Generator, width: int, height: int, sc: _Scales) -> _Layout:
    """Sea, beach, town with its street grid, farmland, roads, tracks, piers and the sun."""
    margin = max(64.0, 0.25 * max(width, height))
    scene = box(0, 0, width, height)
    extent = box(-margin, -margin, width + margin, height + margin)
    to_pixel, len_u, len_v = _canonical_frame(int(rng.integers(4)), width, height)
    water_c, coast = _water(rng, len_u, len_v, margin)
    water = _apply(water_c, to_pixel).intersection(extent)
    land = extent.difference(water)
    beach = water.buffer(sc.px(rng.uniform(3, 15), 1.0)).intersection(land)
    town_c, split_c = _town(rng, len_u, len_v, margin, coast, sc)
    town = _apply(town_c, to_pixel).intersection(land).difference(beach)
    main_road = _apply(split_c, to_pixel).buffer(sc.px(9, 2.0) / 2, cap_style="flat")
    tracks = _tracks(rng, land.difference(town), scene, sc)
    grid, pitch_xy, street_px = _street_grid(rng, town, sc)
    streets = _streets(grid, pitch_xy, town, street_px)
    roads = shapely.union_all([main_road, streets]).intersection(land)
    farmland = land.difference(town.buffer(sc.px(6, 2))).difference(beach)
    farmland = farmland.difference(roads.union(tracks).buffer(sc.px(2, 1)))
    azimuth = rng.uniform(math.radians(110), math.radians(250))  # sun from the south
    piers = _piers(rng, len_u, margin, coast, sc, to_pixel)
    return _Layout(
        width=width,
        height=height,
        scene=scene,
        water=water,
        beach=beach,
        farmland=farmland,
        town=town.difference(roads),
        roads=roads,
        tracks=tracks,
        piers=piers,
        grid=grid,
        pitch_xy=pitch_xy,
        street_px=street_px,
        sun_xy=(-math.sin(azimuth), math.cos(azimuth)),
        shadow_ratio=float(rng.uniform(0.35, 1.0)),
    )


def _canonical_frame(side: int, width: int, height: int) -> tuple[Affine, float, float]:
    """Frame with the coast along u and depth v from the water's scene edge inland."""
    frames = {
        0: (Affine(1, 0, 0, 0, 1, 0), width, height),  # water at the top
        1: (Affine(1, 0, 0, 0, -1, height), width, height),  # bottom
        2: (Affine(0, 1, 0, 1, 0, 0), height, width),  # left
        3: (Affine(0, -1, width, 1, 0, 0), height, width),  # right
    }
    return frames[side]


def _water(
    rng: np.random.Generator, len_u: float, len_v: float, margin: float
) -> tuple[Polygon, Callable[[float], float]]:
    """Sea beyond a wavy coastline at 15-35 % of the scene depth (canonical frame)."""
    u = np.linspace(-margin, len_u + margin, 48)
    walk = np.cumsum(rng.standard_normal(len(u)))
    walk = ndimage.gaussian_filter1d(walk - np.linspace(walk[0], walk[-1], len(u)), 1.5)
    walk /= max(float(np.abs(walk).max()), 1e-6)
    bay = np.sin(2 * np.pi * (u / len_u * rng.uniform(0.5, 1.5) + rng.uniform()))
    depth = len_v * (rng.uniform(0.15, 0.35) + 0.06 * walk + 0.04 * bay)
    ring = [*zip(u, depth, strict=True), (u[-1], -margin - 1), (u[0], -margin - 1)]
    return Polygon(ring), lambda x: float(np.interp(x, u, depth))


def _town(
    rng: np.random.Generator,
    len_u: float,
    len_v: float,
    margin: float,
    coast: Callable[[float], float],
    sc: _Scales,
) -> tuple[Polygon, LineString]:
    """An irregular town disc sized for ~250 buildings, on one side of the main road."""
    u_split = len_u * rng.uniform(0.35, 0.65)
    tilt = rng.uniform(-0.3, 0.3)
    top, bottom = (
        (u_split - tilt * margin, -margin),
        (u_split + tilt * (len_v + margin), len_v + margin),
    )
    split = LineString([top, bottom])
    left = rng.random() < 0.5
    u_c = u_split + (-1 if left else 1) * len_u * rng.uniform(0.08, 0.35)
    v_coast = coast(u_c)
    v_c = v_coast + (len_v - v_coast) * rng.uniform(0.1, 0.6)
    radius = sc.urban * math.sqrt(250 * 800 / math.pi) * rng.uniform(0.8, 1.2)
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    wobble = 1 + 0.15 * ndimage.gaussian_filter1d(rng.standard_normal(40), 2, mode="wrap") * 3
    ring = np.column_stack([np.cos(angles), np.sin(angles)]) * (radius * wobble)[:, None]
    disc = Polygon(np.add(ring, (u_c, v_c))).buffer(0)
    far = -4 * margin if left else len_u + 4 * margin
    side = Polygon([top, bottom, (far, bottom[1]), (far, top[1])]).buffer(0)
    return disc.intersection(side), split


def _tracks(rng: np.random.Generator, land: Any, scene: Polygon, sc: _Scales) -> Any:
    """One to three straight farm tracks across the farmland."""
    lines = []
    for xy in _sample_points(rng, land.intersection(scene), int(rng.integers(1, 4))):
        angle = rng.uniform(0, np.pi)
        reach = 3 * max(scene.bounds[2], scene.bounds[3])
        dx, dy = reach * math.cos(angle), reach * math.sin(angle)
        lines.append(LineString([(xy[0] - dx, xy[1] - dy), (xy[0] + dx, xy[1] + dy)]))
    if not lines:
        return Polygon()
    return shapely.MultiLineString(lines).buffer(sc.px(4, 1.5) / 2).intersection(land)


def _street_grid(
    rng: np.random.Generator, town: Any, sc: _Scales
) -> tuple[Affine, tuple[float, float], float]:
    """Street-grid frame (x along streets) -> pixels; block pitch; street width (px)."""
    centre = town.centroid if not town.is_empty else shapely.Point(0, 0)
    angle = rng.uniform(0, 90)
    street = 7 * sc.urban
    depth = _SLOT_DEPTH_M * sc.urban
    pitch_x = rng.uniform(4, 7) * depth + street
    pitch_y = 2 * (depth + _SETBACK_M[1] * sc.urban) + rng.uniform(2, 8) * sc.urban + street
    grid = Affine.translation(centre.x, centre.y) @ Affine.rotation(angle)
    return grid, (pitch_x, pitch_y), street


def _streets(grid: Affine, pitch_xy: tuple[float, float], town: Any, street: float) -> Any:
    if town.is_empty:
        return Polygon()
    reach = max(town.bounds[2] - town.bounds[0], town.bounds[3] - town.bounds[1])
    nx, ny = (int(reach / p) + 2 for p in pitch_xy)
    px, py = pitch_xy
    lines = [LineString([(i * px, -ny * py), (i * px, (ny + 1) * py)]) for i in range(-nx, nx + 2)]
    lines += [LineString([(-nx * px, j * py), ((nx + 1) * px, j * py)]) for j in range(-ny, ny + 2)]
    return _apply(shapely.MultiLineString(lines), grid).buffer(street / 2).intersection(town)


def _piers(
    rng: np.random.Generator,
    len_u: float,
    margin: float,
    coast: Callable[[float], float],
    sc: _Scales,
    to_pixel: Affine,
) -> list[Polygon]:
    """One or two piers from the coast out into the water (pixel coordinates)."""
    piers = []
    for u in rng.uniform(0.1, 0.9, size=int(rng.integers(1, 3))) * len_u:
        half = sc.px(rng.uniform(4, 10), 1.5) / 2
        v = coast(u)
        length = min(sc.px(rng.uniform(80, 300), 25), v + margin * 0.5)
        piers.append(_apply(box(u - half, v - length, u + half, v + 4 * half), to_pixel))
    return piers
