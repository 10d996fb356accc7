"""Set how many views of each tile ``geoseg run`` fuses per class (``class_tta_views``,
``tta_views_by_gsd``).

A class seen in 2, 4 or 8 views (the tile, flipped, and turned a quarter for 8) is found in
each and its objects fused (see ``geoseg.model.flip_views``): fewer false objects, fuller
outlines, and that many times the model's time for the tiles of its readings. ``CLASS=N``
sets a class's views wherever it is read (``CLASS=1`` drops it), ``CLASS@GSD=N`` its views
where it is read at GSD metres or finer, ``CLASS@GSD=-`` drops that step::

    python tools/set_tta_views.py default.pt building=4 ship=4 field@3=4
    python tools/set_tta_views.py default.pt building=1 field@3=-

The file is rewritten atomically; weights, GSD ranges, thresholds and training records are
kept. A run given ``--tta`` uses that for every class instead.
"""

from __future__ import annotations

from threshold_settings import apply_settings, read_arguments, setting_parser

from geoseg.config import TTA_VIEW_COUNTS, as_tta_views, as_tta_views_by_gsd
from geoseg.model.checkpoint import update_checkpoint

parse_setting = setting_parser(lambda v: v in TTA_VIEW_COUNTS, "N one of 1, 2, 4, 8")


def main() -> int:
    parser, path, settings, payload = read_arguments(__doc__, parse_setting, "CLASS[@GSD]=N")
    base = as_tta_views(payload.get("class_tta_views")) or {}
    steps = as_tta_views_by_gsd(payload.get("tta_views_by_gsd")) or {}
    views, by_gsd = apply_settings(parser, list(payload["classes"]), base, steps, settings)
    views = {name: int(n) for name, n in views.items() if n != 1}
    by_gsd = {name: [(gsd, int(n)) for gsd, n in s] for name, s in by_gsd.items()}
    update_checkpoint(path, class_tta_views=views or None, tta_views_by_gsd=by_gsd or None)
    print(f"{path}: class_tta_views {views or 'none (1 each)'}, by GSD {by_gsd}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
