"""The backbone in bfloat16 on CPUs made for it: close to float32, chosen only where fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.model import bf16_backbone
from geoseg.model.bf16_backbone import (
    BF16_ENV,
    BF16_UP_TO_M,
    Bf16Backbone,
    bf16_fast,
    bf16_runner,
    cpu_vendor,
    read_cpu_vendor,
)
from geoseg.model.folded_backbone import FoldedBackbone
from geoseg.model.maskrcnn import PRETRAINED_ARCH, build_network, untrained_segmenter
from geoseg.model.onnx_backbone import OnnxBackbone
from tests.test_folded_backbone import _randomised


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().mean() / want.abs().mean())


def test_features_and_maps_close_to_float32_and_stored_channels_last() -> None:
    network = build_network(PRETRAINED_ARCH, 3).eval()
    backbone = _randomised(network.backbone)
    runner = Bf16Backbone(backbone, network.rpn.head)
    pixels = torch.rand((2, 3, 96, 128), generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.inference_mode():
        want = FoldedBackbone(backbone)(pixels)
        want_maps = network.rpn.head(list(want.values()))
        got, maps = runner.run(pixels)
        alone = runner(pixels)
    assert list(got) == list(want) == list(alone) and maps is not None
    for name, level in want.items():
        assert got[name].dtype == torch.float32 and got[name].shape == level.shape
        assert got[name].is_contiguous(memory_format=torch.channels_last)
        assert _relative_error(got[name], level) < 0.05  # bfloat16: 8 bits of mantissa
        torch.testing.assert_close(alone[name], got[name])
    for got_maps, want_levels in zip(maps, want_maps, strict=True):
        for got_level, want_level in zip(got_maps, want_levels, strict=True):
            assert got_level.dtype == torch.float32 and got_level.shape == want_level.shape
            assert _relative_error(got_level, want_level) < 0.05


@pytest.mark.parametrize(
    ("runner_class", "tolerance"),
    [(OnnxBackbone, 1e-5), (Bf16Backbone, 0.05)],
    ids=["onnx", "bf16"],
)
def test_weights_changed_in_place_are_seen(runner_class: type, tolerance: float) -> None:
    """Each CPU runner makes its graph again after an optimizer step changes the weights."""
    if runner_class is OnnxBackbone:
        pytest.importorskip("onnxruntime")
    backbone = _randomised(build_network(PRETRAINED_ARCH, 3).backbone.eval())
    runner = runner_class(backbone)
    pixels = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = runner(pixels)["0"]
        next(iter(backbone.parameters())).mul_(2.0)  # as an optimizer step does
        after = runner(pixels)["0"]
        want = backbone(pixels)["0"]
    assert not torch.allclose(before, after)
    assert _relative_error(after, want) < tolerance


def test_the_network_s_own_head_is_left_as_it_is() -> None:
    network = build_network(PRETRAINED_ARCH, 3).eval()
    weight = network.rpn.head.conv[0][0].weight
    Bf16Backbone(network.backbone, network.rpn.head).run(torch.rand(1, 3, 64, 64))
    assert weight.is_contiguous() and network.rpn.head.conv[0][0].weight is weight


@pytest.mark.parametrize("setting", ["0", "off", "false", "no"])
def test_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv(BF16_ENV, setting)
    assert not bf16_fast()
    network = build_network(PRETRAINED_ARCH, 3)
    assert bf16_runner(network.backbone, torch.device("cpu"), network.rpn.head) is None


@pytest.mark.parametrize("setting", ["1", "on", "true", "yes"])
def test_turned_on_by_the_environment(monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv(BF16_ENV, setting)
    assert bf16_fast()
    network = build_network(PRETRAINED_ARCH, 3)
    cpu = bf16_runner(network.backbone, torch.device("cpu"), network.rpn.head)
    assert isinstance(cpu, Bf16Backbone)
    assert bf16_runner(network.backbone, torch.device("cuda")) is None


def test_chosen_on_the_cpu_only_where_bfloat16_is_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BF16_ENV, raising=False)
    bf16 = torch.cpu._is_avx512_bf16_supported()
    fast = bf16 and (torch.cpu._is_amx_tile_supported() or cpu_vendor() == "AuthenticAMD")
    assert bf16_fast() == fast
    network = build_network(PRETRAINED_ARCH, 3)
    cpu = bf16_runner(network.backbone, torch.device("cpu"), network.rpn.head)
    assert isinstance(cpu, Bf16Backbone) == fast
    assert bf16_runner(network.backbone, torch.device("cuda")) is None


@pytest.mark.parametrize(
    ("amx", "bf16", "vendor", "fast"),
    [
        (True, True, "GenuineIntel", True),  # Xeon since Sapphire Rapids
        (False, True, "GenuineIntel", False),  # AVX-512 bfloat16 without AMX: slower
        (False, True, "AuthenticAMD", True),  # Zen 4 and later
        (False, False, "AuthenticAMD", False),  # Zen 3 and earlier
        (False, False, "", False),
    ],
)
def test_chosen_by_the_cpu_s_units_and_vendor(
    monkeypatch: pytest.MonkeyPatch, amx: bool, bf16: bool, vendor: str, fast: bool
) -> None:
    monkeypatch.delenv(BF16_ENV, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(bf16_backbone, "cpu_vendor", lambda: vendor)
    assert bf16_fast() == fast


def test_the_cpu_vendor_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n")
    assert read_cpu_vendor(cpuinfo) == "AuthenticAMD"
    cpuinfo.write_text("processor\t: 0\n")
    assert read_cpu_vendor(cpuinfo) == ""
    assert read_cpu_vendor(tmp_path / "missing") == ""


def test_the_cpu_vendor_from_the_processor_name_where_there_is_no_cpuinfo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bf16_backbone, "read_cpu_vendor", lambda path: "")
    processor = "AMD64 Family 26 Model 2 Stepping 0, AuthenticAMD"  # as Windows names it
    monkeypatch.setattr(bf16_backbone.platform, "processor", lambda: processor)
    cpu_vendor.cache_clear()
    try:
        assert cpu_vendor() == "AuthenticAMD"
        monkeypatch.setattr(bf16_backbone.platform, "processor", lambda: "arm")
        cpu_vendor.cache_clear()
        assert cpu_vendor() == ""
    finally:
        cpu_vendor.cache_clear()


def test_the_segmenter_reads_fine_tiles_in_bfloat16_and_coarse_ones_in_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bf16_backbone, "bf16_fast", lambda: True)  # as on a CPU with AMX
    model = untrained_segmenter(arch=PRETRAINED_ARCH, device="cpu")
    fine, coarse = model._network_at(BF16_UP_TO_M), model._network_at(BF16_UP_TO_M * 1.01)
    assert isinstance(fine.backbone, Bf16Backbone)
    assert not isinstance(coarse.backbone, Bf16Backbone)
    assert not isinstance(model._network_at(None).backbone, Bf16Backbone)  # GSD unknown
    tiles = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    model.predict(tiles, min_score=0.05, gsd_m=0.3)
    assert fine.backbone._graph is not None  # the bfloat16 runner read the 0.3 m tile


def test_the_box_head_multiplies_in_bfloat16_for_fine_tiles_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bf16_backbone, "bf16_fast", lambda: True)
    model = untrained_segmenter(arch=PRETRAINED_ARCH, device="cpu")
    head = model.network.roi_heads.box_head
    seen: list[bool] = []
    head.register_forward_hook(lambda module, args, out: seen.append(module.bfloat16))
    tiles = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    model.predict(tiles, min_score=0.05, gsd_m=0.3)
    assert seen and all(seen)  # the tile the bfloat16 backbone read
    assert not head.bfloat16  # float32 again after the call
    seen.clear()
    model.predict(tiles, min_score=0.05, gsd_m=BF16_UP_TO_M * 1.01)
    assert seen and not any(seen)
    seen.clear()
    model.box_head_bf16 = False  # as before session 48 (benchmarks' --float32-box-head)
    model.predict(tiles, min_score=0.05, gsd_m=0.3)
    assert seen and not any(seen)
