"""The pretrained start: the shipped ImageNet MobileNetV2 backbone, ``--init`` with a
torchvision state dict, per-image scales and the per-class GSD ranges a model records."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from affine import Affine

from geoseg.cli import main
from geoseg.errors import UserInputError
from geoseg.learn.train import LabelSource, TrainOptions, train
from geoseg.model import load_segmenter
from geoseg.model.checkpoint import read_checkpoint
from geoseg.model.maskrcnn import (
    IMAGENET_BACKBONE,
    PRETRAINED_ARCH,
    build_network,
    load_backbone_weights,
)

UTM = "EPSG:32633"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 64 x 64 uint8 scene at 1 m with four bright roofs and a labelled field."""
    tmp = tmp_path_factory.mktemp("pre")
    transform = Affine(1.0, 0.0, 500_000.0, 0.0, -1.0, 4_000_000.0)
    rng = np.random.default_rng(3)
    data = rng.integers(20, 60, size=(3, 64, 64)).astype(np.uint8)
    polys, classes = [], []
    for row, col in ((6, 6), (6, 36), (36, 6), (40, 40)):
        data[:, row : row + 14, col : col + 14] = 220
        x0, y0 = transform @ (col, row)
        polys.append(shapely.box(x0, y0 - 14, x0 + 14, y0))
        classes.append("building")
    image = tmp / "s.tif"
    profile = {"driver": "GTiff", "height": 64, "width": 64, "count": 3, "dtype": "uint8"}
    with rasterio.open(image, "w", crs=UTM, transform=transform, **profile) as dst:
        dst.write(data)
    labels = tmp / "s.gpkg"
    gpd.GeoDataFrame({"class": classes}, geometry=polys, crs=UTM).to_file(labels)
    return image, labels


def _options(**kw: object) -> TrainOptions:
    base = {
        "classes": ("building", "field"),
        "epochs": 1,
        "steps_per_epoch": 1,
        "batch_size": 1,
        "init": "imagenet",
        "chip_px": 64,
        "val_fraction": 0.0,
        "device": "cpu",
    }
    return TrainOptions(**{**base, **kw})  # type: ignore[arg-type]


def test_shipped_backbone_is_imagenet_mobilenet_v2() -> None:
    state = torch.load(IMAGENET_BACKBONE, weights_only=True)
    network = build_network(PRETRAINED_ARCH, 3)
    assert load_backbone_weights(network, IMAGENET_BACKBONE) == len(
        [k for k in network.backbone.body.state_dict() if "num_batches" not in k]
    )
    loaded = network.backbone.body.state_dict()["0.0.weight"]
    assert torch.equal(loaded, state["features.0.0.weight"].float())
    assert float(loaded.abs().sum()) > 0


def test_init_imagenet_starts_from_the_pretrained_backbone(
    scene: tuple[Path, Path], tmp_path: Path
) -> None:
    image, labels = scene
    output = tmp_path / "m.pt"
    train([image], [LabelSource(str(labels))], output, options=_options(lr=1e-12))
    payload = read_checkpoint(output)
    assert payload["arch"]["backbone"] == "mobilenet_v2"
    assert payload["train"]["init"] == "imagenet"
    assert payload["normalization"]["image_mean"] == [0.5, 0.5, 0.5]
    shipped = torch.load(IMAGENET_BACKBONE, weights_only=True)
    # the frozen stem is the pretrained one, bit for bit (in float32)
    stem = payload["state_dict"]["backbone.body.0.0.weight"]
    assert torch.equal(stem, shipped["features.0.0.weight"].float())
    # and the model runs through the protocol with its own normalization
    model = load_segmenter(str(output), device="cpu")
    assert model.normalization["image_std"] == [0.5, 0.5, 0.5]
    (out,) = model.predict(np.zeros((1, 3, 64, 64), dtype=np.float32))
    assert set(out) == {"boxes", "masks", "labels", "scores"}


