"""Labels: the objects clipped to the scene, in map coordinates, and the instance-id
raster."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from affine import Affine
from pyproj import CRS
from shapely.geometry import Polygon

from geoseg.learn.synth.constants import _FIELD, CLASSES, MIN_FIELD_AREA_M2, MIN_OBJECT_PIXELS
from geoseg.learn.synth.geometry import _apply, _burn, _largest_polygon
from geoseg.learn.synth.objects import _Objects

if TYPE_CHECKING:
    import geopandas as gpd


def _labels_and_ids(
    objects: _Objects, scene: Polygon, transform: Affine, crs: CRS
) -> tuple[gpd.GeoDataFrame, np.ndarray, np.ndarray]:
    """Clip to the scene, map to the CRS and rasterize; leave out objects with too few pixels:
    fewer than ``MIN_OBJECT_PIXELS``, or for a field less than ``MIN_FIELD_AREA_M2`` of ground
    (the scraps that roads and the scene's edge cut from the farmland's parcels).

    Returns the labels, the id raster in object numbering (``objects`` index + 1, 0 where
    nothing or a left-out object is) and the lookup from object numbers to label ids.
    """
    import geopandas as gpd

    height, width = int(scene.bounds[3]), int(scene.bounds[2])
    clipped = [_largest_polygon(g.intersection(scene)) for g in objects.geoms]
    geoms = np.array([_apply(g, transform) for g in clipped], dtype=object)
    ids = _burn([(g, i + 1) for i, g in enumerate(geoms)], (height, width), "int32", transform)
    counts = np.bincount(ids.ravel(), minlength=len(geoms) + 1)
    pixel_m2 = abs(transform.a * transform.e)
    fields = np.array([c == _FIELD for c in objects.classes], dtype=bool)
    min_pixels = np.where(
        fields, max(MIN_OBJECT_PIXELS, MIN_FIELD_AREA_M2 / pixel_m2), MIN_OBJECT_PIXELS
    )
    keep = counts[1:] >= min_pixels
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
