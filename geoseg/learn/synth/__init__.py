"""Synthetic labelled aerial scenes: buildings, fields and ships with exact polygon labels.

A scene is laid out in pixel space (x = column, y = row, both to the right and down): a
coast with water on one side, a town with a street grid, farmland cut by tracks, a pier.
Objects are polygons there; each is clipped to the scene (its largest part kept), moved to
map coordinates, and that very polygon is rasterized (pixel centres inside) to paint it. So
the labels match the pixels exactly; objects never overlap (terraced houses and ships moored
side by side touch). An object under a cloud stays labelled; one with fewer than
``MIN_OBJECT_PIXELS`` pixels in the scene is neither labelled nor drawn.

Sizes follow the ground sampling distance (GSD): buildings 8-30 m, ships 20-250 m, fields
100-800 m across, roads 4-10 m wide. Where a real size would be too small to learn from, it
is enlarged, and only then:

- buildings: the urban fabric (footprints, heights, setbacks, streets, blocks) is scaled by
  ``max(1, MIN_BUILDING_WIDTH_PX * gsd / 7 m)`` so the narrowest house is 6 px wide. Nothing
  changes up to 1.17 m GSD; at 10 m GSD houses become 60-250 m blocks and warehouses.
- ships: a ship whose beam would be under ``MIN_SHIP_BEAM_PX`` is enlarged, keeping its
  shape; at 10 m GSD every ship is about 18-30 px long, like Sentinel-2 vessels.
- fields need nothing (at least 10 px at 10 m GSD).

Counts are capped (``MAX_BUILDINGS``, ``MAX_SHIPS``, ``MAX_FIELDS``) so coarse scenes stay
fast. Water, farmland and a town each take a part of every scene, so that a scene of the
default size has objects of each class at any GSD from 0.5 to 10 m (even 256 x 256 scenes
do, for the seeds tried).
The CRS is a real UTM zone (EPSG:326xx) and origin, both drawn from the seed; everything is
deterministic by seed. ``uint16`` output is the same scene scaled to 0..4095 (12-bit).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS
from rasterio import features
from scipy import ndimage
from shapely.geometry import LineString, Polygon, box

from geoseg.errors import UserInputError

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = [
    "CLASSES",
    "LABEL_LAYER",
    "SyntheticScene",
    "make_scene",
    "render_scene",
    "write_scene",
]

CLASSES = ("building", "field", "ship")
LABEL_LAYER = "labels"
MIN_BUILDING_WIDTH_PX = 6.0
MIN_SHIP_BEAM_PX = 4.0
MIN_OBJECT_PIXELS = 12
MAX_BUILDINGS = 400
MAX_SHIPS = 40
MAX_FIELDS = 300
UINT16_MAX = 4095
_NARROWEST_HOUSE_M = 7.0
_BUILDING, _FIELD, _SHIP = range(3)

Rgb = tuple[float, float, float]
GRASS: Rgb = (0.27, 0.35, 0.18)
SOIL: Rgb = (0.50, 0.42, 0.33)
URBAN_GROUND: Rgb = (0.38, 0.40, 0.33)
SAND: Rgb = (0.76, 0.70, 0.56)
WATER: Rgb = (0.06, 0.14, 0.18)
ASPHALT: Rgb = (0.33, 0.33, 0.35)
DIRT: Rgb = (0.56, 0.50, 0.40)
CONCRETE: Rgb = (0.62, 0.61, 0.58)
TREE: Rgb = (0.08, 0.18, 0.07)
FOAM: Rgb = (0.86, 0.89, 0.90)
CLOUD: Rgb = (0.93, 0.93, 0.94)
FIELD_COLOURS: tuple[Rgb, ...] = (
    (0.22, 0.40, 0.12),  # young crop
    (0.34, 0.49, 0.17),  # grass ley
    (0.72, 0.63, 0.36),  # ripe wheat
    (0.62, 0.56, 0.41),  # stubble
    (0.43, 0.33, 0.23),  # ploughed
    (0.78, 0.72, 0.22),  # rapeseed
)
ROOF_COLOURS: tuple[Rgb, ...] = (
    (0.58, 0.27, 0.17),  # terracotta
    (0.45, 0.21, 0.16),  # dark red tile
    (0.26, 0.26, 0.29),  # slate
    (0.42, 0.42, 0.44),  # grey
    (0.36, 0.27, 0.20),  # brown
    (0.31, 0.35, 0.43),  # blue-grey
)
FLAT_ROOF_COLOURS: tuple[Rgb, ...] = ((0.80, 0.80, 0.78), (0.62, 0.62, 0.62), (0.30, 0.30, 0.31))
HULL_COLOURS: tuple[Rgb, ...] = (
    (0.85, 0.85, 0.83),
    (0.50, 0.14, 0.12),
    (0.14, 0.15, 0.18),
    (0.16, 0.27, 0.45),
    (0.50, 0.51, 0.52),
    (0.20, 0.35, 0.25),
)
CARGO_COLOURS: tuple[Rgb, ...] = (
    (0.70, 0.20, 0.15),
    (0.20, 0.35, 0.60),
    (0.75, 0.60, 0.20),
    (0.30, 0.55, 0.35),
    (0.80, 0.80, 0.78),
    (0.40, 0.28, 0.22),
)


@dataclass(frozen=True, slots=True)
class SyntheticScene:
    """A rendered scene: ``image`` ``(3, H, W)``, its ``labels`` (columns ``id``, ``class``,
    polygons in ``crs``), the pixel-to-map ``transform`` and ``ids_yx``, the instance id of
    every pixel (0 = background; equal to rasterizing ``labels`` by ``id``)."""

    image: np.ndarray
    labels: gpd.GeoDataFrame
    transform: Affine
    crs: CRS
    ids_yx: np.ndarray


def make_scene(
    size_wh: tuple[int, int] = (1024, 1024),
    gsd_m: float = 0.5,
    seed: int = 0,
    dtype: str = "uint8",
) -> tuple[np.ndarray, gpd.GeoDataFrame, Affine, CRS]:
    """A synthetic aerial scene: ``(image (3, H, W), labels, transform, crs)``.

    >>> image, labels, transform, crs = make_scene((128, 96), gsd_m=2.0, seed=1)
    >>> image.shape, image.dtype.name, sorted(set(labels["class"])) <= list(CLASSES)
    ((3, 96, 128), 'uint8', True)
    """
    scene = render_scene(size_wh, gsd_m=gsd_m, seed=seed, dtype=dtype)
    return scene.image, scene.labels, scene.transform, scene.crs


def write_scene(
    path: str | Path,
    *,
    size_wh: tuple[int, int] = (1024, 1024),
    gsd_m: float = 0.5,
    seed: int = 0,
    dtype: str = "uint8",
    labels_path: str | Path | None = None,
) -> tuple[Path, Path]:
    """Write a scene as a tiled, deflated RGB GeoTIFF and its labels as a GeoPackage.

    The labels go to ``labels_path`` (default: ``path`` with suffix ``.gpkg``), layer
    ``"labels"``. Both files are written under temporary names beside their final ones and
    renamed into place only when both are complete. Returns ``(image_path, labels_path)``.
    """
    path = Path(path)
    labels_path = Path(labels_path) if labels_path is not None else path.with_suffix(".gpkg")
    for target in (path, labels_path):
        if not target.parent.is_dir():
            raise UserInputError(f"{target.parent}: no such folder; create it first")
    if path.resolve() == labels_path.resolve():
        raise UserInputError(f"{path}: the image and its labels need different file names")
    scene = render_scene(size_wh, gsd_m=gsd_m, seed=seed, dtype=dtype)
    staged = [(_partial(path), path), (_partial(labels_path), labels_path)]
    try:
        _write_geotiff(staged[0][0], scene, gsd_m=gsd_m, seed=seed)
        staged[1][0].unlink(missing_ok=True)
        scene.labels.to_file(staged[1][0], layer=LABEL_LAYER, driver="GPKG")
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    return path, labels_path


def render_scene(
    size_wh: tuple[int, int] = (1024, 1024),
    *,
    gsd_m: float = 0.5,
    seed: int = 0,
    dtype: str = "uint8",
) -> SyntheticScene:
    """Lay out, label and paint one scene (see the module docstring)."""
    width, height = _check_args(size_wh, gsd_m, seed, dtype)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    scales = _Scales.from_gsd(gsd_m)
    transform, crs = _georef(rngs[0], width, height, gsd_m)
    layout = _layout(rngs[1], width, height, scales)
    objects = _Objects(sun_xy=layout.sun_xy)
    _add_fields(rngs[2], layout, scales, objects)
    _add_buildings(rngs[3], layout, scales, objects)
    _add_ships(rngs[4], layout, scales, objects)
    labels, ids, renumber = _labels_and_ids(objects, layout.scene, transform, crs)
    image = _paint(rngs[5], layout, objects, ids, scales)
    image = _atmosphere(rngs[6], image, scales, layout.sun_xy)
    image = _quantize(rngs[7], image, dtype)
    return SyntheticScene(image, labels, transform, crs, renumber[ids])


# -- arguments, georeferencing, output ----------------------------------------------------


def _check_args(size_wh: Any, gsd_m: float, seed: int, dtype: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size_wh)
    except (TypeError, ValueError):
        raise UserInputError(f"size {size_wh!r}: give two integers, width and height") from None
    if min(width, height) < 32 or width * height > 100_000_000:
        raise UserInputError(f"size {width} x {height}: use 32 to 10000 pixels a side")
    if not 0.05 <= gsd_m <= 100:
        raise UserInputError(f"GSD {gsd_m} m: use 0.05 to 100 m per pixel (0.5 to 10 is usual)")
    if seed < 0:
        raise UserInputError(f"seed {seed}: use a non-negative integer")
    if dtype not in ("uint8", "uint16"):
        raise UserInputError(f"dtype {dtype!r}: use uint8 or uint16")
    return width, height


def _georef(rng: np.random.Generator, width: int, height: int, gsd_m: float) -> tuple[Any, CRS]:
    """A north-up grid in a UTM zone (northern hemisphere) drawn from the seed."""
    zone = int(rng.integers(1, 61))
    x0 = round(float(rng.uniform(250_000, 650_000)), -2)
    y0 = round(float(rng.uniform(1_000_000, 7_000_000)), -2)
    return Affine(gsd_m, 0.0, x0, 0.0, -gsd_m, y0), CRS.from_epsg(32600 + zone)


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def _write_geotiff(path: Path, scene: SyntheticScene, *, gsd_m: float, seed: int) -> None:
    import rasterio

    _, height, width = scene.image.shape
    block = 256 if min(width, height) >= 256 else max(16, 16 * (min(width, height) // 16))
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": scene.image.dtype.name,
        "crs": scene.crs.to_wkt(),
        "transform": scene.transform,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "predictor": 2,
        "photometric": "RGB",
        "interleave": "pixel",
    }
    path.unlink(missing_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(scene.image)
        dst.update_tags(GEOSEG_SYNTH_SEED=str(seed), GEOSEG_SYNTH_GSD_M=str(gsd_m))


# -- scales and geometry helpers ----------------------------------------------------------


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


def _noise(rng: np.random.Generator, shape_yx: tuple[int, int], cell_px: float) -> np.ndarray:
    """Smooth fractal noise with features about ``cell_px`` across; zero mean, unit std.

    Octaves are summed on a small grid (finest spacing at least 8 px), which one separable
    bilinear resampling brings to full size; ``cell_px`` <= 1 gives white noise.
    """
    height, width = shape_yx
    if cell_px <= 1:
        return rng.standard_normal(shape_yx, dtype=np.float32)
    octaves = int(np.clip(math.log2(cell_px / 8) + 1, 1, 4))
    grid = rng.standard_normal((int(height / cell_px) + 2, int(width / cell_px) + 2))
    for octave in range(1, octaves):
        grid = ndimage.zoom(grid, 2, order=1)
        grid += 0.55**octave * rng.standard_normal(grid.shape)
    step = cell_px / 2 ** (octaves - 1)
    lower, frac = _bilinear(height, grid.shape[0], step)
    rows = grid[lower].astype(np.float32) * (1 - frac)[:, None]
    rows += grid[lower + 1].astype(np.float32) * frac[:, None]
    lower, frac = _bilinear(width, grid.shape[1], step)
    out = rows[:, lower] * (1 - frac)
    out += rows[:, lower + 1] * frac
    sample = out[::4, ::4]
    out -= sample.mean()
    out /= max(float(sample.std()), 1e-6)
    return out


def _bilinear(n_out: int, n_in: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbour and weight of the upper one, resampling a grid of ``step`` px."""
    pos = np.minimum((np.arange(n_out) + 0.5) / step, n_in - 1.001)
    lower = np.floor(pos).astype(int)
    return lower, (pos - lower).astype(np.float32)


