"""Training chips: square windows of a labelled GeoTIFF with one mask per labelled object.

A *chip* is a ``chip_px`` x ``chip_px`` window of a scene's working grid, read exactly as
``geoseg run`` reads its tiles (:func:`geoseg.scene.open_scene` and
:func:`geoseg.scene.read_tiles`: the same band choice, the same normalization — uint8 as
value / 255, other types a per-scene 2-98 percentile stretch, :func:`geoseg.scene.normalize`
— and the same resampling when a GSD is asked for), so a model is trained on the pixels it
will be shown. Its labels are the polygons of the label files, reprojected to the scene's
CRS and burnt into an *instance-id raster* (0 background, ``k`` the k-th polygon; where
polygons overlap the later one wins).

Validation by location: the eastern ``val_fraction`` of every scene (a strip of columns)
gives the validation chips and the rest the training chips; no chip crosses the boundary, so
no validation pixel is ever trained on. Training chips overlap by half a chip, validation
chips do not overlap.

Label files: any vector format GeoPandas reads, with a CRS. The class of each polygon comes
from a ``class`` column, or from ``label_class`` for files without one. One label file may
cover many scenes, and a scene may take polygons from several files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from affine import Affine
from rasterio import features
from scipy import ndimage

from geoseg.errors import LabelError, first_line
from geoseg.grid import PixelWindow
from geoseg.scene import SceneInfo, normalize, open_scene, read_tiles

__all__ = [
    "Chip",
    "augment",
    "chip_windows",
    "cut_chips",
    "normalize",
    "paste_objects",
    "rasterize_instances",
    "read_labels",
    "targets_from_ids",
    "validation_column",
]

log = logging.getLogger(__name__)

MIN_INSTANCE_PX = 4
"""Objects smaller than this many pixels in a chip are not trained on (too few to learn from)."""


@dataclass(eq=False, slots=True)
class Chip:
    """One training or validation chip.

    ``pixels``: uint8 ``(3, H, W)``, the normalized 0..1 values quantized to 1/255 (a single
    band is repeated to three). ``valid``: bool ``(H, W)``, false on nodata and padding.
    ``ids``: int32 ``(H, W)`` instance ids, 0 for background. ``classes``: int64, the class
    index of instance ``k`` at position ``k - 1``. ``split``: ``"train"`` or ``"val"``.
    """

    pixels: np.ndarray
    valid: np.ndarray
    ids: np.ndarray
    classes: np.ndarray
    source: str
    window: PixelWindow
    gsd_m: float
    split: str

    @property
    def n_instances(self) -> int:
        return len(np.unique(self.ids[self.ids > 0]))


def read_labels(
    path: str | Path, *, classes: Sequence[str], label_class: str | None = None
) -> gpd.GeoDataFrame:
    """Polygons of a label file with a ``class`` column holding names from ``classes``.

    Every layer of the file is read (a GeoPackage of one layer per class, as ``geoseg run``
    and ``geoseg select`` write, is one label file). The class of a polygon comes from the
    ``class`` column; where that is empty or missing, from its layer's name when the layer
    is named after a class (a polygon drawn in QGIS in the ``building`` or
    ``building_32633`` layer is a building), else ``label_class``.
    Polygons of other classes are dropped (with a log message); invalid geometries are
    repaired, non-polygons dropped. Raises :class:`~geoseg.errors.LabelError` when the file
    cannot be read, has no CRS, has no class, or holds no polygon of ``classes``.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"{path}: no such label file")
    if label_class is not None and label_class not in classes:
        raise LabelError(
            f"--label-class {label_class!r} is not one of the classes {', '.join(classes)}"
        )
    try:
        layers = [str(n) for n, kind in pyogrio.list_layers(path) if kind is not None]
        frames = [(name, gpd.read_file(path, layer=name)) for name in layers]
    except Exception as exc:
        raise LabelError(
            f"{path}: not a readable vector file ({first_line(exc, max_chars=200)})"
        ) from exc
    if not frames:
        raise LabelError(f"{path}: holds no layer with geometries")
    crs = frames[0][1].crs
    if any(gdf.crs is None for _, gdf in frames):
        raise LabelError(
            f"{path}: labels have no CRS; set the CRS they are in "
            "(e.g. ogr2ogr -a_srs EPSG:32633 fixed.gpkg labels.geojson)"
        )
    named = [_layer_classes(path, layer, gdf, classes, label_class) for layer, gdf in frames]
    names = np.concatenate([n for n in named]) if named else np.array([], dtype=object)
    geoms = np.concatenate([gdf.to_crs(crs).geometry.to_numpy() for _, gdf in frames])
    keep = np.isin(names, list(classes))
    if not keep.all():
        others = sorted(set(names[~keep].astype(str)))
        log.warning("%s: %d polygon(s) of class %s skipped", path, (~keep).sum(), others)
    geoms = shapely.make_valid(geoms[keep])
    geoms = np.array([_polygonal(g) for g in geoms], dtype=object)
    out = gpd.GeoDataFrame({"class": names[keep]}, geometry=list(geoms), crs=crs)
    out = out[~out.geometry.is_empty & out.geometry.notna()].reset_index(drop=True)
    if out.empty:
        raise LabelError(f"{path}: holds no polygon of the classes {', '.join(classes)}")
    return out


