"""The box and label-image forms of a model's output, cut straight to box-local crops.

A crop is ``(row0, col0, mask)``: a bool ``mask`` covering tile pixels ``row0:row0 + h``,
``col0:col0 + w``, always inside the tile. Neither form ever builds a ``(K, H, W)`` array.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Crop", "box_mask_crops", "label_image_crops"]

Crop = tuple[int, int, np.ndarray]
MASK_PADDING_PX = 1


def box_mask_crops(
    boxes_xyxy: np.ndarray,
    masks: np.ndarray,
    shape_hw: tuple[int, int],
    thresholds: np.ndarray | None = None,
) -> list[Crop]:
    """Resize box-local masks ``(K, h, w)`` into their boxes ``(K, 4)`` (float ``x0, y0, x1,
    y1`` in tile pixels), exactly as torchvision's ``paste_masks_in_image`` does.

    The mask is padded by one pixel of zeros on each side and its box grown by the same
    factor about its centre (``(w + 2) / w`` in x, ``(h + 2) / h`` in y; torchvision's masks
    are square), in float32; the grown box's corners are cut to integers toward zero
    (``x0i, y0i, x1i, y1i``); the padded mask is resized bilinearly (``align_corners=False``)
    to ``max(y1i - y0i + 1, 1)`` rows by ``max(x1i - x0i + 1, 1)`` columns, placed with its
    first pixel at ``(y0i, x0i)``, cut to the tile, and a pixel is in where the value is
    >= 0.5, or >= the instance's value of ``thresholds`` ``(K,)``. Bool masks count as 0
    and 1.
    """
    import torch  # the model layer; only this form needs it
    from torch.nn import functional as F

    count = len(boxes_xyxy)
    if count == 0:
        return []
    height, width = shape_hw
    probs = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))
    mask_h, mask_w = probs.shape[1:]
    pad = MASK_PADDING_PX
    padded = F.pad(probs, (pad,) * 4)
    boxes = torch.from_numpy(np.ascontiguousarray(boxes_xyxy, dtype=np.float32))
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5  # the same float32 steps as torchvision
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5
    centre_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    centre_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    half_w *= float(mask_w + 2 * pad) / mask_w
    half_h *= float(mask_h + 2 * pad) / mask_h
    grown = torch.stack(
        [centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], dim=1
    )
    corners = grown.to(dtype=torch.int64).tolist()
    cuts = [0.5] * count if thresholds is None else [float(t) for t in thresholds]
    crops: list[Crop] = []
    for k, (x0, y0, x1, y1) in enumerate(corners):
        r0, r1 = max(y0, 0), min(y1 + 1, height)
        c0, c1 = max(x0, 0), min(x1 + 1, width)
        if r1 <= r0 or c1 <= c0:
            crops.append((0, 0, np.zeros((0, 0), dtype=bool)))
            continue
        size = (max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1))
        resized = F.interpolate(
            padded[k][None, None], size=size, mode="bilinear", align_corners=False
        )
        inside = resized[0, 0, r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] >= cuts[k]
        crops.append((r0, c0, inside.numpy()))
    return crops


def label_image_crops(label_image: np.ndarray, count: int) -> list[Crop]:
    """Instance ``i`` of a label image (``0`` background, ``i + 1`` instance ``i``) as a crop
    of its bounding box; an instance without pixels gets an empty crop."""
    from scipy import ndimage

    slices = ndimage.find_objects(label_image, max_label=count) if count else []
    crops: list[Crop] = []
    for i, found in enumerate(slices):
        if found is None:
            crops.append((0, 0, np.zeros((0, 0), dtype=bool)))
            continue
        rows, cols = found
        crops.append((rows.start, cols.start, label_image[found] == i + 1))
    return crops