def _discs(shape_yx: tuple[int, int], xyr: np.ndarray) -> np.ndarray:
    """A mask of discs ``(x, y, radius)`` in pixels (radii rounded to half pixels)."""
    mask = np.zeros(shape_yx, dtype=bool)
    radii = np.maximum(np.rint(xyr[:, 2] * 2) / 2, 0.5)
    for radius in np.unique(radii):
        centres = np.floor(xyr[radii == radius, :2]).astype(int)
        k = math.ceil(radius)
        dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
        inside = dx**2 + dy**2 <= radius**2
        cols = centres[:, :1] + dx[inside]
        rows = centres[:, 1:] + dy[inside]
        ok = (rows >= 0) & (rows < shape_yx[0]) & (cols >= 0) & (cols < shape_yx[1])
        mask[rows[ok], cols[ok]] = True
    return mask


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


# -- layout: coast, town, roads -----------------------------------------------------------


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


# -- objects --------------------------------------------------------------------------------


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


# fields


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


# buildings

_SLOT_DEPTH_M = 30.0
_SETBACK_M = (3.0, 8.0)


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
    rng: np.random.Generator, layout: _Layout, sc: _Scales, objects: _Objects
) -> None:
    """Rows of houses, L/T-shapes and terraces along both sides of every street block."""
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
        for row in _block_rows(block, sc, rng):
            for house in _row_houses(rng, sc, row[2]):
                if objects.count(_BUILDING) >= MAX_BUILDINGS:
                    return
                _place_house(house, layout.grid @ row[0], inner, layout, objects, sc)


