"""The inference copy of the backbone: frozen batch norm folded into its convolutions."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from geoseg.model.folded_backbone import FoldedBackbone, fold_frozen_batch_norm
from geoseg.model.maskrcnn import PRETRAINED_ARCH, build_network


def _randomised(module: nn.Module) -> nn.Module:
    """Frozen batch norms with statistics far from the identity, so folding them matters."""
    generator = torch.Generator().manual_seed(0)
    for norm in module.modules():
        if isinstance(norm, FrozenBatchNorm2d):
            n = norm.weight.shape[0]
            norm.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            norm.bias.copy_(torch.randn(n, generator=generator))
            norm.running_mean.copy_(torch.randn(n, generator=generator))
            norm.running_var.copy_(torch.rand(n, generator=generator) + 0.2)
    return module


def test_folding_leaves_no_batch_norm_and_the_same_features() -> None:
    backbone = _randomised(build_network(PRETRAINED_ARCH, 3).backbone.eval())
    folded = fold_frozen_batch_norm(backbone)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    pixels = torch.rand(2, 3, 96, 160) * 2 - 1
    with torch.inference_mode():
        want = backbone(pixels)
        got = FoldedBackbone(backbone)(pixels)
    assert list(got) == list(want)
    for name, level in want.items():
        assert got[name].shape == level.shape
        assert got[name].is_contiguous()
        torch.testing.assert_close(got[name], level, rtol=1e-4, atol=1e-4 * level.abs().max())


def test_a_conv_with_a_bias_folds_too() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    norm = _randomised(nn.Sequential(conv, FrozenBatchNorm2d(4)))
    folded = fold_frozen_batch_norm(norm)
    pixels = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(pixels), norm(pixels), rtol=1e-5, atol=1e-5)


def test_the_copy_follows_weights_changed_in_place() -> None:
    backbone = build_network(PRETRAINED_ARCH, 3).backbone.eval()
    features = FoldedBackbone(backbone)
    pixels = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = features(pixels)["0"]
        first = next(p for p in backbone.parameters())
        first.mul_(2.0)  # as an optimizer step does
        after = features(pixels)["0"]
        torch.testing.assert_close(after, backbone(pixels)["0"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(before, after)


def test_predict_through_the_folded_copy_finds_what_the_module_finds() -> None:
    from geoseg.model.maskrcnn import untrained_segmenter

    model = untrained_segmenter(("a", "b"), arch=PRETRAINED_ARCH, device="cpu", seed=2)
    _randomised(model.network.backbone)
    model._backbone = FoldedBackbone(model.network.backbone)  # the CPU's default is ONNX Runtime
    tiles = np.random.default_rng(1).random((2, 3, 96, 96), dtype=np.float32)
    folded = model.predict(tiles)
    model._backbone = model.network.backbone  # type: ignore[assignment]
    plain = model.predict(tiles)
    assert sum(len(p["scores"]) for p in plain) > 5
    for got, want in zip(folded, plain, strict=True):
        assert_same_detections(got, want)


def assert_same_detections(got: dict, want: dict, score: float = 5e-4, box: float = 1e-2) -> None:
    """The same objects to float rounding, in any order (an untrained network scores many
    alike, so rounding may swap them): each of ``got``'s has its own match in ``want``."""
    assert len(got["scores"]) == len(want["scores"])
    unused = np.ones(len(want["scores"]), dtype=bool)
    for label, s, b in zip(got["labels"], got["scores"], got["boxes"], strict=True):
        alike = (
            unused
            & (want["labels"] == label)
            & (np.abs(want["scores"] - s) <= score)
            & (np.abs(want["boxes"] - b).max(axis=1) <= box)
        )
        assert alike.any(), f"no match for {label} {s} {b}"
        unused[np.flatnonzero(alike)[0]] = False
