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

from class_counts import count_tool

from geoseg.config import BOX_REFINEMENTS_MAX, as_box_refinements


def main() -> int:
    return count_tool(
        __doc__.splitlines()[0],
        "class_box_refinements",
        as_box_refinements,
        range(BOX_REFINEMENTS_MAX + 1),
        f"from 0 to {BOX_REFINEMENTS_MAX}",
        neutral=0,
    )


if __name__ == "__main__":
    raise SystemExit(main())
