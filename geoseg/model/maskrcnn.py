"""geoseg's built-in backend: a small Mask R-CNN (torchvision) sized for CPUs.

The network is torchvision's :class:`~torchvision.models.detection.MaskRCNN` with a feature
pyramid from stride 4 (small ships and houses) to stride 64, slim box and mask heads, and
anchors from 8 to 256 pixels, on one of two backbones (``MaskRCNNArch.backbone``):

- ``"mobilenet_v2"``: torchvision's MobileNetV2 features up to stride 32, with frozen batch
  norm, started from ImageNet weights shipped in ``geoseg/model/weights`` (see
  :func:`load_backbone_weights`; nothing is downloaded). Pixels are scaled to -1..1.
- ``"resnet"``: a narrow ResNet-like backbone with BatchNorm, from random weights (the
  original default; older checkpoints without a ``backbone`` key are this one).

Images are never rescaled inside the network: a 512-pixel tile is seen at 512 pixels, so the
ground sampling distance a model was trained at is the one it expects (``gsd_range_m``; the
pipeline resamples scenes outside that range).

- :class:`MaskRCNNSegmenter` follows :class:`geoseg.model.Segmenter`.
- :func:`load_checkpoint` loads a ``.pt`` written by ``geoseg train``; :func:`load_default`
  the weights shipped in ``geoseg/model/weights/default.pt``.
- :func:`build_network` makes the bare ``torch.nn.Module`` (used by :mod:`geoseg.learn.train`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.models.mobilenetv2 import mobilenet_v2
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FrozenBatchNorm2d, clip_boxes_to_image
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from geoseg.config import TTA_VIEW_COUNTS, proposals_at_gsd, value_at_gsd
from geoseg.errors import ModelError, UntrainedModelWarning, UserInputError
from geoseg.gpu import CPU_BATCH
from geoseg.model.bf16_backbone import BF16_UP_TO_M, Bf16Backbone, bf16_runner
from geoseg.model.checkpoint import read_checkpoint
from geoseg.model.checksum import file_sha256
from geoseg.model.flip_views import FUSE_IOU, View, fuse_views, views
from geoseg.model.onnx_backbone import OnnxBackbone, backbone_runner, proposals_from_maps
from geoseg.model.read_settings import parse_settings, settings_from_payload
from geoseg.model.roi_sampling import ChannelsLastBoxHead, SampledRoIAlign

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_WEIGHTS",
    "IMAGENET_BACKBONE",
    "NORMALIZATION",
    "PRETRAINED_ARCH",
    "SCORE_FLOOR",
    "MaskRCNNArch",
    "MaskRCNNSegmenter",
    "build_network",
    "gpu_out_of_memory",
    "load_backbone_weights",
    "load_checkpoint",
    "load_default",
    "network_normalization",
    "resolve_device",
    "rpn_test_counts",
    "set_rpn_test_counts",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CLASSES = ("building", "field", "ship")
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default.pt"
IMAGENET_BACKBONE = Path(__file__).parent / "weights" / "mobilenet_v2_imagenet.pt"
"""MobileNetV2 ``features`` (stride 2 to 32) trained on ImageNet, fp16; made by
``tools/make_backbone_weights.py`` from the Apache-2.0 weights of google-coral/test_data."""
SCORE_FLOOR = 0.05
"""Instances scored below this are dropped by the model; the pipeline applies ``--min-score``."""

NORMALIZATION: dict[str, Any] = {
    "input": "float32 in 0..1: uint8 as value/255, other types a per-band 2-98 percentile "
    "stretch over the scene (geoseg.scene.normalize)",
    "image_mean": [0.4, 0.4, 0.4],
    "image_std": [0.25, 0.25, 0.25],
}
MOBILENET_NORMALIZATION: dict[str, Any] = {
    **NORMALIZATION,
    "image_mean": [0.5, 0.5, 0.5],  # the pretrained MobileNetV2 wants -1..1
    "image_std": [0.5, 0.5, 0.5],
}
MOBILENET_TAPS = (3, 6, 13, 17)
"""``features`` blocks whose outputs feed the pyramid: strides 4, 8, 16 and 32 (24, 32, 96 and
320 channels); the 1280-channel block 18 is not used."""
MOBILENET_WIDTHS = (24, 32, 96, 320)


@dataclass(frozen=True, slots=True)
class MaskRCNNArch:
    """The shape of the network; stored in every checkpoint so it can be rebuilt exactly.

    ``backbone``: ``"resnet"`` or ``"mobilenet_v2"`` (see the module doc). ``widths``/``blocks``:
    channels and residual blocks of the four ResNet stages (strides 4, 8, 16, 32; unused by
    MobileNetV2). ``frozen_blocks``: MobileNetV2 ``features`` blocks kept fixed in training
    (the first ``frozen_blocks``). ``fpn_channels``: width of the feature pyramid.
    ``anchor_sizes_px``: anchor sides per pyramid level (strides 4 to 64), each with every
    ``aspect_ratios``.
    """

    backbone: str = "resnet"
    frozen_blocks: int = 0
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (1, 2, 2, 1)
    fpn_channels: int = 96
    anchor_sizes_px: tuple[tuple[int, ...], ...] = (
        (8, 12),
        (16, 24),
        (32, 48),
        (64, 96),
        (128, 256),
    )
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_head_dim: int = 256
    mask_layers: tuple[int, ...] = (64, 64)
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 500
    rpn_pre_nms_top_n_test: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 128
    box_detections_per_img: int = 300
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (checkpoint-safe)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MaskRCNNArch:
        """Rebuild from :meth:`to_dict` output; unknown keys go to ``extra``."""
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        known = {k: v for k, v in data.items() if k in names}
        known.setdefault("backbone", "resnet")  # checkpoints older than the key
        for key in ("widths", "blocks", "aspect_ratios", "mask_layers"):
            if key in known:
                known[key] = tuple(known[key])
        if "anchor_sizes_px" in known:
            known["anchor_sizes_px"] = tuple(tuple(s) for s in known["anchor_sizes_px"])
        extra: dict[str, Any] = {}
        level: Any = data
        while isinstance(level, Mapping):  # older files nested "extra" in "extra"
            extra.update({k: v for k, v in level.items() if k not in names and k != "extra"})
            level = level.get("extra")
        return cls(**known, extra=extra)


class _NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform without its resizing: tiles are seen at their own size."""

    def resize(self, image: torch.Tensor, target: Any = None) -> tuple[torch.Tensor, Any]:
        return image, target


