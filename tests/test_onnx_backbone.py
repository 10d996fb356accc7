"""The backbone through ONNX Runtime: the same features as torch, the same objects found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoseg.model.folded_backbone import FoldedBackbone
from geoseg.model.maskrcnn import (
    PRETRAINED_ARCH,
    MaskRCNNArch,
    build_network,
    set_rpn_test_counts,
    untrained_segmenter,
)
from geoseg.model.onnx_backbone import (
    OnnxBackbone,
    ProposalMaps,
    backbone_runner,
    proposals_from_maps,
)
from tests.test_folded_backbone import _randomised, assert_same_detections

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("arch", [PRETRAINED_ARCH, MaskRCNNArch()], ids=["mobilenet_v2", "resnet"])
def test_one_session_gives_the_modules_features_at_every_size(arch: MaskRCNNArch) -> None:
    backbone = _randomised(build_network(arch, 3).backbone.eval())
    runner = OnnxBackbone(backbone)
    generator = torch.Generator().manual_seed(3)
    for shape in [(2, 3, 96, 160), (1, 3, 64, 64), (3, 3, 128, 96)]:
        pixels = torch.rand(shape, generator=generator) * 2 - 1
        with torch.inference_mode():
            want = backbone(pixels)
            got = runner(pixels)
        assert runner._fallback is None  # ONNX Runtime ran it
        assert list(got) == list(want)
        for name, level in want.items():
            assert got[name].shape == level.shape and got[name].dtype == torch.float32
            torch.testing.assert_close(got[name], level, rtol=1e-4, atol=1e-4 * level.abs().max())


def test_a_backbone_that_does_not_export_runs_in_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no exporter here")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    backbone = build_network(PRETRAINED_ARCH, 3).backbone.eval()
    runner = OnnxBackbone(backbone)
    pixels = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        got = runner(pixels)["0"]
        want = FoldedBackbone(backbone)(pixels)["0"]
    assert isinstance(runner._fallback, FoldedBackbone) and runner.export_failed
    torch.testing.assert_close(got, want)


def test_embed_tries_no_second_export_after_predicts_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tries = []

    def refuse(*args: object, **kwargs: object) -> None:
        tries.append(1)
        raise RuntimeError("no exporter here")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    model = untrained_segmenter(("a",), arch=PRETRAINED_ARCH, device="cpu", seed=3)
    tiles = np.random.default_rng(4).random((1, 3, 64, 64), dtype=np.float32)
    model.predict(tiles)
    embedded = model.embed(tiles)
    assert len(tries) == 1 and model._pyramid_runner is None
    with torch.inference_mode():
        images, _ = model.network.transform(list(torch.from_numpy(tiles)))
        levels = FoldedBackbone(model.network.backbone)(images.tensors).values()
        want = torch.cat([f.mean(dim=(2, 3)) for f in levels], dim=1).numpy()
    np.testing.assert_allclose(embedded, want, rtol=1e-5, atol=1e-5)


def test_the_cpu_runs_onnx_runtime_and_cuda_torch() -> None:
    backbone = build_network(PRETRAINED_ARCH, 3).backbone
    assert isinstance(backbone_runner(backbone, torch.device("cpu")), OnnxBackbone)
    assert isinstance(backbone_runner(backbone, torch.device("cuda")), FoldedBackbone)


def test_predict_through_onnx_runtime_finds_what_torch_finds() -> None:
    model = untrained_segmenter(("a", "b"), arch=PRETRAINED_ARCH, device="cpu", seed=2)
    _randomised(model.network.backbone)
    assert isinstance(model._backbone, OnnxBackbone)
    tiles = np.random.default_rng(1).random((2, 3, 96, 96), dtype=np.float32)
    onnx = model.predict(tiles, tta_views={"a": 4, "b": 4})
    model._backbone = FoldedBackbone(model.network.backbone)  # type: ignore[assignment]
    folded = model.predict(tiles, tta_views={"a": 4, "b": 4})
    assert sum(len(p["scores"]) for p in folded) > 5
    for got, want in zip(onnx, folded, strict=True):
        assert_same_detections(got, want)


def test_a_pickled_runner_makes_its_session_again() -> None:
    import pickle

    backbone = build_network(PRETRAINED_ARCH, 3).backbone.eval()
    runner = OnnxBackbone(backbone)
    pixels = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        want = runner(pixels)["0"]
        copy = pickle.loads(pickle.dumps(runner))
        got = copy(pixels)["0"]
    assert copy._fallback is None
    torch.testing.assert_close(got, want)


def test_the_graphs_proposal_maps_give_the_rpns_proposals() -> None:
    network = build_network(PRETRAINED_ARCH, 3).eval()
    _randomised(network.backbone)
    rpn = network.rpn
    rpn.nms_thresh = 1.0  # no suppression and no cut: every proposal, whatever the rounding
    set_rpn_test_counts(rpn, (10**6, 10**6))
    runner = OnnxBackbone(network.backbone, rpn.head)
    pixels = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        images, _ = network.transform(list(pixels))
        features, maps = runner.run(images.tensors)
        assert maps is not None and len(maps.objectness) == len(features) == 5
        want = rpn(images, features)[0]
        got = proposals_from_maps(rpn, images, features, maps)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w) > 100
        assert torch.cdist(g, w).min(dim=1).values.max() < 0.1  # px; random heads: large deltas


@pytest.mark.parametrize(
    ("counts", "nms"),
    [((40, 25), 0.7), ((40, 10), 0.02), ((40, 60), 0.9), ((10**4, 10**4), 0.5)],
    ids=["cut-at-once", "cut-grown", "fewer-than-asked", "every-box"],
)
def test_proposals_from_maps_are_torchvisions_to_the_bit(
    counts: tuple[int, int], nms: float
) -> None:
    """Decoding only each level's best anchors, and suppressing only the best boxes until
    enough are kept, give torchvision's proposals exactly: the same boxes in the same order,
    with a level smaller than the per-level count."""
    network = build_network(PRETRAINED_ARCH, 3).eval()
    _randomised(network.backbone)
    rpn = network.rpn
    rpn.nms_thresh = nms
    set_rpn_test_counts(rpn, counts)
    pixels = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        images, _ = network.transform(list(pixels))
        features = network.backbone(images.tensors)
        maps = ProposalMaps(*rpn.head(list(features.values())))
        assert (
            min(o[0].numel() for o in maps.objectness)
            < 40
            < max(o[0].numel() for o in maps.objectness)
        )
        want = rpn(images, features)[0]
        got = proposals_from_maps(rpn, images, features, maps)
    for g, w in zip(got, want, strict=True):
        if counts[1] < 50:  # the cut: exactly post_nms_top_n kept
            assert len(w) == counts[1]
        else:
            assert len(w) > 50
        assert torch.equal(g, w)


def test_the_segmenter_proposes_through_the_graph() -> None:
    model = untrained_segmenter(("a",), arch=PRETRAINED_ARCH, device="cpu", seed=1)
    assert model._backbone.proposal_head is model.network.rpn.head
    tiles = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        images, _ = model.network.transform(list(tiles))
        features, proposals = model._features_and_proposals(model._network_at(None), images)
        want, _ = model.network.rpn(images, features)
    assert len(proposals[0]) == len(want[0]) > 0


def test_embed_runs_a_graph_of_the_pyramid_alone() -> None:
    model = untrained_segmenter(("a",), arch=PRETRAINED_ARCH, device="cpu", seed=2)
    _randomised(model.network.backbone)
    tiles = np.random.default_rng(3).random((2, 3, 64, 96), dtype=np.float32)
    got = model.embed(tiles)
    runner = model._pyramid_runner
    assert isinstance(runner, OnnxBackbone) and runner.proposal_head is None
    assert [o.name for o in runner._session.get_outputs()] == [f"level{i}" for i in range(5)]
    with torch.inference_mode():
        images, _ = model.network.transform(list(torch.from_numpy(tiles)))
        levels = FoldedBackbone(model.network.backbone)(images.tensors).values()
        want = torch.cat([f.mean(dim=(2, 3)) for f in levels], dim=1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert model._backbone._session is None  # predict's graph (with the head) never made


def test_sessions_share_one_arena_and_keep_their_own_results() -> None:
    from geoseg.model.onnx_backbone import shared_cpu_arena

    assert shared_cpu_arena() is True and shared_cpu_arena() is True  # registered once
    first = _randomised(build_network(PRETRAINED_ARCH, 3).backbone.eval())
    second = _randomised(build_network(PRETRAINED_ARCH, 3).backbone.eval())
    run_first, run_second = OnnxBackbone(first), OnnxBackbone(second)
    pixels = torch.rand((2, 3, 96, 128), generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.inference_mode():
        before = run_first(pixels)
        other = run_second(torch.flip(pixels, dims=[3]))  # other buffers, from the same arena
        after = run_first(pixels)
        want = first(pixels)
    assert run_first._fallback is None and run_second._fallback is None
    for name, level in want.items():
        assert torch.equal(before[name], after[name])
        assert not torch.equal(before[name], other[name])
        torch.testing.assert_close(after[name], level, rtol=1e-4, atol=1e-4 * level.abs().max())


def test_geoseg_ort_arena_0_keeps_no_arena(monkeypatch: pytest.MonkeyPatch) -> None:
    import geoseg.model.onnx_backbone as onnx_backbone

    monkeypatch.setattr(onnx_backbone, "_arena_shared", None)
    monkeypatch.setenv("GEOSEG_ORT_ARENA", "0")
    assert onnx_backbone.shared_cpu_arena() is False
    session = onnx_backbone.cpu_session(_backbone_graph(), threads=1)
    assert not session.get_session_options().enable_cpu_mem_arena


def _backbone_graph() -> bytes:
    from geoseg.model.onnx_backbone import exported_graph

    return exported_graph(build_network(PRETRAINED_ARCH, 3).backbone.eval())[1]
