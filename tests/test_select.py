"""geoseg select: reproducible, non-overlapping picks of valid tiles, written as chips with
pre-labels, and geoseg train on them with labels on only some chips."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch
from affine import Affine

from geoseg.cli import main
from geoseg.config import RunOptions
from geoseg.grid import PixelWindow
from geoseg.learn.coreset import Candidate, pick_random, pick_uncertain_diverse
from geoseg.learn.select import SelectOptions, candidate_windows, select
from geoseg.learn.train import LabelSource, TrainOptions, train
from geoseg.learn.uncertainty import embed_tiles, pixel_embedding, tile_uncertainty, two_views
from geoseg.model.maskrcnn import MaskRCNNArch, untrained_segmenter
from geoseg.model.protocol import Instances
from geoseg.testing import encode_instances, write_coded_scene
from tests import models

UTM = "EPSG:32633"
DOUBTFUL = "tests.models:doubtful_oracle"
RUN = RunOptions(model=DOUBTFUL, tile_px=64, overlap_px=16, simplify_px=0, device="cpu")
TINY = MaskRCNNArch(widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), fpn_channels=32)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Two coded scenes (192 x 256 px, 1 m): objects of every class; the second has its left
    half (columns 0-127) hidden by nodata (an internal mask), objects painted there too."""
    folder = tmp_path / "archive"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(2):
        ids = np.zeros((192, 256), dtype=np.int32)
        class_of = {}
        for i in range(1, 25):
            row, col = rng.integers(0, 176), rng.integers(0, 240)
            h, w = rng.integers(6, 16, size=2)
            ids[row : row + h, col : col + w] = i
            class_of[i] = int(rng.integers(0, 3))
        nodata = np.zeros(ids.shape, dtype=bool)
        if k == 1:
            nodata[:, :128] = True
        transform = Affine(1.0, 0.0, 500_000.0 + 5000 * k, 0.0, -1.0, 4_000_000.0)
        write_coded_scene(
            folder / f"scene{k}.tif", ids, class_of, transform=transform, crs=UTM, nodata_yx=nodata
        )
    return folder


def _picks(outdir: Path) -> gpd.GeoDataFrame:
    return pyogrio.read_dataframe(outdir / "selection.gpkg").sort_values("rank")


def test_picks_are_reproducible_valid_and_never_overlap(archive: Path, tmp_path: Path) -> None:
    runs = {}
    for name, options in {
        "a": SelectOptions(n=6, seed=1),
        "b": SelectOptions(n=6, seed=1),
        "ra": SelectOptions(n=6, seed=1, random=True),
        "rb": SelectOptions(n=6, seed=1, random=True),
        "rc": SelectOptions(n=6, seed=2, random=True),
    }.items():
        result = select([archive], tmp_path / name, options=options, run=RUN, scheduler="sync")
        assert len(result.picks) == 6
        runs[name] = _picks(tmp_path / name)
    assert list(runs["a"]["chip"]) == list(runs["b"]["chip"])
    assert list(runs["ra"]["chip"]) == list(runs["rb"]["chip"])
    assert list(runs["ra"]["chip"]) != list(runs["rc"]["chip"])
    for picks in runs.values():
        assert list(picks["rank"]) == list(range(1, 7))
        for a, b in itertools.combinations(picks.geometry, 2):
            assert a.intersection(b).area == 0
        # the nodata half of scene1 (x < 500000 + 5000 + 128) is never picked
        in_scene1 = picks[picks["chip"].str.startswith("scene1_")]
        assert (in_scene1.geometry.bounds["minx"] >= 505_128).all()
        assert (picks["valid_fraction"] >= 0.5).all()
    assert runs["a"]["uncertainty"].iloc[0] == runs["a"]["uncertainty"].max()


