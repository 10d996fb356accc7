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

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Geod, Transformer
from rasterio import features
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from geoseg.fragments import MaskCrop

__all__ = ["GeoMeasures", "crop_to_polygon", "geodesic_measures", "stable_id", "to_crs_polygon"]

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


class GeoMeasures:
    """Geodesic area and perimeter (metres, on the WGS84 ellipsoid) for geometries in a CRS."""

    def __init__(self, crs: CRS) -> None:
        self._to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    def to_lonlat(self, geometry: BaseGeometry) -> BaseGeometry:
        return shapely.transform(
            geometry, lambda xy: np.column_stack(self._to_lonlat.transform(xy[:, 0], xy[:, 1]))
        )

    def area_perimeter(self, geometry: BaseGeometry) -> tuple[float, float]:
        return geodesic_measures(self.to_lonlat(geometry))


def geodesic_measures(lonlat: BaseGeometry) -> tuple[float, float]:
    """``(area_m2, perimeter_m)`` of a lon/lat geometry on the WGS84 ellipsoid."""
    area, perimeter = _GEOD.geometry_area_perimeter(lonlat)
    return abs(float(area)), float(perimeter)


def stable_id(scene_stem: str, class_name: str, polygon_px: BaseGeometry) -> str:
    """A 16-hex-digit id that depends only on the scene, the class and the pixel outline."""
    digest = hashlib.sha1(scene_stem.encode() + b"\0" + class_name.encode() + b"\0")
    digest.update(shapely.to_wkb(shapely.normalize(polygon_px)))
    return digest.hexdigest()[:16]
