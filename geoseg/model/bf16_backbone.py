"""The folded backbone, its pyramid and the proposal head in bfloat16, on CPUs made for it.

Intel CPUs with AMX tiles and AVX-512 bfloat16 (Xeon since Sapphire Rapids), and AMD CPUs with
AVX-512 bfloat16 (EPYC and Ryzen since Zen 4), multiply bfloat16 matrices faster than float32
ones, and oneDNN runs torch's convolutions on those units under
``torch.autocast("cpu", dtype=torch.bfloat16)``. There the folded backbone
(:mod:`geoseg.model.folded_backbone`), its pyramid and the region proposal head take about half
the time they take in float32 through ONNX Runtime (0.08-0.09 s against 0.17 s a 512 px tile,
one thread); their outputs differ from float32 by about 1-2.5 % of their mean magnitude
(bfloat16 keeps 8 bits of mantissa), and the detections, through ``geoseg run``, score
within an object or two of float32's on one scene, a little under them pooled over shifts of
the tile grid (the held-out city 0.483 against 0.495 on a Zen 4; the model card). Each
convolution runs with its ReLU6 or ReLU fused into one oneDNN primitive
(:mod:`geoseg.model.bf16_convs`; the same outputs as autocast's layer by layer, a third less
time). Of the heads after them, the box head's two layers multiply in bfloat16 too
(:class:`~geoseg.model.roi_sampling.ChannelsLastBoxHead`); the box predictor, which
regresses the boxes, and the mask head stay float32.
Intel CPUs with AVX-512 bfloat16 but no AMX run it slower than float32, so they keep float32.

:func:`bf16_fast` says whether this CPU has those units; ``GEOSEG_CPU_BF16=0`` turns the path
off (float32 through ONNX Runtime, as on every other CPU) and ``GEOSEG_CPU_BF16=1`` turns it
on whatever the CPU.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from geoseg.model.bf16_convs import fuse_bf16_convs, fused_convs_available
from geoseg.model.proposal_graph import (
    ProposalGraph,
    ProposalMaps,
    folded_graph,
    graph_outputs,
    graph_state,
)

__all__ = [
    "BF16_ENV",
    "BF16_UP_TO_M",
    "Bf16Backbone",
    "bf16_fast",
    "bf16_runner",
    "cpu_vendor",
    "read_cpu_vendor",
]

BF16_ENV = "GEOSEG_CPU_BF16"
"""Set to ``0`` (or ``off``, ``false``, ``no``) to keep the CPU path in float32, to ``1`` (or
``on``, ``true``, ``yes``) to run it in bfloat16 whatever the CPU."""
BF16_UP_TO_M = 1.0
"""Tiles read at this GSD or finer (aerial and drone imagery: buildings and boats tens of
pixels wide) go through the bfloat16 runner; coarser ones (Sentinel-2 ships of 2-5 px, fields)
stay in float32, where bfloat16 moved a held-out ship under its threshold."""


def bf16_fast() -> bool:
    """Whether the backbone runs in bfloat16 on this CPU: :data:`BF16_ENV` says so, or else the
    CPU has AVX-512 bfloat16 and either AMX tiles (Intel) or an AMD core (Zen 4 and later)."""
    setting = os.environ.get(BF16_ENV, "").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return False
    if setting in ("1", "on", "true", "yes"):
        return True
    cpu = getattr(torch, "cpu", None)
    try:
        if not cpu._is_avx512_bf16_supported():  # type: ignore[union-attr]
            return False
        return bool(cpu._is_amx_tile_supported() or cpu_vendor() == "AuthenticAMD")  # type: ignore[union-attr]
    except AttributeError:  # a torch without these probes
        return False


@functools.cache
def cpu_vendor() -> str:
    """This CPU's vendor as x86 CPUs name themselves (``GenuineIntel``, ``AuthenticAMD``):
    from ``/proc/cpuinfo`` on Linux, else from :func:`platform.processor` where it names one
    (Windows does), else ``""``."""
    vendor = read_cpu_vendor(Path("/proc/cpuinfo"))
    if vendor:
        return vendor
    processor = platform.processor()
    return next((name for name in ("GenuineIntel", "AuthenticAMD") if name in processor), "")


def read_cpu_vendor(cpuinfo: Path) -> str:
    """The ``vendor_id`` that a ``/proc/cpuinfo`` file names, or ``""``."""
    try:
        with cpuinfo.open(encoding="ascii", errors="replace") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    return value.strip()
    except OSError:
        pass
    return ""


def bf16_runner(
    source: nn.Module, device: torch.device, proposal_head: nn.Module | None = None
) -> Bf16Backbone | None:
    """A :class:`Bf16Backbone` of ``source`` where ``device`` is a CPU that :func:`bf16_fast`
    approves, else ``None``."""
    if device.type == "cpu" and bf16_fast():
        return Bf16Backbone(source, proposal_head)
    return None


class Bf16Backbone:
    """Runs a backbone's folded copy, and the proposal head where given, channels-last in
    bfloat16 (its convolutions fused with their activations where this torch can,
    :func:`~geoseg.model.bf16_convs.fuse_bf16_convs`, the rest under autocast); hands over
    float32 features stored channels-last (as
    :class:`~geoseg.model.onnx_backbone.OnnxBackbone` does, and
    :mod:`geoseg.model.roi_sampling` reads them). Folded again after any change to the
    weights, so a network being trained is seen as it is."""

    def __init__(
        self, source: nn.Module, proposal_head: nn.Module | None = None, *, fuse: bool = True
    ) -> None:
        self.source = source
        self.proposal_head = proposal_head
        self.fuse = fuse  # False: every layer on its own under autocast (for comparisons)
        self._graph: ProposalGraph | None = None
        self._names: list[str] = []
        self._made_from: tuple[object, ...] = ()

    def __call__(self, pixels: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """The features of ``pixels`` ``(N, 3, H, W)``: each level float32 ``(N, C, h, w)``,
        stored channels-last (the proposal head is not run)."""
        return self._run(pixels, with_maps=False)[0]

    def run(
        self, pixels: torch.Tensor
    ) -> tuple[OrderedDict[str, torch.Tensor], ProposalMaps | None]:
        """The features (as :meth:`__call__` gives them) and the proposal head's maps of them,
        float32 (``None`` without a head)."""
        return self._run(pixels, with_maps=self.proposal_head is not None)

    def _run(
        self, pixels: torch.Tensor, *, with_maps: bool
    ) -> tuple[OrderedDict[str, torch.Tensor], ProposalMaps | None]:
        graph = self._current()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = graph(pixels.contiguous(memory_format=torch.channels_last), with_maps=with_maps)
        out = [o.float() for o in out]  # keeps each output's channels-last layout
        return graph_outputs(self._names, out, with_maps)

    def _current(self) -> ProposalGraph:
        state = graph_state(self.source, self.proposal_head)
        if self._graph is None or state != self._made_from:
            head = copy.deepcopy(self.proposal_head)  # the network's own stays as it is
            self._names, graph = folded_graph(self.source, head, torch.zeros((1, 3, 64, 64)))
            if self.fuse and fused_convs_available():
                graph = fuse_bf16_convs(graph)
            self._graph = graph.eval().to(memory_format=torch.channels_last)
            self._made_from = state
        return self._graph

    def __getstate__(self) -> dict[str, object]:
        """Pickled without its folded copy (made again where it is next called)."""
        return {**self.__dict__, "_graph": None, "_made_from": ()}
