"""The Mask R-CNN backend: protocol output, checkpoint round trip, bad files, the default."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings
from collections import OrderedDict
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision

from geoseg.errors import ModelError, UntrainedModelWarning, UserInputError
from geoseg.model import Instances, Segmenter, describe_model, load_segmenter, maskrcnn
from geoseg.model.checkpoint import read_checkpoint, save_checkpoint, update_checkpoint
from geoseg.model.maskrcnn import (
    NORMALIZATION,
    MaskRCNNArch,
    MaskRCNNSegmenter,
    load_checkpoint,
    untrained_segmenter,
)
from geoseg.model.protocol import ModelInfo, describe_spec, predict_accepts
from geoseg.model.read_settings import READ_SETTINGS

CLASSES = ("building", "field", "ship")


@pytest.fixture(scope="module")
def model() -> MaskRCNNSegmenter:
    return untrained_segmenter(CLASSES, device="cpu", seed=3)


@pytest.fixture
def tiles() -> np.ndarray:
    return np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)


def _save(model: MaskRCNNSegmenter, path: Path) -> Path:
    return save_checkpoint(
        path,
        state_dict=model.network.state_dict(),
        arch=model.arch.to_dict(),
        classes=model.classes,
        normalization=NORMALIZATION,
        gsd_range_m=(0.5, 10.0),
        train={"epochs": 0},
    )


def _run_tool(script: str, *args: str | Path) -> subprocess.CompletedProcess:
    """``python tools/SCRIPT ARGS...``, its output captured as text."""
    tool = Path(__file__).parents[1] / "tools" / script
    return subprocess.run(
        [sys.executable, str(tool), *map(str, args)], capture_output=True, text=True
    )


def test_predict_follows_the_protocol(model: MaskRCNNSegmenter, tiles: np.ndarray) -> None:
    assert isinstance(model, Segmenter)
    assert model.untrained and model.input_bands == 3 and model.device == "cpu"
    assert model.checksum.startswith("sha256:")
    out = model.predict(tiles)
    assert len(out) == 2
    for inst in out:
        assert inst["masks"].dtype == np.float32 and inst["masks"].shape[1:] == (28, 28)
        assert inst["boxes"].shape == (len(inst["labels"]), 4)
        assert inst["labels"].dtype == np.int64 and inst["scores"].dtype == np.float32
        assert len(inst["labels"]) == len(inst["scores"]) == len(inst["masks"])
        assert np.all(inst["scores"] >= maskrcnn.SCORE_FLOOR)
        if len(inst["labels"]):
            assert inst["labels"].min() >= 0 and inst["labels"].max() < len(CLASSES)
        found = Instances.from_any(inst, shape_hw=(64, 64), n_classes=len(CLASSES))
        assert found.masks.shape == (len(inst["labels"]), 64, 64)


def test_min_score_drops_instances_inside_the_network(
    model: MaskRCNNSegmenter, tiles: np.ndarray
) -> None:
    low = model.predict(tiles)
    scores = np.concatenate([inst["scores"] for inst in low])
    assert len(scores) > 4  # an untrained network scores many boxes above the floor
    cut = float(np.median(scores))
    high = model.predict(tiles, min_score=cut)
    for a, b in zip(low, high, strict=True):
        keep = a["scores"] >= cut
        np.testing.assert_array_equal(np.sort(b["scores"]), np.sort(a["scores"][keep]))
        assert b["masks"].shape == (int(keep.sum()), 28, 28)
    again = model.predict(tiles)  # the threshold is per call, not left behind
    np.testing.assert_array_equal(again[0]["scores"], low[0]["scores"])


def _by_score(found: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.argsort(-found["scores"], kind="stable")
    return {key: value[order] for key, value in found.items()}


@pytest.mark.parametrize("refinements", [0, 2])
@pytest.mark.parametrize(
    ("count", "turn"),
    [
        (4, lambda t: t[..., ::-1]),  # a mirror image
        (4, lambda t: t[..., ::-1, :]),  # upside down
        (8, lambda t: np.swapaxes(t, -1, -2)),  # transposed
    ],
)
def test_objects_fused_over_views_turn_with_the_tile(
    model: MaskRCNNSegmenter,
    tiles: np.ndarray,
    count: int,
    turn: object,
    refinements: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A set of views closed under the turn sees the turned tile as it saw the tile: the same
    objects, scores and masks, turned (the untrained network finds plenty of objects); boxes
    refined in every view and averaged too."""
    monkeypatch.setattr(model, "class_box_refinements", dict.fromkeys(CLASSES, refinements))
    views = dict.fromkeys(CLASSES, count)
    plain = model.predict(tiles[:1], tta_views=views, min_score=0.15)[0]
    tile_turned = np.ascontiguousarray(turn(tiles[:1]))
    turned = model.predict(tile_turned, tta_views=views, min_score=0.15)[0]
    assert len(plain["scores"]) > 5
    plain, turned = _by_score(plain), _by_score(turned)
    np.testing.assert_allclose(turned["scores"], plain["scores"], rtol=1e-5)
    np.testing.assert_array_equal(turned["labels"], plain["labels"])
    # a box of the tile, turned: mark it in an empty tile, turn, read the box back
    h, w = tiles.shape[-2:]
    for box, box_turned, mask, mask_turned in zip(
        plain["boxes"], turned["boxes"], plain["masks"], turned["masks"], strict=True
    ):
        corners = np.zeros((h * 4, w * 4))  # quarter pixels: boxes are not whole
        x0, y0, x1, y1 = np.round(box * 4).astype(int)
        corners[y0:y1, x0:x1] = 1
        rows, cols = np.nonzero(turn(corners[None])[0])
        want = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]) / 4
        np.testing.assert_allclose(box_turned, want, atol=0.25 + 1e-3)
        np.testing.assert_allclose(mask_turned, turn(mask[None])[0], atol=1e-4)


