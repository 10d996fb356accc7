"""Convolutions in bfloat16 with their activation fused, as oneDNN runs them for torch's compiler.

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` each convolution of the backbone runs in
bfloat16 on oneDNN, and then its ReLU6 runs as a separate pass over the output; torch's
``hardtanh`` on bfloat16 tensors is not vectorized as its float32 kernel is, and those passes
took a fifth of the four views' time of a 512 px tile. oneDNN applies an activation to a
convolution's output as it writes it (a "post-op"): torch exposes that primitive as
``torch.ops.mkldnn._convolution_pointwise``, which ``torch.compile`` emits for the same
pattern. :func:`fuse_bf16_convs` puts it in place of every ``Conv2d`` of a module, with the
ReLU or ReLU6 that follows it in a ``Sequential`` folded in and the weights cast to bfloat16
once, not at every call. The outputs are bit for bit those of autocast's convolution and the
activation after it (``tests/test_bf16_convs.py``).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

__all__ = ["Bf16Conv", "fusable", "fuse_bf16_convs", "fused_convs_available"]


def fused_convs_available() -> bool:
    """Whether this torch has oneDNN's fused convolution (a build with mkldnn) and oneDNN runs
    bfloat16 convolutions on this CPU (AVX-512 or AVX-NE-CONVERT; on others torch's autocast
    falls back to its own slower convolution, and the fused one would refuse)."""
    available = getattr(torch.backends, "mkldnn", None)
    if available is None or not available.is_available():
        return False
    ops = torch.ops.mkldnn
    if not hasattr(ops, "_convolution_pointwise"):
        return False
    supported = getattr(ops, "_is_mkldnn_bf16_supported", None)
    return supported is not None and bool(supported())


class Bf16Conv(nn.Module):
    """A ``Conv2d`` (zero padding) and the activation after it (``"relu"``, ``"hardtanh"`` with
    its bounds, or ``"none"``) as one oneDNN primitive in bfloat16, channels-last."""

    def __init__(
        self, conv: nn.Conv2d, attr: str = "none", scalars: list[float] | None = None
    ) -> None:
        super().__init__()
        if not fusable(conv):
            raise ValueError(f"{conv}: only numeric zero padding is fused")
        weight = conv.weight.detach().to(torch.bfloat16)
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        bias = None if conv.bias is None else conv.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.attr = attr
        self.scalars = list(scalars or [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last),
            self.weight,
            self.bias,
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
            self.attr,
            self.scalars,
            "",
        )

    def extra_repr(self) -> str:
        return (
            f"{tuple(self.weight.shape)}, stride={self.stride}, groups={self.groups}, {self.attr}"
        )


def fusable(conv: nn.Module) -> bool:
    """Whether ``conv`` is a ``Conv2d`` that :class:`Bf16Conv` can run (zero padding given in
    pixels, not ``"same"``)."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _activation(module: nn.Module) -> tuple[str, list[float]] | None:
    """oneDNN's name and scalars for an activation it can fuse, or ``None``."""
    if isinstance(module, nn.ReLU):
        return "relu", []
    if isinstance(module, nn.Hardtanh):  # ReLU6 is Hardtanh(0, 6)
        return "hardtanh", [float(module.min_val), float(module.max_val)]
    return None


def fuse_bf16_convs(module: nn.Module) -> nn.Module:
    """``module`` (changed in place, and returned) with every ``Conv2d`` that is
    :func:`fusable` a :class:`Bf16Conv` (others stay, to run under autocast): where the next
    layer of its ``Sequential`` but for ``Identity`` ones (what batch norm becomes once folded)
    is a ReLU or ReLU6, that activation fused in and made ``Identity``."""
    for sequence in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        layers = [
            (i, layer) for i, layer in enumerate(sequence) if not isinstance(layer, nn.Identity)
        ]
        for (i, conv), (j, after) in pairwise(layers):
            fused = _activation(after)
            if fusable(conv) and fused is not None:
                sequence[i] = Bf16Conv(conv, *fused)
                sequence[j] = nn.Identity()
    for name, conv in [(n, m) for n, m in module.named_modules() if fusable(m)]:
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        setattr(parent, attribute, Bf16Conv(conv))
    return module