def _block_rows(
    block: Polygon, sc: _Scales, rng: np.random.Generator
) -> list[tuple[Affine, float, float]]:
    """The two rows of a block: (row frame -> grid frame, row start, row length)."""
    x0, y0, x1, y1 = block.bounds
    side = sc.urban * rng.uniform(2, 6)
    rows = []
    for y_edge, flip in ((y0, 1), (y1, -1)):
        setback = sc.urban * rng.uniform(*_SETBACK_M)
        frame = Affine.translation(x0 + side, y_edge + flip * setback) @ Affine.scale(1, flip)
        rows.append((frame, 0.0, x1 - x0 - 2 * side))
    return rows


def _row_houses(rng: np.random.Generator, sc: _Scales, length: float) -> Iterator[_House]:
    """Houses along one row, left to right, with gaps; terrace units touch."""
    x = 0.0
    while True:
        kind = rng.choice(4, p=[0.4, 0.17, 0.1, 0.33])
        houses = (_simple_house, _l_house, _t_house, _terrace)[kind](rng, sc)
        right = max(h.footprint.bounds[2] for h in houses)
        if x + right > length:
            return
        for house in houses:
            yield _shift(house, x)
        x += right + sc.urban * rng.uniform(2, 10) + (0 if rng.random() > 0.1 else right)


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
    house: _House, to_px: Affine, inner: Any, layout: _Layout, objects: _Objects, sc: _Scales
) -> None:
    footprint = _apply(house.footprint, to_px)
    if not inner.contains(footprint) or not layout.scene.intersects(footprint):
        return
    owner = objects.add(footprint, _BUILDING, house.roof)
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


