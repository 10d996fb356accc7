"""Set the GSD range each class of a geoseg checkpoint works at (``class_gsd_m``), the
other GSDs a class is also read at (``class_extra_gsd_m``, coarser; ``class_fine_gsd_m``,
finer than the scene), and how a class is read on scenes coarser than its range
(``class_coarse_reading``).

``geoseg train`` records, per class, the GSDs of the chips it learned the class from. A model
may find a class well only at part of that range (fields are wider than a tile at 0.5 m): this
rewrites the ranges that ``geoseg run`` reads each class at, and nothing else::

    python tools/set_class_gsd.py default.pt field=2:10 building=0.3:10 ship=0.5:10
    python tools/set_class_gsd.py default.pt --also building=0.6   # read twice, merged
    python tools/set_class_gsd.py default.pt --also building=      # read once again
    python tools/set_class_gsd.py default.pt --fine ship=0.3       # and upsampled, merged
    python tools/set_class_gsd.py default.pt --coarse ship=1.667:6 # 10 m scene: ships at 6 m
    python tools/set_class_gsd.py default.pt --coarse ship=        # at the range's top again

The file is rewritten atomically; weights, thresholds and training records are kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geoseg.config import as_coarse_reading
from geoseg.errors import UserInputError
from geoseg.model.checkpoint import read_checkpoint, update_checkpoint

READINGS = (  # flag, checkpoint key, where geoseg run reads the class at those GSDs
    ("--also", "class_extra_gsd_m", "where the scene is 1.5 x finer"),
    ("--fine", "class_fine_gsd_m", "upsampled, where the scene is 1.5 to 2 x coarser"),
)


def parse_range(text: str) -> tuple[str, tuple[float, float]]:
    name, _, span = text.partition("=")
    low, _, high = span.partition(":")
    try:
        return name, (float(low), float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write CLASS=MIN:MAX in metres") from None


def parse_extra(text: str) -> tuple[str, list[float]]:
    name, _, gsds = text.partition("=")
    try:
        return name, [float(g) for g in gsds.split(",") if g.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write CLASS=GSD[,GSD...] in metres") from None


def parse_coarse(text: str) -> tuple[str, list[float] | None]:
    name, _, rule = text.partition("=")
    if not rule.strip():
        return name, None
    upsampling, _, up_to = rule.partition(":")
    try:
        return name, [float(upsampling), float(up_to)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write CLASS=UPSAMPLING:UP_TO_M") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("ranges", nargs="*", type=parse_range, metavar="CLASS=MIN:MAX")
    for flag, _, where in READINGS:
        parser.add_argument(
            flag,
            action="append",
            type=parse_extra,
            default=[],
            metavar="CLASS=GSD[,GSD]",
            help=f"also read CLASS at these GSDs {where} (empty: none)",
        )
    parser.add_argument(
        "--coarse",
        action="append",
        type=parse_coarse,
        default=[],
        metavar="CLASS=UPSAMPLING:UP_TO_M",
        help="on scenes coarser than CLASS's range, read it at the scene's GSD / UPSAMPLING, "
        "between the range's top and UP_TO_M (CLASS=: at the range's top)",
    )
    args = parser.parse_args()
    payload = read_checkpoint(args.checkpoint)
    ranges = dict(payload.get("class_gsd_m") or {})
    for name, (low, high) in args.ranges:
        if name not in payload["classes"] or not 0 < low <= high:
            parser.error(f"{name}={low}:{high}: not a class of the model, or not 0 < MIN <= MAX")
        ranges[name] = [low, high]
    tables = {}
    for flag, key, _ in READINGS:
        table = dict(payload.get(key) or {})
        for name, gsds in getattr(args, flag.removeprefix("--")):
            if name not in payload["classes"] or any(g <= 0 for g in gsds):
                parser.error(f"{flag} {name}: not a class of the model, or a GSD not above 0")
            table[name] = gsds
        tables[key] = {name: gsds for name, gsds in table.items() if gsds} or None
    coarse = dict(payload.get("class_coarse_reading") or {})
    for name, rule in args.coarse:
        if name not in payload["classes"]:
            parser.error(f"--coarse {name}: not a class of the model")
        coarse[name] = rule
    tables["class_coarse_reading"] = {n: r for n, r in coarse.items() if r} or None
    try:  # the check geoseg applies when it loads the model
        as_coarse_reading(tables["class_coarse_reading"], "--coarse")
    except UserInputError as exc:
        parser.error(str(exc))
    update_checkpoint(args.checkpoint, class_gsd_m=ranges, **tables)
    print(
        f"{args.checkpoint}: class GSD ranges {ranges}, also read at "
        f"{tables['class_extra_gsd_m'] or {}} and, finer, at {tables['class_fine_gsd_m'] or {}}; "
        f"on coarser scenes {tables['class_coarse_reading'] or {}}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