def test_chips_are_the_scenes_own_pixels_with_prelabels(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "picks"
    result = select(
        [str(archive / "*.tif")], out, options=SelectOptions(n=4), run=RUN, scheduler="sync"
    )
    assert (out / "README.txt").read_text().count("geoseg train") == 1
    footprints = _picks(out)
    for chip, row in zip(result.chips, result.picks, strict=True):
        with rasterio.open(chip) as dst, rasterio.open(row["scene"]) as src:
            window = rasterio.windows.Window(row["col"], row["row"], dst.width, dst.height)
            assert dst.crs == src.crs and dst.count == src.count and dst.nodata == src.nodata
            assert dst.transform == src.window_transform(window)
            assert (dst.read() == src.read(window=window)).all()
            assert (dst.read_masks(1) == src.read_masks(1, window=window)).all()
            assert chip.name == f"{Path(row['scene']).stem}_{row['row']}_{row['col']}.tif"
    layers = [str(name) for name, _ in pyogrio.list_layers(out / "prelabels.gpkg")]
    assert layers == ["building", "field", "ship"]
    found = 0
    for layer in layers:
        frame = pyogrio.read_dataframe(out / "prelabels.gpkg", layer=layer)
        assert frame.crs == UTM and set(frame["class"]) <= {layer}
        for geom, chip in zip(frame.geometry, frame["chip"], strict=True):
            footprint = footprints.set_index("chip").geometry[chip]
            assert footprint.buffer(1e-6).contains(geom)
        found += len(frame)
    assert found > 0


def test_all_nodata_scene_is_never_picked(archive: Path, tmp_path: Path) -> None:
    ids = np.zeros((128, 128), dtype=np.int32)
    ids[10:30, 10:30] = 1
    write_coded_scene(
        archive / "blank.tif",
        ids,
        {1: 0},
        transform=Affine(1.0, 0.0, 600_000.0, 0.0, -1.0, 4_000_000.0),
        crs=UTM,
        nodata_yx=np.ones(ids.shape, dtype=bool),
    )
    options = SelectOptions(n=50, min_valid=0.01)
    result = select([archive], tmp_path / "all", options=options, run=RUN, scheduler="sync")
    assert result.picks and not any(r["chip"].startswith("blank_") for r in result.picks)
    assert all(r["valid_fraction"] > 0 for r in result.picks)
    with pytest.raises(Exception, match="valid pixels"):
        select([archive / "blank.tif"], tmp_path / "none", run=RUN, scheduler="sync")


def test_train_on_picks_with_labels_on_some_chips(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "picks"
    select([archive], out, options=SelectOptions(n=4), run=RUN, scheduler="sync")
    chips = sorted(p.name for p in (out / "chips").glob("*.tif"))
    corrected = tmp_path / "corrected.gpkg"
    labelled = set(chips[:2])
    for k, layer in enumerate(("building", "field", "ship")):
        frame = pyogrio.read_dataframe(out / "prelabels.gpkg", layer=layer)
        frame = frame[frame["chip"].isin(labelled)]
        if layer == "building":  # a correction drawn in QGIS: no class, far from every chip
            far = gpd.GeoDataFrame(
                {"class": [None], "chip": [None]},
                geometry=[shapely.box(900_000, 100, 900_010, 110)],
                crs=UTM,
            )
            frame = gpd.GeoDataFrame(
                {"class": [*frame["class"], None], "chip": [*frame["chip"], None]},
                geometry=[*frame.geometry, *far.geometry],
                crs=UTM,
            )
        pyogrio.write_dataframe(frame, corrected, layer=layer, append=k > 0)
    base = TrainOptions(
        epochs=1,
        steps_per_epoch=1,
        batch_size=1,
        init="none",
        chip_px=64,
        val_fraction=0.0,
        device="cpu",
        arch=TINY,
    )
    images = sorted((out / "chips").glob("*.tif"))
    some = train(images, [LabelSource(str(corrected))], tmp_path / "some.pt", options=base)
    assert some.n_train_chips == 2
    every = replace(base, all_labelled=True)
    everything = train(images, [LabelSource(str(corrected))], tmp_path / "all.pt", options=every)
    assert everything.n_train_chips == 4

    with pytest.raises(SystemExit) as done:
        main(
            [
                "-q",
                "train",
                "--images",
                str(out / "chips" / "*.tif"),
                "--labels",
                str(corrected),
                "--init",
                "none",
                "--epochs",
                "1",
                "--steps-per-epoch",
                "1",
                "--batch-size",
                "1",
                "--chip-size",
                "64",
                "--val-fraction",
                "0",
                "--threads",
                "1",
                "--device",
                "cpu",
                "-o",
                str(tmp_path / "cli.pt"),
            ]
        )
    assert done.value.code == 0 and (tmp_path / "cli.pt").is_file()


def test_cli_select_and_its_errors(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "scenes.txt"
    manifest.write_text("# two scenes\narchive/scene0.tif\narchive/scene1.tif\n")
    args = ["select", str(manifest), "-n", "3", "--tile-size", "64", "--overlap", "16"]
    args += ["--model", DOUBTFUL, "--scheduler", "sync", "-o", str(tmp_path / "p")]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0, capsys.readouterr().err
    assert "Picked 3 of" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(args)  # the folder already holds picks
    err = capsys.readouterr().err
    assert done.value.code == 2 and "already holds chips" in err and len(err.splitlines()) == 1


def test_uncertainty_rises_with_middling_scores_and_flip_disagreement() -> None:
    mask = np.zeros((1, 32, 32), dtype=bool)
    mask[0, 4:20, 4:12] = True
    moved = np.roll(mask, 10, axis=2)

    def views(score: float, other: np.ndarray) -> float:
        a = Instances(mask, np.array([0]), np.array([score], np.float32))
        b = Instances(other, np.array([0]), np.array([score], np.float32))
        return tile_uncertainty(a, b)

    none = Instances(np.zeros((0, 32, 32), bool), np.zeros(0, int), np.zeros(0, np.float32))
    assert tile_uncertainty(none, none) == 0.0
    sure, middling, unstable = views(0.98, mask), views(0.5, mask), views(0.98, moved)
    assert sure < 0.2 < middling and sure < 0.2 < unstable
    faint = tile_uncertainty(Instances(mask, np.array([0]), np.array([0.15], np.float32)), none)
    assert faint < 0.3


def test_flip_views_cut_masks_where_a_run_would() -> None:
    """The two views select compares are cut at the model's mask thresholds for the GSD the
    tiles are read at: a soft mask's ring is in where buildings are cut at 0.35 (1 m or
    finer), out at 2 m and where no GSD is given (0.5)."""
    ids = np.zeros((48, 48), dtype=np.int32)
    ids[10:20, 12:30] = 1  # a building, 180 px
    ids[30:40, 5:15] = 2  # a ship, 100 px
    tiles = (encode_instances(ids, {1: 0, 2: 2}).astype(np.float32) / 255)[None]
    valid = np.ones((1, 48, 48), dtype=bool)
    model = models.soft_mask_oracle()

    def areas(gsd_m: float | None) -> dict[int, list[int]]:
        plain, mirrored = two_views(model, tiles, valid, gsd_m)[0]
        return {
            int(k): sorted(int(v.masks[v.labels == k].sum()) for v in (plain, mirrored))
            for k in (0, 2)
        }

    ring = 2 * (10 + 18)  # the one-pixel ring (4-connected) around a 10 x 18 building
    assert areas(0.5) == {0: [180 + ring] * 2, 2: [100, 100]}
    assert areas(2.0) == areas(None) == {0: [180, 180], 2: [100, 100]}


def test_k_center_spreads_picks_and_skips_overlaps() -> None:
    def cand(scene: int, row: int, col: int, doubt: float, emb: list[float]) -> Candidate:
        return Candidate(scene, PixelWindow(row, col, 64, 64), 1.0, doubt, 0, np.array(emb))

    harbour = [cand(0, 0, 64 * k, 0.9 - 0.01 * k, [1.0, 0.0]) for k in range(6)]
    others = [cand(1, 0, 0, 0.5, [0.0, 3.0]), cand(1, 64, 0, 0.45, [-1.0, -1.0])]
    overlapping = [cand(0, 32, 0, 0.95, [5.0, 5.0])]  # overlaps the first harbour tile
    candidates = harbour + others + overlapping
    picks = pick_uncertain_diverse(candidates, 3, pool_factor=3)
    assert picks[0] == 8  # the most uncertain seeds the k-center
    assert {6, 7} <= set(picks)  # then the tiles unlike it, not five more of the harbour
    for a, b in itertools.combinations(picks, 2):
        wa, wb = candidates[a], candidates[b]
        assert wa.scene != wb.scene or wa.window.intersection(wb.window) is None
    assert pick_random(candidates, 4, seed=5) == pick_random(candidates, 4, seed=5)
    assert candidate_windows((100, 150), 64) == [
        PixelWindow(r, c, 64, 64) for r in (0, 36) for c in (0, 64, 86)
    ]


def test_embeddings_of_the_mask_rcnn_and_the_fallback() -> None:
    model = untrained_segmenter(arch=TINY, device="cpu")
    tiles = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    emb = model.embed(tiles)
    assert emb.shape == (3, 32 * 5) and emb.dtype == np.float32
    assert np.allclose(emb, model.embed(tiles))
    valid = np.ones((3, 64, 64), dtype=bool)
    assert embed_tiles(model, tiles, valid).shape == (3, 128)  # projected to EMBED_DIM
    assert pixel_embedding(tiles, valid).shape == (3, 3 * 66)

    class NoEmbed:
        classes = ("building",)

    assert embed_tiles(NoEmbed(), tiles[:, :1], valid).shape == (3, 66)


def test_labels_take_their_class_from_the_layer_when_it_is_empty(tmp_path: Path) -> None:
    from geoseg.learn.chips import read_labels

    path = tmp_path / "corrected.gpkg"
    for k, (layer, crs) in enumerate((("field_32633", UTM), ("ship_32634", "EPSG:32634"))):
        frame = gpd.GeoDataFrame(
            {"class": [None, layer.split("_")[0]]},
            geometry=[shapely.box(500_000, 0, 500_100, 100), shapely.box(0, 0, 10, 10)],
            crs=crs,
        )
        pyogrio.write_dataframe(frame, path, layer=layer, append=k > 0)
    labels = read_labels(path, classes=("building", "field", "ship"))
    assert list(labels["class"]) == ["field", "field", "ship", "ship"]
    assert labels.crs == UTM