# ships


@dataclass(slots=True)
class _Ship:
    hull: Polygon
    colour: Rgb
    details: list[tuple[Polygon, Rgb]]
    wake: list[tuple[Any, float]]
    height_px: float
    beam: float


def _add_ships(rng: np.random.Generator, layout: _Layout, sc: _Scales, objects: _Objects) -> None:
    """Ships moored side by side at the piers, then free ships (some under way) at sea."""
    water = layout.water.buffer(-1.0)
    sea = water.intersection(layout.scene)
    if sea.is_empty:
        return
    shapely.prepare(water)
    placed: list[Any] = [*layout.piers]
    for pier in layout.piers:
        for ship, to_px in _moored(rng, pier, sc):
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


def _ship_size(rng: np.random.Generator, sc: _Scales, length_m: float | None = None) -> tuple:
    """Length and beam in pixels (beam at least ``MIN_SHIP_BEAM_PX``), length in metres."""
    length_m = length_m or _log_uniform(rng, 20, 250)
    length = sc.px(length_m)
    beam = length / rng.uniform(4.5, 7.0)
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
    corners = list(pier.minimum_rotated_rectangle.exterior.coords)
    edges = [(corners[0], corners[1]), (corners[1], corners[2])]
    (ax, ay), (bx, by) = max(edges, key=lambda e: math.dist(*e))
    pier_len, heading = math.dist((ax, ay), (bx, by)), math.atan2(by - ay, bx - ax)
    along = np.array([math.cos(heading), math.sin(heading)])
    across = np.array([-along[1], along[0]])
    centre = np.array([pier.centroid.x, pier.centroid.y])
    length_m = _log_uniform(rng, 20, 150)
    for side in (-1, 1):
        offset = min(math.dist(*e) for e in edges) / 2
        for _ in range(int(rng.integers(0, 4)) + (side == 1)):
            size_m = length_m * rng.uniform(0.85, 1.15)
            ship = _ship(rng, sc, moving=False, length_m=size_m)
            offset += (0.0 if rng.random() < 0.5 else rng.uniform(0.6, 2.0)) + ship.beam / 2
            xy = centre + across * side * offset + along * rng.uniform(-0.2, 0.2) * pier_len
            offset += ship.beam / 2
            yield ship, Affine.translation(*xy) @ Affine.rotation(math.degrees(heading))


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


