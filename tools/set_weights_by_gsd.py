"""Give a Mask R-CNN checkpoint other weights for fine readings (``weights_by_gsd``).

``GSD:CHECKPOINT``: tiles read at GSD metres or finer run through CHECKPOINT's weights (the
same network and classes), coarser tiles through the checkpoint's own. Steps go by increasing
GSD; ``-`` drops them. The read settings stay the checkpoint's own::

    python tools/set_weights_by_gsd.py default.pt 1:fine.pt
    python tools/set_weights_by_gsd.py default.pt 1:fine.pt 3:middle.pt --half 3
    python tools/set_weights_by_gsd.py default.pt -

``--half GSD...`` stores those steps' weights as float16 (half the bytes; they are loaded
into the float32 network as float32 again). The shipped default holds a soup of its second
and eighth training stages for readings at 1 m or finer (model card, "Two weight sets by
GSD"). The file is rewritten atomically.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection
from pathlib import Path

from geoseg.errors import UserInputError
from geoseg.model import checkpoint
from geoseg.model.checkpoint import read_checkpoint


def set_weights_by_gsd(
    path: Path, steps: list[tuple[float, Path]], half: Collection[float] = ()
) -> Path:
    """Rewrite ``path`` with the weights of each ``(gsd, checkpoint)`` step (none: drop them),
    those of the steps whose GSD is in ``half`` stored as float16."""
    payload = read_checkpoint(path)
    unknown = sorted(set(half) - {gsd for gsd, _ in steps})
    if unknown:
        raise UserInputError(f"--half {unknown}: no such step among {[g for g, _ in steps]}")
    weights = []
    for gsd, source in steps:
        other = read_checkpoint(source)
        if other["arch"] != payload["arch"] or other["classes"] != payload["classes"]:
            raise UserInputError(f"{source}: not the same network or classes as {path}")
        state = other["state_dict"]
        if gsd in half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        weights.append((gsd, state))
    note = [[gsd, str(source)] + (["float16"] if gsd in half else []) for gsd, source in steps]
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
    parser.add_argument(
        "--half", type=float, nargs="+", default=[], help="GSDs of steps to store as float16"
    )
    args = parser.parse_args()
    try:
        steps = [] if args.steps == ["-"] else [parse_step(text) for text in args.steps]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    try:
        path = set_weights_by_gsd(args.checkpoint, steps, args.half)
    except UserInputError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if steps:
        told = ", ".join(
            f"up to {gsd:g} m: {source}" + (" as float16" if gsd in args.half else "")
            for gsd, source in steps
        )
        print(f"{path}: other weights for fine readings ({told})")
    else:
        print(f"{path}: one set of weights for every reading")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
