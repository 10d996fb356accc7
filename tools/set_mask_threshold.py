"""Set the mask probability from which a pixel of a class is in (``mask_threshold``).

A Mask R-CNN draws each instance as 28 x 28 probabilities in its box; a pixel is in where the
probability, resized into the box, is at least 0.5. A model whose masks come out smaller than
the objects (soft edges, roofs drawn as blobs inside their walls) draws them closer at a
lower value. ``CLASS=VALUE`` sets a class's value, ``CLASS=-`` puts it back to 0.5::

    python tools/set_mask_threshold.py default.pt building=0.35
    python tools/set_mask_threshold.py default.pt building=-

The file is rewritten atomically; weights, GSD ranges, score thresholds and training records
are kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geoseg.model.checkpoint import read_checkpoint, update_checkpoint


def parse_setting(text: str) -> tuple[str, float | None]:
    """``CLASS=VALUE`` (0 < VALUE < 1) or ``CLASS=-`` as (class, value or ``None``)."""
    name, _, value = text.partition("=")
    try:
        cut = None if value == "-" else float(value)
    except ValueError:
        cut = -1.0
    if not name or (cut is not None and not 0 < cut < 1):
        raise argparse.ArgumentTypeError(f"{text!r}: write CLASS=VALUE (0 < VALUE < 1) or CLASS=-")
    return name, cut


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("settings", nargs="+", type=parse_setting, metavar="CLASS=VALUE")
    args = parser.parse_args()
    payload = read_checkpoint(args.checkpoint)
    table = dict(payload.get("mask_threshold") or {})
    for name, cut in args.settings:
        if name not in payload["classes"]:
            parser.error(f"{name}: not a class of the model ({', '.join(payload['classes'])})")
        if cut is None:
            table.pop(name, None)
        else:
            table[name] = cut
    update_checkpoint(args.checkpoint, mask_threshold=table or None)
    print(f"{args.checkpoint}: mask thresholds {table or 'none (0.5)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
