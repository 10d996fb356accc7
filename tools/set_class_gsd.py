"""Set the GSD range each class of a geoseg checkpoint works at (``class_gsd_m``).

``geoseg train`` records, per class, the GSDs of the chips it learned the class from. A model
may find a class well only at part of that range (fields are wider than a tile at 0.5 m): this
rewrites the ranges that ``geoseg run`` reads each class at, and nothing else::

    python tools/set_class_gsd.py default.pt field=2:10 building=0.3:10 ship=0.5:10

The file is rewritten atomically; weights, thresholds and training records are kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geoseg.model.checkpoint import read_checkpoint, update_checkpoint


def parse_range(text: str) -> tuple[str, tuple[float, float]]:
    name, _, span = text.partition("=")
    low, _, high = span.partition(":")
    try:
        return name, (float(low), float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write CLASS=MIN:MAX in metres") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("ranges", nargs="+", type=parse_range, metavar="CLASS=MIN:MAX")
    args = parser.parse_args()
    payload = read_checkpoint(args.checkpoint)
    ranges = dict(payload.get("class_gsd_m") or {})
    for name, (low, high) in args.ranges:
        if name not in payload["classes"] or not 0 < low <= high:
            parser.error(f"{name}={low}:{high}: not a class of the model, or not 0 < MIN <= MAX")
        ranges[name] = [low, high]
    update_checkpoint(args.checkpoint, class_gsd_m=ranges)
    print(f"{args.checkpoint}: class GSD ranges {ranges}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
