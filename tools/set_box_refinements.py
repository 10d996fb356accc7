"""Set how many more times the Mask R-CNN moves each kept object's box by its box head, per
class (``class_box_refinements``).

``CLASS=N``: an object of the class kept from the box head's first pass is put through the
head N more times (0 to 4), each pass from the box it has reached, before its mask is drawn
(iterative box regression; with several views, in each view and averaged). It costs one
small pass of the box head per refinement, over the kept objects only. ``CLASS=0`` drops
the class::

    python tools/set_box_refinements.py default.pt building=2
    python tools/set_box_refinements.py default.pt building=0

The file is rewritten atomically; weights and the other settings are kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geoseg.config import BOX_REFINEMENTS_MAX, as_box_refinements
from geoseg.errors import UserInputError
from geoseg.model.checkpoint import read_checkpoint, update_checkpoint


def parse_count(text: str) -> tuple[str, int]:
    name, _, count = text.partition("=")
    if not name or not count.isdigit() or int(count) > BOX_REFINEMENTS_MAX:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write CLASS=N with N a whole number from 0 to {BOX_REFINEMENTS_MAX}"
        )
    return name, int(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("counts", nargs="+", type=parse_count, metavar="CLASS=N")
    args = parser.parse_args()
    try:
        payload = read_checkpoint(args.checkpoint)
        unknown = sorted({name for name, _ in args.counts} - set(payload["classes"]))
        if unknown:
            raise UserInputError(f"{args.checkpoint}: {', '.join(unknown)}: not a class of it")
        table = as_box_refinements(payload.get("class_box_refinements")) or {}
        table = {**table, **dict(args.counts)}
        table = {name: n for name, n in table.items() if n}
        update_checkpoint(args.checkpoint, class_box_refinements=table or None)
    except UserInputError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.checkpoint}: box refinements per class {table or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
