"""Test-only models for the protocol (imported by name, as users' models are)."""

from __future__ import annotations

import threading
from typing import ClassVar

import numpy as np

from geoseg.testing import OracleSegmenter, decode_instances

_lock = threading.Lock()
CALLS = {"factory": 0}


def counting_oracle() -> OracleSegmenter:
    """An oracle whose factory counts how often it is called."""
    with _lock:
        CALLS["factory"] += 1
    return OracleSegmenter()


class FailingModel:
    classes = ("building",)

    def predict(self, tiles: np.ndarray) -> list:
        raise RuntimeError("this model always fails")


class AttributeOutputModel:
    """Returns instance sets as objects with attributes, and torchvision-like (K, 1, H, W)."""

    classes = ("building", "field", "ship")

    def predict(self, tiles: np.ndarray) -> list:
        out = []
        for tile in map(decode_instances, tiles):
            ns = type("Out", (), {})()
            ns.masks = tile["masks"][:, None].astype(np.float32)
            ns.labels, ns.scores = tile["labels"], tile["scores"]
            out.append(ns)
        return out


def failing() -> FailingModel:
    return FailingModel()


def attribute_output() -> AttributeOutputModel:
    return AttributeOutputModel()


class ScaleAwareOracle(OracleSegmenter):
    """An oracle that says it was trained on 0.5 m to 10 m imagery."""

    gsd_range_m = (0.5, 10.0)


def scale_aware_oracle() -> ScaleAwareOracle:
    return ScaleAwareOracle()


class NoisyOracle(OracleSegmenter):
    """An oracle that draws each instance one pixel too large or too small, differently in
    every tile, as a real model disagrees with itself across tiles."""

    full_masks = True  # edits the masks

    def predict(self, tiles: np.ndarray) -> list:
        from scipy import ndimage

        out = []
        for tile in tiles:
            found = dict(super().predict(tile[None])[0])
            rng = np.random.default_rng(int(tile.sum() * 1000) % (2**32))
            masks = []
            for mask in found["masks"]:
                op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
                changed = op(mask)
                masks.append(changed if changed.any() else mask)
            found["masks"] = np.array(masks, dtype=bool).reshape(found["masks"].shape)
            found["scores"] = rng.uniform(0.6, 1.0, len(masks)).astype(np.float32)
            out.append(found)
        return out


def noisy_oracle() -> NoisyOracle:
    return NoisyOracle()


class SlowOracle(OracleSegmenter):
    """An oracle that takes its time, so a batch can be killed midway."""

    def predict(self, tiles: np.ndarray) -> list:
        import time

        time.sleep(0.15 * len(tiles))
        return super().predict(tiles)


def slow_oracle() -> SlowOracle:
    return SlowOracle()


class VerySlowOracle(OracleSegmenter):
    """An oracle that takes five seconds per tile, so that a run lasts long enough to be
    interrupted after its worker processes have started, however busy the machine.

    If ``GEOSEG_TEST_PREDICT_LOG`` names a file, each call appends a line to it first, so a
    test can count the batches that were started.
    """

    def predict(self, tiles: np.ndarray) -> list:
        import os
        import time

        log = os.environ.get("GEOSEG_TEST_PREDICT_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{len(tiles)}\n")
        time.sleep(5.0 * len(tiles))
        return super().predict(tiles)


def very_slow_oracle() -> VerySlowOracle:
    return VerySlowOracle()


class ScoreFloorOracle(OracleSegmenter):
    """An oracle whose ``predict`` takes ``min_score`` and records what geoseg passed."""

    seen: ClassVar[list[float]] = []

    def predict(self, tiles: np.ndarray, *, min_score: float = 0.0) -> list:
        with _lock:
            ScoreFloorOracle.seen.append(min_score)
        return super().predict(tiles)


def score_floor_oracle() -> ScoreFloorOracle:
    return ScoreFloorOracle()


class TunedOracle(ScoreFloorOracle):
    """An oracle that recommends its own score threshold, as a tuned checkpoint does."""

    min_score = {"building": 0.8, "field": 0.7, "ship": 0.9}  # noqa: RUF012


def tuned_oracle() -> TunedOracle:
    return TunedOracle()


class ClassScaleOracle(OracleSegmenter):
    """An oracle that finds fields at 2 m or coarser, buildings and ships at 0.25 m to 10 m."""

    gsd_range_m = (0.25, 10.0)
    class_gsd_range_m: ClassVar[dict[str, tuple[float, float]]] = {
        "building": (0.25, 10.0),
        "field": (2.0, 10.0),
        "ship": (0.25, 10.0),
    }


def class_scale_oracle() -> ClassScaleOracle:
    return ClassScaleOracle()


