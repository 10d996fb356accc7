"""What the CPU runners of the backbone compute in one go: the feature pyramid, channels-last,
and the region proposal head's maps of it (:mod:`geoseg.model.onnx_backbone` exports it to
ONNX Runtime, :mod:`geoseg.model.bf16_backbone` runs it in bfloat16)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

__all__ = ["ProposalGraph", "ProposalMaps"]


class ProposalMaps(NamedTuple):
    """The region proposal head's output: per pyramid level, objectness ``(N, A, h, w)`` and
    box deltas ``(N, 4 A, h, w)``."""

    objectness: list[torch.Tensor]
    deltas: list[torch.Tensor]


class ProposalGraph(nn.Module):
    """A backbone's feature pyramid as a tuple, each level channels-last ``(N, h, w, C)``,
    then, with ``with_maps`` and a proposal head, its objectness and deltas of each level."""

    def __init__(self, backbone: nn.Module, proposal_head: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.proposal_head = proposal_head

    def forward(self, pixels: torch.Tensor, with_maps: bool = True) -> tuple[torch.Tensor, ...]:
        levels = list(self.backbone(pixels).values())
        out = [level.permute(0, 2, 3, 1) for level in levels]
        if with_maps and self.proposal_head is not None:
            objectness, deltas = self.proposal_head(levels)
            out += [*objectness, *deltas]
        return tuple(out)