# -- labels ---------------------------------------------------------------------------------


def _labels_and_ids(
    objects: _Objects, scene: Polygon, transform: Affine, crs: CRS
) -> tuple[gpd.GeoDataFrame, np.ndarray, np.ndarray]:
    """Clip to the scene, map to the CRS and rasterize; leave out objects with too few pixels.

    Returns the labels, the id raster in object numbering (``objects`` index + 1, 0 where
    nothing or a left-out object is) and the lookup from object numbers to label ids.
    """
    import geopandas as gpd

    height, width = int(scene.bounds[3]), int(scene.bounds[2])
    clipped = [_largest_polygon(g.intersection(scene)) for g in objects.geoms]
    geoms = np.array([_apply(g, transform) for g in clipped], dtype=object)
    ids = _burn([(g, i + 1) for i, g in enumerate(geoms)], (height, width), "int32", transform)
    counts = np.bincount(ids.ravel(), minlength=len(geoms) + 1)
    keep = counts[1:] >= MIN_OBJECT_PIXELS
    renumber = np.zeros(len(geoms) + 1, dtype=np.int32)
    renumber[1:][keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    ids[renumber[ids] == 0] = 0
    names = np.array([CLASSES[c] for c in objects.classes], dtype=object)
    labels = gpd.GeoDataFrame(
        {"id": np.arange(1, keep.sum() + 1, dtype=np.int32), "class": names[keep]},
        geometry=list(geoms[keep]),
        crs=crs,
    )
    return labels, ids, renumber


# -- painting -------------------------------------------------------------------------------


def _rgb(colour: Any) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32)


