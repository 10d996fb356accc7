"""A checkpoint with other weights for fine readings (``weights_by_gsd``): stored, kept, used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.errors import UserInputError
from geoseg.model.checkpoint import read_checkpoint, save_checkpoint, update_checkpoint
from geoseg.model.maskrcnn import (
    NORMALIZATION,
    MaskRCNNSegmenter,
    load_checkpoint,
    untrained_segmenter,
)

CLASSES = ("building", "field", "ship")


@pytest.fixture(scope="module")
def coarse() -> MaskRCNNSegmenter:
    return untrained_segmenter(CLASSES, device="cpu", seed=3)


@pytest.fixture(scope="module")
def fine() -> MaskRCNNSegmenter:
    return untrained_segmenter(CLASSES, device="cpu", seed=4)


@pytest.fixture
def tiles() -> np.ndarray:
    return np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)


def _save(path: Path, coarse: MaskRCNNSegmenter, steps: list | None) -> Path:
    return save_checkpoint(
        path,
        state_dict=coarse.network.state_dict(),
        arch=coarse.arch.to_dict(),
        classes=coarse.classes,
        normalization=NORMALIZATION,
        gsd_range_m=(0.3, 10.0),
        weights_by_gsd=steps,
        min_score={"ship": 0.4},
    )


def _same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> bool:
    return all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def test_tiles_go_through_the_weights_of_their_reading(
    tmp_path: Path, coarse: MaskRCNNSegmenter, fine: MaskRCNNSegmenter, tiles: np.ndarray
) -> None:
    path = _save(tmp_path / "two.pt", coarse, [(1.0, fine.network.state_dict())])
    both = load_checkpoint(path, device="cpu")
    assert [gsd for gsd, _ in both.networks_by_gsd] == [1.0]
    on_fine = fine.predict(tiles, min_score=0.0, gsd_m=0.5)
    on_coarse = coarse.predict(tiles, min_score=0.0, gsd_m=2.0)
    assert not _same(on_fine, on_coarse)  # the two weight sets find different things
    for gsd, want in ((0.3, on_fine), (1.0, on_fine), (1.01, on_coarse), (10.0, on_coarse)):
        assert _same(both.predict(tiles, min_score=0.0, gsd_m=gsd), want), gsd
    # in several views, and with no GSD given (the main weights)
    views = {"building": 4, "ship": 4}
    assert _same(
        both.predict(tiles, min_score=0.0, tta_views=views, gsd_m=0.5),
        fine.predict(tiles, min_score=0.0, tta_views=views, gsd_m=0.5),
    )
    assert _same(both.predict(tiles, min_score=0.0), coarse.predict(tiles, min_score=0.0))


def test_the_steps_are_stored_checked_and_kept(
    tmp_path: Path, coarse: MaskRCNNSegmenter, fine: MaskRCNNSegmenter
) -> None:
    one = read_checkpoint(_save(tmp_path / "one.pt", coarse, None))
    assert one["version"] == 1 and "weights_by_gsd" not in one  # as before: older geoseg reads it
    path = _save(tmp_path / "two.pt", coarse, [(1.0, fine.network.state_dict())])
    payload = read_checkpoint(path)
    assert payload["version"] == 2
    [(gsd, weights)] = payload["weights_by_gsd"]
    key = "roi_heads.box_predictor.cls_score.weight"
    assert gsd == 1.0 and torch.equal(weights[key], fine.network.state_dict()[key])
    update_checkpoint(path, min_score={"ship": 0.6})  # a read setting changed, weights kept
    again = read_checkpoint(path)
    assert again["min_score"] == {"ship": 0.6}
    assert torch.equal(again["weights_by_gsd"][0][1][key], weights[key])
    state = fine.network.state_dict()
    for bad in ([(2.0, state), (1.0, state)], [(0.0, state)], [(1.0, {"w": [1.0]})], [(1.0,)]):
        with pytest.raises(UserInputError, match="weights_by_gsd must be"):
            _save(tmp_path / "bad.pt", coarse, bad)


def test_weights_that_do_not_fit_are_a_one_line_error(
    tmp_path: Path, coarse: MaskRCNNSegmenter, fine: MaskRCNNSegmenter
) -> None:
    state = dict(fine.network.state_dict())
    state.pop("roi_heads.box_predictor.cls_score.weight")
    path = _save(tmp_path / "cut.pt", coarse, [(1.0, state)])
    with pytest.raises(UserInputError, match="weights do not fit the network"):
        load_checkpoint(path, device="cpu")


def test_a_newer_checkpoint_version_is_refused(tmp_path: Path, coarse: MaskRCNNSegmenter) -> None:
    path = _save(tmp_path / "m.pt", coarse, None)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 3
    torch.save(payload, path)
    with pytest.raises(UserInputError, match="version 3 is newer than this geoseg reads"):
        read_checkpoint(path)


def _tool(script: str, *args: str | Path) -> subprocess.CompletedProcess:
    tool = Path(__file__).parents[1] / "tools" / script
    return subprocess.run(
        [sys.executable, str(tool), *map(str, args)], capture_output=True, text=True
    )


def test_the_tools_make_the_soup_and_put_it_in(
    tmp_path: Path, coarse: MaskRCNNSegmenter, fine: MaskRCNNSegmenter
) -> None:
    """How the shipped default was made (model card, "Two weight sets by GSD")."""
    first, second = _save(tmp_path / "a.pt", coarse, None), _save(tmp_path / "b.pt", fine, None)
    soup = tmp_path / "soup.pt"
    done = _tool("average_weights.py", soup, first, second, "--keep-class", "ship")
    assert done.returncode == 0, done.stderr
    a, b = coarse.network.state_dict(), fine.network.state_dict()
    mixed = read_checkpoint(soup)["state_dict"]
    scores = "roi_heads.box_predictor.cls_score.weight"
    boxes = "roi_heads.box_predictor.bbox_pred.weight"
    torch.testing.assert_close(mixed[scores][:3], (a[scores][:3] + b[scores][:3]) / 2)
    assert torch.equal(mixed[scores][3], a[scores][3])  # label 3: ship, the first's own row
    assert torch.equal(mixed[boxes][12:], a[boxes][12:])  # its four box deltas
    torch.testing.assert_close(mixed[boxes][:12], (a[boxes][:12] + b[boxes][:12]) / 2)
    bad = _tool("average_weights.py", tmp_path / "x.pt", first, second, "--keep-class", "boat")
    assert bad.returncode == 2 and "has no class boat" in bad.stderr

    done = _tool("set_weights_by_gsd.py", first, f"1:{soup}")
    assert done.returncode == 0, done.stderr
    both = load_checkpoint(first, device="cpu")
    [(gsd, network)] = both.networks_by_gsd
    assert gsd == 1.0 and torch.equal(network.state_dict()[scores], mixed[scores])
    assert both.min_score == read_checkpoint(first)["min_score"] == {"ship": 0.4}  # kept

    done = _tool("set_weights_by_gsd.py", first, f"1:{soup}", f"3:{second}", "--half", "3")
    assert done.returncode == 0, done.stderr
    steps = read_checkpoint(first)["weights_by_gsd"]
    assert [gsd for gsd, _ in steps] == [1.0, 3.0]
    assert steps[0][1][scores].dtype == torch.float32 and steps[1][1][scores].dtype == torch.float16
    three = load_checkpoint(first, device="cpu")
    (_, fine_net), (_, middle) = three.networks_by_gsd
    assert torch.equal(fine_net.state_dict()[scores], mixed[scores])
    loaded = middle.state_dict()[scores]
    assert loaded.dtype == torch.float32 and torch.equal(loaded, b[scores].half().float())
    bad = _tool("set_weights_by_gsd.py", first, f"1:{soup}", "--half", "2")
    assert bad.returncode == 2 and "--half [2.0]: no such step" in bad.stderr
    assert _tool("set_weights_by_gsd.py", first, "-").returncode == 0
    assert "weights_by_gsd" not in read_checkpoint(first)
