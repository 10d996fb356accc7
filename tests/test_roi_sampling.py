"""RoIAlign as one weighted gather: torchvision's values, torchvision's levels."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, roi_align

from geoseg.model.roi_sampling import ChannelsLastBoxHead, SampledRoIAlign, roi_align_channels_last


def _boxes(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Boxes inside a ``size`` px image, from under a pixel to most of it, some on its edges."""
    corner = torch.rand(count, 2, generator=generator) * size
    extent = torch.rand(count, 2, generator=generator) ** 2 * size + 0.3
    boxes = torch.cat([corner, corner + extent], dim=1).clamp(0, size)
    boxes[: count // 8, 2:] = size  # on the far edges
    boxes[count // 8 : count // 4, :2] = 0  # on the near ones
    return boxes


@pytest.mark.parametrize("output_size", [(7, 7), (14, 14), (3, 5)])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_the_gather_gives_torchvisions_values(
    output_size: tuple[int, int], sampling_ratio: int
) -> None:
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(2, 5, 24, 32, generator=generator)
    boxes = _boxes(60, 96, generator)
    rois = torch.cat([torch.randint(0, 2, (60, 1), generator=generator).float(), boxes], dim=1)
    want = roi_align(features, rois, output_size, 0.25, sampling_ratio, aligned=False)
    got = roi_align_channels_last(
        features.permute(0, 2, 3, 1).contiguous(), rois, output_size, 0.25, sampling_ratio
    )
    assert got.shape == (60, *output_size, 5)
    torch.testing.assert_close(got.permute(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5)


def test_no_box_gives_an_empty_pool() -> None:
    features = torch.zeros(1, 8, 8, 4)
    assert roi_align_channels_last(features, torch.zeros(0, 5), (7, 7), 1.0, 2).shape == (
        0,
        7,
        7,
        4,
    )


def _pyramid(generator: torch.Generator, channels_last: bool) -> OrderedDict[str, torch.Tensor]:
    levels = OrderedDict(
        (str(i), torch.randn(2, 6, 128 >> i, 128 >> i, generator=generator)) for i in range(4)
    )
    if channels_last:
        levels = OrderedDict(
            (name, level.contiguous(memory_format=torch.channels_last))
            for name, level in levels.items()
        )
    return levels


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_pooler_maps_boxes_to_torchvisions_levels(channels_last: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    features = _pyramid(generator, channels_last)
    boxes = [_boxes(80, 512, generator), _boxes(0, 512, generator), _boxes(40, 512, generator)]
    features = OrderedDict((k, torch.cat([v, v[:1]])) for k, v in features.items())
    sizes = [(512, 512)] * 3
    names = list(features)
    want = MultiScaleRoIAlign(names, 7, 2)(features, boxes, sizes)
    with torch.no_grad():
        got = SampledRoIAlign(names, 7, 2)(features, boxes, sizes)
    assert got.shape == want.shape == (120, 6, 7, 7)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # float rounding of the boxes


def test_training_pools_with_torchvision_and_gets_gradients() -> None:
    generator = torch.Generator().manual_seed(5)
    features = OrderedDict(
        (name, level.requires_grad_()) for name, level in _pyramid(generator, False).items()
    )
    boxes = [_boxes(20, 512, generator), _boxes(10, 512, generator)]
    pooled = SampledRoIAlign(list(features), 7, 2)(features, boxes, [(512, 512)] * 2)
    pooled.sum().backward()
    assert features["0"].grad is not None and features["0"].grad.abs().sum() > 0


def test_the_box_head_reads_channels_last_boxes_as_torchvision_does() -> None:
    head = ChannelsLastBoxHead(6 * 7 * 7, 16)
    plain = TwoMLPHead(6 * 7 * 7, 16)
    plain.load_state_dict(head.state_dict())
    boxes = torch.randn(9, 7, 7, 6).permute(0, 3, 1, 2)  # stored channels-last
    with torch.no_grad():
        torch.testing.assert_close(head(boxes), plain(boxes))
        head.fc6.weight.mul_(-1.5)  # as an optimizer step does
        plain.fc6.weight.mul_(-1.5)
        torch.testing.assert_close(head(boxes), plain(boxes))
        torch.testing.assert_close(head(boxes.contiguous()), plain(boxes))


def test_the_box_head_in_bfloat16_is_close_to_float32_and_hands_over_float32() -> None:
    head = ChannelsLastBoxHead(6 * 7 * 7, 16)
    boxes = torch.randn(9, 7, 7, 6).permute(0, 3, 1, 2)  # stored channels-last
    with torch.no_grad():
        exact = head(boxes)
        head.bfloat16 = True
        rounded = head(boxes)
        assert rounded.dtype == torch.float32
        assert not torch.equal(rounded, exact)  # the multiplications were in bfloat16
        torch.testing.assert_close(rounded, exact, rtol=0.05, atol=0.05)
        head.fc6.weight.mul_(-1.5)  # a change to the weights is seen in bfloat16 too
        head.bfloat16 = False
        changed = head(boxes)
        head.bfloat16 = True
        torch.testing.assert_close(head(boxes), changed, rtol=0.05, atol=0.05)
