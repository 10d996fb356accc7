"""Masks to polygons, and polygons from pixel space to the scene's CRS with true measures.

Masks are polygonized one instance at a time with ``rasterio.features.shapes(..., mask=...)``
on the instance's bounding-box crop: vertices fall on pixel corners of the scene's (working)
grid, so the outline is pixel-exact and outlines from different tiles union without slivers.
Simplification (a tolerance in pixels) happens in pixel space, after stitching; the affine
transform then takes the outline to the scene's CRS, which also handles rotated and
non-north-up grids.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS, Geod, Transformer
from rasterio import features
from rasterio.errors import NotGeoreferencedWarning
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from geoseg.fragments import MaskCrop

__all__ = [
    "GeoMeasures",
    "crop_to_polygon",
    "crops_to_polygons",
    "geodesic_measures_bulk",
    "stable_ids",
    "to_crs_polygon",
    "to_crs_polygons",
]

_GEOD = Geod(ellps="WGS84")


def crop_to_polygon(crop: MaskCrop) -> BaseGeometry:
    """The pixel-exact outline (holes kept) of a mask crop, in scene pixel coordinates."""
    # Shifted by one pixel and back, so the transform is never the identity (which rasterio
    # warns about); coordinates are whole numbers, so the shift is exact.
    transform = Affine.translation(crop.col_off + 1, crop.row_off + 1)
    mask = np.ascontiguousarray(crop.mask, dtype=np.uint8)
    parts = [
        shape(geom)
        for geom, _ in features.shapes(mask, mask=mask.astype(bool), transform=transform)
    ]
    outline = shapely.union_all(parts) if len(parts) > 1 else parts[0]
    return shapely.transform(outline, lambda xy: xy - 1.0)


def crops_to_polygons(
    crops: Sequence[MaskCrop], *, canvas_width_px: int = 2048
) -> list[BaseGeometry]:
    """:func:`crop_to_polygon` of each crop (the same outlines), with one polygonize call.

    The crops are packed into one raster of crop numbers, one pixel apart (tallest first,
    in rows ``canvas_width_px`` wide or as wide as the widest crop), traced by a single
    ``rasterio.features.shapes`` and moved back to their scene pixels.
    """
    if not crops:
        return []
    places, canvas = _pack(crops, canvas_width_px)
    parts: list[list[BaseGeometry]] = [[] for _ in crops]
    with rasterio.Env(), warnings.catch_warnings():
        # rasterio wraps the mask in a dataset of its own without a transform and says so
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        traced = features.shapes(canvas, mask=canvas > 0, transform=Affine.translation(1, 1))
        for geom, value in traced:
            parts[int(value) - 1].append(shape(geom))
    outlines = np.array([shapely.union_all(p) if len(p) > 1 else p[0] for p in parts], dtype=object)
    shift = np.array(
        [
            (c.col_off - col - 1, c.row_off - row - 1)
            for c, (row, col) in zip(crops, places, strict=True)
        ],
        dtype=np.float64,
    )
    coords, which = shapely.get_coordinates(outlines, return_index=True)
    shapely.set_coordinates(outlines, coords + shift[which])  # in place, on fresh geometries
    return list(outlines)


def _pack(crops: Sequence[MaskCrop], width_px: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Shelf-pack crop masks: each crop's ``(row, col)`` in a canvas of crop numbers (int32)."""
    width_px = max(width_px, max(c.mask.shape[1] for c in crops))
    places: list[tuple[int, int]] = [(0, 0)] * len(crops)
    row = col = shelf = 0
    for i in sorted(range(len(crops)), key=lambda i: -crops[i].mask.shape[0]):
        height, width = crops[i].mask.shape
        if col + width > width_px and col > 0:
            row, col, shelf = row + shelf + 1, 0, 0
        places[i] = (row, col)
        col, shelf = col + width + 1, max(shelf, height)
    canvas = np.zeros((row + shelf, width_px), dtype=np.int32)
    for i, (crop, (r, c)) in enumerate(zip(crops, places, strict=True)):
        height, width = crop.mask.shape
        canvas[r : r + height, c : c + width][crop.mask] = i + 1
    return places, canvas