def _layer_classes(
    path: Path,
    layer: str,
    gdf: gpd.GeoDataFrame,
    classes: Sequence[str],
    label_class: str | None,
) -> np.ndarray:
    """The class name of each polygon of one layer (see :func:`read_labels`)."""
    stem = layer.rsplit("_", 1)[0]  # geoseg select names layers <class>_<EPSG> across CRSs
    fallback = layer if layer in classes else stem if stem in classes else label_class
    if "class" in gdf.columns:
        given = gdf["class"].to_numpy(dtype=object)
        missing = np.array([c is None or c != c or str(c) == "" for c in given], dtype=bool)
        if missing.any() and fallback is None:
            raise LabelError(
                f"{path}: {missing.sum()} polygon(s) of layer {layer!r} have no class; fill "
                "in their 'class' or name it with --label-class"
            )
        return np.array(
            [fallback if m else str(c) for c, m in zip(given, missing, strict=True)], dtype=object
        )
    if fallback is None:
        raise LabelError(
            f"{path}: has no 'class' column; name the class of its polygons with --label-class"
        )
    return np.full(len(gdf), fallback, dtype=object)


def _polygonal(geom: shapely.Geometry | None) -> shapely.Geometry:
    if geom is None or geom.is_empty:
        return shapely.Polygon()
    if isinstance(geom, shapely.Polygon | shapely.MultiPolygon):
        return geom
    if isinstance(geom, shapely.GeometryCollection):
        parts = [p for p in geom.geoms if isinstance(p, shapely.Polygon | shapely.MultiPolygon)]
        return shapely.union_all(parts) if parts else shapely.Polygon()
    return shapely.Polygon()


def validation_column(width: int, val_fraction: float) -> int:
    """The first column of the eastern strip that ``val_fraction`` keeps out of training."""
    return width - round(width * val_fraction) if val_fraction > 0 else width


