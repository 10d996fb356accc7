"""The box and label-image forms of the model protocol, tile NMS and batch polygonizing."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from geoseg.errors import ModelError
from geoseg.fragments import MaskCrop, instances_to_crops, tile_nms
from geoseg.grid import TileGrid
from geoseg.model.maskrcnn import MaskRCNNArch, untrained_segmenter
from geoseg.model.protocol import Instances
from geoseg.vectorize import crop_to_polygon, crops_to_polygons

SHAPE = (48, 40)
SMALL = MaskRCNNArch(widths=(16, 16, 32, 32), blocks=(1, 1, 1, 1), fpn_channels=16)


def _polygons(instances: Instances, valid: np.ndarray | None = None) -> list[str]:
    (tile,) = TileGrid.from_shape(SHAPE, tile_px=48, overlap_px=4)
    valid = np.ones((48, 48), bool) if valid is None else valid
    crops = instances_to_crops(instances, tile, valid, min_score=0.0)
    return [f"{c.label} {c.score} {shapely.normalize(crop_to_polygon(c)).wkt}" for c in crops]


def _random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    """Fractional boxes, many touching the tile's edges (clipped to it, as torchvision's)."""
    x0 = rng.uniform(-6, SHAPE[1] - 2, count)
    y0 = rng.uniform(-6, SHAPE[0] - 2, count)
    boxes = np.stack(
        [x0, y0, x0 + rng.uniform(0.3, 30, count), y0 + rng.uniform(0.3, 30, count)], axis=1
    )
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, SHAPE[1])
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, SHAPE[0])
    return boxes.astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_box_form_equals_torchvision_paste_and_full_form(seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = 25
    boxes = _random_boxes(rng, count)
    probs = rng.random((count, 28, 28), dtype=np.float32)
    probs[:3] = 0.5 + rng.normal(0, 1e-6, (3, 28, 28)).astype(np.float32)  # near the cut
    pasted = paste_masks_in_image(torch.from_numpy(probs)[:, None], torch.from_numpy(boxes), SHAPE)[
        :, 0
    ].numpy()
    full = pasted >= 0.5
    labels = rng.integers(0, 3, count)
    scores = rng.random(count).astype(np.float32)
    box_form = Instances.from_any(
        {"boxes": boxes, "masks": probs, "labels": labels, "scores": scores},
        shape_hw=SHAPE,
        n_classes=3,
    )
    np.testing.assert_array_equal(box_form.masks, full)
    full_form = Instances.from_any(
        {"masks": full, "labels": labels, "scores": scores}, shape_hw=SHAPE, n_classes=3
    )
    assert _polygons(box_form) == _polygons(full_form)
    valid = rng.random((48, 48)) < 0.9
    assert _polygons(box_form, valid) == _polygons(full_form, valid)


def test_mask_thresholds_move_each_instance_s_cut() -> None:
    rng = np.random.default_rng(11)
    count = 20
    boxes = _random_boxes(rng, count)
    probs = rng.random((count, 28, 28), dtype=np.float32)
    cuts = rng.uniform(0.2, 0.8, count).astype(np.float32)
    pasted = paste_masks_in_image(torch.from_numpy(probs)[:, None], torch.from_numpy(boxes), SHAPE)[
        :, 0
    ].numpy()
    common = {"labels": np.zeros(count, int), "scores": np.ones(count, np.float32)}
    box_form = Instances.from_any(
        {"boxes": boxes, "masks": probs, "mask_thresholds": cuts, **common},
        shape_hw=SHAPE,
        n_classes=1,
    )
    np.testing.assert_array_equal(box_form.masks, pasted >= cuts[:, None, None])
    assert (box_form.masks != (pasted >= 0.5)).any()
    full_form = Instances.from_any(
        {"masks": pasted, "mask_thresholds": cuts, **common}, shape_hw=SHAPE, n_classes=1
    )
    np.testing.assert_array_equal(full_form.masks, pasted > cuts[:, None, None])
    labels = np.arange(count) % 2  # the run's cut per class replaces the instances' own
    by_class = Instances.from_any(
        {"boxes": boxes, "masks": probs, "mask_thresholds": cuts, **common, "labels": labels},
        shape_hw=SHAPE,
        n_classes=2,
        class_mask_thresholds=np.array([0.3, 0.7]),
    )
    want = pasted >= np.where(labels == 0, 0.3, 0.7).astype(np.float32)[:, None, None]
    np.testing.assert_array_equal(by_class.masks, want)


def test_bool_and_non_square_box_masks_follow_the_rule() -> None:
    rng = np.random.default_rng(7)
    boxes = _random_boxes(rng, 10)
    masks = rng.random((10, 6, 9)) < 0.5
    got = Instances.from_any(
        {"boxes": boxes, "masks": masks[:, None], "labels": np.zeros(10), "scores": np.ones(10)},
        shape_hw=SHAPE,
        n_classes=1,
    )
    # the rule, written out with torch for one axis at a time
    padded = torch.nn.functional.pad(torch.from_numpy(masks.astype(np.float32)), (1, 1, 1, 1))
    for k in range(10):
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        cx, cy = (x1 + x0) / 2, (y1 + y0) / 2
        hw, hh = (x1 - x0) / 2 * 11 / 9, (y1 - y0) / 2 * 8 / 6
        b = [int(cx - hw), int(cy - hh), int(cx + hw), int(cy + hh)]
        size = (max(b[3] - b[1] + 1, 1), max(b[2] - b[0] + 1, 1))
        up = torch.nn.functional.interpolate(
            padded[k][None, None], size=size, mode="bilinear", align_corners=False
        )[0, 0].numpy()
        want = np.zeros((SHAPE[0] + 80, SHAPE[1] + 80), bool)  # room past every edge
        want[b[1] + 40 : b[1] + 40 + size[0], b[0] + 40 : b[0] + 40 + size[1]] = up >= 0.5
        np.testing.assert_array_equal(got.masks[k], want[40 : 40 + SHAPE[0], 40 : 40 + SHAPE[1]])


def test_label_image_form_equals_full_form() -> None:
    rng = np.random.default_rng(3)
    image = np.zeros(SHAPE, np.int32)
    for i in range(1, 9):  # rectangles painted over one another, then one id dropped
        r, c = rng.integers(-4, SHAPE[0], 2)
        image[max(r, 0) : r + rng.integers(1, 20), max(c, 0) : c + rng.integers(1, 20)] = i
    image[image == 5] = 0  # an instance without pixels
    labels, scores = rng.integers(0, 3, 8), rng.random(8).astype(np.float32)
    got = Instances.from_any(
        {"label_image": image, "labels": labels, "scores": scores}, shape_hw=SHAPE, n_classes=3
    )
    full = np.stack([image == i for i in range(1, 9)])
    np.testing.assert_array_equal(got.masks, full)
    want = Instances(full, labels, scores)
    assert _polygons(got) == _polygons(want) and len(_polygons(got)) >= 5


@pytest.mark.parametrize(
    "output",
    [
        {"boxes": np.zeros((2, 3)), "masks": np.zeros((2, 28, 28))},
        {"boxes": np.zeros((2, 4)), "masks": np.zeros((3, 28, 28))},
        {"boxes": np.zeros((2, 4)), "masks": np.zeros((2, 0, 28))},
        {"boxes": np.full((2, 4), np.nan), "masks": np.zeros((2, 28, 28))},
        {"masks": np.zeros((2, 28, 28))},
        {"label_image": np.zeros((48, 41), np.int32)},
        {"label_image": np.full(SHAPE, 3, np.int32)},
        {"label_image": np.zeros(SHAPE, np.float32)},
        {"boxes": np.zeros((2, 4)), "masks": np.zeros((2, 28, 28)), "mask_thresholds": [0.5]},
        {"masks": np.zeros((2, *SHAPE)), "mask_thresholds": [0.5, 1.0]},
    ],
)
def test_bad_shapes_are_one_line_model_errors(output: dict) -> None:
    output = {**output, "labels": np.zeros(2, int), "scores": np.ones(2)}
    with pytest.raises(ModelError) as info:
        Instances.from_any(output, shape_hw=SHAPE, n_classes=1)
    assert "\n" not in str(info.value)


def test_maskrcnn_box_form_equals_torchvision_output() -> None:
    """The box form is torchvision's computation, bit for bit, when the backbone is
    torchvision's module too (the folded copy that predict uses equals it to float rounding:
    tests/test_folded_backbone.py)."""
    model = untrained_segmenter(("a", "b"), arch=SMALL, device="cpu", seed=1)
    tiles = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    model._backbone = model.network.backbone  # type: ignore[assignment]
    got = model.predict(tiles)
    with torch.inference_mode():
        model.network.roi_heads.score_thresh = 0.05
        want = model.network(list(torch.from_numpy(tiles)))
    assert sum(len(g["scores"]) for g in got) > 10
    for g, w in zip(got, want, strict=True):
        assert g["masks"].shape[1:] == (28, 28)
        np.testing.assert_array_equal(g["boxes"], w["boxes"].numpy())
        np.testing.assert_array_equal(g["scores"], w["scores"].numpy())
        np.testing.assert_array_equal(g["labels"], w["labels"].numpy() - 1)
        found = Instances.from_any(g, shape_hw=(64, 64), n_classes=2)
        np.testing.assert_array_equal(found.masks, w["masks"][:, 0].numpy() >= 0.5)
    assert model.embed(tiles).shape == (2, 16 * 5)


def _old_tile_nms(boxes: np.ndarray, crops: list[np.ndarray]) -> list[int]:
    """The pairwise NMS geoseg had before (fragments._box_iou)."""
    kept: list[int] = []
    for i in range(len(crops)):
        duplicate = False
        for j in kept:
            r0, c0 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            r1, c1 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            if r1 <= r0 or c1 <= c0:
                continue
            a = crops[i][r0 - boxes[i, 0] : r1 - boxes[i, 0], c0 - boxes[i, 1] : c1 - boxes[i, 1]]
            b = crops[j][r0 - boxes[j, 0] : r1 - boxes[j, 0], c0 - boxes[j, 1] : c1 - boxes[j, 1]]
            inter = np.count_nonzero(a & b)
            union = np.count_nonzero(crops[i]) + np.count_nonzero(crops[j]) - inter
            if inter and inter / union >= 0.5:
                duplicate = True
                break
        if not duplicate:
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_vectorized_nms_equals_pairwise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    boxes, crops = [], []
    base = rng.integers(0, 30, (8, 2))
    for _ in range(60):  # clusters of near-duplicates around a few places
        r, c = base[rng.integers(0, 8)] + rng.integers(-2, 3, 2)
        h, w = rng.integers(2, 10, 2)
        mask = rng.random((h, w)) < 0.8
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True  # a tight box
        boxes.append((r, c, r + h, c + w))
        crops.append(mask)
    boxes_array = np.array(boxes, dtype=np.int64)
    want = _old_tile_nms(boxes_array, crops)
    assert 8 <= len(want) < 60
    assert tile_nms(boxes_array, crops) == want
    assert tile_nms(boxes_array, crops, chunk=7) == want


def test_batch_polygonize_equals_per_crop() -> None:
    rng = np.random.default_rng(5)
    crops = []
    for k in range(120):
        h, w = (int(v) for v in rng.integers(1, 25, 2))
        mask = rng.random((h, w)) < (0.9 if k % 2 else 0.5)  # holes and many parts
        if k == 0:
            mask = np.ones((300, 2), bool)  # taller than the others, wider than none
        if not mask.any():
            mask[0, 0] = True
        row, col = (int(v) for v in rng.integers(0, 10_000, 2))
        crops.append(MaskCrop(row, col, mask, 0, 1.0, False))
    got = crops_to_polygons(crops, canvas_width_px=64)
    assert len(got) == len(crops) and crops_to_polygons([]) == []
    for crop, polygon in zip(crops, got, strict=True):
        want = crop_to_polygon(crop)
        assert polygon.equals(want)
        assert shapely.normalize(polygon).equals_exact(shapely.normalize(want), 0)
