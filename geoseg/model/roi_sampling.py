"""RoIAlign on the CPU as one weighted gather of channel vectors.

torchvision's CPU ``roi_align`` walks each box channel by channel, sample by sample: on one
thread it takes 0.1 s for the 500 boxes of a 512 px tile at 7 x 7, and more than the whole
backbone once four views and the 14 x 14 masks are counted. Every output bin is a weighted sum
of at most 16 feature vectors (2 x 2 samples, each between 4 pixels), so with the features laid
out channels-last the whole pooling is one ``embedding_bag`` over the flattened pixels with
per-sample weights: 2-4 times faster, and the same values to float rounding.

:class:`SampledRoIAlign` is torchvision's ``MultiScaleRoIAlign`` (the same level mapping and
scales) that pools this way on the CPU when no gradient is needed; training, and other devices,
run torchvision's own. It hands the pooled boxes over channels-last, and
:class:`ChannelsLastBoxHead` reads them so without a copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from geoseg.model.folded_backbone import tensor_version

__all__ = ["ChannelsLastBoxHead", "SampledRoIAlign", "roi_align_channels_last"]


def roi_align_channels_last(
    features: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
) -> Tensor:
    """torchvision's ``roi_align(..., aligned=False)`` with a fixed ``sampling_ratio`` > 0, of
    ``features`` given as ``(N, H, W, C)``; ``rois`` ``(K, 5)`` as ``[image, x1, y1, x2,
    y2]`` in input pixels. Returns ``(K, *output_size, C)``, channels last."""
    _, height, width, channels = features.shape
    rows, cols = output_size
    k = len(rois)
    if k == 0:
        return features.new_zeros((0, rows, cols, channels))
    image = rois[:, 0].long()
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale for i in range(1, 5))
    y_at, y_weight = _corners(y1, (y2 - y1).clamp(min=1.0), rows, sampling_ratio, height)
    x_at, x_weight = _corners(x1, (x2 - x1).clamp(min=1.0), cols, sampling_ratio, width)
    # each bin: the (2 samples x 2 corners) rows by the (2 x 2) columns around it
    pixel = (
        (image * (height * width))[:, None, None, None, None]
        + y_at[:, :, None, :, None] * width
        + x_at[:, None, :, None, :]
    )
    weight = y_weight[:, :, None, :, None] * x_weight[:, None, :, None, :]
    terms = (2 * sampling_ratio) ** 2
    pooled = F.embedding_bag(
        pixel.reshape(-1, terms),
        features.reshape(-1, channels),
        per_sample_weights=(weight / sampling_ratio**2).reshape(-1, terms).to(features.dtype),
        mode="sum",
    )
    return pooled.reshape(k, rows, cols, channels)


def _corners(
    start: Tensor, length: Tensor, bins: int, sampling_ratio: int, size: int
) -> tuple[Tensor, Tensor]:
    """Along one axis, for each box: the pixel index and bilinear weight of both neighbours of
    each sample, ``(K, bins, 2 * sampling_ratio)``, as torchvision's ``bilinear_interpolate``
    takes them (a sample beyond one pixel outside the map weighs 0; one within it is clamped
    onto the edge)."""
    steps = (torch.arange(bins * sampling_ratio, dtype=start.dtype) + 0.5) / sampling_ratio
    at = start[:, None] + steps[None] * (length / bins)[:, None]
    inside = ((at >= -1) & (at <= size)).to(start.dtype)
    at = at.clamp(min=0)
    low = at.floor().clamp(max=size - 1)
    at = torch.where(low >= size - 1, low, at)
    high_share = at - low
    low_index = low.long()
    high_index = (low_index + 1).clamp(max=size - 1)
    index = torch.stack([low_index, high_index], dim=-1)
    weight = torch.stack([(1 - high_share) * inside, high_share * inside], dim=-1)
    shape = (len(start), bins, 2 * sampling_ratio)
    return index.reshape(shape), weight.reshape(shape)


class SampledRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` that pools with :func:`roi_align_channels_last` on the CPU when
    no gradient is needed (levels stored channels-last are read without a copy)."""

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        levels = _filter_input(x, self.featmap_names)
        if torch.is_grad_enabled() or levels[0].device.type != "cpu" or self.sampling_ratio < 1:
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                levels, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        size = (int(self.output_size[0]), int(self.output_size[-1]))
        level_of = self.map_levels(boxes) if len(levels) > 1 else torch.zeros(len(rois)).long()
        pooled = levels[0].new_empty((len(rois), *size, levels[0].shape[1]))
        for number, (level, scale) in enumerate(zip(levels, self.scales, strict=True)):
            chosen = torch.where(level_of == number)[0]
            if len(chosen):
                channels_last = level.permute(0, 2, 3, 1).contiguous()  # no copy if it is
                pooled[chosen] = roi_align_channels_last(
                    channels_last, rois[chosen], size, scale, self.sampling_ratio
                )
        return pooled.permute(0, 3, 1, 2)  # (K, C, rows, cols), stored channels-last


class ChannelsLastBoxHead(TwoMLPHead):
    """torchvision's ``TwoMLPHead`` that reads pooled boxes stored channels-last as they lie:
    its first layer's weights are taken in that order (and again after they change), so the
    boxes need no copy into torchvision's order. With a gradient, or boxes in torchvision's
    order, it is torchvision's.

    With :attr:`bfloat16` set (the segmenter sets it for tiles whose backbone runs in
    bfloat16, :mod:`geoseg.model.bf16_backbone`), those two layers multiply in bfloat16 and
    hand over float32: on CPUs with bfloat16 units, 2.4 times faster (the box stage's largest
    cost after the pooling)."""

    bfloat16: bool = False

    def __init__(self, in_channels: int, representation_size: int) -> None:
        super().__init__(in_channels, representation_size)
        self._prepared: tuple[tuple[object, ...], tuple[Tensor, ...]] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if (
            torch.is_grad_enabled()
            or x.dim() != 4
            or x.is_contiguous()
            or not x.is_contiguous(memory_format=torch.channels_last)
        ):
            return super().forward(x)
        count, channels, rows, cols = x.shape
        fc6_weight, fc6_bias, fc7_weight, fc7_bias = self._weights(channels, rows, cols)
        x = x.permute(0, 2, 3, 1).reshape(count, -1).to(fc6_weight.dtype)
        x = F.relu(F.linear(x, fc6_weight, fc6_bias))
        return F.relu(F.linear(x, fc7_weight, fc7_bias)).float()

    def _weights(self, channels: int, rows: int, cols: int) -> tuple[Tensor, ...]:
        """fc6's weight in the channels-last order, its bias and fc7's, in bfloat16 where
        :attr:`bfloat16` is set (made again after any change to them)."""
        params = (self.fc6.weight, self.fc6.bias, self.fc7.weight, self.fc7.bias)
        dtype = torch.bfloat16 if self.bfloat16 else params[0].dtype
        made_from = (
            *((id(p), tensor_version(p)) for p in params),
            params[0].device,
            dtype,
            channels,
            rows,
            cols,
        )
        if self._prepared is None or self._prepared[0] != made_from:
            weight = params[0].reshape(-1, channels, rows, cols).permute(0, 2, 3, 1)
            weight = weight.reshape(params[0].shape[0], -1)
            weights = (weight, *params[1:])
            self._prepared = (made_from, tuple(w.to(dtype).contiguous() for w in weights))
        return self._prepared[1]
