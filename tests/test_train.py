"""Training: chips from a GeoTIFF and labels, a smoke training run, resuming, the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from affine import Affine

from geoseg.cli import main
from geoseg.config import DEFAULT_MIN_SCORE
from geoseg.errors import LabelError, UserInputError
from geoseg.learn.chips import (
    PASTE_MAX_SHARE,
    ZOOM_RANGE,
    Chip,
    augment,
    chip_windows,
    cut_chips,
    paste_objects,
    read_labels,
    targets_from_ids,
)
from geoseg.learn.train import (
    SCORE_GRID,
    LabelSource,
    MaskCuts,
    StartReading,
    TrainOptions,
    backbone_autocast,
    f1_scores,
    match_instances,
    sidecar_dir,
    train,
    tune_min_scores,
)
from geoseg.learn.train import _batch as training_batch
from geoseg.learn.train import _Donors as Donors
from geoseg.learn.train import _predict_in_views as predict_in_views
from geoseg.model import load_segmenter
from geoseg.model.maskrcnn import MaskRCNNArch, MaskRCNNSegmenter

UTM = "EPSG:32633"
TRANSFORM = Affine(1.0, 0.0, 500_000.0, 0.0, -1.0, 4_000_000.0)
SIZE = 96
TINY = MaskRCNNArch(widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), fpn_channels=32)
# (row, col, height, width) of bright roofs on a dark, noisy ground
ROOFS = [(8, 8, 14, 18), (40, 12, 20, 12), (70, 30, 12, 22), (14, 44, 16, 16), (60, 70, 18, 14)]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: tiny networks gain nothing from more, and a busy machine loses."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def labelled(tmp_path: Path) -> tuple[Path, Path]:
    """A 96 x 96 uint8 RGB scene with five bright rectangles, and their polygons in WGS84."""
    rng = np.random.default_rng(1)
    data = rng.integers(20, 60, size=(3, SIZE, SIZE)).astype(np.uint8)
    polys = []
    for row, col, h, w in ROOFS:
        data[:, row : row + h, col : col + w] = rng.integers(200, 240, size=(3, h, w))
        x0, y0 = TRANSFORM @ (col, row)
        x1, y1 = TRANSFORM @ (col + w, row + h)
        polys.append(shapely.box(x0, y1, x1, y0))
    image = tmp_path / "roofs.tif"
    profile = {"driver": "GTiff", "height": SIZE, "width": SIZE, "count": 3, "dtype": "uint8"}
    with rasterio.open(image, "w", crs=UTM, transform=TRANSFORM, **profile) as dst:
        dst.write(data)
    labels = tmp_path / "roofs.geojson"
    gdf = gpd.GeoDataFrame({"class": ["building"] * len(polys)}, geometry=polys, crs=UTM)
    gdf.to_crs("EPSG:4326").to_file(labels)
    return image, labels


def test_chips_follow_the_labels(labelled: tuple[Path, Path]) -> None:
    image, labels = labelled
    gdf = read_labels(labels, classes=("building", "ship"))
    chips = cut_chips(image, [gdf], classes=("building", "ship"), chip_px=64, val_fraction=0.25)
    train_chips = [c for c in chips if c.split == "train"]
    val_chips = [c for c in chips if c.split == "val"]
    assert train_chips and val_chips
    split_col = SIZE - 24
    assert all(c.window.col_stop <= split_col for c in train_chips)
    assert all(c.window.col_off >= split_col for c in val_chips)
    for chip in chips:
        inside = chip.pixels[0][chip.ids > 0]
        assert inside.size == 0 or inside.min() >= 200  # masks sit on the bright roofs
        masks, boxes, classes = targets_from_ids(chip.ids, chip.classes)
        assert masks.shape[0] == len(boxes) == len(classes) and set(classes) <= {0}
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])


def test_chip_windows_cover_each_region() -> None:
    windows = list(chip_windows((100, 300), chip_px=64, val_fraction=0.2))
    train_cols = {c for s, w in windows if s == "train" for c in range(w.col_off, w.col_stop)}
    val_cols = {c for s, w in windows if s == "val" for c in range(w.col_off, w.col_stop)}
    assert train_cols == set(range(240)) and val_cols == set(range(240, 300))
    assert all(w.height == 64 and w.width <= 64 for _, w in windows)


def test_label_errors(tmp_path: Path, labelled: tuple[Path, Path]) -> None:
    _, labels = labelled
    gdf = gpd.read_file(labels)
    no_class = tmp_path / "noclass.geojson"
    gdf.drop(columns="class").to_file(no_class)
    with pytest.raises(LabelError, match="--label-class"):
        read_labels(no_class, classes=("building",))
    assert len(read_labels(no_class, classes=("ship",), label_class="ship")) == len(ROOFS)
    with pytest.raises(LabelError, match="not one of the classes"):
        read_labels(no_class, classes=("building",), label_class="tree")
    with pytest.raises(LabelError, match="no polygon"):
        read_labels(labels, classes=("ship",))
    with pytest.raises(LabelError, match="no such"):
        read_labels(tmp_path / "missing.gpkg", classes=("ship",))
    no_crs = tmp_path / "nocrs.geojson"
    no_crs.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": '
        '{"class": "ship"}, "geometry": {"type": "Point", "coordinates": [1, 2]}}]}'
    )
    gpd_read = gpd.read_file(no_crs)
    if gpd_read.crs is None:  # GeoJSON without "crs" is WGS84 for most drivers
        with pytest.raises(LabelError, match="no CRS"):
            read_labels(no_crs, classes=("ship",))


def test_match_instances_one_to_one() -> None:
    ref = np.zeros((2, 8, 8), dtype=bool)
    ref[0, :4, :4] = True
    ref[1, 4:, 4:] = True
    pred = np.stack([ref[0], ref[0], np.roll(ref[1], 3, axis=0)])
    counts = match_instances(pred, np.array([0.9, 0.8, 0.7]), ref)
    assert counts.tolist() == [1, 2, 1]  # the duplicate is a false positive
    scores = f1_scores(np.array([counts, [0, 0, 0]]), ("building", "ship"))
    assert scores["building"]["f1"] == pytest.approx(0.4)
    assert scores["ship"]["f1"] is None


def test_min_score_is_tuned_per_class_to_the_best_f1() -> None:
    flat = [
        # building, 2 references: a hit at 0.9, a false positive at 0.6, a hit at 0.3.
        # F1 0.8 at 0.05-0.3 (2 tp, 1 fp), 0.5 at 0.35-0.6, 0.667 at 0.65-0.9: middle of 0.05-0.3
        (np.array([0.9, 0.6, 0.3]), np.array([True, False, True])),
        # ship, 1 reference: a hit at 0.8, a false positive at 0.25: F1 1.0 at 0.3-0.8
        (np.array([0.8, 0.25]), np.array([True, False])),
        # field: no reference, so no evidence: the default threshold
        (np.array([0.7]), np.array([False])),
    ]
    assert tune_min_scores(flat, np.array([2, 1, 0])) == [0.2, 0.55, DEFAULT_MIN_SCORE]


def test_smoke_training_learns_and_resumes(labelled: tuple[Path, Path], tmp_path: Path) -> None:
    image, labels = labelled
    options = TrainOptions(
        classes=("building", "ship"),
        epochs=4,
        steps_per_epoch=6,
        batch_size=2,
        init="none",
        chip_px=64,
        val_fraction=0.25,
        lr=2e-3,
        device="cpu",
        arch=TINY,
    )
    output = tmp_path / "m.pt"
    events: list[str] = []
    result = train(
        [image],
        [LabelSource(str(labels))],
        output,
        options=options,
        progress=lambda e: events.append(e.kind),
    )
    assert events[0] == "data" and events.count("epoch_end") == 4 and events[-1] == "validation"
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    assert set(result.validation) == {"building", "ship"}
    assert result.gsd_range_m == (1.0, 1.0)

    model = load_segmenter(str(output), device="cpu")
    assert model.classes == ("building", "ship") and model.gsd_range_m == (1.0, 1.0)
    assert not model.untrained
    assert set(result.min_score) == {"building", "ship"} and model.min_score == result.min_score
    assert set(result.min_score.values()) <= {*SCORE_GRID, DEFAULT_MIN_SCORE}
    (out,) = model.predict(np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32))
    assert out["masks"].shape[1:] == (28, 28) and out["boxes"].shape == (len(out["scores"]), 4)

    side = sidecar_dir(output)
    assert (side / "last.pt").is_file() and len(
        (side / "history.jsonl").read_text().splitlines()
    ) == 4
    more = train(
        [image],
        [LabelSource(str(labels))],
        output,
        options=TrainOptions(**{**_kw(options), "epochs": 5}),
    )
    assert more.trained_epochs == 1 and len(more.history) == 5
    with pytest.raises(UserInputError, match="training run with other chip_px"):
        train(
            [image],
            [LabelSource(str(labels))],
            output,
            options=TrainOptions(**{**_kw(options), "chip_px": 32}),
        )


def _kw(options: TrainOptions) -> dict:
    return {f: getattr(options, f) for f in TrainOptions.__dataclass_fields__}


def test_cli_train_usage_errors(
    tmp_path: Path, labelled: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    image, labels = labelled

    def geoseg(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as done:
            main(["train", *args, "-o", str(tmp_path / "m.pt")])
        return int(done.value.code), capsys.readouterr().err

    code, err = geoseg("--images", str(image), "--labels", str(tmp_path / "nope.gpkg"))
    assert code == 2 and "nope.gpkg" in err and len(err.strip().splitlines()) == 1
    code, err = geoseg(
        "--images", str(image), "--labels", str(labels), "--label-class", "a", "--label-class", "b"
    )
    assert code == 2 and "--label-class" in err
    code, err = geoseg("--images", str(image))
    assert code == 2 and "--labels" in err
    code, err = geoseg("--help")
    assert code == 0


def test_synthetic_scenes_join_the_training(tmp_path: Path) -> None:
    pytest.importorskip("geoseg.learn.synth")
    options = TrainOptions(
        classes=("building", "field", "ship"),
        epochs=1,
        steps_per_epoch=1,
        batch_size=2,
        init="none",
        chip_px=64,
        synthetic=1,
        synthetic_size_px=96,
        device="cpu",
        arch=TINY,
    )
    result = train([], [], tmp_path / "s.pt", options=options)
    scenes = sorted((sidecar_dir(tmp_path / "s.pt") / "synthetic").glob("*.tif"))
    assert [p.name for p in scenes] == ["synth_1000_96px.tif"]
    assert result.n_train_chips > 0 and result.gsd_range_m[0] >= 0.5
    with pytest.raises(UserInputError, match="0-99"):
        TrainOptions(synthetic=1, synthetic_seed=5).validate()


def test_fine_tuning_keeps_the_gsds_and_readings_of_its_start(
    labelled: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geoseg.model.checkpoint import save_checkpoint
    from geoseg.model.maskrcnn import NORMALIZATION, untrained_segmenter

    start = untrained_segmenter(("building", "ship"), arch=TINY, device="cpu")
    start_path = save_checkpoint(
        tmp_path / "start.pt",
        state_dict=start.network.state_dict(),
        arch=TINY.to_dict(),
        classes=start.classes,
        normalization=NORMALIZATION,
        gsd_range_m=(0.5, 10.0),
        class_extra_gsd_m={"building": [0.6]},
        class_fine_gsd_m={"ship": [0.3], "field": [2.0]},
        mask_threshold={"ship": 0.4},
        mask_threshold_by_gsd={"building": [(1.0, 0.35)]},
        min_score_by_gsd={"ship": [(1.0, 0.5)]},
        class_tta_views={"ship": 4, "field": 8},
        tta_views_by_gsd={"building": [(2.0, 2)], "field": [(3.0, 4)], "ship": [(0.5, 8)]},
        class_box_refinements={"building": 2, "field": 1},
        class_fuse_iou={"building": 0.25, "field": 0.4},
        rpn_proposals_by_gsd=[(1.0, 1000, 500)],  # one table for all classes
    )
    asked = []
    predict = MaskRCNNSegmenter.predict

    def recording(self: MaskRCNNSegmenter, tiles: np.ndarray, **keywords: Any) -> list:
        asked.append(
            (
                keywords.get("tta_views"),
                (self.class_box_refinements or {}).get("building"),
                self.class_fuse_iou,
            )
        )
        return predict(self, tiles, **keywords)

    monkeypatch.setattr(MaskRCNNSegmenter, "predict", recording)
    image, labels = labelled  # 1 m
    options = TrainOptions(
        classes=("building", "ship"),
        epochs=1,
        steps_per_epoch=1,
        batch_size=2,
        init=str(start_path),
        chip_px=64,
        val_fraction=0.25,
        device="cpu",
    )
    result = train([image], [LabelSource(str(labels))], tmp_path / "ft.pt", options=options)
    assert result.gsd_range_m == (0.5, 10.0)
    tuned = load_segmenter(str(tmp_path / "ft.pt"), device="cpu")
    assert tuned.gsd_range_m == (0.5, 10.0)
    # how the start is read is kept; its score thresholds are tuned anew
    assert tuned.class_extra_gsd_m == {"building": (0.6,)}
    assert tuned.class_fine_gsd_m == {"ship": (0.3,)}  # field: not a class it trains
    assert tuned.mask_threshold == {"ship": 0.4}
    assert tuned.mask_threshold_by_gsd == {"building": ((1.0, 0.35),)}
    assert tuned.class_tta_views == {"ship": 4}
    assert tuned.tta_views_by_gsd == {"building": ((2.0, 2.0),), "ship": ((0.5, 8.0),)}
    assert tuned.class_box_refinements == {"building": 2}
    assert tuned.class_fuse_iou == {"building": 0.25}
    assert tuned.rpn_proposals_by_gsd == ((1.0, 1000, 500),)
    # validated as it will be read: the chips are at 1 m, so buildings in 2 views, ships in 4
    fused = {"building": 0.25}  # field: not a class it trains
    assert asked and all(v == ({"building": 2, "ship": 4}, 2, fused) for v in asked)
    assert not tuned.min_score_by_gsd
    fresh = train(
        [image],
        [LabelSource(str(labels))],
        tmp_path / "fresh.pt",
        options=TrainOptions(**{**_kw(options), "init": "none", "arch": TINY}),
    )
    assert fresh.gsd_range_m == (1.0, 1.0)
    assert not load_segmenter(str(tmp_path / "fresh.pt"), device="cpu").class_extra_gsd_m


def test_validation_cuts_masks_where_a_run_would() -> None:
    """Validation chips are cut at the values ``geoseg run`` uses at their GSD, so the score
    thresholds it tunes fit the outlines a run draws."""
    reading = {"mask_threshold": {"ship": 0.4}, "mask_threshold_by_gsd": {"building": [[1, 0.35]]}}
    cut = MaskCuts.of(reading, ("building", "field", "ship"), "the start")
    np.testing.assert_allclose(cut.at(0.5), [0.35, 0.5, 0.4])
    np.testing.assert_allclose(cut.at(1.0), [0.35, 0.5, 0.4])
    np.testing.assert_allclose(cut.at(2.0), [0.5, 0.5, 0.4])
    assert MaskCuts.of({}, ("building",), "the start").at(0.5) is None
    with pytest.raises(UserInputError, match="start"):
        MaskCuts.of({"mask_threshold": {"ship": 1.5}}, ("ship",), "the start")


def test_augmented_chips_keep_pixels_and_labels_together() -> None:
    """Turns, zooms, band shuffles and blurs move the pixels and the instance ids as one: the
    labelled object stays the bright one, and zoomed copies change its size within the range."""
    ids = np.zeros((128, 128), dtype=np.int32)
    ids[40:80, 30:90] = 1
    pixels = np.full((3, 128, 128), 40, dtype=np.uint8)
    pixels[:, ids == 1] = 220
    chip = Chip(pixels, np.ones_like(ids, bool), ids, np.array([0]), "x", None, 1.0, "train")
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(60):
        out, out_ids = augment(chip, rng)
        assert out.shape == (3, 128, 128) and out.dtype == np.float32 and out_ids.dtype == ids.dtype
        assert set(np.unique(out_ids)) <= {0, 1}
        inside = out[:, out_ids == 1].mean()
        outside = out[:, (out_ids == 0) & (out.sum(axis=0) > 0)].mean()
        assert inside > outside
        areas.append(int((out_ids == 1).sum()))
    low, high = (round(2400 * f**2) for f in ZOOM_RANGE)
    assert all(low * 0.9 <= a <= high * 1.1 for a in areas)
    assert min(areas) < 2400 * 0.95 and max(areas) > 2400 * 1.05  # some chips were zoomed


def _coded_chip(boxes: dict[int, tuple[slice, slice]], value: int, gsd_m: float = 1.0) -> Chip:
    """A 64 px chip whose object ``k`` covers ``boxes[k]`` with pixels ``value + k``."""
    ids = np.zeros((64, 64), dtype=np.int32)
    pixels = np.full((3, 64, 64), value, dtype=np.uint8)
    for k, box in boxes.items():
        ids[box] = k
        pixels[(slice(None), *box)] = value + k
    classes = np.arange(len(boxes), dtype=np.int64) % 3
    return Chip(pixels, np.ones_like(ids, bool), ids, classes, "x", None, gsd_m, "train")


def test_pasted_objects_bring_their_pixels_and_cover_what_lies_under_them() -> None:
    chip = _coded_chip({1: (slice(0, 20), slice(0, 20)), 2: (slice(40, 50), slice(40, 50))}, 10)
    # donor: a small object over the chip's first, one too big to move (a field's share)
    big = (slice(20, 64), slice(0, 64))
    donor = _coded_chip({1: (slice(10, 30), slice(10, 30)), 2: big}, 100)
    assert (donor.ids == 2).mean() > PASTE_MAX_SHARE
    pixels, ids = chip.pixels.astype(np.float32), chip.ids
    donor_arrays = (donor.pixels.astype(np.float32), donor.ids, donor.classes)
    for seed in range(5):
        out, out_ids, classes = paste_objects(
            pixels, ids, chip.classes, donor_arrays, np.random.default_rng(seed)
        )
        pasted = donor.ids == 1
        assert (out_ids[pasted] == 3).all() and (out[:, pasted] == 101).all()
        assert list(classes) == [*chip.classes, *donor.classes] and classes[2] == donor.classes[0]
        assert not (out_ids == 4).any()  # the big one stays where it was
        np.testing.assert_array_equal(out_ids[~pasted], ids[~pasted])
        np.testing.assert_array_equal(out[:, ~pasted], pixels[:, ~pasted])
        masks, _, labels = targets_from_ids(out_ids, classes)
        assert masks[0].sum() == 400 - 100 and list(labels) == [classes[0], classes[1], classes[2]]
    assert (ids == 1).sum() == 400  # the inputs are left as they were
    empty = _coded_chip({1: big}, 100)
    same = paste_objects(
        pixels,
        ids,
        chip.classes,
        (empty.pixels, empty.ids, empty.classes),
        np.random.default_rng(0),
    )
    assert same[0] is pixels and same[1] is ids and same[2] is chip.classes


def test_copy_paste_takes_objects_from_chips_of_a_similar_gsd() -> None:
    chips = [
        _coded_chip({1: (slice(20, 28), slice(20, 28))}, 10, gsd_m=g) for g in (1.0, 1.4, 1.6, 3.0)
    ]
    donors = Donors(chips)
    rng = np.random.default_rng(0)
    picked = {id(donors.pick(chips[0], rng)) for _ in range(50)}
    assert picked == {id(chips[0]), id(chips[1])}
    assert {id(donors.pick(chips[3], rng)) for _ in range(10)} == {id(chips[3])}
    chips[1].ids[:] = 0
    chips[1].ids[36:44, 36:44] = 1
    batch = [chips[0]] * 16  # its donors: itself (given nothing) or chip 1
    _, plain = training_batch(batch, np.random.default_rng(1), torch.device("cpu"))
    _, pasted = training_batch(
        batch, np.random.default_rng(1), torch.device("cpu"), donors, copy_paste=1.0
    )
    assert all(len(t["boxes"]) <= 1 for t in plain)
    assert sum(len(t["boxes"]) == 2 for t in pasted) >= 4  # chip 1's object, where it lay
    assert all(len(t["boxes"]) <= 2 for t in pasted)


def test_validation_sees_each_chip_in_the_views_of_its_gsd() -> None:
    """A start that sees fields in 4 views where read at 3 m or finer and ships in 4 views
    everywhere: validation chips at 2 m and 8 m in one batch go through two ``predict`` calls,
    each with the views of its GSD, and come back in the batch's order."""
    from geoseg.grid import PixelWindow

    reading = StartReading.of(
        {"class_tta_views": {"ship": 4}, "tta_views_by_gsd": {"field": [[3.0, 4]]}},
        ("field", "ship"),
    )
    assert reading.views_at(2.0) == {"field": 4, "ship": 4}
    assert reading.views_at(3.0) == {"field": 4, "ship": 4}
    assert reading.views_at(8.0) == {"ship": 4}
    calls = []

    class Recording:
        def predict(self, tiles: np.ndarray, tta_views: dict | None = None) -> list:
            calls.append((len(tiles), tta_views))
            return [{"first": float(t[0, 0, 0])} for t in tiles]

    def chip(gsd: float, value: int) -> Chip:
        pixels = np.full((3, 8, 8), value, dtype=np.uint8)
        empty = np.zeros((8, 8), dtype=np.int32)
        window = PixelWindow(0, 0, 8, 8)
        return Chip(pixels, empty > -1, empty, np.zeros(0, np.int64), "s", window, gsd, "val")

    batch = [chip(2.0, 10), chip(8.0, 20), chip(2.0, 30)]
    found = predict_in_views(Recording(), batch, reading)  # type: ignore[arg-type]
    assert [round(f["first"] * 255) for f in found] == [10, 20, 30]
    assert sorted(calls, key=lambda c: c[0]) == [
        (1, {"ship": 4}),
        (2, {"field": 4, "ship": 4}),
    ]