def to_crs_polygon(
    polygon_px: BaseGeometry, transform: Affine, *, simplify_px: float
) -> BaseGeometry:
    """Simplify in pixels, map through ``transform``, and repair: a valid (Multi)Polygon."""
    if simplify_px > 0:
        polygon_px = shapely.simplify(polygon_px, simplify_px, preserve_topology=True)
    t = transform
    mapped = shapely.affinity.affine_transform(polygon_px, [t.a, t.b, t.d, t.e, t.c, t.f])
    if not mapped.is_valid:
        mapped = shapely.make_valid(mapped)
    parts = [p for p in shapely.get_parts(mapped) if p.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        return shapely.MultiPolygon()
    merged = shapely.union_all(parts) if len(parts) > 1 else parts[0]
    if merged.geom_type == "Polygon":
        merged = shapely.MultiPolygon([merged])
    return shapely.normalize(merged)


def to_crs_polygons(
    polygons_px: np.ndarray, transform: Affine, simplify_px: np.ndarray
) -> np.ndarray:
    """:func:`to_crs_polygon` of each outline, with its own ``simplify_px``, in bulk: valid
    single polygons take one shapely call per step, the rest the careful path one by one."""
    polygons_px = polygons_px.copy()
    simplified = simplify_px > 0
    for tolerance in np.unique(simplify_px[simplified]):
        these = simplify_px == tolerance
        polygons_px[these] = shapely.simplify(polygons_px[these], tolerance, preserve_topology=True)
    t = transform

    def affine(xy: np.ndarray) -> np.ndarray:  # as shapely.affinity.affine_transform computes it
        x, y = xy.T
        return np.stack([t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f]).T

    mapped = shapely.transform(polygons_px, affine)
    fast = shapely.is_valid(mapped) & (shapely.get_type_id(mapped) == 3)  # Polygon
    out = np.empty(len(polygons_px), dtype=object)
    if fast.any():
        out[fast] = shapely.normalize(shapely.multipolygons(mapped[fast][:, None]))
    for k in np.flatnonzero(~fast):
        out[k] = to_crs_polygon(polygons_px[k], t, simplify_px=0.0)
    return out


class GeoMeasures:
    """Geodesic area and perimeter (metres, on the WGS84 ellipsoid) for geometries in a CRS."""

    def __init__(self, crs: CRS) -> None:
        self._to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    def to_lonlat(self, geometry: BaseGeometry) -> BaseGeometry:
        return shapely.transform(
            geometry, lambda xy: np.column_stack(self._to_lonlat.transform(xy[:, 0], xy[:, 1]))
        )


def geodesic_measures_bulk(lonlat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(area_m2, perimeter_m)`` of each lon/lat (Multi)Polygon on the WGS84 ellipsoid, as
    pyproj's ``Geod.geometry_area_perimeter`` gives them (area without the holes, made
    positive; perimeter of the outer boundaries), its rings taken out in bulk: one call of the
    geodesic solver per ring, no geometry walked in Python."""
    parts, of_geometry = shapely.get_parts(lonlat, return_index=True)
    rings, of_part = shapely.get_rings(parts, return_index=True)
    coords, of_ring = shapely.get_coordinates(rings, return_index=True)
    starts = np.searchsorted(of_ring, np.arange(len(rings) + 1))
    area, perimeter = np.zeros(len(lonlat)), np.zeros(len(lonlat))
    owner = of_geometry[of_part].tolist()
    exterior = np.r_[True, of_part[1:] != of_part[:-1]].tolist()  # a part's first ring
    spans = zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True)
    for k, (start, stop) in enumerate(spans):
        a, p = _GEOD.polygon_area_perimeter(coords[start:stop, 0], coords[start:stop, 1])
        area[owner[k]] += a  # holes run the other way round: their area comes off
        if exterior[k]:  # as pyproj's geometry_area_perimeter: outer boundaries only
            perimeter[owner[k]] += p
    return np.abs(area), perimeter


def stable_ids(scene_stem: str, class_names: Sequence[str], polygons_px: np.ndarray) -> list[str]:
    """A 16-hex-digit id for each ``(class_names[k], polygons_px[k])`` that depends only on the
    scene, the class and the pixel outline (SHA-1 of ``stem \\0 class \\0`` and the normalized
    outline's WKB); the outlines are normalized and encoded in one call each."""
    wkbs = shapely.to_wkb(shapely.normalize(polygons_px)).tolist()
    prefix = scene_stem.encode() + b"\0"
    return [
        hashlib.sha1(prefix + name.encode() + b"\0" + wkb).hexdigest()[:16]
        for name, wkb in zip(class_names, wkbs, strict=True)
    ]
