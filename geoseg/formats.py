"""Writers for the output formats beyond GeoPackage and GeoJSON, one class layer per file.

Each writer writes one GeoDataFrame to the (temporary) path it is given; :mod:`geoseg.output`
names the files and renames them into place. Layers stay in the scene's CRS.

- ``parquet``: GeoParquet 1.1 with a ``bbox`` covering column (so readers can skip row
  groups by extent), written by GeoPandas with pyarrow; :class:`ParquetStream` writes the same
  file a row group per chunk of objects, as they are found (spatially coherent row groups, so
  the covering bbox lets readers skip most of them).
- ``fgb``: FlatGeobuf with its spatial index, written by pyogrio (GDAL). Its packed R-tree is
  built when the file is closed and GDAL rewrites the file on every append, so a streamed run
  converts each class layer once, at the end, from the staged GeoPackage through Arrow record
  batches (:func:`gpkg_layer_to_fgb`), never holding the layer as a GeoDataFrame.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import pyogrio

from geoseg.errors import UserInputError

__all__ = [
    "FORMATS",
    "LAYER_FORMATS",
    "ParquetStream",
    "check_formats",
    "gpkg_layer_to_fgb",
    "write_fgb",
    "write_parquet",
]

_FGB_OPTIONS = {"SPATIAL_INDEX": "YES"}

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
        layer_options=_FGB_OPTIONS,
    )


def gpkg_layer_to_fgb(gpkg: Path, layer: str, tmp: Path, *, batch_rows: int = 65536) -> None:
    """Copy GeoPackage layer ``layer`` to a FlatGeobuf at ``tmp``, Arrow batch by batch (the
    same file as :func:`write_fgb` of the layer read back)."""
    tmp.unlink(missing_ok=True)
    with pyogrio.open_arrow(gpkg, layer=layer, batch_size=batch_rows) as (meta, reader):
        pyogrio.write_arrow(
            reader,
            tmp,
            layer=layer,
            driver="FlatGeobuf",
            geometry_name=meta["geometry_name"] or "geometry",
            geometry_type="MultiPolygon",
            crs=meta["crs"],
            layer_options=_FGB_OPTIONS,
        )


class ParquetStream:
    """One GeoParquet file written a row group per :meth:`write`, as :func:`write_parquet`
    writes it whole: same columns, GeoParquet 1.1 ``geo`` metadata (its ``bbox`` and
    ``geometry_types`` cover every row group: they are set when the file is closed) and a
    ``bbox`` covering column. Frames must share their columns and CRS.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Any = None
        self._geo: dict[str, Any] = {}
        self._metadata: dict[bytes, bytes] = {}

    def write(self, frame: gpd.GeoDataFrame) -> None:
        """Append ``frame`` (not empty) as one row group."""
        import pyarrow.parquet as pq
        from geopandas.io.arrow import _geopandas_to_arrow

        table = _geopandas_to_arrow(
            frame, index=False, schema_version="1.1.0", write_covering_bbox=True
        )
        geo = json.loads(table.schema.metadata[b"geo"])
        if self._writer is None:
            self.path.unlink(missing_ok=True)
            # The schema's metadata is written at the close, with the final ``geo``; a stored
            # Arrow schema would keep the first row group's (readers prefer it).
            self._writer = pq.ParquetWriter(self.path, table.schema, store_schema=False)
            self._metadata = dict(table.schema.metadata)
            self._geo = geo
        else:
            for name, column in geo["columns"].items():
                have = self._geo["columns"][name]
                have["geometry_types"] = sorted(
                    set(have["geometry_types"]) | set(column["geometry_types"])
                )
                if "bbox" in column:
                    a, b = have.get("bbox", column["bbox"]), column["bbox"]
                    have["bbox"] = [*map(min, a[:2], b[:2]), *map(max, a[2:], b[2:])]
        schema = self._writer.schema
        if not table.schema.equals(schema, check_metadata=False):
            table = table.cast(schema)
        self._writer.write_table(table)

    def close(self, empty: gpd.GeoDataFrame) -> None:
        """Finish the file; if nothing was written, write ``empty`` (the class's columns)."""
        if self._writer is None:
            write_parquet(self.path, empty)
            return
        writer, self._writer = self._writer, None
        writer.add_key_value_metadata({**self._metadata, b"geo": json.dumps(self._geo).encode()})
        writer.close()

    def abort(self) -> None:
        """Close the file without finishing it (it is to be removed)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):  # the file is discarded anyway
                writer.close()
