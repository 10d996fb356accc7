"""Set how many region proposals the Mask R-CNN weighs by the GSD it reads at
(``rpn_proposals_by_gsd``).

``GSD:BEFORE:AFTER``: tiles read at GSD metres or finer keep BEFORE proposals per pyramid
level before the region proposal network's NMS and AFTER per tile after it; tiles read
coarser (or by a ``geoseg`` that does not say the GSD) keep the network's own counts
(2,000 and 1,000 for the default model). Fewer proposals make each view cheaper, and can
miss objects in crowded tiles. ``-`` drops the table::

    python tools/set_rpn_proposals.py default.pt 1:1000:500
    python tools/set_rpn_proposals.py default.pt -

The file is rewritten atomically; weights and the other settings are kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geoseg.config import as_proposals_by_gsd
from geoseg.errors import UserInputError
from geoseg.model.checkpoint import update_checkpoint


def parse_step(text: str) -> tuple[float, int, int] | None:
    if text == "-":
        return None
    try:
        gsd, before, after = text.split(":")
        (step,) = as_proposals_by_gsd([(gsd, before, after)], text) or ()
    except (ValueError, UserInputError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: write GSD:BEFORE:AFTER (GSD > 0 m, whole counts of at least 1) or -"
        ) from None
    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("steps", nargs="+", type=parse_step, metavar="GSD:BEFORE:AFTER")
    args = parser.parse_args()
    if None in args.steps and len(args.steps) > 1:
        parser.error("- drops the table: give it alone")
    steps = sorted(step for step in args.steps if step is not None)
    try:
        update_checkpoint(args.checkpoint, rpn_proposals_by_gsd=steps or None)
    except UserInputError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    shown = ", ".join(f"up to {g:g} m: {b} / {a}" for g, b, a in steps) or "the network's own"
    print(f"{args.checkpoint}: proposals before / after NMS {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