class CoarseShipsOracle(ClassScaleOracle):
    """As :class:`ClassScaleOracle`, but ships only up to 5 m, and on coarser scenes read at
    the scene's GSD / 5 x 3, between 5 and 6 m (``class_coarse_reading``)."""

    class_gsd_range_m: ClassVar[dict[str, tuple[float, float]]] = {
        **ClassScaleOracle.class_gsd_range_m,
        "ship": (0.25, 5.0),
    }
    class_coarse_reading: ClassVar[dict[str, tuple[float, float]]] = {"ship": (5 / 3, 6.0)}


def coarse_ships_oracle() -> CoarseShipsOracle:
    return CoarseShipsOracle()


class FineBuildingsOracle(ClassScaleOracle):
    """As :class:`ClassScaleOracle`, but buildings only at 5 m or finer."""

    class_gsd_range_m: ClassVar[dict[str, tuple[float, float]]] = {
        **ClassScaleOracle.class_gsd_range_m,
        "building": (0.25, 5.0),
    }


def fine_buildings_oracle() -> FineBuildingsOracle:
    return FineBuildingsOracle()


class DoubtfulOracle(OracleSegmenter):
    """An oracle unsure of some objects (scores from 0.35 to 0.95 by instance id) that
    describes tiles by band means and class shares (an ``embed`` for geoseg select)."""

    full_masks = True  # edits the masks

    def predict(self, tiles: np.ndarray) -> list:
        out = []
        for found in super().predict(tiles):
            found = dict(found)
            ids = [int(np.rint(m.sum())) for m in found["masks"]]  # any stable number per object
            found["scores"] = np.array(
                [0.35 + 0.6 * ((k * 37) % 11) / 10 for k in ids], dtype=np.float32
            )
            out.append(found)
        return out

    def embed(self, tiles: np.ndarray) -> np.ndarray:
        codes = np.rint(tiles[:, 0] * 255)
        shares = [(codes == k + 1).mean(axis=(1, 2)) for k in range(len(self.classes))]
        return np.stack([*tiles.mean(axis=(2, 3)).T, *shares], axis=1).astype(np.float32)


def doubtful_oracle() -> DoubtfulOracle:
    return DoubtfulOracle()


class GsdThresholdOracle(ClassScaleOracle):
    """As :class:`ClassScaleOracle`, every object scored 0.6, with a ship threshold of 0.7
    that drops to 0.5 where ships are read at 1 m or finer (``min_score_by_gsd``)."""

    min_score = {"building": 0.5, "field": 0.5, "ship": 0.7}  # noqa: RUF012
    min_score_by_gsd = {"ship": [(1.0, 0.5)]}  # noqa: RUF012

    def predict(self, tiles: np.ndarray) -> list:
        found = [dict(f) for f in super().predict(tiles)]
        for f in found:
            f["scores"] = np.full(len(f["scores"]), 0.6, dtype=np.float32)
        return found


def gsd_threshold_oracle() -> GsdThresholdOracle:
    return GsdThresholdOracle()


class MisnamedThresholdOracle(GsdThresholdOracle):
    """Thresholds by GSD for a class the model does not have."""

    min_score_by_gsd = {"boat": [(1.0, 0.5)]}  # noqa: RUF012


def misnamed_threshold_oracle() -> MisnamedThresholdOracle:
    return MisnamedThresholdOracle()


class NearlySameScaleOracle(ClassScaleOracle):
    """As :class:`ClassScaleOracle`, buildings from 0.2986 m (a z19 tile), ships from 0.3 m."""

    class_gsd_range_m: ClassVar[dict[str, tuple[float, float]]] = {
        **ClassScaleOracle.class_gsd_range_m,
        "building": (0.2986, 10.0),
        "ship": (0.3, 10.0),
    }


def nearly_same_scale_oracle() -> NearlySameScaleOracle:
    return NearlySameScaleOracle()


class TwoReadingOracle(ClassScaleOracle):
    """As :class:`ClassScaleOracle`, and buildings read at 2 m too (merged with the first
    reading) where the scene is at least 1.5 times finer."""

    class_extra_gsd_m: ClassVar[dict[str, list[float]]] = {"building": [2.0]}


def two_reading_oracle() -> TwoReadingOracle:
    return TwoReadingOracle()


class FineShipsOracle(ClassScaleOracle):
    """As :class:`ClassScaleOracle`, and ships read at 2 m too where the scene is at least 1.5
    times finer, and at 0.25 m, upsampled, where it is 1.5 to 2 times coarser (all merged), as
    the default model reads them at 2 and 0.3 m."""

    class_extra_gsd_m: ClassVar[dict[str, list[float]]] = {"ship": [2.0]}
    class_fine_gsd_m: ClassVar[dict[str, list[float]]] = {"ship": [0.25]}


