"""What ``set_min_score.py`` and ``set_mask_threshold.py`` share: settings written as
``CLASS=VALUE``, ``CLASS@GSD=VALUE`` (the value where the class is read at GSD metres or
finer) or ``CLASS@GSD=-`` (drop that step), applied to a per-class table and its steps by GSD.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from geoseg.errors import UserInputError
from geoseg.model.checkpoint import read_checkpoint

_SETTING = re.compile(r"^(?P<name>[^@=]+)(@(?P<gsd>[^=]+))?=(?P<value>.+)$")

Setting = tuple[str, float | None, float | None]
"""(class, GSD or ``None``, value or ``None`` to drop it)."""


def setting_parser(
    valid: Callable[[float], bool], wanted: str, *, drop_base: bool = False
) -> Callable[[str], Setting]:
    """An argparse type for settings whose values pass ``valid`` (described as ``wanted``);
    ``CLASS=-`` drops a class's value only where ``drop_base``."""
    forms = "CLASS=VALUE, CLASS@GSD=VALUE, CLASS@GSD=-" + (" or CLASS=-" if drop_base else "")

    def parse(text: str) -> Setting:
        match = _SETTING.match(text)
        try:
            if match is None:
                raise ValueError
            gsd = float(match["gsd"]) if match["gsd"] else None
            drop = match["value"] == "-" and (gsd is not None or drop_base)
            value = None if drop else float(match["value"])
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: write {forms}") from None
        if (gsd is not None and gsd <= 0) or (value is not None and not valid(value)):
            raise argparse.ArgumentTypeError(f"{text!r}: want GSD > 0 and {wanted}")
        return match["name"], gsd, value

    return parse


def read_arguments(
    doc: str, parse: Callable[[str], Setting], metavar: str
) -> tuple[argparse.ArgumentParser, Path, list[Setting], dict[str, Any]]:
    """Parse ``CHECKPOINT SETTING...`` from the command line and read the checkpoint (a
    checkpoint that cannot be read stops the tool with one line and exit status 2)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("settings", nargs="+", type=parse, metavar=metavar)
    args = parser.parse_args()
    try:
        payload = read_checkpoint(args.checkpoint)
    except UserInputError as exc:  # a missing or unreadable file: one line, exit status 2
        parser.exit(2, f"Error: {exc}\n")
    return parser, args.checkpoint, args.settings, payload


def apply_settings(
    parser: argparse.ArgumentParser,
    classes: Sequence[str],
    base: Mapping[str, float],
    steps: Mapping[str, Sequence[tuple[float, float]]],
    settings: Sequence[Setting],
) -> tuple[dict[str, float], dict[str, list[tuple[float, float]]]]:
    """``base`` and ``steps`` with ``settings`` applied (an unknown class stops ``parser``)."""
    values = dict(base)
    table = {c: dict(s) for c, s in steps.items()}
    for name, gsd, value in settings:
        if name not in classes:
            parser.error(f"{name}: not a class of the model ({', '.join(classes)})")
        if gsd is None and value is None:
            values.pop(name, None)
        elif gsd is None:
            values[name] = value
        elif value is None:
            table.get(name, {}).pop(gsd, None)
        else:
            table.setdefault(name, {})[gsd] = value
    return values, {c: sorted(s.items()) for c, s in table.items() if s}
