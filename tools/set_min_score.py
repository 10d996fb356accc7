"""Set the score thresholds a geoseg checkpoint recommends (``min_score``, ``min_score_by_gsd``).

``geoseg train`` tunes one threshold per class on its validation data. One threshold may not
suit every GSD a class is read at (a 0.3 m marina boat and a 10 m Sentinel-2 ship are both
``ship``): ``CLASS@GSD=SCORE`` sets the threshold of the class when it is read at GSD metres or
finer, ``CLASS=SCORE`` its threshold elsewhere, ``CLASS@GSD=-`` drops a step::

    python tools/set_min_score.py default.pt ship=0.65 ship@1=0.5

The file is rewritten atomically; weights, GSD ranges and training records are kept. A run
given ``--min-score`` uses that instead of all of these.
"""

from __future__ import annotations

from threshold_settings import apply_settings, read_arguments, setting_parser

from geoseg.config import as_min_score, as_min_score_by_gsd
from geoseg.model.checkpoint import update_checkpoint

parse_setting = setting_parser(lambda v: 0 <= v <= 1, "SCORE in [0, 1]")


def main() -> int:
    parser, path, settings, payload = read_arguments(__doc__, parse_setting, "CLASS[@GSD]=SCORE")
    classes = list(payload["classes"])
    tuned = as_min_score(payload.get("min_score"))
    base = dict(tuned) if isinstance(tuned, dict) else {}
    if isinstance(tuned, float):
        base = dict.fromkeys(classes, tuned)
    steps = as_min_score_by_gsd(payload.get("min_score_by_gsd")) or {}
    base, by_gsd = apply_settings(parser, classes, base, steps, settings)
    update_checkpoint(path, min_score=base or None, min_score_by_gsd=by_gsd or None)
    print(f"{path}: min_score {base}, by GSD {by_gsd}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