def _paint(
    rng: np.random.Generator, layout: _Layout, objects: _Objects, ids: np.ndarray, sc: _Scales
) -> np.ndarray:
    """The scene in 0..1 reflectance-like floats, ``(H, W, 3)``."""
    shape = layout.shape_yx
    fine = _noise(rng, shape, 1.0)
    water = _burn([layout.water], shape).astype(bool)
    img = _ground(rng, layout, sc, water, fine)
    free = ids == 0
    road = _paint_roads(layout, img, fine)
    _paint_fields(rng, objects, ids, img, sc)
    _paint_wakes(objects, img, water & free)
    _paint_trees(rng, layout, objects, img, free & ~water & ~road, fine, sc)
    shadow = _burn(objects.shadows, shape).astype(bool) & free
    img[shadow] *= _rgb((0.45, 0.47, 0.55))
    _paint_objects(objects, ids, img, fine)
    return img


def _ground(
    rng: np.random.Generator,
    layout: _Layout,
    sc: _Scales,
    water: np.ndarray,
    fine: np.ndarray,
) -> np.ndarray:
    """Grass, bare soil and dry patches; town ground; beach; water."""
    shape = layout.shape_yx
    soil = np.clip(_noise(rng, shape, sc.px(120, 6)) * 0.7 - 0.5, 0, 1)
    patches = _noise(rng, shape, sc.px(25, 3))
    light = 1 + 0.07 * patches + 0.05 * fine
    img = np.empty((*shape, 3), dtype=np.float32)
    for band, (grass, bare) in enumerate(zip(GRASS, SOIL, strict=True)):
        img[..., band] = (grass + (bare - grass) * soil) * light
    town = _burn([layout.town], shape).astype(bool)
    img[town] = 0.4 * img[town] + 0.6 * _rgb(URBAN_GROUND) * light[town, None]
    beach = _burn([layout.beach], shape).astype(bool)
    img[beach] = _rgb(SAND) * (1 + 0.05 * fine[beach, None])
    swell = _noise(rng, shape, sc.px(200, 8))
    img[water] = _rgb(WATER) * (1 + 0.12 * swell[water, None] + 0.03 * fine[water, None])
    return img


