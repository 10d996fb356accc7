"""The folded backbone run by ONNX Runtime, on the CPU.

ONNX Runtime's CPU kernels fuse what torch runs as separate steps (a pointwise convolution's
bias, the ReLU6 after it, the layout changes between them), so the folded MobileNetV2 with its
pyramid takes about 0.12 s instead of 0.18-0.26 s for a 512 px tile on one thread; the
features equal torch's to float rounding (about 1e-4 on features of magnitude 10). The region
proposal network's head (its convolutions over every pyramid level) can run in the same graph:
:func:`proposals_from_maps` makes torchvision's proposals from its maps.

:class:`OnnxBackbone` exports the folded copy (:mod:`geoseg.model.folded_backbone`) to an ONNX
graph in memory when it is first called (about a second; nothing is written to disk) and again
after any change to the weights, so a network still being trained is seen as it is. Where
ONNX Runtime is not installed, or a backbone does not export, it runs the folded copy in torch
instead (:func:`backbone_runner`).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops

from geoseg.model.folded_backbone import FoldedBackbone
from geoseg.model.proposal_graph import ProposalMaps, folded_graph, graph_outputs, graph_state

__all__ = [
    "OnnxBackbone",
    "ProposalMaps",
    "backbone_runner",
    "cpu_session",
    "exported_graph",
    "onnxruntime_available",
    "proposals_from_maps",
    "shared_cpu_arena",
]

log = logging.getLogger(__name__)

Runner = Callable[[torch.Tensor], "OrderedDict[str, torch.Tensor]"]


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def backbone_runner(
    source: nn.Module, device: torch.device, proposal_head: nn.Module | None = None
) -> Runner:
    """What computes ``source``'s features at inference: ONNX Runtime on the CPU where it is
    installed (with ``proposal_head``'s maps too, where given), else the folded copy in torch
    (on CUDA always). (:func:`geoseg.model.bf16_backbone.bf16_runner` gives the runner of
    fine readings on CPUs made for bfloat16.)"""
    if device.type == "cpu" and onnxruntime_available():
        return OnnxBackbone(source, proposal_head)
    return FoldedBackbone(source)


def proposals_from_maps(
    rpn: RegionProposalNetwork,
    images: ImageList,
    features: OrderedDict[str, torch.Tensor],
    maps: ProposalMaps,
) -> list[torch.Tensor]:
    """What ``rpn(images, features)`` proposes at inference, from its head's ``maps`` computed
    elsewhere (torchvision's ``RegionProposalNetwork.forward`` without the head and the
    losses).

    torchvision decodes the deltas of every anchor (about 65,000 in a 512 px tile) and then
    keeps each level's best ``pre_nms_top_n``; this picks those first, with torchvision's own
    selection, and decodes only them (a few thousand): the same boxes, in the same order,
    for a twentieth of the decoding."""
    n = len(images.image_sizes)
    anchors = torch.stack(rpn.anchor_generator(images, list(features.values())))
    # each level's anchors in torchvision's order: rows, then columns, then anchor shapes
    objectness = torch.cat([o.permute(0, 2, 3, 1).reshape(n, -1) for o in maps.objectness], 1)
    deltas = torch.cat(
        [
            d.view(n, -1, 4, *d.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
            for d in maps.deltas
        ],
        1,
    )
    per_level = [int(o[0].numel()) for o in maps.objectness]
    top = rpn._get_top_n_idx(objectness, per_level)  # (n, kept): each level's best, in order
    rows = torch.arange(n, device=top.device)[:, None]
    boxes = rpn.box_coder.decode_single(
        deltas[rows, top].reshape(-1, 4), anchors[rows, top].reshape(-1, 4)
    ).view(n, -1, 4)
    scores = torch.sigmoid(objectness[rows, top])
    level_of = torch.repeat_interleave(
        torch.arange(len(per_level), device=top.device),
        torch.tensor(per_level, device=top.device),
    )[top]
    return [
        _kept_proposals(rpn, b, s, lv, size)
        for b, s, lv, size in zip(boxes, scores, level_of, images.image_sizes, strict=True)
    ]


def _kept_proposals(
    rpn: RegionProposalNetwork,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    levels: torch.Tensor,
    image_size: tuple[int, int],
) -> torch.Tensor:
    """One image's proposals after the per-level selection, as torchvision's
    ``RegionProposalNetwork.filter_proposals`` finishes them: clipped to the image, small and
    unlikely ones dropped, suppressed level by level, the best ``post_nms_top_n`` kept, in
    order of score.

    Greedy suppression keeps or drops a box by the boxes scored above it alone, so the boxes
    scored from some cut keep what they would keep among all; once they keep
    ``post_nms_top_n``, the boxes under the cut cannot change the best ones. The cut starts
    at twice ``post_nms_top_n`` boxes and doubles until that holds (a 512 px tile: about 700
    of its 4,000 boxes, for a sixth of the suppression's time)."""
    boxes = box_ops.clip_boxes_to_image(boxes, image_size)
    keep = box_ops.remove_small_boxes(boxes, rpn.min_size)
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    keep = torch.where(scores >= rpn.score_thresh)[0]
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    wanted, count = rpn.post_nms_top_n(), len(scores)
    by_score = scores.argsort(descending=True)
    head = min(count, 2 * wanted)
    while True:
        if head < count:  # boxes scored the same as the last one in stay with it
            head = int((scores >= scores[by_score[head - 1]]).sum())
        kept = _suppressed_by_level(boxes, scores, levels, by_score[:head], rpn.nms_thresh)
        if len(kept) >= wanted or head >= count:
            return boxes[kept[:wanted]]
        head = min(count, 2 * head)


def _suppressed_by_level(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    levels: torch.Tensor,
    among: torch.Tensor,
    iou: float,
) -> torch.Tensor:
    """Indices of the boxes ``among`` those indexed that non-maximum suppression at ``iou``
    keeps, each pyramid level on its own (torchvision's ``batched_nms`` on the CPU), best
    score first."""
    among = among.sort().values  # in index order, as torchvision hands them on: equal
    kept = [among[:0]]  # scores then fall the same way
    level_of = levels[among]
    for level in level_of.unique():
        these = among[level_of == level]
        kept.append(these[box_ops.nms(boxes[these], scores[these], iou)])
    out = torch.cat(kept).sort().values
    return out[scores[out].sort(descending=True)[1]]


class OnnxBackbone:
    """Calls a backbone's folded copy through an ONNX Runtime session (see the module
    docstring); runs :class:`~geoseg.model.folded_backbone.FoldedBackbone` instead, for good,
    once the export has failed."""

    def __init__(self, source: nn.Module, proposal_head: nn.Module | None = None) -> None:
        self.source = source
        self.proposal_head = proposal_head
        self._session: object | None = None
        self._names: list[str] = []
        self._made_from: tuple[object, ...] = ()
        self._threads = 0
        self._export_failed = False
        self._fallback: FoldedBackbone | None = None

    def __call__(self, pixels: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """The source's features of ``pixels`` ``(N, 3, H, W)``, float32 on the CPU: each level
        float32 ``(N, C, h, w)``, stored channels-last (as :mod:`geoseg.model.roi_sampling`
        reads them)."""
        return self.run(pixels)[0]

    def run(
        self, pixels: torch.Tensor
    ) -> tuple[OrderedDict[str, torch.Tensor], ProposalMaps | None]:
        """The features (as :meth:`__call__` gives them) and the proposal head's maps of them,
        ``None`` without a head or where torch computed the features."""
        session = self._current()
        if session is None:
            if self._fallback is None:
                self._fallback = FoldedBackbone(self.source)
            return self._fallback(pixels), None
        arrays = session.run(None, {"pixels": pixels.contiguous().numpy()})  # type: ignore[attr-defined]
        out = [torch.from_numpy(array) for array in arrays]
        return graph_outputs(self._names, out, self.proposal_head is not None)

    @property
    def export_failed(self) -> bool:
        """Whether the export has failed (the folded copy then runs in torch, for good)."""
        return self._export_failed

    def __getstate__(self) -> dict[str, object]:
        """Pickled without its session (made again where it is next called)."""
        return {**self.__dict__, "_session": None, "_made_from": ()}

    def _current(self) -> object | None:
        """The session for the weights as they are now (exported again after a change);
        ``None`` once an export has failed."""
        if self._export_failed:
            return None
        state = graph_state(self.source, self.proposal_head)
        threads = torch.get_num_threads()
        if self._session is None or state != self._made_from or threads != self._threads:
            try:
                self._session = self._exported(threads)
            except Exception as error:  # an exporter or runtime that cannot take this backbone
                log.warning("backbone runs in torch: ONNX export failed (%s)", error)
                self._export_failed = True
                return None
            self._made_from, self._threads = state, threads
        return self._session

    def _exported(self, threads: int) -> object:
        self._names, graph = exported_graph(self.source, self.proposal_head)
        return cpu_session(graph, threads)


def exported_graph(
    source: nn.Module, proposal_head: nn.Module | None = None
) -> tuple[list[str], bytes]:
    """The names of ``source``'s pyramid levels and the ONNX graph (serialized) of its folded
    copy with ``proposal_head``: input ``pixels`` ``(N, 3, H, W)``; outputs ``level{i}``
    (channels-last), then, with a head, ``objectness{i}`` and ``deltas{i}``."""
    example = torch.zeros((2, 3, 64, 96))
    names, proposal_graph = folded_graph(source, proposal_head, example)
    n = len(names)
    outputs = [f"level{i}" for i in range(n)]
    if proposal_head is not None:
        outputs += [f"objectness{i}" for i in range(n)] + [f"deltas{i}" for i in range(n)]
    with torch.inference_mode(False), torch.no_grad():
        graph = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                proposal_graph,
                (example,),
                graph,
                dynamo=False,
                input_names=["pixels"],
                output_names=outputs,
                dynamic_axes={"pixels": {0: "n", 2: "height", 3: "width"}},
                opset_version=17,
            )
    return names, graph.getvalue()


def cpu_session(graph: bytes | str, threads: int) -> object:
    """An ONNX Runtime session on the CPU for ``graph`` (serialized, or a file's path), run
    on ``threads`` threads as the backbone runners run it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # idle threads wait rather than spin: the reading and vectorizing threads need the cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    # Buffers come from one arena that every session of the process shares: each weight
    # set's own arena would hold its working memory between runs (about 250 MB a set,
    # benchmarks/README.md, session 34), and no arena at all maps fresh pages for every run,
    # 15-20 % of the graph's time (session 42). Where it cannot be shared, no arena.
    shared = shared_cpu_arena()
    options.enable_cpu_mem_arena = shared
    if shared:
        options.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


_ARENA_LOCK = threading.Lock()
_arena_shared: bool | None = None


def shared_cpu_arena() -> bool:
    """Whether ONNX Runtime's sessions of this process take their CPU buffers from one shared
    arena, registered on the first call (``False`` where the runtime cannot register it, or
    where the environment sets ``GEOSEG_ORT_ARENA=0``: each run's buffers then go back to
    the system, less memory held for more time)."""
    global _arena_shared
    with _ARENA_LOCK:
        if _arena_shared is None and os.environ.get("GEOSEG_ORT_ARENA", "1") == "0":
            _arena_shared = False
        if _arena_shared is None:
            import onnxruntime as ort

            try:
                where = ort.OrtMemoryInfo(
                    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                )
                ort.create_and_register_allocator(where, None)
                _arena_shared = True
            except Exception as error:  # a runtime without shared allocators, or one taken
                log.info("ONNX Runtime sessions keep no arena: %s", error)
                _arena_shared = False
        return _arena_shared
