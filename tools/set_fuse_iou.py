"""Set the box IoU from which the boxes that a class's views find are one object, per class
(``class_fuse_iou``).

A class seen in several views of each tile (``class_tta_views``) has the boxes of its views
grouped into objects: a box joins the best-scored box of its group where their IoU is at
least this value (0.55 where unset: ``geoseg.model.flip_views.FUSE_IOU``). A lower value
groups the views' slightly different boxes of one object more often, so that fewer objects
are found in one view only (and scored a fraction of their views); too low a value groups
neighbours. ``CLASS=-`` (or ``CLASS=0.55``) drops the class's value::

    python tools/set_fuse_iou.py default.pt building=0.25
    python tools/set_fuse_iou.py default.pt building=-

The file is rewritten atomically; weights and the other settings are kept.
"""

from __future__ import annotations

import argparse

from class_counts import table_tool

from geoseg.config import as_fuse_iou
from geoseg.model.flip_views import FUSE_IOU


def parse_setting(text: str) -> tuple[str, float]:
    """``CLASS=IOU`` (0 < IOU < 1), or ``CLASS=-`` for :data:`FUSE_IOU`."""
    name, _, value = text.partition("=")
    try:
        iou = FUSE_IOU if value == "-" else float(value)
    except ValueError:
        iou = -1.0
    if not name or "@" in name or not 0 < iou < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: write CLASS=IOU (0 < IOU < 1) or CLASS=-")
    return name, iou


def main() -> int:
    description = __doc__.splitlines()[0]
    return table_tool(
        description, "class_fuse_iou", as_fuse_iou, parse_setting, "CLASS=IOU", FUSE_IOU
    )


if __name__ == "__main__":
    raise SystemExit(main())
