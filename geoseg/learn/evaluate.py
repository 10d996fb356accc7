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
- ``boundary_iou``: the mean Boundary IoU (Cheng et al., 2021, "Boundary IoU: Improving
  Object-Centric Image Segmentation Evaluation") of the pairs matched at ``iou`` above;
  ``None`` without matches. It sees outline quality that IoU hardly sees on large objects.
- ``boundary_ap``: Boundary AP, computed like ``ap`` with the IoU of each pair replaced by
  ``min(IoU, Boundary IoU)`` (the paper's definition), over the same thresholds.

Boundary IoU of a reference G and a prediction P, with a band width d in metres:
``area(G_d & P_d) / area(G_d | P_d)``, where ``X_d = X - erode(X, d)`` is the inner band of
X: the part of X within d of its outline (``X.difference(X.buffer(-d))``; the whole of X when
X is at most 2 d wide). The same d serves both polygons of a pair: by default the reference's
``d = 0.1 * sqrt(area of the reference)`` (``BOUNDARY_FRACTION``), so the band scales with the
object as the paper's 2 % of the image diagonal scales with the image: 1.2 m on a 12 m square
building (4 pixels at 0.3 m), 30 m on a 300 m square field (3 pixels at 10 m), 2.2 m on a
50 x 10 m ship; and the score does not change when a whole scene is scaled. For a square the
default band is 36 % of its area. A fixed ``boundary_width`` in metres (converted to the units
of the CRS the areas are measured in, with that projection's scale factor at the references'
centre where it is off by more than 1 %: Web Mercator's units are half a metre at 60
degrees) replaces it for every pair.

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
    "BOUNDARY_FRACTION",
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
BOUNDARY_FRACTION = 0.1  # default band width d = BOUNDARY_FRACTION * sqrt(reference area)
_METRICS = ("precision", "recall", "f1", "ap", "ap50", "ap75", "boundary_iou", "boundary_ap")
_HEADERS = dict(
    zip(
        _METRICS,
        ("precision", "recall", "F1", "AP", "AP50", "AP75", "BoundIoU", "BoundAP"),
        strict=True,
    )
)


def evaluate(
    pred: gpd.GeoDataFrame,
    ref: gpd.GeoDataFrame,
    *,
    iou: float = 0.5,
    classes: Sequence[str] | None = None,
    ref_class: str | None = None,
    boundary_width: float | None = None,
) -> dict[str, Any]:
    """Per-class AP, AP50, AP75, precision, recall, F1 at ``iou``, Boundary IoU and Boundary AP
    (see the module doc).

    The class of a polygon is its ``class`` column. A reference without one takes
    ``ref_class``; without that, the only class in ``classes`` or in the predictions
    (predictions without classes take the reference's only class). ``classes`` limits the
    evaluation to those classes (default: every class in either frame). ``boundary_width``
    fixes the Boundary IoU band width in metres (default: 0.1 * sqrt(reference area) per
    pair). Returns ``{"iou": ..., "crs": ..., "boundary_band": ..., "classes": {name:
    metrics}, "mean": metrics}`` where the mean is over the classes that have references.

    >>> import geopandas as gpd, shapely
    >>> ref = gpd.GeoDataFrame({"class": ["ship"]}, geometry=[shapely.box(0, 0, 10, 10)],
    ...                        crs="EPSG:32632")
    >>> evaluate(ref, ref)["classes"]["ship"]["f1"]
    1.0
    """
    if not 0 < iou <= 1:
        raise UserInputError(f"IoU threshold {iou}: use a number in (0, 1]")
    if boundary_width is not None and not (np.isfinite(boundary_width) and boundary_width > 0):
        raise UserInputError(f"boundary width {boundary_width}: use a positive number of metres")
    pred = _polygons_only(_checked(pred, "predictions"), "predictions")
    ref = _polygons_only(_checked(ref, "reference"), "reference")
    pred, ref = _common_crs(pred, ref)
    pred, ref = _assign_classes(pred, ref, classes=classes, ref_class=ref_class)
    names = list(classes) if classes else sorted({*pred["class"], *ref["class"]})
    units_per_metre = _crs_units_per_metre(ref)
    width = None if boundary_width is None else boundary_width * units_per_metre
    per_class = {}
    for name in names:
        p = pred[pred["class"] == name]
        r = ref[ref["class"] == name]
        per_class[name] = metrics = class_metrics(
            p.geometry.to_numpy(),
            p["score"].to_numpy(),
            r.geometry.to_numpy(),
            iou=iou,
            boundary_width=width,
        )
        median = metrics.pop("boundary_width_median")
        metrics["boundary_width_median_m"] = None if median is None else median / units_per_metre
    return {
        "iou": iou,
        "iou_thresholds_ap": IOU_THRESHOLDS.tolist(),
        "crs": ref.crs.to_string(),
        "boundary_width_m": boundary_width,
        "boundary_band": boundary_band_text(boundary_width),
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
    boundary_width: float | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` on two vector files (every layer of each; see :func:`read_polygons`)."""
    pred = read_polygons(pred_path, classes=classes)
    ref = read_polygons(ref_path, classes=classes)
    try:
        result = evaluate(
            pred, ref, iou=iou, classes=classes, ref_class=ref_class, boundary_width=boundary_width
        )
    except LabelError as error:  # say which files the predictions and the reference are
        raise LabelError(f"{pred_path} against {ref_path}: {error}") from error
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
    boundary_width: float | None = None,
) -> dict[str, Any]:
    """Metrics of one class from prediction polygons, their scores, and reference polygons.

    ``boundary_width``: the Boundary IoU band width in the geometries' units (default: the
    reference's ``BOUNDARY_FRACTION * sqrt(area)`` for each pair).
    """
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    pred_geoms, ref_geoms = np.asarray(pred_geoms)[order], np.asarray(ref_geoms)
    pairs = pairwise_iou(pred_geoms, ref_geoms)
    n_pred, n_ref = len(order), len(ref_geoms)
    thresholds = IOU_THRESHOLDS.tolist()
    match_at = {t: greedy_assign(pairs, n_pred, n_ref, t) for t in {*thresholds, iou}}
    ap_at = {t: average_precision(match_at[t] >= 0, n_ref) for t in thresholds}
    tp = int((match_at[iou] >= 0).sum())
    fp, fn = n_pred - tp, n_ref - tp
    ap = None if n_ref == 0 else float(np.mean(list(ap_at.values())))

    # Boundary IoU only where it can matter: pairs that can match at `iou` or at 0.5 (Boundary
    # AP's IoU is at most the IoU), so that touching neighbours cost no buffering.
    widths = boundary_widths(ref_geoms, boundary_width)
    near = pairs[2] >= min(iou, thresholds[0]) - 1e-9
    pi, ri, mask_iou = (a[near] for a in pairs)
    biou = pairwise_boundary_iou(pred_geoms, ref_geoms, pi, ri, widths[ri])
    matched = np.flatnonzero(match_at[iou] >= 0)
    mean_biou = _pair_values(pi, ri, biou, matched, match_at[iou][matched], n_ref)
    min_pairs = (pi, ri, np.minimum(mask_iou, biou))
    bap = [
        average_precision(greedy_assign(min_pairs, n_pred, n_ref, t) >= 0, n_ref)
        for t in thresholds
    ]
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
        "boundary_iou": float(mean_biou.mean()) if len(mean_biou) else None,
        "boundary_ap": None if n_ref == 0 else float(np.mean(bap)),
        "boundary_width_median": float(np.median(widths)) if n_ref else None,
    }


def boundary_widths(ref_geoms: np.ndarray, boundary_width: float | None = None) -> np.ndarray:
    """Band width of each reference: ``boundary_width``, else ``BOUNDARY_FRACTION * sqrt(area)``."""
    if boundary_width is not None:
        return np.full(len(ref_geoms), float(boundary_width))
    return BOUNDARY_FRACTION * np.sqrt(shapely.area(np.asarray(ref_geoms)))


def inner_band(geoms: np.ndarray, widths: np.ndarray | float) -> np.ndarray:
    """``X - erode(X, d)``: the part of each polygon within ``d`` of its outline (vectorized)."""
    return shapely.difference(geoms, shapely.buffer(geoms, -np.asarray(widths, dtype=float)))


def pairwise_boundary_iou(
    pred_geoms: np.ndarray,
    ref_geoms: np.ndarray,
    pi: np.ndarray,
    ri: np.ndarray,
    widths: np.ndarray,
) -> np.ndarray:
    """Boundary IoU of the pairs ``(pred_geoms[pi], ref_geoms[ri])``, band width ``widths``.

    Each reference is buffered once, each prediction once per distinct width it meets (once
    with a fixed width; with the default rule, once per reference it overlaps).
    """
    if len(pi) == 0:
        return np.zeros(0)
    widths = np.asarray(widths, dtype=float)
    refs, ref_at = np.unique(ri, return_inverse=True)
    ref_widths = np.zeros(len(refs))
    ref_widths[ref_at] = widths  # the same width for every pair of a reference
    ref_band = inner_band(ref_geoms[refs], ref_widths)[ref_at.reshape(-1)]
    keys, pred_at = np.unique(np.column_stack([pi, widths]), axis=0, return_inverse=True)
    pred_band = inner_band(pred_geoms[keys[:, 0].astype(int)], keys[:, 1])[pred_at.reshape(-1)]
    inter = shapely.area(shapely.intersection(pred_band, ref_band))
    union = shapely.area(pred_band) + shapely.area(ref_band) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _pair_values(
    pi: np.ndarray,
    ri: np.ndarray,
    values: np.ndarray,
    preds: np.ndarray,
    refs: np.ndarray,
    n_ref: int,
) -> np.ndarray:
    """``values`` of the pairs ``(preds[k], refs[k])``, each one of the pairs ``(pi, ri)``."""
    keys = pi.astype(np.int64) * n_ref + ri
    order = np.argsort(keys)
    found = np.searchsorted(keys[order], preds.astype(np.int64) * n_ref + refs)
    return values[order][found]


def boundary_band_text(boundary_width: float | None) -> str:
    """How the Boundary IoU band was drawn, as recorded in the results."""
    if boundary_width is not None:
        return f"inner band of width d = {boundary_width:g} m for every polygon"
    return (
        f"inner band of width d = {BOUNDARY_FRACTION:g} * sqrt(reference area), the "
        "reference's d for both polygons of a pair"
    )


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
    return greedy_assign(pairs, n_pred, n_ref, threshold) >= 0


def greedy_assign(
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray], n_pred: int, n_ref: int, threshold: float
) -> np.ndarray:
    """The reference each prediction takes in :func:`greedy_match`, -1 for none; of two
    unmatched references with the same IoU it takes the later one, as pycocotools does."""
    pi, ri, values = pairs
    match = np.full(n_pred, -1, dtype=int)
    ok = values >= threshold - 1e-9  # IoU of exactly the threshold counts
    pi, ri, values = pi[ok], ri[ok], values[ok]
    # by prediction, best reference first; of equal IoUs the last reference, as pycocotools
    # (its loop keeps the last reference that is not worse)
    order = np.lexsort((-ri, -values, pi))
    pi, ri = pi[order], ri[order]
    taken = np.zeros(n_ref, dtype=bool)
    starts = np.searchsorted(pi, np.arange(n_pred + 1))
    for p in np.unique(pi):
        for r in ri[starts[p] : starts[p + 1]]:
            if not taken[r]:
                taken[r] = True
                match[p] = r
                break
    return match


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
    lines.append(
        "BoundIoU: mean Boundary IoU of those matches; BoundAP: AP with IoU replaced by "
        "min(IoU, Boundary IoU); band: " + str(result.get("boundary_band"))
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


def _crs_units_per_metre(ref: gpd.GeoDataFrame) -> float:
    """Length units of ``ref``'s CRS per true metre near the references: the unit's size and
    the projection's scale factor there when it is off by more than 1 % (Web Mercator at 60
    degrees: 2)."""
    from geoseg.scene import SCALE_TOLERANCE, crs_unit_m, projection_scale

    crs = ref.crs
    if not crs.is_projected:
        return 1.0
    if ref.empty:
        return 1.0 / crs_unit_m(crs)
    x0, y0, x1, y1 = ref.total_bounds
    scale = projection_scale(crs, ((x0 + x1) / 2, (y0 + y1) / 2))
    # UTM (0.9996 to 1.001) and its like count as true metres, as the scene's GSDs do
    return (scale if abs(scale - 1) > SCALE_TOLERANCE else 1.0) / crs_unit_m(crs)


# -- preparing the frames -----------------------------------------------------------------


def _checked(frame: gpd.GeoDataFrame, what: str) -> gpd.GeoDataFrame:
    import geopandas as gpd

    if not isinstance(frame, gpd.GeoDataFrame):
        raise UserInputError(f"{what}: expected a GeoDataFrame, got {type(frame).__name__}")
    if frame.crs is None:
        raise LabelError(
            f"the {what} {_verb(what, 'have', 'has')} no CRS; set the CRS the polygons are in "
            "(GeoDataFrame.set_crs, or ogr2ogr -a_srs EPSG:xxxx for a file)"
        )
    score = frame["score"] if "score" in frame.columns else 1.0
    out = frame[[]].assign(score=score).set_geometry(frame.geometry.to_numpy(), crs=frame.crs)
    out["score"] = out["score"].astype(float).fillna(1.0)
    has_class = "class" in frame.columns
    out["class"] = frame["class"].to_numpy(dtype=object) if has_class else None
    out["class"] = [None if c is None or c != c else str(c) for c in out["class"]]
    return out


def _verb(what: str, plural: str, singular: str) -> str:
    """The verb that agrees with ``what`` in messages: "the predictions have", "the reference
    has"."""
    return singular if what == "reference" else plural


def _polygons_only(frame: gpd.GeoDataFrame, what: str = "polygons") -> gpd.GeoDataFrame:
    """Repair invalid geometries (saying how many, once); keep their polygonal parts; drop
    empty ones. Geometries none of which is a polygon are a :class:`LabelError`."""
    raw = frame.geometry.to_numpy()
    present = raw[~shapely.is_missing(raw) & ~shapely.is_empty(raw)]
    kinds = set(shapely.get_type_id(present).tolist())
    if len(present) and not kinds & _POLYGONAL_TYPES:
        found = ", ".join(sorted({g.geom_type for g in present}))
        raise LabelError(
            f"the {what} {_verb(what, 'hold', 'holds')} no polygons, only {found} "
            f"({len(present)}); geoseg eval scores instance outlines"
        )
    invalid = int((~shapely.is_valid(present)).sum())
    if invalid:
        log.warning(
            "%d invalid polygon(s) in the %s repaired with shapely.make_valid before scoring",
            invalid,
            what,
        )
    geoms = shapely.make_valid(raw)
    geoms = np.array([_polygonal(g) for g in geoms], dtype=object)
    keep = ~shapely.is_empty(geoms) & (shapely.area(geoms) > 0)
    if (~keep).any():
        log.info("%d empty or non-polygonal geometries ignored", int((~keep).sum()))
    out = frame[keep].copy()
    out = out.set_geometry(list(geoms[keep]), crs=frame.crs)
    return out


_POLYGONAL_TYPES = {3, 6, 7}  # Polygon, MultiPolygon, GeometryCollection (may hold some)


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
    known = {c for c in [*pred["class"], *ref["class"]] if c is not None}
    unknown = [c for c in classes or () if c not in known]
    if unknown and known:
        raise UserInputError(
            f"--classes {','.join(unknown)}: in neither file, which hold {', '.join(sorted(known))}"
        )
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
        f"the {what} {_verb(what, 'have', 'has')} no 'class' column or class layers, and the "
        f"other side has the classes {', '.join(known)}: name the class with {hint} (or "
        "--classes NAME)"
    )
