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

import argparse
import re
from pathlib import Path

from geoseg.config import as_min_score, as_min_score_by_gsd
from geoseg.model.checkpoint import read_checkpoint, update_checkpoint

_SETTING = re.compile(r"^(?P<name>[^@=]+)(@(?P<gsd>[^=]+))?=(?P<score>.+)$")


def parse_setting(text: str) -> tuple[str, float | None, float | None]:
    """``CLASS=SCORE``, ``CLASS@GSD=SCORE`` or ``CLASS@GSD=-`` as (class, GSD, score)."""
    match = _SETTING.match(text)
    try:
        if match is None:
            raise ValueError
        gsd = float(match["gsd"]) if match["gsd"] else None
        score = None if match["score"] == "-" and gsd else float(match["score"])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write CLASS=SCORE, CLASS@GSD=SCORE or CLASS@GSD=-"
        ) from None
    if (gsd is not None and gsd <= 0) or (score is not None and not 0 <= score <= 1):
        raise argparse.ArgumentTypeError(f"{text!r}: want GSD > 0 and SCORE in [0, 1]")
    return match["name"], gsd, score


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("settings", nargs="+", type=parse_setting, metavar="CLASS[@GSD]=SCORE")
    args = parser.parse_args()
    payload = read_checkpoint(args.checkpoint)
    classes = list(payload["classes"])
    tuned = as_min_score(payload.get("min_score"))
    base = dict(tuned) if isinstance(tuned, dict) else {}
    if isinstance(tuned, float):
        base = dict.fromkeys(classes, tuned)
    table = as_min_score_by_gsd(payload.get("min_score_by_gsd")) or {}
    steps = {c: dict(s) for c, s in table.items()}
    for name, gsd, score in args.settings:
        if name not in classes:
            parser.error(f"{name}: not a class of the model ({', '.join(classes)})")
        if gsd is None:
            base[name] = score
        elif score is None:
            steps.get(name, {}).pop(gsd, None)
        else:
            steps.setdefault(name, {})[gsd] = score
    by_gsd = {c: sorted(s.items()) for c, s in steps.items() if s}
    update_checkpoint(args.checkpoint, min_score=base or None, min_score_by_gsd=by_gsd or None)
    print(f"{args.checkpoint}: min_score {base}, by GSD {by_gsd}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
