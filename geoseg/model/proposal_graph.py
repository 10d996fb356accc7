"""What the CPU runners of the backbone compute in one go: the feature pyramid, channels-last,
and the region proposal head's maps of it (:mod:`geoseg.model.onnx_backbone` exports it to
ONNX Runtime, :mod:`geoseg.model.bf16_backbone` runs it in bfloat16)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from geoseg.model.folded_backbone import fold_frozen_batch_norm, weights_state

__all__ = ["ProposalGraph", "ProposalMaps", "folded_graph", "graph_outputs", "graph_state"]


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


def graph_state(source: nn.Module, proposal_head: nn.Module | None) -> tuple[object, ...]:
    """What a change to the weights of ``source`` or ``proposal_head`` changes (a runner makes
    its graph again when it differs)."""
    state = weights_state(source)
    if proposal_head is not None:
        state += weights_state(proposal_head)
    return state


def folded_graph(
    source: nn.Module, proposal_head: nn.Module | None, example: torch.Tensor
) -> tuple[list[str], ProposalGraph]:
    """The names of ``source``'s pyramid levels (from ``example``) and the graph of its folded
    copy (:func:`~geoseg.model.folded_backbone.fold_frozen_batch_norm`, in eval mode) with
    ``proposal_head`` (which keeps its own mode: it may be the network's, being trained)."""
    with torch.inference_mode(False), torch.no_grad():
        folded = fold_frozen_batch_norm(source).eval().float()
        names = list(folded(example))
    return names, ProposalGraph(folded, proposal_head)


def graph_outputs(
    names: Sequence[str], out: Sequence[torch.Tensor], with_maps: bool
) -> tuple[OrderedDict[str, torch.Tensor], ProposalMaps | None]:
    """A :class:`ProposalGraph`'s outputs handed over: the levels by name as ``(N, C, h, w)``
    views of their channels-last storage (as the heads' RoIAlign reads them), and the maps
    where ``with_maps``."""
    n = len(names)
    features = OrderedDict(
        (name, level.permute(0, 3, 1, 2)) for name, level in zip(names, out[:n], strict=True)
    )
    maps = ProposalMaps(list(out[n : 2 * n]), list(out[2 * n : 3 * n])) if with_maps else None
    return features, maps
