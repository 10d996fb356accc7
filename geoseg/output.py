"""Write a scene's objects: a GeoPackage with one layer per class, RFC 7946 GeoJSON per class.

Every file is written under a temporary name in the output folder and renamed into place only
when complete, so a run that is killed leaves no file that looks finished. Each GeoPackage
layer records the model and its checksum (``geoseg_model``, ``geoseg_model_checksum``) and the
run's options in its metadata (the ``gpkg_metadata`` table).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import geopandas as gpd
import pyogrio

from geoseg.formats import LAYER_FORMATS, write_fgb, write_parquet
from geoseg.styles import write_gpkg_styles

__all__ = ["COLUMNS", "partial_path", "write_outputs"]

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
    writer writes the file at the temporary path it is given (the preview, the web map).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        if "gpkg" in formats:
            final = outdir / f"{stem}.gpkg"
            tmp = partial_path(final)
            _write_gpkg(tmp, layers, metadata)
            staged.append((tmp, final))
        if "geojson" in formats:
            for class_name, frame in layers.items():
                final = outdir / f"{stem}_{class_name}.geojson"
                tmp = partial_path(final)
                _write_geojson(tmp, frame, final.stem)
                staged.append((tmp, final))
        for fmt in (f for f in formats if f in LAYER_FORMATS):
            for class_name, frame in layers.items():
                final = outdir / f"{stem}_{class_name}{LAYER_FORMATS[fmt]}"
                tmp = partial_path(final)
                if fmt == "parquet":
                    write_parquet(tmp, frame)
                else:
                    write_fgb(tmp, frame, class_name)
                staged.append((tmp, final))
        for name, writer in extras:
            final = outdir / name
            tmp = partial_path(final)
            writer(tmp)
            staged.append((tmp, final))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for leftover in outdir.glob(f".{stem}*.partial.*"):
            leftover.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    return [final for _, final in staged]


def _write_gpkg(
    tmp: Path, layers: Mapping[str, gpd.GeoDataFrame], metadata: Mapping[str, str]
) -> None:
    tmp.unlink(missing_ok=True)
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


def _write_geojson(tmp: Path, frame: gpd.GeoDataFrame, layer: str) -> None:
    tmp.unlink(missing_ok=True)
    wgs84 = frame.to_crs("EPSG:4326") if frame.crs is not None else frame
    if len(wgs84) == 0:
        # GDAL writes no file for an empty layer in some versions: write the collection here.
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
        return
    pyogrio.write_dataframe(
        wgs84, tmp, layer=layer, driver="GeoJSON", layer_options={"RFC7946": "YES"}
    )
