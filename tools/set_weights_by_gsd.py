"""Give a Mask R-CNN checkpoint other weights for fine readings (``weights_by_gsd``).

``GSD:CHECKPOINT``: tiles read at GSD metres or finer run through CHECKPOINT's weights (the
same network and classes), coarser tiles through the checkpoint's own. Steps go by increasing
GSD; ``-`` drops them. The read settings stay the checkpoint's own::

    python tools/set_weights_by_gsd.py default.pt 1:fine.pt
    python tools/set_weights_by_gsd.py default.pt -

The shipped default holds a soup of its second and eighth training stages for readings at 1 m
or finer (model card, "Two weight sets by GSD"). The file is rewritten atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geoseg.errors import UserInputError
from geoseg.model import checkpoint
from geoseg.model.checkpoint import read_checkpoint


def set_weights_by_gsd(path: Path, steps: list[tuple[float, Path]]) -> Path:
    """Rewrite ``path`` with the weights of each ``(gsd, checkpoint)`` step (none: drop them)."""
    payload = read_checkpoint(path)
    weights = []
    for gsd, source in steps:
        other = read_checkpoint(source)
        if other["arch"] != payload["arch"] or other["classes"] != payload["classes"]:
            raise UserInputError(f"{source}: not the same network or classes as {path}")
        weights.append((gsd, other["state_dict"]))
    note = [[gsd, str(source)] for gsd, source in steps]
    return checkpoint.set_weights_by_gsd(path, weights, note)


def parse_step(text: str) -> tuple[float, Path]:
    gsd, _, source = text.partition(":")
    try:
        value = float(gsd)
    except ValueError:
        value = 0.0
    if value <= 0 or not source:
        raise argparse.ArgumentTypeError(f"{text!r}: write GSD:CHECKPOINT (GSD > 0 m) or -")
    return value, Path(source)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("steps", nargs="+", help="GSD:CHECKPOINT steps by increasing GSD, or -")
    args = parser.parse_args()
    try:
        steps = [] if args.steps == ["-"] else [parse_step(text) for text in args.steps]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    try:
        path = set_weights_by_gsd(args.checkpoint, steps)
    except UserInputError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if steps:
        told = ", ".join(f"up to {gsd:g} m: {source}" for gsd, source in steps)
        print(f"{path}: other weights for fine readings ({told})")
    else:
        print(f"{path}: one set of weights for every reading")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
