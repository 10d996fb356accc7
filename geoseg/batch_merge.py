"""One GeoPackage for a whole batch, with objects seen in several scenes kept once.

Scenes overlap (adjacent tiles of a grid, repeated acquisitions). Objects from different
scenes are linked as tile fragments are (:func:`geoseg.stitch._same_object`: IoU reaches
``merge_iou``, or the smaller lies mostly inside the larger, same class), linked groups are
found with union-find, and each group is represented by its best-scored object that does not
touch the edge of its own scene's footprint (the scene saw it whole), else by its best-scored
object. Everything is compared in one CRS: the first scene's if it is projected, else the UTM
zone of the batch. A ``scene`` column names where each object came from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import rasterio
import shapely
from pyproj import CRS

from geoseg.output import partial_path
from geoseg.stitch import _same_object, union_find_groups

__all__ = ["MERGED_NAME", "merge_outputs"]

MERGED_NAME = "merged.gpkg"


def _footprint(scene: Path, crs: CRS) -> Any:
    with rasterio.open(scene) as src:
        box = shapely.box(*src.bounds)
        src_crs = CRS.from_wkt(src.crs.to_wkt()) if src.crs else crs
    return gpd.GeoSeries([box], crs=src_crs).to_crs(crs).iloc[0]


def _read_scene(outcome: Any) -> gpd.GeoDataFrame | None:
    gpkg = next((Path(p) for p in outcome.outputs if str(p).endswith(".gpkg")), None)
    if gpkg is None or not gpkg.exists():
        return None
    frames = [pyogrio.read_dataframe(gpkg, layer=name) for name, _ in pyogrio.list_layers(gpkg)]
    frames = [f for f in frames if len(f)]
    if not frames:
        return None
    frame = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)
    frame["scene"] = Path(outcome.scene).name
    return frame


def merge_outputs(outcomes: Sequence[Any], outdir: Path, *, merge_iou: float = 0.5) -> Path:
    """Write ``outdir/merged.gpkg`` (one layer per class) from the scenes' GeoPackages."""
    frames = [f for o in outcomes if (f := _read_scene(o)) is not None]
    final = Path(outdir) / MERGED_NAME
    tmp = partial_path(final)
    tmp.unlink(missing_ok=True)
    if not frames:
        gpd.GeoDataFrame({"scene": []}, geometry=[], crs="EPSG:4326").to_file(
            tmp, layer="objects", driver="GPKG"
        )
        os.replace(tmp, final)
        return final
    crs = CRS.from_user_input(frames[0].crs)
    if not crs.is_projected:
        crs = gpd.GeoSeries(frames[0].geometry).estimate_utm_crs()
    scene_paths = {Path(o.scene).name: Path(o.scene) for o in outcomes}
    footprints = {name: _footprint(path, crs).boundary for name, path in scene_paths.items()}
    merged = gpd.GeoDataFrame(
        pd.concat([f.to_crs(crs) for f in frames], ignore_index=True), crs=crs
    )
    keep = _dedup(merged, footprints, merge_iou)
    result = merged.loc[keep].reset_index(drop=True)
    for k, (class_name, layer) in enumerate(result.groupby("class", sort=True)):
        pyogrio.write_dataframe(
            layer,
            tmp,
            layer=str(class_name),
            driver="GPKG",
            geometry_type="MultiPolygon",
            append=k > 0,
        )
    os.replace(tmp, final)
    return final


def _dedup(frame: gpd.GeoDataFrame, footprints: dict[str, Any], merge_iou: float) -> list[int]:
    geoms = np.asarray(frame.geometry.values, dtype=object)
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    scenes, classes = frame["scene"].to_numpy(), frame["class"].to_numpy()
    pairs = [
        (i, j)
        for i, j in zip(left.tolist(), right.tolist(), strict=True)
        if i < j
        and scenes[i] != scenes[j]
        and classes[i] == classes[j]
        and _same_object(geoms[i], geoms[j], merge_iou, same_label=True)
    ]
    keep = []
    scores = frame["score"].to_numpy()
    for group in union_find_groups(len(frame), pairs):
        whole = [k for k in group if not geoms[k].intersects(footprints[scenes[k]])]
        candidates = whole or group
        keep.append(max(candidates, key=lambda k: (scores[k], geoms[k].area)))
    return sorted(keep)
