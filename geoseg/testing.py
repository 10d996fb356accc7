"""Helpers for testing geoseg and models against scenes whose truth is known.

A *coded scene* stores its instances in its pixels: band 1 is the class index + 1 (0 is
background), bands 2 and 3 hold the instance id (high and low byte). :class:`OracleSegmenter`
reads the instances back from the pixels a tile shows it, so a run over a coded scene must give
back exactly the painted objects: any loss, cut or duplicate is the fault of tiling, stitching
or vectorizing, never of the model.

    geoseg run coded.tif --model geoseg.testing:OracleSegmenter
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CLASSES",
    "OracleSegmenter",
    "decode_instances",
    "decode_label_image",
    "encode_instances",
]

CLASSES = ("building", "field", "ship")


def encode_instances(ids_yx: np.ndarray, class_of: Mapping[int, int]) -> np.ndarray:
    """Turn an instance-id raster (0 = background) into 3-band uint8 pixels (see module doc)."""
    ids = np.asarray(ids_yx, dtype=np.int64)
    if ids.max(initial=0) > 65535:
        raise ValueError("a coded scene holds at most 65535 instances")
    classes = np.zeros(ids.shape, dtype=np.uint8)
    for instance_id, class_index in class_of.items():
        classes[ids == instance_id] = class_index + 1
    return np.stack([classes, (ids // 256).astype(np.uint8), (ids % 256).astype(np.uint8)])


def decode_instances(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Instances of one tile ``(3, H, W)`` in 0..1 floats, as a protocol mapping."""
    codes = np.rint(np.asarray(pixels[:3]) * 255).astype(np.int64)
    cls, ids = codes[0], codes[1] * 256 + codes[2]
    present = np.unique(ids[(cls > 0) & (ids > 0)])
    masks = (
        np.stack([ids == i for i in present])
        if len(present)
        else np.zeros((0, *ids.shape), dtype=bool)
    )
    labels = np.array([np.bincount(cls[m]).argmax() - 1 for m in masks], dtype=np.int64)
    return {"masks": masks, "labels": labels, "scores": np.ones(len(present), np.float32)}


def decode_label_image(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The same instances as :func:`decode_instances`, in the protocol's label-image form:
    one ``(H, W)`` image of instance numbers (0 background, ``i`` instance ``i - 1``), so a
    tile of a dense city costs one image, not one tile-sized mask per object."""
    codes = np.rint(np.asarray(pixels[:3]) * 255).astype(np.int64)
    cls, ids = codes[0], codes[1] * 256 + codes[2]
    painted = (cls > 0) & (ids > 0)
    present, number = np.unique(ids[painted], return_inverse=True)
    label_image = np.zeros(ids.shape, dtype=np.int32)
    label_image[painted] = number + 1
    votes = np.zeros((len(present), 4), dtype=np.int64)
    np.add.at(votes, (number, cls[painted]), 1)
    return {
        "label_image": label_image,
        "labels": votes.argmax(axis=1) - 1,
        "scores": np.ones(len(present), np.float32),
    }


class OracleSegmenter:
    """A model that reads the truth out of a coded scene (for tests and benchmarks).

    It answers in the protocol's label-image form; with ``full_masks`` (a class attribute, for
    subclasses that edit masks) in the full-tile form."""

    classes = CLASSES
    name = "oracle"
    input_bands = 3
    full_masks = False

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def predict(self, tiles: np.ndarray) -> Sequence[Mapping[str, Any]]:
        decode = decode_instances if self.full_masks else decode_label_image
        return [decode(tile) for tile in tiles]


def write_coded_scene(
    path: str | Path,
    ids_yx: np.ndarray,
    class_of: Mapping[int, int],
    *,
    transform: Any,
    crs: Any,
    nodata_yx: np.ndarray | None = None,
    blocksize: int = 256,
) -> Path:
    """Write a coded scene as a GeoTIFF; where ``nodata_yx`` is true, an internal mask hides it."""
    import rasterio

    data = encode_instances(ids_yx, class_of)
    height, width = ids_yx.shape
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 3,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
    }
    if height >= blocksize and width >= blocksize:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if nodata_yx is not None:
            dst.write_mask(np.where(nodata_yx, 0, 255).astype(np.uint8))
    return Path(path)