def chip_windows(
    shape_yx: tuple[int, int], *, chip_px: int, val_fraction: float
) -> Iterator[tuple[str, PixelWindow]]:
    """``(split, window)`` for the chips of a scene (see the module docstring).

    Training windows step by ``chip_px // 2`` over the columns west of the split, validation
    windows by ``chip_px`` over the eastern strip; the last window of a row or column is
    shifted back to end on the edge. Windows are clipped to their region (narrow regions give
    narrow windows, which :func:`geoseg.scene.read_tiles` pads).
    """
    height, width = shape_yx
    split_col = validation_column(width, val_fraction)
    regions = [("train", 0, split_col, max(1, chip_px // 2)), ("val", split_col, width, chip_px)]
    for split, col0, col1, step in regions:
        if col1 <= col0:
            continue
        for row in _offsets(0, height, chip_px, step):
            for col in _offsets(col0, col1, chip_px, step):
                win = PixelWindow(row, col, min(chip_px, height - row), min(chip_px, col1 - col))
                yield split, win


def _offsets(start: int, stop: int, size: int, step: int) -> list[int]:
    if stop - start <= size:
        return [start]
    n = math.ceil((stop - start - size) / step) + 1
    return sorted({min(start + i * step, stop - size) for i in range(n)})


def rasterize_instances(
    geoms: Sequence[shapely.Geometry], shape_yx: tuple[int, int], transform: Affine
) -> np.ndarray:
    """int32 instance ids ``(H, W)``: pixel centres inside ``geoms[k]`` get ``k + 1``."""
    if not len(geoms):
        return np.zeros(shape_yx, dtype=np.int32)
    shapes = ((g, k + 1) for k, g in enumerate(geoms))
    return features.rasterize(
        shapes, out_shape=shape_yx, transform=transform, fill=0, dtype="int32"
    )


def cut_chips(
    image: str | Path,
    labels: Sequence[gpd.GeoDataFrame],
    *,
    classes: Sequence[str],
    chip_px: int = 256,
    val_fraction: float = 0.2,
    gsd_m: float | None = None,
    skip_unlabelled: bool = False,
) -> list[Chip]:
    """Chips of one scene (at its own GSD, or resampled to ``gsd_m``) with their instances.

    ``labels`` are GeoDataFrames from :func:`read_labels`, in any CRS: each is reprojected to
    the scene's CRS and only polygons over the scene are kept; polygons elsewhere are
    ignored. A scene with no polygon over it gives background chips, or none when
    ``skip_unlabelled`` (its absence of labels then means "not labelled", not "empty").
    """
    scene = open_scene(image, gsd_m=gsd_m)
    polys = _scene_labels(scene, labels, classes, quiet=skip_unlabelled)
    if polys.empty and skip_unlabelled:
        log.info("%s: no label polygon lies over it; skipped as unlabelled", scene.path)
        return []
    windows = list(chip_windows(scene.shape_yx, chip_px=chip_px, val_fraction=val_fraction))
    chips: list[Chip] = []
    tree = shapely.STRtree(polys.geometry.to_numpy())
    class_index = {name: i for i, name in enumerate(classes)}
    for start in range(0, len(windows), 16):
        batch = windows[start : start + 16]
        pixels, valid = read_tiles(scene, [w for _, w in batch], chip_px)
        for (split, win), px, ok in zip(batch, pixels, valid, strict=True):
            if not ok.any():
                continue
            transform = scene.transform @ Affine.translation(win.col_off, win.row_off)
            x0, y0 = transform @ (0, 0)
            x1, y1 = transform @ (chip_px, chip_px)
            hits = np.sort(tree.query(shapely.box(x0, y0, x1, y1)))
            ids = rasterize_instances(
                list(polys.geometry.to_numpy()[hits]), (chip_px, chip_px), transform
            )
            ids[~ok] = 0
            cls = np.array([class_index[c] for c in polys["class"].to_numpy()[hits]], np.int64)
            chips.append(
                Chip(
                    pixels=_to_uint8(px),
                    valid=ok,
                    ids=ids,
                    classes=cls,
                    source=str(image),
                    window=win,
                    gsd_m=scene.gsd_m,
                    split=split,
                )
            )
    return chips


def _scene_labels(
    scene: SceneInfo,
    labels: Sequence[gpd.GeoDataFrame],
    classes: Sequence[str],
    *,
    quiet: bool = False,
) -> gpd.GeoDataFrame:
    height, width = scene.shape_yx
    corners = [
        scene.transform @ (c, r) for c, r in [(0, 0), (width, 0), (0, height), (width, height)]
    ]
    footprint = shapely.box(*np.min(corners, axis=0), *np.max(corners, axis=0))
    parts = []
    for gdf in labels:
        local = gdf.to_crs(scene.crs)
        parts.append(local[local.intersects(footprint)])
    if parts:
        merged = gpd.GeoDataFrame(
            {"class": np.concatenate([p["class"].to_numpy() for p in parts])},
            geometry=np.concatenate([p.geometry.to_numpy() for p in parts]),
            crs=scene.crs,
        )
    else:
        merged = gpd.GeoDataFrame({"class": []}, geometry=[], crs=scene.crs)
    if merged.empty and not quiet:
        log.warning("%s: no label polygon lies over it; all its chips are background", scene.path)
    else:
        counts = merged["class"].value_counts().to_dict()
        log.info("%s: %s labelled polygon(s) at %.3g m", scene.path, counts, scene.gsd_m)
    return merged[merged["class"].isin(list(classes))].reset_index(drop=True)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    return np.rint(np.clip(pixels[:3], 0.0, 1.0) * 255).astype(np.uint8)


ZOOM_RANGE = (0.8, 1.25)
"""Training zooms each chip by a factor drawn log-uniformly from this range (half the chips):
objects of one labelled GSD are seen at the sizes of nearby GSDs."""


def augment(chip: Chip, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A randomly flipped, turned, zoomed and radiometrically jittered copy of a chip.

    Returns float32 pixels ``(3, H, W)`` in 0..1 (0 where invalid) and the matching instance
    ids. Geometry: a turn, a flip, and for half the chips a zoom in :data:`ZOOM_RANGE` (cropped
    or padded with invalid pixels back to the chip's size). Colour: sometimes grey (as a
    panchromatic band repeated to three would be), else sometimes the bands in another order and
    a saturation change, so that no roof or field colour is a shortcut; then per-band gain and
    offset, a gamma, sometimes a blur (a softer sensor) and sensor noise.
    """
    pixels = chip.pixels.astype(np.float32) / 255.0
    ids, valid = chip.ids, chip.valid
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    pixels, ids, valid = (_turn(a, k, flip) for a in (pixels, ids, valid))
    if rng.random() < 0.5:
        factor = math.exp(rng.uniform(math.log(ZOOM_RANGE[0]), math.log(ZOOM_RANGE[1])))
        pixels, ids, valid = _zoom(pixels, ids, valid, factor, rng)
    if rng.random() < 0.2:
        pixels = np.repeat(pixels.mean(axis=0, keepdims=True), 3, axis=0)
    else:
        if rng.random() < 0.25:
            pixels = pixels[rng.permutation(3)]
        grey = pixels.mean(axis=0, keepdims=True)
        pixels = grey + rng.uniform(0.6, 1.4) * (pixels - grey)
    gain = rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, size=(3, 1, 1))
    offset = rng.uniform(-0.08, 0.08) + rng.uniform(-0.03, 0.03, size=(3, 1, 1))
    gamma = math.exp(rng.uniform(-0.35, 0.35))
    pixels = np.clip(pixels * gain + offset, 0.0, 1.0) ** gamma
    if rng.random() < 0.2:
        pixels = ndimage.gaussian_filter(pixels, sigma=(0.0, *(2 * [rng.uniform(0.5, 1.2)])))
    if rng.random() < 0.5:
        pixels = pixels + rng.normal(0.0, rng.uniform(0.0, 0.03), size=pixels.shape)
    pixels = np.clip(pixels, 0.0, 1.0).astype(np.float32)
    pixels[:, ~valid] = 0.0
    return np.ascontiguousarray(pixels), np.ascontiguousarray(ids)


PASTE_GSD_RATIO = 1.5
"""Copy-paste takes its objects from chips read at a GSD within this factor of the chip's."""
PASTE_MAX_SHARE = 0.25
"""Copy-paste moves objects of at most this share of a chip (buildings, ships, small fields;
not the fields that fill a chip, which would cover everything under them)."""


def paste_objects(
    pixels: np.ndarray,
    ids: np.ndarray,
    classes: np.ndarray,
    donor: tuple[np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Some objects of another chip pasted where they lie in it (Ghiasi et al.'s simple
    copy-paste, 2021): ``donor`` is ``(pixels, ids, classes)`` of an augmented chip of the same
    size. Each of its objects of :data:`MIN_INSTANCE_PX` to :data:`PASTE_MAX_SHARE` of the
    chip is taken with probability one half (at least one where any); their pixels replace the
    chip's, and the chip's objects keep what stays visible. Returns the new pixels, ids and
    classes (the pasted ids follow the chip's own)."""
    donor_pixels, donor_ids, donor_classes = donor
    present, counts = np.unique(donor_ids[donor_ids > 0], return_counts=True)
    small = present[(counts >= MIN_INSTANCE_PX) & (counts <= PASTE_MAX_SHARE * donor_ids.size)]
    if not len(small):
        return pixels, ids, classes
    taken = small[rng.random(len(small)) < 0.5]
    if not len(taken):
        taken = small[[int(rng.integers(len(small)))]]
    region = np.isin(donor_ids, taken)
    pixels, ids = pixels.copy(), ids.copy()
    pixels[:, region] = donor_pixels[:, region]
    ids[region] = donor_ids[region] + len(classes)
    return pixels, ids, np.concatenate([classes, donor_classes])


def _zoom(
    pixels: np.ndarray, ids: np.ndarray, valid: np.ndarray, factor: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels, ids and validity zoomed by ``factor``, cut or padded back to their size."""
    height, width = ids.shape
    size = max(1, round(height * factor)), max(1, round(width * factor))
    scale = (size[0] / height, size[1] / width)
    pixels = ndimage.zoom(pixels, (1.0, *scale), order=1, grid_mode=True, mode="nearest")
    ids = ndimage.zoom(ids, scale, order=0, grid_mode=True, mode="nearest")
    valid = ndimage.zoom(valid, scale, order=0, grid_mode=True, mode="nearest")
    # a smaller zoom is placed at random inside the chip (the rest invalid), a bigger one cut
    pad_h, pad_w = max(height - size[0], 0), max(width - size[1], 0)
    top, left = int(rng.integers(pad_h + 1)), int(rng.integers(pad_w + 1))
    around = ((top, pad_h - top), (left, pad_w - left))
    pixels = np.pad(pixels, ((0, 0), *around))
    ids, valid = np.pad(ids, around), np.pad(valid, around)
    row = int(rng.integers(ids.shape[0] - height + 1))
    col = int(rng.integers(ids.shape[1] - width + 1))
    cut = (slice(row, row + height), slice(col, col + width))
    return pixels[(slice(None), *cut)], ids[cut], valid[cut]


def _turn(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(array, k, axes=(-2, -1))
    return out[..., ::-1] if flip else out


def targets_from_ids(
    ids: np.ndarray, classes: np.ndarray, *, min_px: int = MIN_INSTANCE_PX
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks (bool ``(K, H, W)``), boxes (float32 ``(K, 4)``, ``x0, y0, x1, y1`` in pixel
    corners) and class indices (int64 ``(K,)``) of the instances of at least ``min_px`` pixels.
    """
    present, counts = np.unique(ids[ids > 0], return_counts=True)
    present = present[counts >= min_px]
    height, width = ids.shape
    masks = np.zeros((len(present), height, width), dtype=bool)
    boxes = np.zeros((len(present), 4), dtype=np.float32)
    for i, instance in enumerate(present):
        masks[i] = ids == instance
        rows = np.flatnonzero(masks[i].any(axis=1))
        cols = np.flatnonzero(masks[i].any(axis=0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return masks, boxes, classes[present - 1].astype(np.int64)
