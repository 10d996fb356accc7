"""An inference copy of a backbone with its frozen batch norm folded into the convolutions.

Frozen batch norm after a convolution is an affine map per channel, ``y * scale + shift``;
folded into the convolution's weights and bias it costs nothing. On the CPU, in channels-last
layout, the folded MobileNetV2 with its pyramid runs in about half the time of torchvision's
module (0.15 s against 0.33 s for a 512 px tile on one thread); its outputs equal the
module's to float rounding (about 1e-4 on features of magnitude 10).

:class:`FoldedBackbone` keeps the copy and makes it again whenever a weight of the source
module changes in place (an optimizer step, ``load_state_dict``), so a network that is still
being trained is always seen as it is.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from itertools import pairwise

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["FoldedBackbone", "fold_frozen_batch_norm", "tensor_version", "weights_state"]


def fold_frozen_batch_norm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in which each ``Conv2d`` directly followed by a
    ``FrozenBatchNorm2d`` in a ``Sequential`` is one ``Conv2d`` with a bias (the batch norm
    becomes ``Identity``); other layers are copied as they are."""
    folded = copy.deepcopy(module)
    for sequence in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        layers = list(sequence.children())
        for i, (conv, norm) in enumerate(pairwise(layers)):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, FrozenBatchNorm2d):
                sequence[i] = _folded_conv(conv, norm)
                sequence[i + 1] = nn.Identity()
    return folded


def _folded_conv(conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> nn.Conv2d:
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    shift = norm.bias - norm.running_mean * scale
    bias = shift if conv.bias is None else shift + conv.bias * scale
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bias)
    return fused.requires_grad_(False)


class FoldedBackbone:
    """Calls a backbone through its folded, channels-last inference copy (made on first use,
    and again after any change to the source's weights or device)."""

    def __init__(self, source: nn.Module) -> None:
        self.source = source
        self._copy: nn.Module | None = None
        self._made_from: tuple[object, ...] = ()

    def __call__(self, pixels: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """The source's features of ``pixels`` ``(N, 3, H, W)``, each level float32 and
        contiguous (one copy of each level, from the channels-last float16 of autocast too)."""
        network = self._current()
        levels = network(pixels.contiguous(memory_format=torch.channels_last))
        return OrderedDict(
            (name, level.to(dtype=torch.float32, memory_format=torch.contiguous_format))
            for name, level in levels.items()
        )

    def _current(self) -> nn.Module:
        state = weights_state(self.source)
        if self._copy is None or state != self._made_from:
            self._copy = fold_frozen_batch_norm(self.source).eval()
            self._copy.to(memory_format=torch.channels_last)
            self._made_from = state
        return self._copy


def weights_state(module: nn.Module) -> tuple[object, ...]:
    """What a change to ``module``'s weights changes: each tensor's identity, version and
    device."""
    tensors = [*module.parameters(), *module.buffers()]
    return tuple((id(t), tensor_version(t), t.device) for t in tensors)


def tensor_version(tensor: torch.Tensor) -> int:
    """The in-place change counter (an inference tensor has none: it is never trained)."""
    try:
        return tensor._version
    except RuntimeError:
        return -1
