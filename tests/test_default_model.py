"""The default model that ships inside the package: it loads offline and finds objects."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import torch

from geoseg.config import RunOptions
from geoseg.learn.evaluate import evaluate_files
from geoseg.learn.synth import write_scene
from geoseg.model.checkpoint import read_checkpoint
from geoseg.model.maskrcnn import DEFAULT_WEIGHTS, load_default
from geoseg.pipeline import run_scene
from tests.conftest import utm_transform

CLASSES = ("building", "field", "ship")


def test_the_weights_ship_in_the_package_with_their_card() -> None:
    assert DEFAULT_WEIGHTS.is_file(), "geoseg/model/weights/default.pt is missing"
    assert DEFAULT_WEIGHTS.stat().st_size <= 40 * 2**20
    assert (DEFAULT_WEIGHTS.parent / "MODEL_CARD.md").is_file()
    payload = read_checkpoint(DEFAULT_WEIGHTS)
    low, high = payload["gsd_range_m"]
    assert low <= 0.5 and high >= 10.0  # trained over the GSDs of the shared samples
    assert tuple(payload["classes"]) == CLASSES
    assert set(payload["min_score"]) == set(CLASSES)
    assert all(0 < v < 1 for v in payload["min_score"].values())
    # readings at 1 m or finer run through a second set of weights (model card, session 34),
    # readings over 1 m up to 3 m through a third, stored as float16 (session 36)
    steps = payload["weights_by_gsd"]
    assert [gsd for gsd, _ in steps] == [1.0, 3.0]
    weight = "roi_heads.box_predictor.cls_score.weight"
    assert [w[weight].dtype for _, w in steps] == [torch.float32, torch.float16]


def test_the_default_model_loads_offline_trained() -> None:
    model = load_default(device="cpu")
    assert not model.untrained and model.classes == CLASSES
    assert model.name == "default" and model.checksum.startswith("sha256:")


@pytest.mark.parametrize("gsd_m", [1.0, 2.0, 4.0])  # each of its three weight sets
def test_the_default_model_finds_houses_in_a_held_out_synthetic_scene(
    tmp_path: Path, gsd_m: float
) -> None:
    # seed 42 is in 0-99, which training never uses
    image, labels = write_scene(tmp_path / "s.tif", size_wh=(384, 384), gsd_m=gsd_m, seed=42)
    run_scene(image, tmp_path / "out", options=RunOptions(tile_px=256, overlap_px=64))
    scores = evaluate_files(tmp_path / "out" / "s.gpkg", labels)["classes"]
    assert scores["building"]["n_ref"] >= 10
    assert scores["building"]["f1"] >= 0.7, scores["building"]
    # the buildings' boxes were refined twice (model card, session 29), their views' boxes
    # grouped from IoU 0.25 (session 46), and the run says so
    metadata = pyogrio.read_info(tmp_path / "out" / "s.gpkg", layer="building")["layer_metadata"]
    assert json.loads(metadata["geoseg_class_box_refinements"]) == {"building": 2}
    assert json.loads(metadata["geoseg_class_fuse_iou"]) == {"building": 0.25}


def test_a_300_m_scene_stops_at_once_with_a_clear_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from geoseg.cli import main

    scene = Path(__file__).parents[1] / "sample_data" / "RGB.byte.tif"
    with pytest.raises(SystemExit) as done:
        main(["run", str(scene), "-o", "/nonexistent/never-written"])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2
    assert "RGB.byte.tif: GSD 300 m is too coarse" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("gsd_m", "buildings_at", "ships_at"),
    [
        (0.3, (0.3, 0.6), (0.3, 2.0)),
        (0.5, (0.5,), (0.3, 0.5, 2.0)),
        (0.7, (0.7,), (0.7, 2.0)),
        (1.0, (1.0,), (1.0, 2.0)),  # 0.6 m is a coarser reading only: no upsampled buildings
        (8.3, (8.3,), (5.0,)),  # ships on coarse scenes at the scene's GSD / 1.667, 5 to 6 m
        (10.0, (10.0,), (6.0,)),
        (12.0, (9.991,), (6.0,)),
    ],
)
def test_the_default_model_reads_buildings_and_ships_twice_on_very_fine_scenes(
    coded_scene: Callable[..., Path],
    gsd_m: float,
    buildings_at: tuple[float, ...],
    ships_at: tuple[float, ...],
) -> None:
    """Buildings on a 0.3 m scene are read at 0.3 and 0.6 m and merged (Nairobi 0.20 -> 0.32,
    model card), and ships on scenes of 1.3 m or finer at 2 m too (large ships whole, not as
    their deck cargo); a 0.5 m scene is too close to 0.6 m for a second building reading. On
    0.45-0.6 m scenes boats are also read at 0.3 m, where the model learned them (synthetic
    0.5 m scenes 0.825 -> 0.901); a 0.7 m scene would be upsampled more than twice. Ships on
    a 10 m scene are read at 6 m, on an 8.3 m one at 5 m (1.667 times finer, model card)."""
    from geoseg.pipeline import plan_scene

    ids = np.zeros((2048, 2048), dtype=np.int32)  # wide enough for 2 m at 0.3 m
    scene = coded_scene(ids, {}, transform=utm_transform(gsd_m))
    plan = plan_scene(scene, RunOptions())
    assert plan.class_readings_m()["building"] == pytest.approx(buildings_at, rel=1e-2)
    assert plan.class_readings_m()["ship"] == pytest.approx(ships_at, rel=1e-2)


def test_the_shipped_model_fine_tunes_and_keeps_how_it_is_read(tmp_path: Path) -> None:
    """``geoseg train --init default`` starts from the shipped weights and keeps every read
    setting they carry for the classes it trains, the per-class tables and the one table
    for all (its RPN proposal counts by GSD) alike."""
    from geoseg.cli import main

    image, labels = write_scene(tmp_path / "s.tif", size_wh=(192, 192), gsd_m=1.0, seed=43)
    out = tmp_path / "ft.pt"
    args = ["train", "--images", str(image), "--labels", str(labels), "--init", "default"]
    args += ["--classes", "building,ship", "--epochs", "1", "--steps-per-epoch", "1"]
    args += ["--batch-size", "1", "--chip-size", "96", "-o", str(out)]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 0
    shipped, tuned = read_checkpoint(DEFAULT_WEIGHTS), read_checkpoint(out)
    assert tuned["classes"] == ["building", "ship"]
    assert "weights_by_gsd" not in tuned  # one set, from the default's for 1 m or finer
    assert tuned["train"]["init"] == "default.pt (its weights for readings up to 1 m)"
    assert tuned["rpn_proposals_by_gsd"] == shipped["rpn_proposals_by_gsd"]
    for key in ("class_tta_views", "class_box_refinements", "class_fuse_iou", "class_extra_gsd_m"):
        assert tuned[key] == {c: v for c, v in shipped[key].items() if c != "field"}, key