def test_init_takes_a_torchvision_state_dict(scene: tuple[Path, Path], tmp_path: Path) -> None:
    from torchvision.models import mobilenet_v2

    image, labels = scene
    torch.manual_seed(7)
    mine = mobilenet_v2(weights=None).state_dict()
    path = tmp_path / "backbone.pth"
    torch.save(mine, path)
    output = tmp_path / "m.pt"
    train([image], [LabelSource(str(labels))], output, options=_options(init=str(path), lr=1e-12))
    payload = read_checkpoint(output)
    assert payload["train"]["init"] == "backbone.pth"
    stem = payload["state_dict"]["backbone.body.0.0.weight"]
    assert torch.equal(stem, mine["features.0.0.weight"])

    wrong = tmp_path / "resnet.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, wrong)
    with pytest.raises(UserInputError, match=r"resnet\.pth: 0 of the \d+ tensors"):
        train(
            [image],
            [LabelSource(str(labels))],
            tmp_path / "w.pt",
            options=_options(init=str(wrong)),
        )


def test_per_image_scales_and_class_gsd_ranges(scene: tuple[Path, Path], tmp_path: Path) -> None:
    image, labels = scene
    output = tmp_path / "m.pt"
    options = _options(init="none", image_scales=((1.0, 2.0),), arch=PRETRAINED_ARCH)
    result = train([image], [LabelSource(str(labels))], output, options=options)
    assert result.gsd_range_m == (1.0, 2.0)
    payload = read_checkpoint(output)
    assert payload["class_gsd_m"] == {"building": [1.0, 2.0]}
    with pytest.raises(UserInputError, match="--scales given 2 times for 1 --images"):
        train(
            [image],
            [LabelSource(str(labels))],
            tmp_path / "x.pt",
            options=_options(image_scales=((1.0,), (2.0,))),
        )


