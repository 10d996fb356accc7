"""The views of a tile (flips, quarter turns) and the fusion of what each view finds."""

from __future__ import annotations

import itertools

import pytest
import torch

from geoseg.model.flip_views import VIEW_ORDER, View, fuse_views, views


def _box_of(mask: torch.Tensor) -> torch.Tensor:
    rows = torch.nonzero(mask.any(1))[:, 0]
    cols = torch.nonzero(mask.any(0))[:, 0]
    return torch.tensor(
        [[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float32
    )


@pytest.mark.parametrize("view", VIEW_ORDER, ids=repr)
def test_a_view_moves_boxes_with_the_pixels(view: View) -> None:
    """A rectangle marked in a 6 x 9 image: the box of the marked pixels in the view is the
    view of its box, and each undoes back to the image."""
    mask = torch.zeros(6, 9, dtype=torch.bool)
    mask[1:3, 2:7] = True
    box = _box_of(mask)
    seen = view.image(mask)
    assert torch.equal(view.boxes(box, 6, 9), _box_of(seen))
    assert torch.equal(view.unview_boxes(view.boxes(box, 6, 9), 6, 9), box)
    assert torch.equal(view.unview(seen), mask)
    assert seen.shape == ((9, 6) if view.transpose else (6, 9))


@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_each_set_of_views_is_closed(count: int) -> None:
    """Seeing a view of a view gives a view of the same set: a tile and its mirror image get
    the same views, so the fused objects turn with the tile."""
    pixels = torch.arange(25.0).reshape(5, 5)
    seen = [v.image(pixels) for v in views(count)]
    for a, b in itertools.product(views(count), repeat=2):
        assert any(torch.equal(a.image(b.image(pixels)), s) for s in seen)


def test_only_1_2_4_or_8_views() -> None:
    with pytest.raises(ValueError, match="3"):
        views(3)


def _found(*rows: tuple[float, float, float, float, float, int]) -> tuple[torch.Tensor, ...]:
    table = torch.tensor([r[:5] for r in rows], dtype=torch.float32).reshape(-1, 5)
    labels = torch.tensor([r[5] for r in rows], dtype=torch.int64)
    return table[:, :4], table[:, 4], labels


def test_objects_are_fused_over_the_views_by_hand() -> None:
    """Four views; label 1 is fused from four, label 2 from one. Computed by hand:

    - object A in every view at 0.8, 0.6, 0.7 and 0.9 (boxes 10 or 12 wide): one object, score
      (0.8 + 0.6 + 0.7 + 0.9) / 4 = 0.75, box the score-weighted mean;
    - object B only in view 0 at 0.8: score 0.8 / 4 = 0.2;
    - view 1 also sees A a second time, at 0.5 (IoU 0.8 with its best): not counted twice;
    - label 2 is seen once in view 0 (kept, its score whole) and in view 2 (ignored).
    """
    a = (0.0, 0.0, 10.0, 10.0)
    a_wide = (0.0, 0.0, 12.0, 10.0)
    found = [
        _found((*a, 0.8, 1), (50.0, 50.0, 60.0, 60.0, 0.8, 1), (30.0, 0.0, 40.0, 10.0, 0.9, 2)),
        _found((*a_wide, 0.6, 1), (0.0, 0.0, 10.0, 8.0, 0.5, 1)),
        _found((*a, 0.7, 1), (30.0, 0.0, 40.0, 10.0, 0.95, 2)),
        _found((*a_wide, 0.9, 1)),
    ]
    boxes, scores, labels = fuse_views(found, [1, 4, 1])
    order = torch.argsort(scores, descending=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    assert labels.tolist() == [2, 1, 1]
    assert scores.tolist() == pytest.approx([0.9, 0.75, 0.2])
    width = (0.8 * 10 + 0.6 * 12 + 0.7 * 10 + 0.9 * 12) / 3.0  # weights: score / 3.0
    assert boxes[1].tolist() == pytest.approx([0.0, 0.0, width, 10.0])
    assert boxes[2].tolist() == [50.0, 50.0, 60.0, 60.0]
    assert boxes[0].tolist() == [30.0, 0.0, 40.0, 10.0]


def test_boxes_that_overlap_less_stay_apart() -> None:
    """IoU 0.5 (under the 0.55 that makes one object): two objects, each with its half."""
    found = [_found((0.0, 0.0, 10.0, 10.0, 0.8, 1)), _found((0.0, 0.0, 10.0, 5.0, 0.6, 1))]
    _, scores, _ = fuse_views(found, [1, 2])
    assert sorted(scores.tolist()) == pytest.approx([0.3, 0.4])
    empty = fuse_views([_found(), _found()], [1, 2])
    assert all(len(t) == 0 for t in empty)


def test_each_label_may_fuse_from_its_own_iou() -> None:
    """The boxes of IoU 0.5 are one object for a label fused from 0.45, two for one at 0.55."""
    pair = [(0.0, 0.0, 10.0, 10.0, 0.8), (0.0, 0.0, 10.0, 5.0, 0.6)]
    found = [_found((*pair[0], 1), (*pair[0], 2)), _found((*pair[1], 1), (*pair[1], 2))]
    _, scores, labels = fuse_views(found, [1, 2, 2], iou=[0.55, 0.45, 0.55])
    assert sorted(scores[labels == 1].tolist()) == pytest.approx([0.7])  # (0.8 + 0.6) / 2
    assert sorted(scores[labels == 2].tolist()) == pytest.approx([0.3, 0.4])
    _, same, _ = fuse_views(found, [1, 2, 2], iou=0.55)
    assert sorted(same.tolist()) == pytest.approx([0.3, 0.3, 0.4, 0.4])
