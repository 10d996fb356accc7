"""Score predicted instance polygons against reference polygons, per class.

Metrics of each class:

- ``ap``: COCO-style mask AP, the mean over the IoU thresholds 0.50, 0.55, ..., 0.95 of the
  101-point interpolated precision (precision made non-increasing in recall, read at recall
  0.00, 0.01, ..., 1.00). Predictions are ranked by their ``score`` (1.0 where there is
  none; ties keep file order). ``ap50`` and ``ap75`` are the terms at 0.50 and 0.75.
- ``precision``, ``recall``, ``f1`` at one IoU threshold (``iou``, default 0.5), with
  one-to-one greedy matching in score order: each prediction takes the still unmatched
  reference it overlaps most, if their IoU reaches the threshold; a second prediction of the
  same object is a false positive (the SpaceNet building metric; COCO's matching too).

IoU is computed on the polygons (shapely 2; candidate pairs from an STRtree) in the
reference's CRS: predictions in another CRS are reprojected, and when that CRS is
geographic both are projected to its UTM zone, so that areas are in metres. A file or frame
without a CRS is refused. Unlike COCO, a scene is one image with no cap on detections and no
crowd regions. Values that are undefined (recall without references, AP of a class without
references) are ``None``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely

from geoseg.errors import LabelError, UserInputError, first_line

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = [
    "IOU_THRESHOLDS",
    "KNOWN_CLASSES",
    "evaluate",
    "evaluate_files",
    "format_table",
    "read_polygons",
]

log = logging.getLogger(__name__)

IOU_THRESHOLDS = np.round(np.arange(0.50, 0.951, 0.05), 2)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
KNOWN_CLASSES = ("building", "field", "ship")
_METRICS = ("precision", "recall", "f1", "ap", "ap50", "ap75")
_HEADERS = dict(zip(_METRICS, ("precision", "recall", "F1", "AP", "AP50", "AP75"), strict=True))


def evaluate(
    pred: gpd.GeoDataFrame,
    ref: gpd.GeoDataFrame,
    *,
    iou: float = 0.5,
    classes: Sequence[str] | None = None,
    ref_class: str | None = None,
) -> dict[str, Any]:
    """Per-class AP, AP50, AP75 and precision, recall, F1 at ``iou`` (see the module doc).

    The class of a polygon is its ``class`` column. A reference without one takes
    ``ref_class``; without that, the only class in ``classes`` or in the predictions
    (predictions without classes take the reference's only class). ``classes`` limits the
    evaluation to those classes (default: every class in either frame). Returns
    ``{"iou": ..., "crs": ..., "classes": {name: metrics}, "mean": metrics}`` where the mean
    is over the classes that have references.

    >>> import geopandas as gpd, shapely
    >>> ref = gpd.GeoDataFrame({"class": ["ship"]}, geometry=[shapely.box(0, 0, 10, 10)],
    ...                        crs="EPSG:32632")
    >>> evaluate(ref, ref)["classes"]["ship"]["f1"]
    1.0
    """
    if not 0 < iou <= 1:
        raise UserInputError(f"IoU threshold {iou}: use a number in (0, 1]")
    pred = _polygons_only(_checked(pred, "predictions"))
    ref = _polygons_only(_checked(ref, "reference"))
    pred, ref = _common_crs(pred, ref)
    pred, ref = _assign_classes(pred, ref, classes=classes, ref_class=ref_class)
    names = list(classes) if classes else sorted({*pred["class"], *ref["class"]})
    per_class = {}
    for name in names:
        p = pred[pred["class"] == name]
        r = ref[ref["class"] == name]
        per_class[name] = class_metrics(
            p.geometry.to_numpy(), p["score"].to_numpy(), r.geometry.to_numpy(), iou=iou
        )
    return {
        "iou": iou,
        "iou_thresholds_ap": IOU_THRESHOLDS.tolist(),
        "crs": ref.crs.to_string(),
        "classes": per_class,
        "mean": _mean(per_class),
    }


def evaluate_files(
    pred_path: str | Path,
    ref_path: str | Path,
    *,
    iou: float = 0.5,
    classes: Sequence[str] | None = None,
    ref_class: str | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` on two vector files (every layer of each; see :func:`read_polygons`)."""
    pred = read_polygons(pred_path, classes=classes)
    ref = read_polygons(ref_path, classes=classes)
    result = evaluate(pred, ref, iou=iou, classes=classes, ref_class=ref_class)
    return {"pred": str(pred_path), "ref": str(ref_path), **result}


def read_polygons(path: str | Path, *, classes: Iterable[str] | None = None) -> gpd.GeoDataFrame:
    """All polygon layers of a vector file as one frame with ``class``, ``score``, geometry.

    The class comes from a ``class`` column, else from the layer name when the file has one
    layer per class (several layers, or one named like a class: building, field, ship or one
    of ``classes``); else it is missing (``None``). Layers in other CRSs are reprojected to the
    first layer's. Raises :class:`~geoseg.errors.LabelError` when the file is missing,
    unreadable, or a layer has no CRS.
    """
    import geopandas as gpd
    import pyogrio

    path = Path(path)
    if not path.exists():
        raise LabelError(f"{path}: no such file")
    try:
        layers = [str(name) for name, kind in pyogrio.list_layers(path) if kind is not None]
    except Exception as exc:
        raise LabelError(f"{path}: not a readable vector file ({first_line(exc)})") from exc
    class_names = {*KNOWN_CLASSES, *(classes or ())}
    by_layer = len(layers) > 1 or (len(layers) == 1 and layers[0] in class_names)
    frames = [_read_layer(path, name, by_layer=by_layer) for name in layers]
    if not frames:
        raise LabelError(f"{path}: holds no layer with geometries")
    crs = frames[0].crs
    frames = [f if f.crs == crs else f.to_crs(crs) for f in frames]
    merged = gpd.GeoDataFrame(
        {
            "class": np.concatenate([f["class"].to_numpy(dtype=object) for f in frames]),
            "score": np.concatenate([f["score"].to_numpy(dtype=float) for f in frames]),
        },
        geometry=np.concatenate([f.geometry.to_numpy() for f in frames]),
        crs=crs,
    )
    return merged


def _read_layer(path: Path, layer: str, *, by_layer: bool) -> gpd.GeoDataFrame:
    import geopandas as gpd
    import pyogrio

    try:
        frame = pyogrio.read_dataframe(path, layer=layer)
    except Exception as exc:
        raise LabelError(f"{path}: layer {layer!r} unreadable ({first_line(exc)})") from exc
    if frame.crs is None:
        raise LabelError(
            f"{path}: layer {layer!r} has no CRS; set the CRS the polygons are in "
            "(e.g. ogr2ogr -a_srs EPSG:32633 fixed.gpkg input.gpkg)"
        )
    if "class" in frame.columns:
        names = [None if c is None or c != c else str(c) for c in frame["class"]]
    else:
        names = [layer if by_layer else None] * len(frame)
    scores = frame["score"].to_numpy(dtype=float) if "score" in frame.columns else 1.0
    return gpd.GeoDataFrame(
        {"class": names, "score": scores}, geometry=frame.geometry.to_numpy(), crs=frame.crs
    )


def class_metrics(
    pred_geoms: np.ndarray,
    scores: np.ndarray,
    ref_geoms: np.ndarray,
    *,
    iou: float = 0.5,
) -> dict[str, Any]:
    """Metrics of one class from prediction polygons, their scores, and reference polygons."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    pairs = pairwise_iou(np.asarray(pred_geoms)[order], np.asarray(ref_geoms))
    n_pred, n_ref = len(order), len(ref_geoms)
    tp_at = {t: greedy_match(pairs, n_pred, n_ref, t) for t in {*IOU_THRESHOLDS.tolist(), iou}}
    ap_at = {t: average_precision(tp_at[t], n_ref) for t in IOU_THRESHOLDS.tolist()}
    tp = int(tp_at[iou].sum())
    fp, fn = n_pred - tp, n_ref - tp
    ap = None if n_ref == 0 else float(np.mean(list(ap_at.values())))
    return {
        "n_pred": n_pred,
        "n_ref": n_ref,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / n_pred if n_pred else None,
        "recall": tp / n_ref if n_ref else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if n_pred + n_ref else None,
        "ap": ap,
        "ap50": ap_at[0.5],
        "ap75": ap_at[0.75],
    }


def pairwise_iou(
    pred_geoms: np.ndarray, ref_geoms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pred_index, ref_index, iou)`` of every overlapping pair, IoU > 0."""
    empty = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    if len(pred_geoms) == 0 or len(ref_geoms) == 0:
        return empty
    tree = shapely.STRtree(ref_geoms)
    pi, ri = tree.query(pred_geoms, predicate="intersects")
    if len(pi) == 0:
        return empty
    inter = shapely.area(shapely.intersection(pred_geoms[pi], ref_geoms[ri]))
    union = shapely.area(pred_geoms[pi]) + shapely.area(ref_geoms[ri]) - inter
    values = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    keep = values > 0
    return pi[keep], ri[keep], values[keep]


def greedy_match(
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray], n_pred: int, n_ref: int, threshold: float
) -> np.ndarray:
    """True positives of predictions ``0..n_pred-1`` (already in score order), each taking the
    unmatched reference of highest IoU >= ``threshold``."""
    pi, ri, values = pairs
    is_tp = np.zeros(n_pred, dtype=bool)
    ok = values >= threshold - 1e-9  # IoU of exactly the threshold counts
    pi, ri, values = pi[ok], ri[ok], values[ok]
    order = np.lexsort((-values, pi))  # by prediction, best reference first
    pi, ri = pi[order], ri[order]
    taken = np.zeros(n_ref, dtype=bool)
    starts = np.searchsorted(pi, np.arange(n_pred + 1))
    for p in np.unique(pi):
        for r in ri[starts[p] : starts[p + 1]]:
            if not taken[r]:
                taken[r] = is_tp[p] = True
                break
    return is_tp