def _paint_roads(layout: _Layout, img: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Asphalt roads and streets, dirt tracks, concrete piers; returns the road mask."""
    shape = layout.shape_yx
    tracks = _burn([layout.tracks], shape).astype(bool)
    img[tracks] = _rgb(DIRT) * (1 + 0.06 * fine[tracks, None])
    road = _burn([layout.roads], shape).astype(bool)
    img[road] = _rgb(ASPHALT) * (1 + 0.03 * fine[road, None])
    piers = _burn(list(layout.piers), shape).astype(bool)
    img[piers] = _rgb(CONCRETE) * (1 + 0.03 * fine[piers, None])
    return road | tracks | piers


def _paint_fields(
    rng: np.random.Generator, objects: _Objects, ids: np.ndarray, img: np.ndarray, sc: _Scales
) -> None:
    """Field colour, crop rows (a sine across the row direction) and in-field variation."""
    classes = np.array([-1, *objects.classes])
    yy, xx = np.nonzero(classes[ids] == _FIELD)
    if not len(yy):
        return
    fid = ids[yy, xx]
    rows = np.array([(0.0, 1.0, 0.0), *objects.rows], dtype=np.float32)[fid]
    phase = (xx * np.cos(rows[:, 0]) + yy * np.sin(rows[:, 0])) / rows[:, 1]
    stripe = 1 + rows[:, 2] * np.sin(2 * np.pi * phase)
    vigour = _noise(rng, ids.shape, sc.px(60, 4))[yy, xx]  # moisture, growth
    colours = np.array([(0, 0, 0), *objects.colours], dtype=np.float32)[fid]
    img[yy, xx] = colours * (stripe * (1 + 0.05 * vigour))[:, None]


def _paint_wakes(objects: _Objects, img: np.ndarray, water: np.ndarray) -> None:
    if not objects.wakes:
        return
    wake = _burn([(g, round(v * 255)) for g, v in objects.wakes], water.shape).astype(np.float32)
    wake = ndimage.gaussian_filter(wake / 255, 1.0)[water][:, None] * 0.8
    img[water] = img[water] * (1 - wake) + _rgb(FOAM) * wake


def _paint_trees(
    rng: np.random.Generator,
    layout: _Layout,
    objects: _Objects,
    img: np.ndarray,
    allowed: np.ndarray,
    fine: np.ndarray,
    sc: _Scales,
) -> None:
    """Woods and single trees (where no object, road or water is), with their shadows."""
    crowns = np.concatenate([*objects.trees, _tree_crowns(rng, layout, sc)])
    tree = _discs(layout.shape_yx, crowns) | _burn(objects.woods, layout.shape_yx).astype(bool)
    offset = np.multiply(objects.sun_xy, sc.px(8, 1.0) * layout.shadow_ratio)
    shadow = _shifted(tree, round(offset[0]), round(offset[1])) & allowed & ~tree
    img[shadow] *= _rgb((0.5, 0.52, 0.6))
    tree &= allowed
    canopy = 0.3 * _noise(rng, layout.shape_yx, sc.px(3, 1.0))[tree] + 0.15 * fine[tree]
    img[tree] = _rgb(TREE) * np.maximum(1 + canopy, 0.3)[:, None]


def _shifted(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``mask`` moved by whole pixels (``dx`` columns right, ``dy`` rows down), zero-filled."""
    out = np.zeros_like(mask)
    height, width = mask.shape
    if abs(dx) >= width or abs(dy) >= height:
        return out
    src = mask[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def _tree_crowns(rng: np.random.Generator, layout: _Layout, sc: _Scales) -> np.ndarray:
    """Scattered trees and copses: ``(x, y, radius)`` rows."""
    lo, hi = sc.px(2, 0.7), sc.px(6, 1.2)
    n = int(min(30_000, 0.15 * layout.width * layout.height / (math.pi * ((lo + hi) / 2) ** 2)))
    xy = rng.uniform((0, 0), (layout.width, layout.height), size=(n, 2))
    density = _noise(rng, (layout.height // 8 + 1, layout.width // 8 + 1), sc.px(150, 16) / 8)
    near = density[(xy[:, 1] // 8).astype(int), (xy[:, 0] // 8).astype(int)]
    keep = (near > 0.6) | (rng.random(n) < 0.08)
    return np.column_stack([xy[keep], rng.uniform(lo, hi, size=int(keep.sum()))])


def _paint_objects(objects: _Objects, ids: np.ndarray, img: np.ndarray, fine: np.ndarray) -> None:
    """Roofs and hulls, then shaded roof halves, ridges and ship decks."""
    classes = np.array([-1, *objects.classes])
    mask = (ids > 0) & (classes[ids] != _FIELD)
    colours = np.array([(0, 0, 0), *objects.colours], dtype=np.float32)
    img[mask] = colours[ids[mask]] * (1 + 0.03 * fine[mask, None])
    if objects.shade:
        index, hit = _overlay_hits([(g, o) for g, o, _ in objects.shade], ids)
        factors = np.array([1.0, *(f for _, _, f in objects.shade)], dtype=np.float32)
        img[hit] = np.clip(img[hit] * factors[index[hit], None], 0, 1)
    if objects.paint:
        index, hit = _overlay_hits([(g, o) for g, o, _ in objects.paint], ids)
        paints = np.array([(0, 0, 0), *(c for _, _, c in objects.paint)], dtype=np.float32)
        img[hit] = paints[index[hit]] * (1 + 0.03 * fine[hit, None])


def _overlay_hits(overlays: list[tuple[Any, int]], ids: np.ndarray) -> tuple[np.ndarray, Any]:
    """Rasterized overlay numbers and where they fall on their own object."""
    index = _burn([(g, k + 1) for k, (g, _) in enumerate(overlays)], ids.shape, "int32")
    owners = np.array([0, *(o for _, o in overlays)], dtype=np.int32)
    return index, (index > 0) & (owners[index] == ids)


def _atmosphere(
    rng: np.random.Generator, img: np.ndarray, sc: _Scales, sun_xy: tuple[float, float]
) -> np.ndarray:
    """Clouds (in about half the scenes) with their shadows, haze, uneven illumination."""
    height, width = img.shape[:2]
    if rng.random() < 0.5:
        alpha, dark = _clouds(rng, (height, width), sc, sun_xy)
        keep = (1 - 0.5 * dark) * (1 - alpha)
        for band, cloud in enumerate(CLOUD):
            img[..., band] *= keep
            img[..., band] += cloud * alpha
    haze = rng.uniform(0.0, 0.12)
    img *= 1 - haze
    img += haze * _rgb((0.72, 0.76, 0.82))
    angle = rng.uniform(0, 2 * np.pi)
    ramp_x = (np.arange(width, dtype=np.float32) - width / 2) * np.cos(angle)
    ramp_y = (np.arange(height, dtype=np.float32) - height / 2) * np.sin(angle)
    light = 1 + 0.08 * (ramp_y[:, None] + ramp_x[None, :]) / max(height, width)
    gain = rng.uniform(0.9, 1.1, 3).astype(np.float32) * rng.uniform(0.85, 1.15)
    offset = rng.uniform(-0.01, 0.03, 3)
    for band in range(3):
        img[..., band] *= light * gain[band]
        img[..., band] += offset[band]
    return img


def _clouds(
    rng: np.random.Generator, shape_yx: tuple[int, int], sc: _Scales, sun_xy: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Cloud opacity, and the same clouds moved along the shadow direction (their shadows)."""
    height, width = shape_yx
    shift = min(sc.px(rng.uniform(200, 800)), 0.2 * max(height, width))
    dy, dx = round(abs(shift * sun_xy[1])), round(abs(shift * sun_xy[0]))
    puffs = _noise(rng, (height + dy, width + dx), min(sc.px(700), max(height, width) / 3))
    threshold = np.quantile(puffs[::4, ::4], 1 - rng.uniform(0.03, 0.25))
    alpha = np.clip((puffs - threshold) / 0.7, 0, 1) * rng.uniform(0.6, 1.0)
    y0, x0 = (dy if sun_xy[1] > 0 else 0), (dx if sun_xy[0] > 0 else 0)
    cloud = alpha[y0 : y0 + height, x0 : x0 + width]
    shadow = alpha[dy - y0 : dy - y0 + height, dx - x0 : dx - x0 + width]
    return cloud, shadow


def _quantize(rng: np.random.Generator, img: np.ndarray, dtype: str) -> np.ndarray:
    """Add sensor noise and scale 0..1 to 0..255 (uint8) or 0..4095 (uint16), bands first."""
    noise = rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(0.003, 0.01)
    top = 255 if dtype == "uint8" else UINT16_MAX
    out = np.rint(np.clip(img + noise, 0, 1) * top).astype(dtype)
    return np.ascontiguousarray(out.transpose(2, 0, 1))