def test_classes_seen_once_are_the_plain_network_s(
    model: MaskRCNNSegmenter, tiles: np.ndarray
) -> None:
    """Ships fused over four views, buildings and fields seen once: those come out as
    without views; one view for every class is the plain network."""
    plain = model.predict(tiles, min_score=0.2)
    once = model.predict(tiles, tta_views=dict.fromkeys(CLASSES, 1), min_score=0.2)
    assert all(
        np.array_equal(a[key], b[key]) for a, b in zip(plain, once, strict=True) for key in a
    )
    mixed = model.predict(tiles, tta_views={"ship": 4}, min_score=0.2)
    for a, b in zip(plain, mixed, strict=True):
        once_a, once_b = a["labels"] != 2, b["labels"] != 2
        assert once_a.sum() > 0
        a, b = (
            _by_score({k: v[once_a] for k, v in a.items()}),
            _by_score({k: v[once_b] for k, v in b.items()}),
        )
        for key in a:
            np.testing.assert_allclose(b[key], a[key], atol=1e-5)


def test_only_tiles_with_a_sure_object_get_more_views(
    model: MaskRCNNSegmenter, tiles: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ships in four views, kept from a floor between the two tiles' best ships in the first
    view: the tile whose best ship is under it is seen once (its fields as the plain network
    finds them), the other four times, as when it is predicted alone."""
    tiles = tiles.copy()
    tiles[1] = 0.5  # a flat tile: the untrained network scores its ships lower
    plain = model.predict(tiles)
    best = [float(found["scores"][found["labels"] == 2].max()) for found in plain]
    assert best[0] != best[1]
    sure, unsure = (0, 1) if best[0] > best[1] else (1, 0)
    floor = (best[0] + best[1]) / 2
    batches: list[int] = []
    seen = model._features_and_proposals
    monkeypatch.setattr(
        model,
        "_features_and_proposals",
        lambda net, i: batches.append(len(i.tensors)) or seen(net, i),
    )
    fused = model.predict(tiles, tta_views={"ship": 4}, min_score=floor)
    assert batches == [2, 1, 1, 1]  # the tile, then its three other views for one tile only
    assert not (fused[unsure]["labels"] == 2).any()
    once = model.predict(tiles[unsure : unsure + 1], min_score=floor)[0]
    for key in once:
        np.testing.assert_array_equal(fused[unsure][key], once[key])
    alone = model.predict(tiles[sure : sure + 1], tta_views={"ship": 4}, min_score=floor)[0]
    for key in alone:
        np.testing.assert_allclose(fused[sure][key], alone[key], atol=1e-5)


def test_a_class_fuses_its_views_from_its_own_iou(
    model: MaskRCNNSegmenter, tiles: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``class_fuse_iou`` reaches the fusion per label (0.55 for the others): ships grouped
    from a lower IoU come out as fewer objects, the other classes as before."""
    from geoseg.model import maskrcnn

    given: list[object] = []
    fuse = maskrcnn.fuse_views
    monkeypatch.setattr(
        maskrcnn, "fuse_views", lambda *a, **k: given.append(k["iou"]) or fuse(*a, **k)
    )
    views = dict.fromkeys(CLASSES, 4)
    plain = model.predict(tiles[:1], tta_views=views, min_score=0.05)[0]
    monkeypatch.setattr(model, "class_fuse_iou", {"ship": 0.2})
    grouped = model.predict(tiles[:1], tta_views=views, min_score=0.05)[0]
    assert given == [[0.55, 0.55, 0.55, 0.55], [0.55, 0.55, 0.55, 0.2]]
    ships = [(found["labels"] == 2).sum() for found in (plain, grouped)]
    assert ships[1] < ships[0]
    for found in (plain, grouped):
        found.update(_by_score({k: v[found["labels"] != 2] for k, v in found.items()}))
    for key in plain:
        np.testing.assert_allclose(grouped[key], plain[key], atol=1e-5)


def test_fuse_iou_tool_sets_and_drops_classes(model: MaskRCNNSegmenter, tmp_path: Path) -> None:
    path = _save(model, tmp_path / "m.pt")
    run = partial(_run_tool, "set_fuse_iou.py")
    assert run(str(path), "building=0.35", "ship=0.4").returncode == 0
    assert load_checkpoint(path, device="cpu").class_fuse_iou == {"building": 0.35, "ship": 0.4}
    for bad, says in (("ship=1", "CLASS=IOU"), ("ship@3=0.4", "CLASS=IOU"), ("boat=0.4", "boat")):
        refused = run(str(path), bad)
        assert refused.returncode == 2 and says in refused.stderr, bad
    assert run(str(path), "ship=-").returncode == 0
    assert read_checkpoint(path)["class_fuse_iou"] == {"building": 0.35}
    assert run(str(path), "building=-").returncode == 0
    assert "class_fuse_iou" not in read_checkpoint(path)
    assert run(str(tmp_path / "none.pt"), "ship=0.4").returncode == 2


def _regressed(model: MaskRCNNSegmenter, tile: np.ndarray, boxes: np.ndarray, label: int):
    """The box head's regression for class ``label`` from ``boxes`` of one tile."""
    net = model.network
    with torch.inference_mode():
        images, _ = net.transform([torch.from_numpy(tile)])
        features = model._features(model._backbone, images.tensors)
        start = [torch.from_numpy(boxes)]
        pooled = net.roi_heads.box_head(
            net.roi_heads.box_roi_pool(features, start, images.image_sizes)
        )
        _, deltas = net.roi_heads.box_predictor(pooled)
        moved = net.roi_heads.box_coder.decode(deltas, start)[:, label]
        return torchvision.ops.clip_boxes_to_image(moved, images.image_sizes[0]).numpy()


@pytest.mark.parametrize("views", [1, 4])
def test_refined_boxes_are_the_box_head_s_second_look(
    model: MaskRCNNSegmenter, tiles: np.ndarray, monkeypatch: pytest.MonkeyPatch, views: int
) -> None:
    """Ships refined twice: each ship keeps its score and the plain network's ship becomes the
    box head's regression from its box, and from that box again (the mean over the views'
    regressions with four views, so it moves less than in one view); buildings and fields
    are untouched, and the masks are drawn for the moved boxes."""
    tile = tiles[:1]
    tta = {"ship": views}
    plain = _by_score(model.predict(tile, min_score=0.2, tta_views=tta)[0])
    monkeypatch.setattr(model, "class_box_refinements", {"ship": 2})
    refined = _by_score(model.predict(tile, min_score=0.2, tta_views=tta)[0])
    np.testing.assert_array_equal(refined["labels"], plain["labels"])
    np.testing.assert_allclose(refined["scores"], plain["scores"], rtol=1e-6)
    ship = plain["labels"] == 2
    assert ship.sum() > 1 and (~ship).sum() > 1
    for key in ("boxes", "masks"):
        np.testing.assert_array_equal(refined[key][~ship], plain[key][~ship])
        assert not np.allclose(refined[key][ship], plain[key][ship], atol=1e-3)
    if views == 1:
        once = _regressed(model, tile[0], plain["boxes"][ship], 3)
        twice = _regressed(model, tile[0], once, 3)
        np.testing.assert_allclose(refined["boxes"][ship], twice, atol=1e-3)
        assert not np.allclose(once, twice, atol=1e-2)  # the second pass moves them on


def test_proposal_counts_follow_the_gsd(
    model: MaskRCNNSegmenter,
    tiles: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Tiles read at 1 m or finer keep 40 proposals per level before the RPN's NMS and 7 per
    tile after; coarser ones, or tiles of no stated GSD, the network's own counts (which are
    back after each call)."""
    rpn = model.network.rpn
    own = rpn.pre_nms_top_n(), rpn.post_nms_top_n()
    monkeypatch.setattr(model, "rpn_proposals_by_gsd", ((1.0, 40, 7),))
    counts: list[tuple[int, int]] = []
    hook = model.network.roi_heads.box_roi_pool.register_forward_pre_hook(
        lambda _, args: counts.append((rpn.pre_nms_top_n(), max(len(p) for p in args[1])))
    )
    request.addfinalizer(hook.remove)
    fine = model.predict(tiles, gsd_m=0.3)
    assert counts == [(40, 7)]
    assert all(len(found["scores"]) <= 7 * len(CLASSES) for found in fine)  # a box per class
    for gsd_m in (2.0, None):
        counts.clear()
        coarse = model.predict(tiles, gsd_m=gsd_m)
        assert counts[0][0] == own[0] and 7 < counts[0][1] <= own[1]
        assert sum(len(found["scores"]) for found in coarse) > 2 * 7 * len(CLASSES)
    assert (rpn.pre_nms_top_n(), rpn.post_nms_top_n()) == own


def test_bad_view_counts_are_a_model_error(model: MaskRCNNSegmenter, tiles: np.ndarray) -> None:
    with pytest.raises(ModelError, match="boat"):
        model.predict(tiles, tta_views={"boat": 4})
    with pytest.raises(ModelError, match="1, 2, 4 or 8"):
        model.predict(tiles, tta_views={"ship": 3})


def test_single_band_is_repeated(model: MaskRCNNSegmenter, tiles: np.ndarray) -> None:
    grey = tiles[:, :1]
    got = model.predict(grey)
    want = model.predict(np.repeat(grey, 3, axis=1))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a["masks"], b["masks"])
        np.testing.assert_array_equal(a["scores"], b["scores"])


def test_checkpoint_round_trip(model: MaskRCNNSegmenter, tiles: np.ndarray, tmp_path: Path) -> None:
    path = _save(model, tmp_path / "m.pt")
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "geoseg-maskrcnn" and payload["classes"] == list(CLASSES)
    loaded = load_segmenter(str(path), device="cpu")
    assert isinstance(loaded, MaskRCNNSegmenter)
    assert loaded.gsd_range_m == (0.5, 10.0) and not loaded.untrained
    assert loaded.checksum.startswith("sha256:") and len(loaded.checksum) == 71
    info = describe_model(loaded, str(path))
    assert info.classes == CLASSES and info.checksum == loaded.checksum
    for a, b in zip(model.predict(tiles), loaded.predict(tiles), strict=True):
        np.testing.assert_array_equal(a["masks"], b["masks"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        np.testing.assert_array_equal(a["scores"], b["scores"])


def test_thresholds_by_gsd_survive_the_checkpoint(model: MaskRCNNSegmenter, tmp_path: Path) -> None:
    path = _save(model, tmp_path / "m.pt")
    update_checkpoint(path, min_score={"ship": 0.65})
    update_checkpoint(path, min_score_by_gsd={"ship": [[2.0, 0.55], [1.0, 0.5]]})
    steps = {"ship": ((1.0, 0.5), (2.0, 0.55))}  # finest first
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.min_score_by_gsd == steps and loaded.min_score == {"ship": 0.65}
    assert loaded.gsd_range_m == (0.5, 10.0)  # the other settings kept
    assert describe_spec(str(path)).min_score_by_gsd == steps
    with pytest.raises(TypeError, match="classes"):
        update_checkpoint(path, classes=["ship"])
    payload = read_checkpoint(path)
    payload["min_score_by_gsd"] = {"ship": [[1.0, 1.5]]}
    torch.save(payload, path)
    for read in (describe_spec, load_checkpoint):
        with pytest.raises(UserInputError, match=r"m\.pt: min_score_by_gsd") as info:
            read(str(path))
        assert "\n" not in str(info.value)


def test_mask_thresholds_survive_the_checkpoint(model: MaskRCNNSegmenter, tmp_path: Path) -> None:
    path = _save(model, tmp_path / "m.pt")
    update_checkpoint(path, mask_threshold={"ship": 0.7})
    update_checkpoint(path, mask_threshold_by_gsd={"building": [[1.0, 0.35], [0.5, 0.3]]})
    steps = {"building": ((0.5, 0.3), (1.0, 0.35))}  # finest first
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.mask_threshold == {"ship": 0.7} and loaded.mask_threshold_by_gsd == steps
    for info in (describe_spec(str(path)), describe_model(loaded, str(path))):
        assert info.mask_threshold == {"ship": 0.7} and info.mask_threshold_by_gsd == steps
    update_checkpoint(path, mask_threshold=None, mask_threshold_by_gsd=None)
    payload = read_checkpoint(path)
    assert "mask_threshold" not in payload and "mask_threshold_by_gsd" not in payload
    assert payload["gsd_range_m"] == [0.5, 10.0]  # the other settings kept


SETTINGS = {  # attribute: (as given, as read)
    "class_gsd_range_m": ({"field": [4, 7]}, {"field": (4.0, 7.0)}),
    "min_score": ({"ship": 1}, {"ship": 1.0}),
    "min_score_by_gsd": ({"ship": [(2, 0.5), (1, 0.4)]}, {"ship": ((1.0, 0.4), (2.0, 0.5))}),
    "class_extra_gsd_m": ({"building": (0.9, 0.6)}, {"building": (0.6, 0.9)}),
    "class_coarse_reading": ({"ship": [1.5, 6]}, {"ship": (1.5, 6.0)}),
    "class_fine_gsd_m": ({"ship": [0.3], "field": []}, {"ship": (0.3,)}),
    "mask_threshold": ({"field": 0.3}, {"field": 0.3}),
    "mask_threshold_by_gsd": ({"building": [(1, 0.35)]}, {"building": ((1.0, 0.35),)}),
    "class_tta_views": ({"ship": 4.0}, {"ship": 4}),
    "tta_views_by_gsd": ({"field": [(3, 4.0)]}, {"field": ((3.0, 4.0),)}),
    "class_fuse_iou": ({"building": 0.35}, {"building": 0.35}),
    "rpn_proposals_by_gsd": (
        [(2, 1500, 700.0), (1, 1000, 500)],
        ((1.0, 1000, 500), (2.0, 1500, 700)),
    ),
    "class_box_refinements": ({"building": 2.0, "ship": 0}, {"building": 2}),
}


def test_every_read_setting_survives_the_checkpoint(
    model: MaskRCNNSegmenter, tmp_path: Path
) -> None:
    assert set(SETTINGS) == {s.attribute for s in READ_SETTINGS}
    info_fields = {f.name for f in fields(ModelInfo)}
    assert info_fields - {"spec", "name", "checksum", "classes", "untrained", "gsd_range_m"} == {
        s.attribute for s in READ_SETTINGS
    }
    given = {s.key: SETTINGS[s.attribute][0] for s in READ_SETTINGS}
    path = save_checkpoint(
        tmp_path / "m.pt",
        state_dict=model.network.state_dict(),
        arch=model.arch.to_dict(),
        classes=model.classes,
        normalization=NORMALIZATION,
        gsd_range_m=None,
        **given,
    )
    payload = {k: v for k, v in read_checkpoint(path).items() if k != "state_dict"}
    assert payload["class_gsd_m"] == {"field": [4.0, 7.0]}  # plain lists, not tuples
    assert payload["min_score_by_gsd"] == {"ship": [[1.0, 0.4], [2.0, 0.5]]}
    update_checkpoint(path)
    assert {k: v for k, v in read_checkpoint(path).items() if k != "state_dict"} == payload
    spec = importlib.util.spec_from_file_location(
        "timed_model", Path(__file__).parents[1] / "benchmarks" / "timed_model.py"
    )
    timed_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timed_model)
    loaded = load_checkpoint(path, device="cpu")
    read = {attribute: value for attribute, (_, value) in SETTINGS.items()}
    for info in (
        describe_spec(str(path)),
        describe_model(loaded, str(path)),
        describe_model(timed_model.TimedSegmenter(loaded), str(path)),
    ):
        assert {attribute: getattr(info, attribute) for attribute in read} == read
    # the wrapper hands on every keyword geoseg gives (the proposals depend on the GSD)
    assert predict_accepts(timed_model.TimedSegmenter(loaded), "gsd_m")
    with pytest.raises(TypeError, match="class_gsd_range_m"):  # an attribute, not a key
        save_checkpoint(
            path,
            state_dict={},
            arch={},
            classes=CLASSES,
            normalization={},
            gsd_range_m=None,
            class_gsd_range_m={},
        )
    with pytest.raises(TypeError, match="class_gsd_m"):  # a key, not an attribute
        MaskRCNNSegmenter(model.network, classes=CLASSES, arch=model.arch, class_gsd_m={})


@pytest.mark.parametrize(
    ("key", "table"),
    [
        ("mask_threshold", {"ship": 1.0}),
        ("mask_threshold_by_gsd", {"ship": [[1.0, 0.0]]}),
        ("rpn_proposals_by_gsd", [[1.0, 1000, 0]]),
        ("rpn_proposals_by_gsd", [[1.0, 1000.5, 500]]),
        ("rpn_proposals_by_gsd", [[0, 1000, 500]]),
        ("rpn_proposals_by_gsd", {"ship": [[1.0, 1000, 500]]}),
        ("tta_views_by_gsd", {"field": [[3.0, 3]]}),
        ("tta_views_by_gsd", {"field": [[0, 4]]}),
        ("tta_views_by_gsd", {"field": 4}),
        ("class_coarse_reading", {"ship": [0.5, 6.0]}),
        ("class_coarse_reading", {"ship": [1.5, 0]}),
        ("class_coarse_reading", {"ship": 1.5}),
        ("class_box_refinements", {"ship": 5}),
        ("class_box_refinements", {"ship": 1.5}),
        ("class_box_refinements", {"ship": -1}),
        ("class_box_refinements", [2]),
        ("class_fuse_iou", {"building": 1.0}),
        ("class_fuse_iou", {"building": "near"}),
    ],
)
def test_bad_read_settings_are_refused(
    model: MaskRCNNSegmenter, tmp_path: Path, key: str, table: dict
) -> None:
    path = _save(model, tmp_path / "m.pt")
    payload = read_checkpoint(path)
    payload[key] = table
    torch.save(payload, path)
    for read in (describe_spec, load_checkpoint):
        with pytest.raises(UserInputError, match=rf"m\.pt: {key} ") as info:
            read(str(path))
        assert "\n" not in str(info.value)


def test_arch_survives_the_checkpoint(tmp_path: Path) -> None:
    arch = MaskRCNNArch(widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), fpn_channels=32)
    small = untrained_segmenter(("ship",), arch=arch, device="cpu")
    loaded = load_checkpoint(_save(small, tmp_path / "s.pt"), device="cpu")
    assert loaded.arch == arch and loaded.classes == ("ship",)


def test_unknown_arch_keys_are_kept_once_through_round_trips() -> None:
    data = {**MaskRCNNArch().to_dict(), "future_knob": 3}
    for _ in range(3):  # as when each fine-tuning run starts from the last one's checkpoint
        data = MaskRCNNArch.from_dict(data).to_dict()
    assert data["extra"] == {"future_knob": 3}
    nested = {**MaskRCNNArch().to_dict(), "extra": {"extra": {"extra": {}}}}  # older files
    assert MaskRCNNArch.from_dict(nested).extra == {}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "not found"),
        (b"not a checkpoint at all", "not a readable PyTorch checkpoint"),
        ({"weights": torch.zeros(2)}, "not a geoseg Mask R-CNN checkpoint"),
        ({"format": "geoseg-maskrcnn", "version": 99}, "newer"),
    ],
)
def test_bad_file_is_a_user_error(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserInputError, match=match) as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value)
    with pytest.raises(UserInputError):
        load_checkpoint(path)


def test_truncated_checkpoint_is_a_user_error(model: MaskRCNNSegmenter, tmp_path: Path) -> None:
    path = _save(model, tmp_path / "m.pt")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserInputError, match=r"m\.pt"):
        load_checkpoint(path)


def test_weights_that_do_not_fit(model: MaskRCNNSegmenter, tmp_path: Path) -> None:
    path = _save(model, tmp_path / "m.pt")
    payload = read_checkpoint(path)
    payload["classes"] = ["building"]  # heads sized for 3 classes
    torch.save(payload, path)
    with pytest.raises(UserInputError, match="do not fit"):
        load_checkpoint(path)


def test_default_without_weights_is_untrained_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(maskrcnn, "DEFAULT_WEIGHTS", tmp_path / "missing.pt")
    with pytest.warns(UntrainedModelWarning, match="UNTRAINED"):
        model = maskrcnn.load_default(device="cpu")
    assert model.untrained and model.classes == CLASSES


def test_default_with_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _save(untrained_segmenter(CLASSES, device="cpu"), tmp_path / "default.pt")
    monkeypatch.setattr(maskrcnn, "DEFAULT_WEIGHTS", path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModelWarning)
        model = maskrcnn.load_default(device="cpu")
    assert model.name == "default" and model.gsd_range_m == (0.5, 10.0)


def test_bad_device_is_a_user_error() -> None:
    with pytest.raises(UserInputError, match="device"):
        maskrcnn.resolve_device("tpu:7")


def test_a_gpu_device_index_beyond_the_machine_s_is_a_user_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert maskrcnn.resolve_device("cuda:0") == torch.device("cuda:0")
    assert maskrcnn.resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UserInputError, match="1 GPU"):
        maskrcnn.resolve_device("cuda:3")


@pytest.mark.parametrize(
    "failure",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory"),
        RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate`"),
    ],
)
def test_a_pass_that_runs_out_of_gpu_memory_is_halved(
    monkeypatch: pytest.MonkeyPatch, failure: RuntimeError
) -> None:
    """On a GPU every tile of a call goes through at once; when the GPU runs out of memory
    (torch's error, or cuDNN's or cuBLAS's failed allocation), the pass is halved until it
    fits, with the same answers (no GPU here: the network's forward pass is wrapped to fail
    as a GPU would above 2 tiles)."""
    segmenter = untrained_segmenter(CLASSES, device="cpu", seed=3)
    many = np.random.default_rng(1).random((5, 3, 64, 64), dtype=np.float32)
    expected = segmenter.predict(many, min_score=0.0)
    detect, sizes = segmenter._detect, []

    def small_gpu(net: Any, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        sizes.append(len(batch))
        if len(batch) > 2:
            raise failure
        return detect(net, batch)

    monkeypatch.setattr(segmenter, "_detect", small_gpu)
    segmenter.batch_size = None  # as on a GPU: the whole call at once
    got = segmenter.predict(many, min_score=0.0)
    assert sizes == [5, 2, 2, 1] and segmenter.batch_size == 2
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)


def test_other_errors_are_not_taken_for_a_full_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    segmenter = untrained_segmenter(CLASSES, device="cpu", seed=3)
    calls = []

    def broken(net: Any, batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        calls.append(len(batch))
        raise RuntimeError("Input type (c10::Half) and bias type (float) should be the same")

    monkeypatch.setattr(segmenter, "_detect", broken)
    segmenter.batch_size = None
    with pytest.raises(RuntimeError, match="bias type"):
        segmenter.predict(np.zeros((4, 3, 64, 64), dtype=np.float32))
    assert calls == [4] and segmenter.batch_size is None


def test_batches_are_sized_to_the_gpu_s_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from geoseg import gpu

    assert gpu.auto_batch_size("cpu", 512) == gpu.CPU_BATCH
    if not torch.cuda.is_available():
        assert gpu.auto_batch_size("auto", 512) == gpu.CPU_BATCH
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for free_gib, expected in ((80, gpu.MAX_GPU_BATCH), (3, 7), (0.5, gpu.CPU_BATCH)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _i, f=free_gib: (f * 2**30, 0))
        assert gpu.auto_batch_size("cuda:0", 512) == expected


def test_average_weights_tool_writes_the_mean(model: MaskRCNNSegmenter, tmp_path: Path) -> None:
    first = _save(model, tmp_path / "a.pt")
    update_checkpoint(first, min_score={"ship": 0.65})
    other = untrained_segmenter(CLASSES, device="cpu", seed=4)
    second = _save(other, tmp_path / "b.pt")
    done = _run_tool("average_weights.py", tmp_path / "soup.pt", first, second)
    assert done.returncode == 0, done.stderr
    soup = read_checkpoint(tmp_path / "soup.pt")
    key = "roi_heads.box_predictor.cls_score.weight"
    a, b = model.network.state_dict()[key], other.network.state_dict()[key]
    assert not torch.equal(a, b)
    torch.testing.assert_close(soup["state_dict"][key], (a + b) / 2)
    assert soup["min_score"] == {"ship": 0.65}  # the first one's settings
    assert soup["train"]["averaged_from"] == [str(first), str(second)]
    stranger = untrained_segmenter(("building",), device="cpu", seed=5)
    third = _save(stranger, tmp_path / "c.pt")
    refused = _run_tool("average_weights.py", tmp_path / "x.pt", first, third)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "not the same network or classes" in refused.stderr
    assert not (tmp_path / "x.pt").exists()


def test_rpn_proposals_tool_sets_and_drops_the_table(
    model: MaskRCNNSegmenter, tmp_path: Path
) -> None:
    path = _save(model, tmp_path / "m.pt")
    run = partial(_run_tool, "set_rpn_proposals.py")

    assert run(str(path), "2:1500:800", "1:1000:500").returncode == 0
    want = ((1.0, 1000, 500), (2.0, 1500, 800))
    assert load_checkpoint(path, device="cpu").rpn_proposals_by_gsd == want
    bad = run(str(path), "1:1000:0.5")
    assert bad.returncode == 2 and "GSD:BEFORE:AFTER" in bad.stderr
    assert load_checkpoint(path, device="cpu").rpn_proposals_by_gsd == want  # unchanged
    assert run(str(path), "-").returncode == 0
    assert "rpn_proposals_by_gsd" not in read_checkpoint(path)
    assert read_checkpoint(path)["gsd_range_m"] == [0.5, 10.0]  # the rest kept
    missing = run(str(tmp_path / "none.pt"), "1:1:1")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_class_gsd_tool_sets_refuses_and_drops_a_coarse_reading(
    model: MaskRCNNSegmenter, tmp_path: Path
) -> None:
    path = _save(model, tmp_path / "m.pt")
    run = partial(_run_tool, "set_class_gsd.py", path)
    assert run("--coarse", "ship=1.667:6").returncode == 0
    assert read_checkpoint(path)["class_coarse_reading"] == {"ship": [1.667, 6.0]}
    for bad in ("ship=0.5:6", "ship=inf:6", "ship=1.5:0", "boat=1.5:6"):
        refused = run("--coarse", bad)
        assert refused.returncode == 2, bad
        assert "--coarse" in refused.stderr.splitlines()[-1]
    assert read_checkpoint(path)["class_coarse_reading"] == {"ship": [1.667, 6.0]}  # unchanged
    assert run("--coarse", "ship=").returncode == 0
    assert "class_coarse_reading" not in read_checkpoint(path)


def test_box_refinements_tool_sets_and_drops_classes(
    model: MaskRCNNSegmenter, tmp_path: Path
) -> None:
    path = _save(model, tmp_path / "m.pt")
    run = partial(_run_tool, "set_box_refinements.py")

    assert run(str(path), "building=2", "ship=1").returncode == 0
    assert load_checkpoint(path, device="cpu").class_box_refinements == {"building": 2, "ship": 1}
    for bad, says in (("ship=5", "CLASS=N"), ("boat=1", "boat: not a class")):
        refused = run(str(path), bad)
        assert refused.returncode == 2 and says in refused.stderr
        assert refused.stderr.count("\n") == 1 or "usage" in refused.stderr
    assert run(str(path), "ship=0").returncode == 0
    assert read_checkpoint(path)["class_box_refinements"] == {"building": 2}
    assert run(str(path), "building=0").returncode == 0
    assert "class_box_refinements" not in read_checkpoint(path)
    assert read_checkpoint(path)["gsd_range_m"] == [0.5, 10.0]  # the rest kept
    missing = run(str(tmp_path / "none.pt"), "ship=1")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert _run_tool("set_tta_views.py", path, "ship=4", "field=1").returncode == 0
    assert load_checkpoint(path, device="cpu").class_tta_views == {"ship": 4}
    assert _run_tool("set_tta_views.py", path, "field@3=4", "ship@1=1").returncode == 0
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.class_tta_views == {"ship": 4}
    assert loaded.tta_views_by_gsd == {"field": ((3.0, 4.0),), "ship": ((1.0, 1.0),)}
    assert _run_tool("set_tta_views.py", path, "field@3=-", "ship@1=-").returncode == 0
    assert "tta_views_by_gsd" not in read_checkpoint(path)
    for tool in ("set_tta_views.py", "set_min_score.py", "set_mask_threshold.py"):
        missing = _run_tool(tool, tmp_path / "none.pt", "ship=4" if "tta" in tool else "ship=0.4")
        assert missing.returncode == 2 and missing.stderr.count("\n") == 1
        assert "none.pt" in missing.stderr
    refused = _run_tool("set_tta_views.py", path, "ship=3")
    assert refused.returncode == 2 and "one of 1, 2, 4, 8" in refused.stderr


def test_the_heads_get_float32_features_whatever_the_backbone_hands_on() -> None:
    model = untrained_segmenter(("a",), device="cpu", seed=1)

    def half_backbone(pixels: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict([("0", pixels.half()), ("1", pixels[..., ::2, ::2])])

    features = model._features(half_backbone, torch.rand(1, 3, 16, 16))
    assert [level.dtype for level in features.values()] == [torch.float32, torch.float32]
    assert list(features) == ["0", "1"]
