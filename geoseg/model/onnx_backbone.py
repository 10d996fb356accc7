"""The folded backbone run by ONNX Runtime, on the CPU.

ONNX Runtime's CPU kernels fuse what torch runs as separate steps (a pointwise convolution's
bias, the ReLU6 after it, the layout changes between them), so the folded MobileNetV2 with its
pyramid takes about 0.12 s instead of 0.18-0.26 s for a 512 px tile on one thread; the
features equal torch's to float rounding (about 1e-4 on features of magnitude 10).

:class:`OnnxBackbone` exports the folded copy (:mod:`geoseg.model.folded_backbone`) to an ONNX
graph in memory when it is first called (about a second; nothing is written to disk) and again
after any change to the source's weights, so a network still being trained is seen as it is.
Where ONNX Runtime is not installed, or a backbone does not export, it runs the folded copy in
torch instead (:func:`backbone_runner`).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from geoseg.model.folded_backbone import FoldedBackbone, fold_frozen_batch_norm, weights_state

__all__ = ["OnnxBackbone", "backbone_runner", "onnxruntime_available"]

log = logging.getLogger(__name__)

Runner = Callable[[torch.Tensor], "OrderedDict[str, torch.Tensor]"]


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def backbone_runner(source: nn.Module, device: torch.device) -> Runner:
    """What computes ``source``'s features at inference: ONNX Runtime on the CPU where it is
    installed, else the folded copy in torch (on CUDA always)."""
    if device.type == "cpu" and onnxruntime_available():
        return OnnxBackbone(source)
    return FoldedBackbone(source)


class _Levels(nn.Module):
    """A backbone's feature pyramid as a tuple, for the exporter."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(level.permute(0, 2, 3, 1) for level in self.backbone(pixels).values())


class OnnxBackbone:
    """Calls a backbone's folded copy through an ONNX Runtime session (see the module
    docstring); falls back to :class:`~geoseg.model.folded_backbone.FoldedBackbone` for good
    if the export fails."""

    def __init__(self, source: nn.Module) -> None:
        self.source = source
        self._session: object | None = None
        self._names: list[str] = []
        self._made_from: tuple[object, ...] = ()
        self._threads = 0
        self._fallback: FoldedBackbone | None = None

    def __call__(self, pixels: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """The source's features of ``pixels`` ``(N, 3, H, W)``, float32 on the CPU: each level
        float32 ``(N, C, h, w)``, stored channels-last (as :mod:`geoseg.model.roi_sampling`
        reads them)."""
        if self._fallback is None and pixels.dtype == torch.float32:
            session = self._current()
            if session is not None:
                levels = session.run(None, {"pixels": pixels.contiguous().numpy()})  # type: ignore[attr-defined]
                return OrderedDict(  # channels-last: as the heads' RoIAlign reads them
                    (name, torch.from_numpy(level).permute(0, 3, 1, 2))
                    for name, level in zip(self._names, levels, strict=True)
                )
        if self._fallback is None:
            self._fallback = FoldedBackbone(self.source)
        return self._fallback(pixels)

    def __getstate__(self) -> dict[str, object]:
        """Pickled without its session (made again where it is next called)."""
        return {**self.__dict__, "_session": None, "_made_from": ()}

    def _current(self) -> object | None:
        state = weights_state(self.source)
        threads = torch.get_num_threads()
        if self._session is None or state != self._made_from or threads != self._threads:
            try:
                self._session = self._exported(threads)
            except Exception as error:  # an exporter or runtime that cannot take this backbone
                log.warning("backbone runs in torch: ONNX export failed (%s)", error)
                self._fallback = FoldedBackbone(self.source)
                return None
            self._made_from, self._threads = state, threads
        return self._session

    def _exported(self, threads: int) -> object:
        import onnxruntime as ort

        with torch.inference_mode(False), torch.no_grad():
            folded = fold_frozen_batch_norm(self.source).eval().float()
            example = torch.zeros((2, 3, 64, 96))
            self._names = list(folded(example))
            graph = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _Levels(folded),
                    (example,),
                    graph,
                    dynamo=False,
                    input_names=["pixels"],
                    output_names=[f"level{i}" for i in range(len(self._names))],
                    dynamic_axes={"pixels": {0: "n", 2: "height", 3: "width"}},
                    opset_version=17,
                )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # idle threads wait rather than spin: the reading and vectorizing threads need the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        return ort.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])
