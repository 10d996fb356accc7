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

import argparse
import re
from pathlib import Path

from geoseg.config import as_mask_threshold, as_mask_threshold_by_gsd
from geoseg.model.checkpoint import read_checkpoint, update_checkpoint

_SETTING = re.compile(r"^(?P<name>[^@=]+)(@(?P<gsd>[^=]+))?=(?P<value>.+)$")


def parse_setting(text: str) -> tuple[str, float | None, float | None]:
    """``CLASS[@GSD]=VALUE`` or ``CLASS[@GSD]=-`` as (class, GSD or ``None``, value or
    ``None``)."""
    match = _SETTING.match(text)
    try:
        if match is None:
            raise ValueError
        gsd = float(match["gsd"]) if match["gsd"] else None
        value = None if match["value"] == "-" else float(match["value"])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write CLASS=VALUE, CLASS@GSD=VALUE, CLASS=- or CLASS@GSD=-"
        ) from None
    if (gsd is not None and gsd <= 0) or (value is not None and not 0 < value < 1):
        raise argparse.ArgumentTypeError(f"{text!r}: want GSD > 0 and 0 < VALUE < 1")
    return match["name"], gsd, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("settings", nargs="+", type=parse_setting, metavar="CLASS[@GSD]=VALUE")
    args = parser.parse_args()
    payload = read_checkpoint(args.checkpoint)
    classes = list(payload["classes"])
    base = dict(as_mask_threshold(payload.get("mask_threshold")) or {})
    table = as_mask_threshold_by_gsd(payload.get("mask_threshold_by_gsd")) or {}
    steps = {c: dict(s) for c, s in table.items()}
    for name, gsd, value in args.settings:
        if name not in classes:
            parser.error(f"{name}: not a class of the model ({', '.join(classes)})")
        if gsd is None and value is None:
            base.pop(name, None)
        elif gsd is None:
            base[name] = value
        elif value is None:
            steps.get(name, {}).pop(gsd, None)
        else:
            steps.setdefault(name, {})[gsd] = value
    by_gsd = {c: sorted(s.items()) for c, s in steps.items() if s}
    update_checkpoint(
        args.checkpoint, mask_threshold=base or None, mask_threshold_by_gsd=by_gsd or None
    )
    print(f"{args.checkpoint}: mask thresholds {base or 'none (0.5)'}, by GSD {by_gsd}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