def fine_ships_oracle() -> FineShipsOracle:
    return FineShipsOracle()


class MisnamedExtraOracle(ClassScaleOracle):
    class_extra_gsd_m: ClassVar[dict[str, list[float]]] = {"boat": [2.0]}


def misnamed_extra_oracle() -> MisnamedExtraOracle:
    return MisnamedExtraOracle()


class SoftMaskOracle(ClassScaleOracle):
    """As :class:`ClassScaleOracle`, each object's mask 0.6 on its pixels and 0.4 in a
    one-pixel ring around them; buildings read at 1 m or finer are cut at 0.35
    (``mask_threshold_by_gsd``), so there they come out one pixel wider."""

    full_masks = True  # edits the masks
    mask_threshold_by_gsd: ClassVar[dict[str, list[tuple[float, float]]]] = {
        "building": [(1.0, 0.35)]
    }

    def predict(self, tiles: np.ndarray) -> list:
        from scipy import ndimage

        found = [dict(f) for f in super().predict(tiles)]
        for f in found:
            ring = (
                np.array([ndimage.binary_dilation(m) for m in f["masks"]], bool).reshape(
                    f["masks"].shape
                )
                & ~f["masks"]
            )
            f["masks"] = np.where(f["masks"], 0.6, np.where(ring, 0.4, 0.0)).astype(np.float32)
        return found


def soft_mask_oracle() -> SoftMaskOracle:
    return SoftMaskOracle()


class MisnamedMaskOracle(SoftMaskOracle):
    """Mask thresholds for a class the model does not have."""

    mask_threshold: ClassVar[dict[str, float]] = {"boat": 0.4}


def misnamed_mask_oracle() -> MisnamedMaskOracle:
    return MisnamedMaskOracle()


VIEWS_SEEN: list[tuple[float | None, dict[str, int] | None]] = []


class ViewsOracle(ClassScaleOracle):
    """As :class:`ClassScaleOracle`, recommending 4 views for buildings; ``predict`` records
    the ``gsd_m`` and ``tta_views`` each call gets in :data:`VIEWS_SEEN`."""

    class_tta_views: ClassVar[dict[str, int]] = {"building": 4}

    def predict(
        self,
        tiles: np.ndarray,
        tta_views: dict[str, int] | None = None,
        gsd_m: float | None = None,
    ) -> list:
        with _lock:
            VIEWS_SEEN.append((gsd_m, tta_views))
        return super().predict(tiles)


def views_oracle() -> ViewsOracle:
    return ViewsOracle()


class MisnamedViewsOracle(ViewsOracle):
    """Views for a class the model does not have."""

    class_tta_views: ClassVar[dict[str, int]] = {"boat": 4}


def misnamed_views_oracle() -> MisnamedViewsOracle:
    return MisnamedViewsOracle()


class MisnamedViewsByGsdOracle(ViewsOracle):
    """Views by GSD for a class the model does not have."""

    tta_views_by_gsd: ClassVar[dict[str, list[tuple[float, int]]]] = {"boat": [(1.0, 4)]}


def misnamed_views_by_gsd_oracle() -> MisnamedViewsByGsdOracle:
    return MisnamedViewsByGsdOracle()


class ViewsByGsdOracle(ViewsOracle):
    """As :class:`ViewsOracle`, also recommending 4 views for fields read at 3 m or finer and
    8 for buildings read at 0.3 m or finer (``tta_views_by_gsd``)."""

    tta_views_by_gsd: ClassVar[dict[str, list[tuple[float, int]]]] = {
        "field": [(3.0, 4)],
        "building": [(0.3, 8)],
    }


def views_by_gsd_oracle() -> ViewsByGsdOracle:
    return ViewsByGsdOracle()


class SideScoredOracle(OracleSegmenter):
    """An oracle sure (0.9) of the objects in the right half of a tile and unsure (0.3) of
    those in the left half: a neighbouring tile may score an object over a threshold that the
    tile owning its place scores it under."""

    full_masks = True  # edits the scores

    def predict(self, tiles: np.ndarray) -> list:
        out = []
        for found in super().predict(tiles):
            found = dict(found)
            width = tiles.shape[-1]
            centres = [np.nonzero(m.any(0))[0].mean() for m in found["masks"]]
            found["scores"] = np.array(
                [0.9 if c >= width / 2 else 0.3 for c in centres], dtype=np.float32
            )
            out.append(found)
        return out


def side_scored_oracle() -> SideScoredOracle:
    return SideScoredOracle()