def test_cli_scales_once_per_image(
    scene: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, labels = scene
    with pytest.raises(SystemExit) as done:
        main(
            [
                "train",
                "--images",
                str(image),
                "--labels",
                str(labels),
                "--scales",
                "1",
                "--scales",
                "2",
                "-o",
                str(tmp_path / "m.pt"),
            ]
        )
    err = capsys.readouterr().err
    assert done.value.code == 2 and "--scales" in err and "once per --images" in err


def test_thresholds_can_be_tuned_on_the_real_validation_chips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Synthetic chips, where the model is surer and its false positives score low, must not
    set the threshold of a model meant for real imagery when ``tune_on="real"``."""
    from geoseg.grid import PixelWindow
    from geoseg.learn import train as train_module
    from geoseg.learn.chips import Chip

    ids = np.zeros((32, 32), dtype=np.int32)
    ids[2:10, 2:10] = 1
    obj = ids == 1
    elsewhere = [np.roll(obj, 12 * k, axis=1) for k in (1, 2)] + [np.roll(obj, 12, axis=0)]

    def chip(source: str) -> Chip:
        window = PixelWindow(0, 0, 32, 32)
        return Chip(
            np.zeros((3, 32, 32), np.uint8),
            np.ones((32, 32), bool),
            ids,
            np.array([0]),
            source,
            window,
            1.0,
            "val",
        )

    # the synthetic chip: the object at 0.9 and three false positives at 0.2;
    # the real chip: the object found, but only at 0.15
    outputs = {
        "synth.tif": (np.stack([obj, *elsewhere]), np.array([0.9, 0.2, 0.2, 0.2])),
        "real.tif": (obj[None], np.array([0.15])),
    }

    class Fake:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def predict(self, pixels: np.ndarray) -> list[dict[str, np.ndarray]]:
            return [
                {"masks": m, "scores": s.astype(np.float32), "labels": np.zeros(len(s), int)}
                for m, s in (outputs[c] for c in self.batch)
            ]

    chips = [chip("synth.tif"), chip("real.tif")]
    Fake.batch = ["synth.tif", "real.tif"]
    monkeypatch.setattr(train_module, "MaskRCNNSegmenter", Fake)
    monkeypatch.setattr(train_module, "MIN_TUNING_REFS", 1)
    network = torch.nn.Linear(1, 1)

    def tuned(tune_on: str) -> float:
        options = TrainOptions(classes=("building",), batch_size=2, tune_on=tune_on)
        result = train_module._validate(
            network,
            chips,
            options,
            torch.device("cpu"),
            1,
            lambda e: None,
            frozenset({"synth.tif"}),
        )
        return result.min_score["building"]

    assert tuned("all") == 0.6  # 0.25-0.9 tie at F1 2/3: the middle one
    assert tuned("real") == 0.1  # 0.05-0.15 keep the real object: F1 1


@pytest.mark.parametrize(("step_m", "starts_from"), [(1.0, "fine"), (0.5, "main")])
def test_init_from_weights_by_gsd_trains_the_set_that_serves_the_chips(
    scene: tuple[Path, Path], tmp_path: Path, step_m: float, starts_from: str
) -> None:
    """The default holds other weights for readings at 1 m or finer: a fine-tune on 1 m chips
    starts from those, one on coarser chips from the main ones; the set that serves none of
    the chips is written back as it was, also after the run resumes."""
    from geoseg.model.checkpoint import save_checkpoint
    from geoseg.model.maskrcnn import NORMALIZATION

    image, labels = scene
    sets = {}
    for name, seed in (("main", 1), ("fine", 2)):
        torch.manual_seed(seed)
        sets[name] = build_network(PRETRAINED_ARCH, 3).state_dict()
    start = save_checkpoint(
        tmp_path / "two.pt",
        state_dict=sets["main"],
        arch=PRETRAINED_ARCH.to_dict(),
        classes=["building", "field"],
        normalization=NORMALIZATION,
        gsd_range_m=(0.3, 10.0),
        weights_by_gsd=[(step_m, sets["fine"])],
    )
    output = tmp_path / "m.pt"
    for epochs in (1, 2):  # the second run resumes the first
        options = _options(init=str(start), lr=1e-3, epochs=epochs)
        train([image], [LabelSource(str(labels))], output, options=options)
        payload = read_checkpoint(output)
        [(gsd, fine)] = payload["weights_by_gsd"]
        assert gsd == step_m
        trained, untouched = (
            (fine, "main") if starts_from == "fine" else (payload["state_dict"], "fine")
        )
        kept = payload["state_dict"] if untouched == "main" else fine
        assert all(torch.equal(kept[k], sets[untouched][k]) for k in kept)
        head = "roi_heads.box_predictor.cls_score.weight"  # trained: no longer the start's
        assert not torch.equal(trained[head], sets[starts_from][head])
        stem = "backbone.body.0.0.weight"  # frozen: the start's, bit for bit
        assert torch.equal(trained[stem], sets[starts_from][stem])
        assert ("weights for readings up to" in payload["train"]["init"]) == (starts_from == "fine")
        assert "own weights kept for readings" in payload["train"]["init"]


def test_init_from_weights_by_gsd_with_other_classes_writes_one_set(
    scene: tuple[Path, Path], tmp_path: Path
) -> None:
    """Other classes, other heads: the start's other weights cannot serve, so one set."""
    from geoseg.model.checkpoint import save_checkpoint
    from geoseg.model.maskrcnn import NORMALIZATION

    image, labels = scene
    state = build_network(PRETRAINED_ARCH, 4).state_dict()
    start = save_checkpoint(
        tmp_path / "two.pt",
        state_dict=state,
        arch=PRETRAINED_ARCH.to_dict(),
        classes=["building", "field", "ship"],
        normalization=NORMALIZATION,
        gsd_range_m=(0.3, 10.0),
        weights_by_gsd=[(0.5, state)],
    )
    output = tmp_path / "m.pt"
    train([image], [LabelSource(str(labels))], output, options=_options(init=str(start)))
    assert "weights_by_gsd" not in read_checkpoint(output)