def test_training_runs_only_the_backbone_in_low_precision() -> None:
    """On CUDA training autocasts the backbone alone (here bfloat16 on the CPU stands in for
    float16): its convolutions run in low precision, but the proposals and the heads get
    float32, so box coordinates and regression targets keep their precision, as at
    inference; under a plain autocast the proposals would be low-precision too."""
    from geoseg.model.maskrcnn import untrained_segmenter

    network = untrained_segmenter(("building", "ship"), arch=TINY, device="cpu", seed=1).network
    chips = [_coded_chip({1: (slice(8, 30), slice(10, 40)), 2: (slice(40, 60), slice(5, 25))}, 9)]
    images, targets = training_batch(chips, np.random.default_rng(0), torch.device("cpu"))
    seen: dict[str, torch.dtype] = {}
    first_conv = next(m for m in network.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    hooks = [
        first_conv.register_forward_hook(lambda _m, _i, out: seen.update(conv=out.dtype)),
        network.roi_heads.register_forward_pre_hook(
            lambda _m, args: seen.update(
                features=next(iter(args[0].values())).dtype, proposals=args[1][0].dtype
            )
        ),
    ]
    network.train()
    with backbone_autocast(network, "cpu", torch.bfloat16):
        losses = network(images, targets)
    assert seen == {"conv": torch.bfloat16, "features": torch.float32, "proposals": torch.float32}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert first_conv.weight.grad is not None or not first_conv.weight.requires_grad
    assert "forward" not in vars(network.backbone)  # the backbone's own forward again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        network(images, targets)
    assert seen["proposals"] == torch.bfloat16
    with backbone_autocast(network, "cpu", torch.bfloat16, enabled=False):
        network(images, targets)
    assert seen == {"conv": torch.float32, "features": torch.float32, "proposals": torch.float32}
    for hook in hooks:
        hook.remove()
