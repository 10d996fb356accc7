"""Writers for the output formats beyond GeoPackage and GeoJSON, one class layer per file.

Each writer writes one GeoDataFrame to the (temporary) path it is given; :mod:`geoseg.output`
names the files and renames them into place. Layers stay in the scene's CRS.

- ``parquet``: GeoParquet 1.1 with a ``bbox`` covering column (so readers can skip row
  groups by extent), written by GeoPandas with pyarrow.
- ``fgb``: FlatGeobuf with its spatial index, written by pyogrio (GDAL).
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pyogrio

from geoseg.errors import UserInputError

__all__ = ["FORMATS", "LAYER_FORMATS", "check_formats", "write_fgb", "write_parquet"]

FORMATS = ("gpkg", "geojson", "parquet", "fgb")
"""Every format ``--format`` accepts."""

LAYER_FORMATS = {"parquet": ".parquet", "fgb": ".fgb"}
"""Formats written one file per class, ``SCENE_<class><suffix>``, by this module."""


def check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """``formats`` lower-cased and deduplicated; a :class:`UserInputError` for an unknown one."""
    cleaned = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    unknown = [f for f in cleaned if f not in FORMATS]
    if unknown or not cleaned:
        raise UserInputError(
            f"--format {','.join(formats)}: use one or more of {', '.join(FORMATS)} "
            "(comma-separated)"
        )
    if "parquet" in cleaned:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserInputError(
                "--format parquet needs pyarrow: pip install 'geoseg[parquet]'"
            ) from None
    return cleaned


def write_parquet(tmp: Path, frame: gpd.GeoDataFrame) -> None:
    """GeoParquet 1.1 with a bbox covering column."""
    tmp.unlink(missing_ok=True)
    frame.to_parquet(tmp, index=False, write_covering_bbox=True, schema_version="1.1.0")


def write_fgb(tmp: Path, frame: gpd.GeoDataFrame, layer: str) -> None:
    """FlatGeobuf with a packed R-tree index."""
    tmp.unlink(missing_ok=True)
    pyogrio.write_dataframe(
        frame,
        tmp,
        layer=layer,
        driver="FlatGeobuf",
        geometry_type="MultiPolygon",
        layer_options={"SPATIAL_INDEX": "YES"},
    )