PRETRAINED_ARCH = MaskRCNNArch(backbone="mobilenet_v2", frozen_blocks=4, fpn_channels=96)
"""The network that ``geoseg train --init imagenet`` builds (and the shipped default uses)."""


def network_normalization(arch: MaskRCNNArch) -> dict[str, Any]:
    """How pixels are scaled for a backbone (the pretrained one wants -1..1)."""
    return dict(MOBILENET_NORMALIZATION if arch.backbone == "mobilenet_v2" else NORMALIZATION)


def _backbone(arch: MaskRCNNArch) -> BackboneWithFPN:
    if arch.backbone == "mobilenet_v2":
        return _mobilenet_backbone(arch)
    if arch.backbone != "resnet":
        raise UserInputError(f"unknown backbone {arch.backbone!r}: use resnet or mobilenet_v2")
    return _resnet_backbone(arch)


def _mobilenet_backbone(arch: MaskRCNNArch) -> BackboneWithFPN:
    features = mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d).features
    for block in features[: arch.frozen_blocks]:
        block.requires_grad_(False)
    return BackboneWithFPN(
        features,
        return_layers={str(tap): str(i) for i, tap in enumerate(MOBILENET_TAPS)},
        in_channels_list=list(MOBILENET_WIDTHS),
        out_channels=arch.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def load_backbone_weights(network: MaskRCNN, source: str | Path) -> int:
    """Load a torchvision ``mobilenet_v2`` state dict (``features.*`` keys; a classifier is
    ignored) into ``network``'s MobileNetV2 backbone; returns how many tensors were loaded.

    Raises :class:`~geoseg.errors.UserInputError` naming ``source`` when it is not one.
    """
    import torch as _torch

    path = Path(source)
    try:
        state = _torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise UserInputError(f"{path}: not a readable torch state dict ({exc})") from exc
    if not isinstance(state, Mapping):
        raise UserInputError(f"{path}: not a state dict of a torchvision mobilenet_v2")
    body = network.backbone.body
    own = body.state_dict()
    prefix = "features."
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    fits = {k: v.float() for k, v in picked.items() if k in own and own[k].shape == v.shape}
    wanted = [k for k in own if not k.endswith("num_batches_tracked")]
    if len(fits) < len(wanted):
        raise UserInputError(
            f"{path}: {len(fits)} of the {len(wanted)} tensors of a mobilenet_v2 backbone fit; "
            "give the state dict of torchvision.models.mobilenet_v2"
        )
    body.load_state_dict(fits, strict=False)
    return len(fits)


def _resnet_backbone(arch: MaskRCNNArch) -> BackboneWithFPN:
    stem_width = arch.widths[0]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["stem"] = nn.Sequential(
        nn.Conv2d(3, stem_width // 2, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(stem_width // 2),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width // 2, stem_width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(stem_width),
        nn.ReLU(inplace=True),
    )
    in_width = stem_width
    for i, (width, n_blocks) in enumerate(zip(arch.widths, arch.blocks, strict=True)):
        stride = 1 if i == 0 else 2
        blocks: list[nn.Module] = []
        for b in range(n_blocks):
            s = stride if b == 0 else 1
            down = None
            if s != 1 or in_width != width:
                down = nn.Sequential(
                    nn.Conv2d(in_width, width, 1, stride=s, bias=False), nn.BatchNorm2d(width)
                )
            blocks.append(BasicBlock(in_width, width, stride=s, downsample=down))
            in_width = width
        layers[f"layer{i + 1}"] = nn.Sequential(*blocks)
    body = nn.Sequential(layers)
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    for m in body.modules():  # start each residual branch near zero: stable from scratch
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
    return BackboneWithFPN(
        body,
        return_layers={f"layer{i + 1}": str(i) for i in range(len(arch.widths))},
        in_channels_list=list(arch.widths),
        out_channels=arch.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def build_network(
    arch: MaskRCNNArch, n_classes: int, normalization: Mapping[str, Any] | None = None
) -> MaskRCNN:
    """A randomly initialised torchvision Mask R-CNN for ``n_classes`` (plus background)."""
    norm = dict(normalization or network_normalization(arch))
    backbone = _backbone(arch)
    channels = arch.fpn_channels
    anchors = AnchorGenerator(
        sizes=arch.anchor_sizes_px,
        aspect_ratios=(arch.aspect_ratios,) * len(arch.anchor_sizes_px),
    )
    n_anchors = len(arch.anchor_sizes_px[0]) * len(arch.aspect_ratios)
    n_levels = len(MOBILENET_TAPS) if arch.backbone == "mobilenet_v2" else len(arch.widths)
    levels = [str(i) for i in range(n_levels)]
    model = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, n_anchors),
        rpn_pre_nms_top_n_train=arch.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=arch.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=arch.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=arch.rpn_post_nms_top_n_test,
        box_roi_pool=SampledRoIAlign(levels, output_size=7, sampling_ratio=2),
        box_head=ChannelsLastBoxHead(channels * 7 * 7, arch.box_head_dim),
        box_predictor=FastRCNNPredictor(arch.box_head_dim, n_classes + 1),
        box_score_thresh=SCORE_FLOOR,
        box_detections_per_img=arch.box_detections_per_img,
        box_batch_size_per_image=arch.box_batch_size_per_image,
        mask_roi_pool=SampledRoIAlign(levels, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, list(arch.mask_layers), dilation=1),
        mask_predictor=MaskRCNNPredictor(arch.mask_layers[-1], arch.mask_layers[-1], n_classes + 1),
    )
    model.transform = _NoResizeTransform(
        min_size=512,
        max_size=4096,
        image_mean=list(norm["image_mean"]),
        image_std=list(norm["image_std"]),
    )
    return model


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; otherwise the named torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise UserInputError(
            f"--device {device!r}: not a torch device (cpu, cuda, cuda:1)"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"--device {device!r}: CUDA is not available here; use cpu or auto")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise UserInputError(
            f"--device {device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
            f"numbered from 0"
        )
    return resolved


_ALLOCATION_FAILURES = ("out of memory", "ALLOC_FAILED")
"""What a CUDA library's error says when it could not allocate: cuDNN and cuBLAS report
``CUDNN_STATUS_ALLOC_FAILED`` / ``CUBLAS_STATUS_ALLOC_FAILED`` as plain ``RuntimeError``s."""


def gpu_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the GPU running out of memory (torch's own error, or a CUDA
    library's failed allocation)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(t in str(error) for t in _ALLOCATION_FAILURES)


class MaskRCNNSegmenter:
    """A Mask R-CNN that follows the :class:`geoseg.model.Segmenter` protocol.

    ``predict`` takes float32 tiles ``(N, bands, H, W)`` in 0..1 (one band is repeated to
    three, more than three are cut to the first three) and returns, per tile, the protocol's
    box form: ``boxes`` (float32 ``(K, 4)``, ``x0, y0, x1, y1`` in tile pixels), ``masks``
    (float32 ``(K, 28, 28)`` mask probabilities in those boxes, not pasted into the tile),
    ``labels`` (int64 indices into ``classes``) and ``scores`` (float32), for instances
    scored at least :data:`SCORE_FLOOR`. ``Instances.from_any(...).masks`` gives the same
    full-tile masks as torchvision's own (pasted) output. The run settings a checkpoint
    recommends (score thresholds, GSD ranges, extra readings, mask thresholds), keyword
    arguments named as the attributes of :data:`~geoseg.model.read_settings.READ_SETTINGS`,
    become attributes that :func:`geoseg.model.describe_model` reads; ``geoseg run`` applies
    them.
    """

    input_bands = 3

    def __init__(
        self,
        network: MaskRCNN,
        *,
        classes: Sequence[str],
        arch: MaskRCNNArch,
        name: str = "maskrcnn",
        checksum: str = "",
        untrained: bool = False,
        gsd_range_m: tuple[float, float] | None = None,
        normalization: Mapping[str, Any] | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        networks_by_gsd: Sequence[tuple[float, MaskRCNN]] = (),
        **settings: Any,
    ) -> None:
        self.classes = tuple(classes)
        self.arch = arch
        self.name = name
        self.checksum = checksum
        self.untrained = untrained
        self.gsd_range_m = gsd_range_m
        for attribute, value in parse_settings(settings, name).items():
            setattr(self, attribute, value)
        self.normalization = dict(normalization or network_normalization(arch))
        self._device = resolve_device(device)
        # tiles per forward pass: on a GPU every tile of a call (the planner sized the call
        # to its memory; a pass that runs out of memory is halved), on the CPU a few
        self.batch_size = batch_size or (None if self._device.type == "cuda" else CPU_BATCH)
        self.device = str(self._device)
        self.network = network.to(self._device).eval()
        main = _Network.of(self.network, self._device)  # kept as its runners: tests swap them
        self._backbone, self._bf16 = main.backbone, main.bf16
        # other weights of the same network, each for tiles read at up to its GSD
        self._by_gsd: list[tuple[float, _Network]] = [
            (float(gsd), _Network.of(other.to(self._device).eval(), self._device))
            for gsd, other in networks_by_gsd
        ]
        self._pyramid_runner: OnnxBackbone | None = None  # embed's graph, made on first use
        # the box head multiplies in bfloat16 where the backbone runs in it (False: float32,
        # as before session 48; benchmarks/model_tile_time.py --float32-box-head)
        self.box_head_bf16 = True
        self._lock = threading.Lock()  # predict sets the network's score threshold per call

    def __repr__(self) -> str:
        return (
            f"MaskRCNNSegmenter(name={self.name!r}, classes={self.classes}, device={self.device!r})"
        )

    def predict(
        self,
        tiles: np.ndarray,
        *,
        min_score: float = SCORE_FLOOR,
        tta_views: Mapping[str, int] | None = None,
        gsd_m: float | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Instances in each tile (see the class docstring), scored at least ``min_score``
        (never below :data:`SCORE_FLOOR`): the network builds masks only for those.

        ``tta_views`` (``{class name: 1, 2, 4 or 8}``, 1 for classes not named): see each tile
        in that many views (flipped, and turned for 8; :mod:`geoseg.model.flip_views`) and
        fuse a class's objects over its views: one box and score per object, its mask the
        mean of the views' masks.

        ``gsd_m``: the ground sampling distance the tiles were read at. Where a step of
        :attr:`rpn_proposals_by_gsd` reaches it, the region proposal network keeps that
        step's proposals (per pyramid level before its NMS, per tile after) instead of the
        network's own counts.

        A class in :attr:`class_fuse_iou` takes its views' boxes for one object from that box
        IoU (:data:`~geoseg.model.flip_views.FUSE_IOU` for the others).

        Each kept object of a class in :attr:`class_box_refinements` has its box moved by the
        box head that many more times (see :meth:`_refine_boxes`) before its mask is drawn.

        Tiles read at a GSD that a step of :attr:`networks_by_gsd` reaches go through that
        step's weights, others (and tiles of no known GSD) through :attr:`network`'s.
        """
        tiles = np.asarray(tiles, dtype=np.float32)
        if tiles.ndim != 4:
            raise ModelError(f"predict wants tiles (N, bands, H, W); got shape {tiles.shape}")
        tiles = _three_bands(tiles)
        counts = self._view_counts(tta_views)
        refinements = self._refinement_counts()
        floor = max(SCORE_FLOOR, float(min_score))
        one_view = max(counts) == 1
        net = self._network_at(gsd_m)
        forward = (
            partial(self._detect, net)
            if one_view and not any(refinements)
            else partial(
                self._detect_views, net, counts=counts, floor=floor, refinements=refinements
            )
        )
        out: list[dict[str, np.ndarray]] = []
        proposals = None if gsd_m is None else proposals_at_gsd(self.rpn_proposals_by_gsd, gsd_m)
        with (
            self._lock,
            torch.inference_mode(),
            _proposal_counts(net.network.rpn, proposals),
            _box_head_precision(net, self.box_head_bf16),
        ):
            # one view: the network keeps objects from the floor; several: each view keeps
            # them from SCORE_FLOOR, and the fused objects are kept from the floor
            net.network.roi_heads.score_thresh = floor if one_view else SCORE_FLOOR
            for found in self._in_passes(tiles, forward):
                out.extend(_to_instances(det) for det in found)
        return out

    @property
    def networks_by_gsd(self) -> tuple[tuple[float, MaskRCNN], ...]:
        """The other weights, as ``(GSD, network)`` steps: tiles read at up to a step's GSD
        (the first that reaches it) go through its network."""
        return tuple((gsd, net.network) for gsd, net in self._by_gsd)

    def _network_at(self, gsd_m: float | None) -> _Network:
        """The weights (and their backbone runner) for tiles read at ``gsd_m``: the first step
        of :attr:`networks_by_gsd` that reaches it, else :attr:`network`; tiles read at
        :data:`~geoseg.model.bf16_backbone.BF16_UP_TO_M` or finer through its bfloat16 runner
        where the CPU has one (:mod:`geoseg.model.bf16_backbone`)."""
        main = _Network(self.network, self._backbone, self._bf16)
        if gsd_m is None:
            return main
        net = value_at_gsd(self._by_gsd, gsd_m, main)
        if net.bf16 is not None and value_at_gsd([(BF16_UP_TO_M, True)], gsd_m, False):
            return net._replace(backbone=net.bf16)
        return net

    def _view_counts(self, tta_views: Mapping[str, int] | None) -> list[int]:
        """Views per torchvision label (0 is the background)."""
        tta_views = dict(tta_views or {})
        unknown = sorted(set(tta_views) - set(self.classes))
        if unknown:
            raise ModelError(f"tta_views names {unknown}, which the model does not know")
        counts = [1] + [int(tta_views.get(name, 1)) for name in self.classes]
        if any(count not in TTA_VIEW_COUNTS for count in counts):
            raise ModelError(f"tta_views {tta_views}: each class sees 1, 2, 4 or 8 views")
        return counts

    def _fuse_ious(self) -> list[float]:
        """The box IoU from which views' boxes are one object, per torchvision label."""
        table = self.class_fuse_iou or {}
        return [FUSE_IOU] + [float(table.get(name, FUSE_IOU)) for name in self.classes]

    def _refinement_counts(self) -> list[int]:
        """Box refinements per torchvision label (0 is the background)."""
        table = self.class_box_refinements or {}
        return [0] + [int(table.get(name, 0)) for name in self.classes]

    def _in_passes(self, tiles: np.ndarray, forward: Callable[[torch.Tensor], T]) -> Iterator[T]:
        """``forward`` of each pass of :attr:`batch_size` tiles (all of them when ``None``), on
        the network's device; a pass that runs out of GPU memory is halved, for good."""
        start = 0
        while start < len(tiles):
            size = self.batch_size or len(tiles)
            try:
                result = forward(self._to_device(tiles[start : start + size]))
            except RuntimeError as error:  # torch.cuda.OutOfMemoryError is one
                if size == 1 or not gpu_out_of_memory(error):
                    raise
                self.batch_size = size // 2
                log.warning("GPU out of memory at %d tiles a pass: %d from now", size, size // 2)
            else:
                yield result
                start += size
                continue
            if torch.cuda.is_available():  # out of the handler: the failed pass's tensors are freed
                torch.cuda.empty_cache()

    def _to_device(self, tiles: np.ndarray) -> torch.Tensor:
        """A batch on the network's device: through pinned memory, asynchronously, on CUDA."""
        batch = torch.from_numpy(np.ascontiguousarray(tiles))
        if self._device.type == "cuda":
            return batch.pin_memory().to(self._device, non_blocking=True)
        return batch.to(self._device)

    def _detect(self, net: _Network, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """torchvision's ``MaskRCNN.forward`` in eval mode, up to the 28 x 28 mask
        probabilities: boxes are scaled to the input size as ``transform.postprocess`` does,
        masks are never pasted into tiles.

        The backbone runs with its batch norm folded into its convolutions, on channels-last
        images (half the CPU time; the same features to float rounding), and on CUDA in
        float16 (autocast); the RPN and the heads run in float32, so box coordinates keep
        their precision.
        """
        network = net.network
        original = [(int(t.shape[-2]), int(t.shape[-1])) for t in batch]
        images, _ = network.transform(list(batch))
        features, proposals = self._features_and_proposals(net, images)
        detections, _ = network.roi_heads(features, proposals, images.image_sizes)
        for det, size, size_in in zip(detections, images.image_sizes, original, strict=True):
            det["boxes"] = resize_boxes(det["boxes"], size, size_in)
        return detections

    def _detect_views(
        self,
        net: _Network,
        batch: torch.Tensor,
        counts: Sequence[int],
        floor: float,
        refinements: Sequence[int],
    ) -> list[dict[str, torch.Tensor]]:
        """:meth:`_detect` with each class's objects fused over its first ``counts[label]``
        views (see :func:`~geoseg.model.flip_views.fuse_views`), kept from ``floor``, their
        boxes refined ``refinements[label]`` times (:meth:`_refine_boxes`); each fused
        object's 28 x 28 mask is the mean of the mask head's in those views.

        The other views see only the tiles where the first finds an object of a class seen in
        several, scored ``floor`` or more (see :func:`_worth_more_views`): an empty tile (open
        sea for ships, farmland for buildings) costs one view, not four."""
        heads = net.network.roi_heads
        height, width = int(batch.shape[-2]), int(batch.shape[-1])
        several = torch.tensor([count > 1 for count in counts], device=batch.device)
        seen: list[_SeenView] = []
        found: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in batch]
        tiles = list(range(len(batch)))
        for number, view in enumerate(views(max(counts))):
            if number == 1:
                tiles = [i for i in tiles if _worth_more_views(found[i][0], several, floor)]
                if not tiles:
                    break
            pixels = batch if number == 0 else batch[tiles]
            images, _ = net.network.transform(list(view.image(pixels)))
            features, proposals = self._features_and_proposals(net, images)
            pooled = heads.box_head(heads.box_roi_pool(features, proposals, images.image_sizes))
            logits, deltas = heads.box_predictor(pooled)
            boxes, scores, labels = heads.postprocess_detections(
                logits, deltas, proposals, images.image_sizes
            )
            seen.append(_SeenView(view, tiles, features, images.image_sizes))
            for i, b, s, lab in zip(tiles, boxes, scores, labels, strict=True):
                found[i].append((view.unview_boxes(b, height, width), s, lab))
        detections = []
        fuse_ious = self._fuse_ious()
        for per_view in found:
            boxes, scores, labels = fuse_views(per_view, counts, iou=fuse_ious)
            keep = scores >= floor
            detections.append(
                {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
            )
        label_views = torch.tensor(counts, device=batch.device)
        moves = torch.tensor(refinements, device=batch.device)
        for step in range(max(refinements)):
            self._refine_boxes(heads, detections, seen, label_views, moves > step, (height, width))
        self._mean_masks(heads, detections, seen, label_views, (height, width))
        return detections

    def _refine_boxes(
        self,
        heads: nn.Module,
        detections: list[dict[str, torch.Tensor]],
        seen: Sequence[_SeenView],
        label_views: torch.Tensor,
        moved: torch.Tensor,
        tile_hw: tuple[int, int],
    ) -> None:
        """Move the ``boxes`` of the objects whose label is ``moved[label]`` once more by the
        box head: its regression for the object's class, from the box as it is, in each view
        the class is seen in (the first ``label_views[label]``), turned back and averaged.

        Iterative box regression (the baseline of Cai and Vasconcelos's Cascade R-CNN, 2018):
        where the head's first box covers part of a large object, a second look from that
        box reaches further out. The object keeps its score."""
        totals = [torch.zeros_like(det["boxes"]) for det in detections]
        for index, seen_view in enumerate(seen):
            inside, boxes, labels_each = _objects_in_view(
                detections, seen_view, label_views > index, tile_hw, moved
            )
            if not sum(len(b) for b in boxes):
                continue
            labels = torch.cat(labels_each)
            pooled = heads.box_head(
                heads.box_roi_pool(seen_view.features, boxes, seen_view.image_sizes)
            )
            _, deltas = heads.box_predictor(pooled)
            rows = torch.arange(len(labels), device=labels.device)
            regressed = heads.box_coder.decode(deltas, boxes)[rows, labels]
            for i, m, size, new in zip(
                seen_view.tiles,
                inside,
                seen_view.image_sizes,
                regressed.split([len(b) for b in boxes]),
                strict=True,
            ):
                totals[i][m] += seen_view.view.unview_boxes(
                    clip_boxes_to_image(new, size), *tile_hw
                )
        for det, total in zip(detections, totals, strict=True):
            move = moved[det["labels"]]
            det["boxes"][move] = total[move] / label_views[det["labels"][move]][:, None].to(
                total.dtype
            )

    def _mean_masks(
        self,
        heads: nn.Module,
        detections: list[dict[str, torch.Tensor]],
        seen: Sequence[_SeenView],
        label_views: torch.Tensor,
        tile_hw: tuple[int, int],
    ) -> None:
        """Each fused object's ``masks``: the mask head's 28 x 28 probabilities for its box in
        each view its class is seen in (``label_views[label]``, the first ones), turned back
        and averaged (boxes in ``tile_hw`` tiles). A tile that a view did not see has no
        object that needs it (see :meth:`_detect_views`)."""
        totals: list[torch.Tensor | None] = [None] * len(detections)
        for index, seen_view in enumerate(seen):
            inside, boxes, labels = _objects_in_view(
                detections, seen_view, label_views > index, tile_hw
            )
            logits = heads.mask_predictor(
                heads.mask_head(
                    heads.mask_roi_pool(seen_view.features, boxes, seen_view.image_sizes)
                )
            )
            probs_each = maskrcnn_inference(logits, labels)
            for i, m, probs in zip(seen_view.tiles, inside, probs_each, strict=True):
                if totals[i] is None:  # view 0 sees every tile and every object's class
                    totals[i] = probs.new_zeros((len(m), *probs.shape[1:]))
                totals[i][m] += seen_view.view.unview(probs)
        for det, total in zip(detections, totals, strict=True):
            det["masks"] = total / label_views[det["labels"]].to(total.dtype)[:, None, None, None]

    def _features(self, backbone: Any, pixels: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """The backbone's feature pyramid, float32 (float16 autocast on CUDA), computed by its
        folded copy (:mod:`geoseg.model.folded_backbone`): through ONNX Runtime on the CPU
        (:mod:`geoseg.model.onnx_backbone`; in bfloat16 in torch on CPUs made for it,
        :mod:`geoseg.model.bf16_backbone`), channels-last in torch on CUDA."""
        cuda = pixels.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            features = backbone(pixels)
        # the heads take float32 (a module other than the folded copy hands on float16)
        return OrderedDict((name, level.float()) for name, level in features.items())

    def _features_and_proposals(
        self, net: _Network, images: ImageList
    ) -> tuple[OrderedDict[str, torch.Tensor], list[torch.Tensor]]:
        """:meth:`_features` of ``images`` and the RPN's proposals; on the CPU the RPN's head
        runs with the backbone (in its ONNX Runtime graph: the same proposals; or in
        bfloat16)."""
        if isinstance(net.backbone, (OnnxBackbone, Bf16Backbone)):
            features, maps = net.backbone.run(images.tensors)
            if maps is not None:
                return features, proposals_from_maps(net.network.rpn, images, features, maps)
        else:
            features = self._features(net.backbone, images.tensors)
        proposals, _ = net.network.rpn(images, features)
        return features, proposals

    def embed(self, tiles: np.ndarray) -> np.ndarray:
        """One float32 vector per tile ``(N, D)``: each feature-pyramid level of the backbone,
        average-pooled over the tile and concatenated (``D`` = pyramid width x levels).

        What :mod:`geoseg.learn.select` compares tiles by: tiles that look alike to the
        network lie close together.
        """
        tiles = _three_bands(np.asarray(tiles, dtype=np.float32))
        with self._lock, torch.inference_mode():
            out = list(self._in_passes(tiles, self._pooled_features))
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    def _pooled_features(self, batch: torch.Tensor) -> torch.Tensor:
        images, _ = self.network.transform(list(batch))
        levels = self._pyramid_only(images.tensors).values()
        return torch.cat([f.mean(dim=(2, 3)) for f in levels], dim=1).cpu()

    def _pyramid_only(self, pixels: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """:meth:`_features` without the proposal head's maps, which the CPU graph of
        :meth:`_features_and_proposals` also computes: on the CPU a second graph of the
        backbone alone, exported when :meth:`embed` is first called (embed 0.12-0.16 s a
        512 px tile instead of 0.18-0.20 s, one thread); where that graph's export has
        failed, the torch copy, without trying a second export."""
        if not isinstance(self._backbone, OnnxBackbone) or self._backbone.export_failed:
            return self._features(self._backbone, pixels)
        if self._pyramid_runner is None:
            self._pyramid_runner = OnnxBackbone(self.network.backbone)
        return self._pyramid_runner(pixels)


def rpn_test_counts(rpn: RegionProposalNetwork) -> tuple[int, int]:
    """The proposals torchvision's RPN keeps at test time: per pyramid level before its NMS,
    per image after it."""
    return rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"]


def set_rpn_test_counts(rpn: RegionProposalNetwork, counts: tuple[int, int]) -> None:
    """Set :func:`rpn_test_counts` (the RPN reads them from these dicts on every call)."""
    rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"] = counts


@contextlib.contextmanager
def _proposal_counts(rpn: RegionProposalNetwork, counts: tuple[int, int] | None) -> Iterator[None]:
    """The RPN's test-time proposal counts set to ``counts`` (before NMS, after NMS) for the
    block, then set back; ``None`` leaves them."""
    if counts is None:
        yield
        return
    saved = rpn_test_counts(rpn)
    set_rpn_test_counts(rpn, counts)
    try:
        yield
    finally:
        set_rpn_test_counts(rpn, saved)


@contextlib.contextmanager
def _box_head_precision(net: _Network, bf16: bool) -> Iterator[None]:
    """Within: ``net``'s box head multiplies in bfloat16 where its backbone runs in bfloat16
    and ``bf16`` allows it (:class:`~geoseg.model.roi_sampling.ChannelsLastBoxHead`); after,
    in float32 again."""
    head = net.network.roi_heads.box_head
    if not isinstance(head, ChannelsLastBoxHead):
        yield
        return
    head.bfloat16 = bf16 and net.bf16 is not None and net.backbone is net.bf16
    try:
        yield
    finally:
        head.bfloat16 = False


class _Network(NamedTuple):
    """One set of the segmenter's weights: the network, what runs its backbone, and what runs
    it in bfloat16 for fine readings (``None`` but on a CPU where
    :func:`~geoseg.model.bf16_backbone.bf16_fast`)."""

    network: MaskRCNN
    backbone: Any  # OnnxBackbone or Bf16Backbone on the CPU, FoldedBackbone (or torch's) else
    bf16: Bf16Backbone | None = None

    @classmethod
    def of(cls, network: MaskRCNN, device: torch.device) -> _Network:
        """``network``'s runners on ``device``."""
        runner = backbone_runner(network.backbone, device, network.rpn.head)
        return cls(network, runner, bf16_runner(network.backbone, device, network.rpn.head))


class _SeenView(NamedTuple):
    """What one view saw of a batch: the indexes of its ``tiles`` in the batch, their
    feature pyramid and image sizes (for the mask head)."""

    view: View
    tiles: list[int]
    features: OrderedDict[str, torch.Tensor]
    image_sizes: list[tuple[int, int]]


def _objects_in_view(
    detections: Sequence[dict[str, torch.Tensor]],
    seen_view: _SeenView,
    in_view: torch.Tensor,
    tile_hw: tuple[int, int],
    chosen: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """For each tile the view saw: which of its objects the view holds (``in_view[label]``,
    and ``chosen[label]`` where given), their boxes turned into the view, and their labels."""
    inside = []
    for i in seen_view.tiles:
        labels = detections[i]["labels"]
        inside.append(in_view[labels] if chosen is None else in_view[labels] & chosen[labels])
    pairs = list(zip(seen_view.tiles, inside, strict=True))
    boxes = [seen_view.view.boxes(detections[i]["boxes"][m], *tile_hw) for i, m in pairs]
    labels = [detections[i]["labels"][m] for i, m in pairs]
    return inside, boxes, labels


def _worth_more_views(
    first: tuple[torch.Tensor, torch.Tensor, torch.Tensor], several: torch.Tensor, floor: float
) -> bool:
    """Whether the first view of a tile (``boxes, scores, labels``) found an object of a
    class seen in several views (``several[label]``) scored ``floor`` or more: only then do
    the other views run on the tile. (An object that the first view scores under ``floor``
    is kept only if the other views score it far higher, which they seldom do.)"""
    _, scores, labels = first
    return bool((scores[several[labels]] >= floor).any())


def _three_bands(tiles: np.ndarray) -> np.ndarray:
    bands = tiles.shape[1]
    if bands == 3:
        return tiles
    if bands == 1:
        return np.repeat(tiles, 3, axis=1)
    if bands > 3:
        return tiles[:, :3]
    raise ModelError(f"the Mask R-CNN wants 1 or 3 bands; got {bands} (choose them with --bands)")


def _to_instances(det: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The protocol's box form: boxes, 28 x 28 mask probabilities, labels, scores."""
    keep = det["scores"] >= SCORE_FLOOR
    return {
        "boxes": det["boxes"][keep].float().cpu().numpy(),
        "masks": det["masks"][keep][:, 0].float().cpu().numpy(),
        "labels": (det["labels"][keep] - 1).to(torch.int64).cpu().numpy(),
        "scores": det["scores"][keep].float().cpu().numpy(),
    }


def segmenter_from_payload(
    payload: Mapping[str, Any],
    *,
    device: str = "auto",
    name: str = "maskrcnn",
    checksum: str = "",
    source: str = "checkpoint",
) -> MaskRCNNSegmenter:
    """Build a segmenter from a checkpoint dict (see :mod:`geoseg.model.checkpoint`)."""
    arch = MaskRCNNArch.from_dict(payload["arch"])
    classes = tuple(payload["classes"])
    normalization = payload.get("normalization") or NORMALIZATION
    try:
        network = build_network(arch, len(classes), normalization)
        network.load_state_dict(payload["state_dict"])
        others = []
        for gsd, weights in payload.get("weights_by_gsd") or ():
            other = build_network(arch, len(classes), normalization)
            other.load_state_dict(weights)
            others.append((float(gsd), other))
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserInputError(
            f"{source}: weights do not fit the network it describes ({first})"
        ) from exc
    gsd = payload.get("gsd_range_m")
    return MaskRCNNSegmenter(
        network,
        classes=classes,
        arch=arch,
        name=name,
        checksum=checksum,
        untrained=bool(payload.get("train", {}).get("untrained", False)),
        gsd_range_m=(float(gsd[0]), float(gsd[1])) if gsd else None,
        normalization=normalization,
        device=device,
        networks_by_gsd=others,
        **settings_from_payload(payload, source),
    )


def load_checkpoint(path: str | Path, *, device: str = "auto") -> MaskRCNNSegmenter:
    """Load a checkpoint written by ``geoseg train`` (raises ``UserInputError`` if it is not)."""
    path = Path(path)
    payload = read_checkpoint(path)
    return segmenter_from_payload(
        payload, device=device, name=path.stem, checksum=file_sha256(path), source=str(path)
    )


def untrained_segmenter(
    classes: Sequence[str] = DEFAULT_CLASSES,
    *,
    arch: MaskRCNNArch | None = None,
    device: str = "auto",
    seed: int = 0,
) -> MaskRCNNSegmenter:
    """A Mask R-CNN with random (seeded) weights, marked ``untrained``."""
    arch = arch or MaskRCNNArch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(arch, len(classes))
    digest = hashlib.sha256(
        json.dumps({"arch": arch.to_dict(), "classes": list(classes), "seed": seed}).encode()
    ).hexdigest()
    return MaskRCNNSegmenter(
        network,
        classes=classes,
        arch=arch,
        name="maskrcnn-untrained",
        checksum=f"sha256:{digest}",
        untrained=True,
        device=device,
    )


def load_default(*, device: str = "auto") -> MaskRCNNSegmenter:
    """The model shipped with geoseg; an untrained one (with a warning) if none is shipped."""
    if DEFAULT_WEIGHTS.is_file():
        model = load_checkpoint(DEFAULT_WEIGHTS, device=device)
        model.name = "default"
        return model
    warnings.warn(
        "geoseg's default model is UNTRAINED (no geoseg/model/weights/default.pt is installed): "
        "its polygons are random; train one with 'geoseg train' and pass it with --model",
        UntrainedModelWarning,
        stacklevel=2,
    )
    return untrained_segmenter(device=device)
