"""geoseg: instance segmentation of large GeoTIFFs into georeferenced polygons.

Import order (light to heavy): ``geoseg.grid`` and ``geoseg.stitch`` need only NumPy and
shapely; ``geoseg.scene`` and ``geoseg.output`` add rasterio, pyproj and pyogrio;
``geoseg.model`` adds torch; ``geoseg.pipeline`` adds dask. ``import geoseg`` loads none of
the heavy ones: :func:`run` imports the pipeline when called.
"""

from __future__ import annotations

import logging
from typing import Any

from geoseg._version import __version__

__all__ = ["__version__", "run"]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def run(scene: Any, outdir: Any = "geoseg-out", **options: Any) -> Any:
    """Segment one scene and write its polygons; see :func:`geoseg.pipeline.run_scene`."""
    from geoseg.pipeline import run_scene

    return run_scene(scene, outdir, **options)
