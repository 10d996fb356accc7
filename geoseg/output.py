"""Write a scene's objects: a GeoPackage with one layer per class, RFC 7946 GeoJSON per class.

:class:`OutputStream` writes them as a run finds them: :meth:`~OutputStream.write` takes a
chunk of objects per class, buffers at most ``chunk_rows`` of them and appends them to every
file in a private staging folder, so a city of 400,000 objects never sits in memory whole;
:meth:`~OutputStream.commit` finishes the files and puts them in place all or none
(:class:`geoseg.commit.Staging`, the same commit as :func:`geoseg.commit.commit_outputs`). A
run that fails or is killed leaves no file that looks finished, and the previous outputs stay.
:func:`write_outputs` is the same stream fed with frames already in memory.

How each format grows:

- GeoPackage: each chunk is appended to its class layer (created at the start, so empty
  classes get an empty layer); the QGIS styles and layer descriptions are added at the end.
  Each layer records the model and its checksum (``geoseg_model``,
  ``geoseg_model_checksum``) and the run's options in its metadata (the ``gpkg_metadata``
  table).
- GeoJSON (RFC 7946, WGS84): each chunk's features are appended to an open
  ``FeatureCollection`` (GDAL rewrites a GeoJSON file whole on each append). Features are
  written as GDAL's ``RFC7946=YES`` writes them: coordinates in WGS84 to 7 decimals,
  exterior rings counter-clockwise and holes clockwise, no ``crs`` member; a chunk with a
  geometry across the antimeridian is written by GDAL itself, which splits it there.
- GeoParquet: a row group per chunk (:class:`geoseg.formats.ParquetStream`).
- FlatGeobuf: converted once at the end from the staged GeoPackage
  (:func:`geoseg.formats.gpkg_layer_to_fgb`), as its spatial index needs every feature.
- Extras (the preview, the web map) need all the objects at once: their writers are made at
  the end from the layers read back from the staged GeoPackage, and only if asked for.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS

from geoseg.commit import Staging, Writer, check_targets
from geoseg.formats import LAYER_FORMATS, ParquetStream, gpkg_layer_to_fgb
from geoseg.measures import SHIP_CLASSES, SHIP_COLUMNS
from geoseg.styles import write_gpkg_styles

__all__ = [
    "COLUMNS",
    "DEFAULT_CHUNK_ROWS",
    "Extras",
    "OutputStream",
    "empty_layer",
    "geojson_features",
    "layer_columns",
    "partial_path",
    "write_outputs",
]

COLUMNS = ["id", "class", "score", "area_m2", "perimeter_m"]

DEFAULT_CHUNK_ROWS = 4096
"""Objects an :class:`OutputStream` buffers before it appends them to the files."""

Extras = Callable[[], Sequence[tuple[str, Writer]]]
"""Called at commit: the extra files to write as ``(file name, writer)`` (the preview and the
web map, drawn while the objects were written)."""

_WGS84 = "EPSG:4326"
_GEOJSON_DECIMALS = 7  # what GDAL writes with RFC7946=YES
_GEOJSON_END = "\n]\n}\n"


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete (same folder, so rename is atomic)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def layer_columns(class_name: str) -> list[str]:
    """The attribute columns of a class layer, in order (ships have their dimensions too)."""
    return [*COLUMNS, *(SHIP_COLUMNS if class_name in SHIP_CLASSES else ())]


def empty_layer(class_name: str, crs: Any) -> gpd.GeoDataFrame:
    """A class layer without objects: its columns and dtypes (``id`` and ``class`` text, the
    measures floats), in ``crs``."""
    columns = layer_columns(class_name)
    frame = gpd.GeoDataFrame(
        {c: [] for c in columns} | {"geometry": []}, geometry="geometry", crs=crs
    )
    return frame.astype({c: "float64" for c in columns[2:]} | {c: object for c in columns[:2]})


class OutputStream:
    """The outputs of one scene, written a chunk of objects at a time, committed at the end.

    ``classes`` are the class layers, in order; ``schema`` gives each an empty frame with its
    columns and dtypes (default :func:`empty_layer`); every frame passed to :meth:`write` must
    have those columns and be in ``crs``. ``formats`` are those of ``--format``;
    ``extras`` gives the extra files at commit time (:data:`Extras`).

    The files are written in a staging folder inside ``outdir`` (held under a lock, so other
    runs' clean-up leaves it alone) and put in place by :meth:`commit`, all or none, replacing
    the previous outputs of ``stem`` and removing its stale ones. Any exception inside
    :meth:`write` or :meth:`commit`, or leaving a ``with`` block without a commit, discards
    the staging folder: the output folder stays as it was. At most ``chunk_rows`` objects are
    held between calls (more only while a single :meth:`write` hands over more)::

        with OutputStream(out, "scene", classes=["building"], crs=crs, metadata={}) as stream:
            for chunk in chunks:  # {class name: GeoDataFrame}
                stream.write(chunk)
            paths = stream.commit()
    """

    def __init__(
        self,
        outdir: str | Path,
        stem: str,
        *,
        classes: Sequence[str],
        crs: Any,
        metadata: Mapping[str, str],
        formats: Sequence[str] = ("gpkg", "geojson"),
        schema: Mapping[str, gpd.GeoDataFrame] | None = None,
        extras: Extras | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows={chunk_rows}: must be at least 1")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes {list(classes)}: each class once")
        self.outdir = Path(outdir)
        self.stem = stem
        self.classes = tuple(classes)
        self.crs = CRS.from_user_input(crs) if crs is not None else None
        self.metadata = dict(metadata)
        self.formats = tuple(formats)
        self.chunk_rows = chunk_rows
        self.counts: dict[str, int] = {name: 0 for name in self.classes}
        """Objects written so far (buffered ones included), per class."""
        self._extras = extras
        self._templates = {
            name: (schema[name] if schema is not None else empty_layer(name, self.crs)).iloc[:0]
            for name in self.classes
        }
        self._pending: dict[str, list[gpd.GeoDataFrame]] = {n: [] for n in self.classes}
        self._pending_rows = 0
        self._finals = self._plan_finals()
        check_targets(self.outdir, self._finals)
        self._staging: Staging | None = Staging.open(self.outdir, stem)
        self._parquet: dict[str, ParquetStream] = {}
        try:
            self._start()
        except BaseException:
            self.abort()
            raise

    # -- the files

    def _plan_finals(self) -> list[Path]:
        finals = []
        if "gpkg" in self.formats:
            finals.append(self.outdir / f"{self.stem}.gpkg")
        if "geojson" in self.formats:
            finals += [self._final(name, ".geojson") for name in self.classes]
        for fmt in (f for f in self.formats if f in LAYER_FORMATS):
            finals += [self._final(name, LAYER_FORMATS[fmt]) for name in self.classes]
        return finals

    def _final(self, class_name: str, suffix: str) -> Path:
        return self.outdir / f"{self.stem}_{class_name}{suffix}"

    @property
    def _gpkg(self) -> Path | None:
        """The GeoPackage being written: an output, or a work file that the FlatGeobuf files
        are made from; ``None`` if nothing needs it."""
        if "gpkg" in self.formats:
            return self._live.tmp(self.outdir / f"{self.stem}.gpkg")
        if "fgb" in self.formats:
            return self._live.path / f".{self.stem}.work.gpkg"
        return None

    @property
    def _live(self) -> Staging:
        if self._staging is None:
            raise RuntimeError(f"the output stream of {self.stem} is closed")
        return self._staging

    def _start(self) -> None:
        gpkg = self._gpkg
        if gpkg is not None:
            with self._live.writing(self.outdir / gpkg.name) as tmp:
                _write_gpkg(tmp, layers=self._templates, metadata=self.metadata)
        if "parquet" in self.formats:
            for name in self.classes:
                final = self._final(name, LAYER_FORMATS["parquet"])
                self._parquet[name] = ParquetStream(self._live.tmp(final))

    # -- writing

    @property
    def pending_rows(self) -> int:
        """Objects held in memory, not yet in the files."""
        return self._pending_rows

    def write(self, layers: Mapping[str, gpd.GeoDataFrame]) -> None:
        """Add objects: class name -> frame (any subset of the classes, in ``crs``)."""
        try:
            _ = self._live  # raises if closed
            for name, frame in layers.items():
                self._check(name, frame)
                if len(frame):
                    self._pending[name].append(frame)
                    self._pending_rows += len(frame)
                    self.counts[name] += len(frame)
            if self._pending_rows >= self.chunk_rows:
                self._flush()
        except BaseException:
            self.abort()
            raise

    def _check(self, name: str, frame: gpd.GeoDataFrame) -> None:
        if name not in self._templates:
            raise ValueError(f"class {name!r} is not one of {list(self.classes)}")
        want = list(self._templates[name].columns)
        if list(frame.columns) != want:
            raise ValueError(f"{name}: columns {list(frame.columns)}, expected {want}")
        if len(frame) and frame.crs != self.crs:
            raise ValueError(f"{name}: objects in {frame.crs}, the outputs are in {self.crs}")

    def _flush(self) -> None:
        for name, frames in self._pending.items():
            if frames:
                chunk = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
                self._append(name, chunk)
                frames.clear()
        self._pending_rows = 0

    def _append(self, name: str, chunk: gpd.GeoDataFrame) -> None:
        staging = self._live
        gpkg = self._gpkg
        if gpkg is not None:
            with staging.writing(self.outdir / gpkg.name) as tmp:
                _write_gpkg(tmp, layers={name: chunk})
        if "geojson" in self.formats:
            final = self._final(name, ".geojson")
            with staging.writing(final) as tmp:
                _write_geojson(tmp, frame=chunk, layer=final.stem)
        if name in self._parquet:
            with staging.writing(self._final(name, ".parquet")):
                self._parquet[name].write(chunk)

    # -- the end

    def commit(self) -> list[Path]:
        """Finish every file, write the extras and put it all in place (all or none); the
        final paths. The stream is closed afterwards, whatever happens."""
        try:
            staging = self._live
            self._flush()
            finals = list(self._finals)
            for name in self.classes:
                if "geojson" in self.formats:
                    final = self._final(name, ".geojson")
                    with staging.writing(final) as tmp:
                        _end_geojson(tmp, layer=final.stem)
                if name in self._parquet:
                    with staging.writing(self._final(name, ".parquet")):
                        self._parquet[name].close(self._templates[name])
            gpkg = self._gpkg
            if "gpkg" in self.formats and gpkg is not None:
                with staging.writing(self.outdir / gpkg.name) as tmp:
                    write_gpkg_styles(tmp, self.counts, self.metadata)
            if "fgb" in self.formats and gpkg is not None:
                for name in self.classes:
                    final = self._final(name, LAYER_FORMATS["fgb"])
                    staging.write(final, lambda tmp, n=name: gpkg_layer_to_fgb(gpkg, n, tmp))
            if self._extras is not None:
                for file_name, writer in self._extras():
                    final = self.outdir / file_name
                    staging.write(final, writer)
                    finals.append(final)
            self._staging = None
            return staging.commit(finals)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard everything written (idempotent); the output folder stays as it was."""
        for stream in self._parquet.values():
            stream.abort()
        self._pending = {n: [] for n in self.classes}
        self._pending_rows = 0
        staging, self._staging = self._staging, None
        if staging is not None:
            staging.close()

    def __enter__(self) -> OutputStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()  # after a commit: nothing left to do


def write_outputs(
    layers: Mapping[str, gpd.GeoDataFrame],
    outdir: str | Path,
    stem: str,
    *,
    metadata: Mapping[str, str],
    formats: tuple[str, ...] = ("gpkg", "geojson"),
    extras: Sequence[tuple[str, Writer]] = (),
) -> list[Path]:
    """Write ``layers`` (class name -> frame in the scene CRS) and return the final paths.

    Classes without objects still get an (empty) GeoPackage layer and GeoJSON file, so the set
    of outputs does not depend on what a scene contains. ``parquet`` and ``fgb`` are one file
    per class (:mod:`geoseg.formats`). ``extras`` are more files, ``(file name, writer)``: the
    writer writes the file at the temporary path it is given (the preview, the web map). The
    files are put in place all or none, and those of an earlier run of ``stem`` that this one
    does not write are removed (an :class:`OutputStream` fed at once).
    """
    crs = next((f.crs for f in layers.values() if f.crs is not None), None)
    with OutputStream(
        outdir,
        stem,
        classes=list(layers),
        crs=crs,
        metadata=metadata,
        formats=formats,
        schema=layers,
        extras=(lambda: extras) if extras else None,
        chunk_rows=max(1, sum(len(f) for f in layers.values())),
    ) as stream:
        stream.write(layers)
        return stream.commit()


def _write_gpkg(
    tmp: Path,
    *,
    layers: Mapping[str, gpd.GeoDataFrame],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """With ``metadata``: create the GeoPackage at ``tmp`` with a layer per frame of ``layers``
    (in order) and that metadata on each; without: append the frames to their layers.

    SQLite's fsync at the end of each append is skipped (it made an append of a few rows cost
    0.1 s); the commit syncs every file once before putting it in place.
    """
    with _gdal_config(OGR_SQLITE_SYNCHRONOUS="OFF"):
        _write_gpkg_layers(tmp, layers, metadata)


@contextlib.contextmanager
def _gdal_config(**options: str) -> Iterator[None]:
    """Set pyogrio's GDAL configuration options for the block, then restore them (pyogrio
    has its own GDAL, which ``rasterio.Env`` does not reach)."""
    before = {k: pyogrio.get_gdal_config_option(k) for k in options}
    pyogrio.set_gdal_config_options(options)
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options(before)


def _write_gpkg_layers(
    tmp: Path, layers: Mapping[str, gpd.GeoDataFrame], metadata: Mapping[str, str] | None
) -> None:
    for k, (class_name, frame) in enumerate(layers.items()):
        if metadata is None:  # appending a chunk to layers made with their metadata
            extra: dict = {"append": True, "use_arrow": True}
        else:  # per layer, not per dataset: GDAL mirrors dataset metadata into a .aux.xml
            # file beside the GeoPackage whenever it is opened
            extra = {"append": k > 0, "layer_metadata": {**metadata, "geoseg_class": class_name}}
        pyogrio.write_dataframe(
            frame, tmp, layer=class_name, driver="GPKG", geometry_type="MultiPolygon", **extra
        )


# -- GeoJSON -----------------------------------------------------------------------------------


def _geojson_start(layer: str) -> str:
    return f'{{\n"type": "FeatureCollection",\n"name": {json.dumps(layer)},\n"features": [\n'


def _write_geojson(tmp: Path, *, frame: gpd.GeoDataFrame, layer: str) -> None:
    """Append the features of ``frame`` (any CRS) to the GeoJSON ``FeatureCollection`` being
    written at ``tmp``, starting it if ``tmp`` is new; :func:`_end_geojson` closes it."""
    start = _geojson_start(layer).encode()
    with open(tmp, "ab") as f:
        if f.tell() == 0:
            f.write(start)
        features = geojson_features(frame, layer)
        if features:
            sep = b"" if f.tell() == len(start) else b",\n"
            f.write(sep + ",\n".join(features).encode())


def _end_geojson(tmp: Path, *, layer: str) -> None:
    with open(tmp, "ab") as f:
        if f.tell() == 0:
            f.write(_geojson_start(layer).encode())
        f.write(_GEOJSON_END.encode())


def geojson_features(frame: gpd.GeoDataFrame, layer: str = "layer") -> list[str]:
    """One GeoJSON feature per row (WGS84, 7 decimals, RFC 7946 winding), as text, as GDAL's
    GeoJSON driver writes it with RFC7946=YES (the GeoJSON outputs and the web map)."""
    if len(frame) == 0:
        return []
    wgs84 = frame.to_crs(_WGS84) if frame.crs is not None else frame
    geoms = np.asarray(wgs84.geometry.array, dtype=object)
    bounds = shapely.bounds(geoms)
    if np.any(bounds[:, 2] - bounds[:, 0] > 180):  # across the antimeridian: GDAL splits it
        return _gdal_geojson_features(wgs84, layer)
    geoms = shapely.orient_polygons(geoms, exterior_cw=False)
    geoms = shapely.transform(geoms, lambda xy: np.round(xy, _GEOJSON_DECIMALS))
    texts = shapely.to_geojson(geoms)
    props = wgs84.drop(columns=wgs84.geometry.name)
    columns = [_json_members(name, props[name]) for name in props.columns]
    rows = list(zip(*columns, strict=True)) if columns else [()] * len(texts)
    return [
        f'{{ "type": "Feature", "properties": {{ {", ".join(members)} }}, '
        f'"geometry": {text or "null"} }}'
        for members, text in zip(rows, texts, strict=True)
    ]


def _json_members(name: str, column: pd.Series) -> list[str]:
    """``"name": value`` for each value of ``column`` (a missing or NaN value is null)."""
    key = json.dumps(name, ensure_ascii=False) + ": "
    values = column.to_numpy()
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        return [
            key + (repr(v) if ok else "null") for v, ok in zip(values.tolist(), finite, strict=True)
        ]
    if values.dtype.kind in "iu":
        return [key + str(v) for v in values.tolist()]
    if values.dtype.kind == "b":
        return [key + ("true" if v else "false") for v in values.tolist()]
    missing = column.isna().to_numpy()
    return [
        key + ("null" if gone else _json(v))
        for v, gone in zip(values.tolist(), missing, strict=True)
    ]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)


def _gdal_geojson_features(wgs84: gpd.GeoDataFrame, layer: str) -> list[str]:
    buffer = io.BytesIO()
    pyogrio.write_dataframe(
        wgs84, buffer, layer=layer, driver="GeoJSON", layer_options={"RFC7946": "YES"}
    )
    lines = buffer.getvalue().decode().splitlines()
    begin = lines.index('"features": [') + 1
    end = len(lines) - 1 - lines[::-1].index("]")
    return [line.removesuffix(",") for line in lines[begin:end]]
