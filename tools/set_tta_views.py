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

from class_counts import count_tool

from geoseg.config import TTA_VIEW_COUNTS, as_tta_views


def main() -> int:
    return count_tool(
        __doc__.splitlines()[0],
        "class_tta_views",
        as_tta_views,
        TTA_VIEW_COUNTS,
        "one of 1, 2, 4, 8",
        neutral=1,
    )


if __name__ == "__main__":
    raise SystemExit(main())
