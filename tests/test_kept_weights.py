"""What a fine-tune keeps of a start checkpoint with weights by GSD (cases worked by hand)."""

from __future__ import annotations

import pytest
import torch

from geoseg.config import value_at_gsd
from geoseg.learn.kept_weights import KeptWeights

FINE, MIDDLE, MAIN, TRAINED = ({"w": torch.tensor([float(v)])} for v in range(4))


def _start(**settings: object) -> dict[str, object]:
    """A start checkpoint: FINE up to 1 m, MIDDLE up to 4 m, MAIN coarser."""
    return {"state_dict": MAIN, "weights_by_gsd": [[1.0, FINE], [4.0, MIDDLE]], **settings}


@pytest.mark.parametrize(
    ("chips", "state_dict", "steps"),
    [
        ((0.3, 0.6), MAIN, [(1.0, TRAINED), (4.0, MIDDLE)]),  # fine chips: the fine set trained
        ((1.0, 1.0), MAIN, [(1.0, TRAINED), (4.0, MIDDLE)]),  # 1 m is the fine set's, to 1e-9
        ((2.0, 3.0), MAIN, [(1.0, FINE), (4.0, TRAINED)]),  # the middle set trained
        ((5.0, 10.0), TRAINED, [(1.0, FINE), (4.0, MIDDLE)]),  # the main weights trained
        ((2.0, 8.0), TRAINED, [(1.0, FINE)]),  # chips over two sets: both become the trained
        ((0.5, 2.0), MAIN, [(4.0, TRAINED)]),
    ],
)
def test_weights_around_the_trained_set(
    chips: tuple[float, float], state_dict: object, steps: list[object]
) -> None:
    kept = KeptWeights.of(_start(), chips)
    assert kept is not None
    assert kept.weights(TRAINED) == (state_dict, steps)


def test_nothing_kept_from_one_set_or_chips_over_every_set() -> None:
    assert KeptWeights.of({"state_dict": MAIN}, (0.3, 0.3)) is None
    assert KeptWeights.of(_start(), (0.5, 6.0)) is None


def test_thresholds_tuned_where_trained_and_the_start_s_elsewhere() -> None:
    start = _start(
        min_score={"building": 0.5, "ship": 0.6},
        min_score_by_gsd={"ship": [[1.0, 0.5], [8.0, 0.65]], "building": [[0.5, 0.45]]},
    )
    tuned = {"building": 0.3, "ship": 0.35}
    classes = ("building", "ship")
    expected = {  # (chips) -> {class: {reading GSD: threshold}}
        (0.3, 0.6): {"building": {0.3: 0.3, 2: 0.5, 6: 0.5}, "ship": {0.3: 0.35, 2: 0.65, 9: 0.6}},
        (2.0, 3.0): {
            "building": {0.3: 0.45, 0.8: 0.5, 2: 0.3, 6: 0.5},
            "ship": {0.8: 0.5, 2: 0.35, 6: 0.65, 9: 0.6},
        },
        (5.0, 9.0): {
            "building": {0.3: 0.45, 2: 0.5, 6: 0.3, 9: 0.3},
            "ship": {0.8: 0.5, 2: 0.65, 6: 0.35},
        },
    }
    for chips, at in expected.items():
        kept = KeptWeights.of(start, chips)
        assert kept is not None
        main, steps = kept.thresholds(tuned, classes)
        assert main is not None and steps is not None
        for name, wanted in at.items():
            for gsd, score in wanted.items():
                got = value_at_gsd(steps.get(name, []), gsd, main[name])
                assert got == score, (chips, name, gsd)
    assert kept.thresholds(None, classes) == (None, None)


def test_round_trip_for_a_resumed_run() -> None:
    kept = KeptWeights.of(_start(min_score={"ship": 0.6}), (2.0, 3.0))
    assert kept is not None
    again = KeptWeights.from_payload(kept.to_payload())
    assert again == kept
    assert KeptWeights.from_payload(None) is None
    assert kept.note() == "readings up to 1 m and over 4 m"
