"""Shape measures beyond area and perimeter: a ship's length, width and heading.

A ship's outline is boxed by its minimum rotated rectangle, found in a local equirectangular
plane around the object (true angles and distances to well under 0.1 % over a few km), and
the rectangle's sides are measured on the WGS84 ellipsoid: ``length_m`` is the long side,
``width_m`` the short one, ``heading_deg`` the geodesic azimuth of the long side, 0-180
degrees clockwise from north (a box cannot tell bow from stern).
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from pyproj import Geod
from shapely.geometry.base import BaseGeometry

__all__ = ["SHIP_CLASSES", "SHIP_COLUMNS", "ship_dimensions"]

SHIP_CLASSES = frozenset({"ship", "boat", "vessel"})
"""Class names that get the ship columns."""

SHIP_COLUMNS = ("length_m", "width_m", "heading_deg")

_GEOD = Geod(ellps="WGS84")
_R = 6_371_008.8  # mean Earth radius, for the local plane only


def ship_dimensions(lonlat: BaseGeometry) -> tuple[float, float, float]:
    """``(length_m, width_m, heading_deg)`` of a lon/lat outline (NaN when degenerate)."""
    if lonlat.is_empty:
        return math.nan, math.nan, math.nan
    centre = lonlat.centroid
    lon0, lat0 = centre.x, centre.y
    scale_x = _R * math.cos(math.radians(lat0)) * math.pi / 180
    scale_y = _R * math.pi / 180
    local = shapely.transform(
        lonlat,
        lambda xy: np.column_stack([(xy[:, 0] - lon0) * scale_x, (xy[:, 1] - lat0) * scale_y]),
    )
    box = shapely.minimum_rotated_rectangle(local)
    if box.geom_type != "Polygon":
        return math.nan, math.nan, math.nan
    corners = np.asarray(box.exterior.coords)[:4]
    lons = corners[:, 0] / scale_x + lon0
    lats = corners[:, 1] / scale_y + lat0
    az1, _, side1 = _GEOD.inv(lons[0], lats[0], lons[1], lats[1])
    az2, _, side2 = _GEOD.inv(lons[1], lats[1], lons[2], lats[2])
    if side1 >= side2:
        length, width, azimuth = side1, side2, az1
    else:
        length, width, azimuth = side2, side1, az2
    return float(length), float(width), float(azimuth) % 180.0
