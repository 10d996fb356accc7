"""Convolutions with their activation fused in bfloat16: the same outputs as autocast's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geoseg.model.bf16_backbone import Bf16Backbone
from geoseg.model.bf16_convs import Bf16Conv, fuse_bf16_convs, fused_convs_available
from geoseg.model.maskrcnn import PRETRAINED_ARCH, build_network
from geoseg.model.proposal_graph import folded_graph
from tests.test_folded_backbone import _randomised

needs_fused = pytest.mark.skipif(
    not fused_convs_available(),
    reason="no oneDNN fused convolution, or oneDNN runs no bfloat16 convolution on this CPU",
)


@needs_fused
def test_each_convolution_fused_with_the_activation_after_it() -> None:
    network = build_network(PRETRAINED_ARCH, 3).eval()
    _, graph = folded_graph(network.backbone, network.rpn.head, torch.zeros((1, 3, 64, 64)))
    relu6 = sum(isinstance(m, nn.ReLU6) for m in graph.modules())
    relu = sum(type(m) is nn.ReLU for m in graph.modules())
    convs = sum(isinstance(m, nn.Conv2d) for m in graph.modules())
    fuse_bf16_convs(graph)
    fused = [m for m in graph.modules() if isinstance(m, Bf16Conv)]
    assert not any(isinstance(m, (nn.Conv2d, nn.ReLU, nn.Hardtanh)) for m in graph.modules())
    assert len(fused) == convs
    assert sum(m.attr == "hardtanh" and m.scalars == [0.0, 6.0] for m in fused) == relu6 > 0
    assert sum(m.attr == "relu" for m in fused) == relu > 0  # the proposal head's
    assert all(m.weight.dtype == torch.bfloat16 for m in fused)


@needs_fused
def test_a_fused_convolution_equals_autocast_s_and_its_activation() -> None:
    gen = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1)
    depthwise = nn.Conv2d(24, 24, 3, padding=2, dilation=2, groups=24, bias=False)
    pixels = torch.randn((2, 16, 33, 40), generator=gen) * 3
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = nn.functional.relu6(conv(pixels))
        want_dw = nn.functional.relu(depthwise(want))
        got = Bf16Conv(conv, "hardtanh", [0.0, 6.0])(pixels)
        got_dw = Bf16Conv(depthwise, "relu")(got)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert got.min() >= 0 and got.max() <= 6
    assert torch.equal(got, want)
    assert torch.equal(got_dw, want_dw)


@needs_fused
def test_the_backbone_runner_gives_what_autocast_gives() -> None:
    """Bf16Backbone with the fused convolutions (as shipped) against the same graph run
    layer by layer under autocast: the same features and proposal maps, bit for bit."""
    network = build_network(PRETRAINED_ARCH, 3).eval()
    backbone = _randomised(network.backbone)
    pixels = torch.rand((2, 3, 96, 128), generator=torch.Generator().manual_seed(5)) * 2 - 1
    outputs = []
    for fuse in (True, False):
        runner = Bf16Backbone(backbone, network.rpn.head, fuse=fuse)
        with torch.inference_mode():
            features, maps = runner.run(pixels)
        kinds = {type(m) for m in runner._graph.modules()}  # type: ignore[union-attr]
        assert (Bf16Conv in kinds) == fuse and (nn.Conv2d in kinds) != fuse
        assert maps is not None
        outputs.append([*features.values(), *maps.objectness, *maps.deltas])
    for got, want in zip(*outputs, strict=True):
        assert got.dtype == torch.float32
        assert torch.equal(got, want)


def test_convolutions_it_cannot_run_are_left_to_autocast() -> None:
    reflect = nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")
    same = nn.Conv2d(3, 3, 3, padding="same")
    graph = fuse_bf16_convs(nn.Sequential(reflect, nn.ReLU(), same, nn.Conv2d(3, 3, 1), nn.ReLU()))
    assert graph[0] is reflect and type(graph[1]) is nn.ReLU and graph[2] is same
    assert isinstance(graph[3], Bf16Conv) and graph[3].attr == "relu"
    assert isinstance(graph[4], nn.Identity)
    with pytest.raises(ValueError, match="zero padding"):
        Bf16Conv(reflect)


def test_cpus_where_onednn_runs_no_bfloat16_keep_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without AVX-512 (oneDNN would refuse a bfloat16 convolution) the runner leaves
    every layer to autocast, which falls back to torch's own convolution there."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not fused_convs_available()
    network = build_network(PRETRAINED_ARCH, 3).eval()
    runner = Bf16Backbone(network.backbone, network.rpn.head)
    with torch.inference_mode():
        runner.run(torch.rand((1, 3, 64, 64)))
    assert not any(isinstance(m, Bf16Conv) for m in runner._graph.modules())  # type: ignore[union-attr]
