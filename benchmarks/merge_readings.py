"""Score one class found in two readings of a scene, each alone and merged (an offline test of
reading a class at two GSDs, which ``geoseg run`` does not do yet: model card, "Reading
Sentinel-2 finer").

Make the two readings with the default weights and a copy whose building range starts at
0.6 m, then merge and score::

    cp geoseg/model/weights/default.pt /tmp/b06.pt
    python tools/set_class_gsd.py /tmp/b06.pt building=0.6:10
    geoseg run nairobi_2_z19.tif -o /tmp/fine
    geoseg run nairobi_2_z19.tif --model /tmp/b06.pt -o /tmp/coarse
    python benchmarks/merge_readings.py /tmp/fine/nairobi_2_z19.gpkg \\
        /tmp/coarse/nairobi_2_z19.gpkg ../shared/data/buildings-oam/nairobi_2_z19.gpkg

Two merge rules: ``score`` (every outline of both, highest score first, dropping one that
overlaps a kept one) and ``fine`` (every outline of the first reading, plus those of the
second that overlap none of them: what a writer streaming the finer reading first can do).
Two outlines overlap at IoU >= 0.3 or when they share more than half the smaller one's area.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import geopandas as gpd
import pandas as pd
import shapely

from geoseg.learn.evaluate import evaluate

OVERLAP_IOU = 0.3
OVERLAP_SHARE = 0.5


def overlaps(a: shapely.Geometry, b: shapely.Geometry) -> bool:
    """Whether two outlines are one object seen twice (see the module doc)."""
    shared = a.intersection(b).area
    return shared >= OVERLAP_IOU * a.union(b).area or shared > OVERLAP_SHARE * min(a.area, b.area)


def merge(fine: gpd.GeoDataFrame, coarse: gpd.GeoDataFrame, rule: str) -> gpd.GeoDataFrame:
    """The outlines of both readings, one per object (``rule``: ``score`` or ``fine``)."""
    coarse = coarse.to_crs(fine.crs)
    if rule == "fine":
        kept = list(fine.geometry)
        tree = shapely.STRtree(kept)
        extra = [g for g in coarse.geometry if not any(overlaps(g, kept[i]) for i in tree.query(g))]
        return gpd.GeoDataFrame(geometry=kept + extra, crs=fine.crs)
    both = pd.concat([fine, coarse], ignore_index=True).sort_values("score", ascending=False)
    kept: list[shapely.Geometry] = []
    for g in both.geometry:
        if not any(overlaps(g, k) for k in kept):
            kept.append(g)
    return gpd.GeoDataFrame(geometry=kept, crs=fine.crs)


def f1(pred: gpd.GeoDataFrame, ref: gpd.GeoDataFrame, cls: str) -> str:
    m = evaluate(pred.assign(**{"class": cls}), ref, classes=[cls])["classes"][cls]
    return f"F1 {m['f1']:.3f} ({m['tp']} of {m['n_ref']} found, {m['fp']} false)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fine", type=Path, help="the geoseg run GeoPackage of the finer reading")
    parser.add_argument("coarse", type=Path, help="the same scene's output at the coarser reading")
    parser.add_argument("reference", type=Path)
    parser.add_argument("--class", dest="cls", default="building")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    fine = gpd.read_file(args.fine, layer=args.cls)
    coarse = gpd.read_file(args.coarse, layer=args.cls)
    ref = gpd.read_file(args.reference).assign(**{"class": args.cls})
    print(f"finer reading:    {f1(fine, ref, args.cls)}")
    print(f"coarser reading:  {f1(coarse.to_crs(fine.crs), ref, args.cls)}")
    for rule in ("score", "fine"):
        print(f"merged ({rule:5s}):  {f1(merge(fine, coarse, rule), ref, args.cls)}")


if __name__ == "__main__":
    main()