def average_precision(is_tp: np.ndarray, n_ref: int) -> float | None:
    """COCO's 101-point interpolated AP from ranked true/false positives."""
    if n_ref == 0:
        return None
    if len(is_tp) == 0:
        return 0.0
    tp = np.cumsum(is_tp)
    recall = tp / n_ref
    precision = tp / np.arange(1, len(is_tp) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(index < len(precision), precision[np.minimum(index, len(precision) - 1)], 0)
    return float(sampled.mean())


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`evaluate`'s result."""
    head = f"{'class':<12}{'pred':>7}{'ref':>7}{'TP':>7}{'FP':>7}{'FN':>7}"
    head += "".join(f"{_HEADERS[m]:>10}" for m in _METRICS)
    lines = [head]
    for name, m in result["classes"].items():
        counts = "".join(f"{m[k]:>7d}" for k in ("n_pred", "n_ref", "tp", "fp", "fn"))
        lines.append(f"{name:<12}{counts}{_cells(m)}")
    lines.append(f"{'mean':<12}{'':>35}{_cells(result['mean'])}")
    lines.append(
        f"TP/FP/FN, precision, recall, F1 at IoU >= {result['iou']:g}; AP is COCO's "
        "(IoU 0.50:0.05:0.95, 101-point); CRS " + str(result["crs"])
    )
    return "\n".join(lines)


def _cells(metrics: Mapping[str, Any]) -> str:
    return "".join(
        f"{'-':>10}" if metrics.get(k) is None else f"{metrics[k]:>10.3f}" for k in _METRICS
    )


def _mean(per_class: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Macro averages over the classes that have references."""
    rows = [m for m in per_class.values() if m["n_ref"] > 0]
    out: dict[str, float | None] = {}
    for key in _METRICS:
        values = [m[key] for m in rows if m[key] is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


# -- preparing the frames -----------------------------------------------------------------


def _checked(frame: gpd.GeoDataFrame, what: str) -> gpd.GeoDataFrame:
    import geopandas as gpd

    if not isinstance(frame, gpd.GeoDataFrame):
        raise UserInputError(f"{what}: expected a GeoDataFrame, got {type(frame).__name__}")
    if frame.crs is None:
        raise LabelError(
            f"{what} have no CRS; set the CRS the polygons are in (GeoDataFrame.set_crs, "
            "or ogr2ogr -a_srs EPSG:xxxx for a file)"
        )
    score = frame["score"] if "score" in frame.columns else 1.0
    out = frame[[]].assign(score=score).set_geometry(frame.geometry.to_numpy(), crs=frame.crs)
    out["score"] = out["score"].astype(float).fillna(1.0)
    has_class = "class" in frame.columns
    out["class"] = frame["class"].to_numpy(dtype=object) if has_class else None
    out["class"] = [None if c is None or c != c else str(c) for c in out["class"]]
    return out


def _polygons_only(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Repair invalid geometries; keep their polygonal parts; drop empty ones."""
    geoms = shapely.make_valid(frame.geometry.to_numpy())
    geoms = np.array([_polygonal(g) for g in geoms], dtype=object)
    keep = ~shapely.is_empty(geoms) & (shapely.area(geoms) > 0)
    if (~keep).any():
        log.info("%d empty or non-polygonal geometries ignored", int((~keep).sum()))
    out = frame[keep].copy()
    out = out.set_geometry(list(geoms[keep]), crs=frame.crs)
    return out


def _polygonal(geom: Any) -> Any:
    if geom is None:
        return shapely.Polygon()
    if isinstance(geom, shapely.Polygon | shapely.MultiPolygon):
        return geom
    polygonal = shapely.Polygon | shapely.MultiPolygon
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, polygonal)]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _common_crs(
    pred: gpd.GeoDataFrame, ref: gpd.GeoDataFrame
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Predictions in the reference's CRS; both in a UTM zone if that CRS is geographic."""
    if pred.crs != ref.crs:
        log.info("reprojecting predictions from %s to %s", pred.crs, ref.crs)
        pred = pred.to_crs(ref.crs)
    if ref.crs.is_geographic and not ref.empty:
        utm = ref.estimate_utm_crs()
        log.info("reference CRS %s is geographic: measuring in %s", ref.crs, utm)
        pred, ref = pred.to_crs(utm), ref.to_crs(utm)
    return pred, ref


def _assign_classes(
    pred: gpd.GeoDataFrame,
    ref: gpd.GeoDataFrame,
    *,
    classes: Sequence[str] | None,
    ref_class: str | None,
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Fill missing classes (see :func:`evaluate`); keep only ``classes``."""
    ref_missing = ref["class"].isna()
    if ref_class is not None:
        ref.loc[ref_missing, "class"] = ref_class
    elif ref_missing.any():
        ref.loc[ref_missing, "class"] = _only_class(pred, classes, "reference")
    pred_missing = pred["class"].isna()
    if pred_missing.any():
        pred.loc[pred_missing, "class"] = _only_class(ref, classes, "predictions")
    if classes:
        pred = pred[pred["class"].isin(list(classes))]
        ref = ref[ref["class"].isin(list(classes))]
    return pred, ref


def _only_class(other: gpd.GeoDataFrame, classes: Sequence[str] | None, what: str) -> str:
    """The one class that polygons without a class can be taken to have."""
    if classes and len(classes) == 1:
        return classes[0]
    known = sorted({c for c in other["class"] if c is not None})
    if len(known) == 1:
        return known[0]
    if not known:
        return "object"
    hint = "--ref-class NAME" if what == "reference" else "a one-class reference"
    raise LabelError(
        f"the {what} have no 'class' column or class layers, and the other side has the "
        f"classes {', '.join(known)}: name the class with {hint} (or --classes NAME)"
    )
