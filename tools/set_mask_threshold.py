"""Set the mask probability from which a pixel of a class is in (``mask_threshold``,
``mask_threshold_by_gsd``).

A Mask R-CNN draws each instance as 28 x 28 probabilities in its box; a pixel is in where the
probability, resized into the box, is at least 0.5. A model whose masks come out smaller than
the objects (soft edges, roofs drawn as blobs inside their walls) draws them closer at a
lower value. ``CLASS=VALUE`` sets a class's value wherever it is read, ``CLASS@GSD=VALUE`` its
value where it is read at GSD metres or finer, ``CLASS=-`` and ``CLASS@GSD=-`` drop them::

    python tools/set_mask_threshold.py default.pt building@1=0.35
    python tools/set_mask_threshold.py default.pt building@1=-

The file is rewritten atomically; weights, GSD ranges, score thresholds and training records
are kept.
"""

from __future__ import annotations

from threshold_settings import apply_settings, read_arguments, setting_parser

from geoseg.config import as_mask_threshold, as_mask_threshold_by_gsd
from geoseg.model.checkpoint import update_checkpoint

parse_setting = setting_parser(lambda v: 0 < v < 1, "0 < VALUE < 1", drop_base=True)


def main() -> int:
    parser, path, settings, payload = read_arguments(__doc__, parse_setting, "CLASS[@GSD]=VALUE")
    base = as_mask_threshold(payload.get("mask_threshold")) or {}
    steps = as_mask_threshold_by_gsd(payload.get("mask_threshold_by_gsd")) or {}
    base, by_gsd = apply_settings(parser, list(payload["classes"]), base, steps, settings)
    update_checkpoint(path, mask_threshold=base or None, mask_threshold_by_gsd=by_gsd or None)
    print(f"{path}: mask thresholds {base or 'none (0.5)'}, by GSD {by_gsd}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
