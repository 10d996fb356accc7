"""Write a scene's objects: a GeoPackage with one layer per class, RFC 7946 GeoJSON per class.

:func:`output_writers` says which files a scene gets and how each is written;
:func:`geoseg.commit.commit_outputs` writes them under temporary names and puts them in place
all or none, so a run that fails or is killed leaves no file that looks finished. A new format
is one more entry in :func:`output_writers`. Each GeoPackage
layer records the model and its checksum (``geoseg_model``, ``geoseg_model_checksum``) and the
run's options in its metadata (the ``gpkg_metadata`` table).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import geopandas as gpd
import pyogrio

from geoseg.commit import Writer, commit_outputs
from geoseg.formats import LAYER_FORMATS, write_fgb, write_parquet
from geoseg.styles import write_gpkg_styles

__all__ = ["COLUMNS", "output_writers", "partial_path", "write_outputs"]

COLUMNS = ["id", "class", "score", "area_m2", "perimeter_m"]


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete (same folder, so rename is atomic)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def write_outputs(
    layers: Mapping[str, gpd.GeoDataFrame],
    outdir: str | Path,
    stem: str,
    *,
    metadata: Mapping[str, str],
    formats: tuple[str, ...] = ("gpkg", "geojson"),
    extras: Sequence[tuple[str, Callable[[Path], None]]] = (),
) -> list[Path]:
    """Write ``layers`` (class name -> frame in the scene CRS) and return the final paths.

    Classes without objects still get an (empty) GeoPackage layer and GeoJSON file, so the set
    of outputs does not depend on what a scene contains. ``parquet`` and ``fgb`` are one file
    per class (:mod:`geoseg.formats`). ``extras`` are more files, ``(file name, writer)``: the
    writer writes the file at the temporary path it is given (the preview, the web map). The
    files are put in place all or none, and those of an earlier run of ``stem`` that this one
    does not write are removed (see :func:`geoseg.commit.commit_outputs`).
    """
    return commit_outputs(
        output_writers(layers, outdir, stem, metadata=metadata, formats=formats, extras=extras),
        stem=stem,
        outdir=outdir,
    )


def output_writers(
    layers: Mapping[str, gpd.GeoDataFrame],
    outdir: str | Path,
    stem: str,
    *,
    metadata: Mapping[str, str],
    formats: tuple[str, ...] = ("gpkg", "geojson"),
    extras: Sequence[tuple[str, Callable[[Path], None]]] = (),
) -> dict[Path, Writer]:
    """``{final path: writer}`` of every output of a scene, for :func:`commit_outputs`."""
    outdir = Path(outdir)
    writers: dict[Path, Writer] = {}
    if "gpkg" in formats:
        writers[outdir / f"{stem}.gpkg"] = partial(_write_gpkg, layers=layers, metadata=metadata)
    if "geojson" in formats:
        for class_name, frame in layers.items():
            final = outdir / f"{stem}_{class_name}.geojson"
            writers[final] = partial(_write_geojson, frame=frame, layer=final.stem)
    for fmt in (f for f in formats if f in LAYER_FORMATS):
        for class_name, frame in layers.items():
            final = outdir / f"{stem}_{class_name}{LAYER_FORMATS[fmt]}"
            if fmt == "parquet":
                writers[final] = partial(write_parquet, frame=frame)
            else:
                writers[final] = partial(write_fgb, frame=frame, layer=class_name)
    for name, writer in extras:
        writers[outdir / name] = writer
    return writers


def _write_gpkg(
    tmp: Path, *, layers: Mapping[str, gpd.GeoDataFrame], metadata: Mapping[str, str]
) -> None:
    for k, (class_name, frame) in enumerate(layers.items()):
        pyogrio.write_dataframe(
            frame,
            tmp,
            layer=class_name,
            driver="GPKG",
            geometry_type="MultiPolygon",
            append=k > 0,
            # per layer, not per dataset: GDAL mirrors dataset metadata into a .aux.xml file
            # beside the GeoPackage whenever it is opened
            layer_metadata={**metadata, "geoseg_class": class_name},
        )
    write_gpkg_styles(tmp, {name: len(frame) for name, frame in layers.items()}, metadata)


def _write_geojson(tmp: Path, *, frame: gpd.GeoDataFrame, layer: str) -> None:
    wgs84 = frame.to_crs("EPSG:4326") if frame.crs is not None else frame
    if len(wgs84) == 0:
        # GDAL writes no file for an empty layer in some versions: write the collection here.
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
        return
    pyogrio.write_dataframe(
        wgs84, tmp, layer=layer, driver="GeoJSON", layer_options={"RFC7946": "YES"}
    )
