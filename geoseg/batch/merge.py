"""One GeoPackage for a whole batch, with objects seen in several scenes kept once.

Scenes overlap (adjacent tiles of a grid, repeated acquisitions). Objects from different
scenes are linked as tile fragments are (:func:`geoseg.stitch.same_object`: IoU reaches
``merge_iou``, or the smaller lies mostly inside the larger, same class), linked groups are
found with union-find, and each group is represented by its best-scored object that does not
touch the edge of its own scene's footprint (the scene saw it whole), else by its best-scored
object. Everything is compared in one CRS: the first scene's if it is projected, else the UTM
zone of the batch. A ``scene`` column names where each object came from (the file name, or
the whole path where names repeat).
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
from geoseg.stitch import same_object, union_find_groups

__all__ = ["MERGED_NAME", "merge_outputs"]

MERGED_NAME = "merged.gpkg"
_INDEX = "_scene_index"  # which scene an object came from, while merging


def _footprint(scene: Path, crs: CRS) -> Any:
    """The scene's bounds in ``crs``, densified so that reprojection bends its edges."""
    with rasterio.open(scene) as src:
        box = shapely.box(*src.bounds)
        src_crs = CRS.from_wkt(src.crs.to_wkt()) if src.crs else crs
    dense = shapely.segmentize(box, max(box.length / 400, 1e-9))
    return gpd.GeoSeries([dense], crs=src_crs).to_crs(crs).iloc[0]


def _labels(outcomes: Sequence[Any]) -> list[str]:
    """The ``scene`` attribute: the file name, or the whole path where names repeat."""
    names = [Path(o.scene).name for o in outcomes]
    return [
        n if names.count(n) == 1 else str(o.scene) for n, o in zip(names, outcomes, strict=True)
    ]


def _read_scene(outcome: Any, label: str, index: int) -> gpd.GeoDataFrame | None:
    gpkg = next((Path(p) for p in outcome.outputs if str(p).endswith(".gpkg")), None)
    if gpkg is None or not gpkg.exists():
        return None
    layers = [name for name, kind in pyogrio.list_layers(gpkg) if kind is not None]
    frames = [pyogrio.read_dataframe(gpkg, layer=name) for name in layers]
    frames = [f for f in frames if len(f)]
    if not frames:
        return None
    frame = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)
    frame["scene"] = label
    frame[_INDEX] = index
    return frame


def merge_outputs(outcomes: Sequence[Any], outdir: Path, *, merge_iou: float = 0.5) -> Path:
    """Write ``outdir/merged.gpkg`` (one layer per class) from the scenes' GeoPackages."""
    labels = _labels(outcomes)
    frames = [f for k, o in enumerate(outcomes) if (f := _read_scene(o, labels[k], k)) is not None]
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
    present = {int(f[_INDEX].iloc[0]) for f in frames}
    footprints = {k: _footprint(Path(outcomes[k].scene), crs).boundary for k in present}
    merged = gpd.GeoDataFrame(
        pd.concat([f.to_crs(crs) for f in frames], ignore_index=True), crs=crs
    )
    keep = _dedup(merged, footprints, merge_iou)
    result = merged.loc[keep].drop(columns=_INDEX).reset_index(drop=True)
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


def _dedup(frame: gpd.GeoDataFrame, footprints: dict[int, Any], merge_iou: float) -> list[int]:
    geoms = np.asarray(frame.geometry.values, dtype=object)
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    scenes, classes = frame[_INDEX].to_numpy(), frame["class"].to_numpy()
    pairs = [
        (i, j)
        for i, j in zip(left.tolist(), right.tolist(), strict=True)
        if i < j
        and scenes[i] != scenes[j]
        and classes[i] == classes[j]
        and same_object(geoms[i], geoms[j], merge_iou, same_label=True)
    ]
    keep = []
    scores = frame["score"].to_numpy()
    for group in union_find_groups(len(frame), pairs):
        whole = [k for k in group if not geoms[k].intersects(footprints[scenes[k]])]
        candidates = whole or group
        keep.append(max(candidates, key=lambda k: (scores[k], geoms[k].area)))
    return sorted(keep)
