"""Set how many views of each tile ``geoseg run`` fuses per class (``class_tta_views``).

A class seen in 2, 4 or 8 views (the tile, flipped, and turned a quarter for 8) is found in
each and its objects fused (see ``geoseg.model.flip_views``): fewer false objects, fuller
outlines, and that many times the model's time for the tiles of its readings. ``CLASS=N``
sets a class's views, ``CLASS=1`` drops it::

    python tools/set_tta_views.py default.pt building=4 ship=4
    python tools/set_tta_views.py default.pt building=1

The file is rewritten atomically; weights, GSD ranges, thresholds and training records are
kept. A run given ``--tta`` uses that for every class instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geoseg.config import TTA_VIEW_COUNTS, as_tta_views
from geoseg.model.checkpoint import read_checkpoint, update_checkpoint


def parse_views(text: str) -> tuple[str, int]:
    name, _, count = text.partition("=")
    if not name or not count.isdigit() or int(count) not in TTA_VIEW_COUNTS:
        raise argparse.ArgumentTypeError(f"{text!r}: write CLASS=N with N one of 1, 2, 4, 8")
    return name, int(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("views", nargs="+", type=parse_views, metavar="CLASS=N")
    args = parser.parse_args()
    payload = read_checkpoint(args.checkpoint)
    unknown = sorted({name for name, _ in args.views} - set(payload["classes"]))
    if unknown:
        parser.error(f"{', '.join(unknown)}: not a class of {args.checkpoint}")
    table = as_tta_views(payload.get("class_tta_views")) or {}
    table.update(args.views)
    table = {name: n for name, n in table.items() if n > 1}
    update_checkpoint(args.checkpoint, class_tta_views=table or None)
    print(f"{args.checkpoint}: views per class {table or 'none (1 each)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
