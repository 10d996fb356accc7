"""What ``set_box_refinements.py`` and ``set_fuse_iou.py`` use (and a tool like them may): a
value per class (a whole number written ``CLASS=N``, or another parsed value), merged into a
checkpoint's table of them (a class at its neutral value leaves the table), and the command
line that does it (:func:`table_tool`; :func:`count_tool` for counts)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from geoseg.errors import UserInputError
from geoseg.model.checkpoint import read_checkpoint, update_checkpoint

Parse = Callable[[Any], Mapping[str, float] | None]


def count_parser(allowed: Collection[int], wanted: str) -> Callable[[str], tuple[str, int]]:
    """An argparse type for ``CLASS=N`` with ``N`` one of ``allowed`` (described as
    ``wanted``)."""

    def parse(text: str) -> tuple[str, int]:
        name, _, count = text.partition("=")
        if not name or not count.isdigit() or int(count) not in allowed:
            raise argparse.ArgumentTypeError(f"{text!r}: write CLASS=N with N {wanted}")
        return name, int(count)

    return parse


def set_counts(
    checkpoint: Path, key: str, parse: Parse, counts: Sequence[tuple[str, float]], neutral: float
) -> int:
    """Merge ``counts`` (class, value) into the checkpoint's ``key`` table (read with
    ``parse``), leave out the classes at ``neutral``, and rewrite the file atomically; print
    the table. A user's mistake (a missing file, a class the checkpoint lacks) is one line on
    stderr and 2."""
    try:
        payload = read_checkpoint(checkpoint)
        unknown = sorted({name for name, _ in counts} - set(payload["classes"]))
        if unknown:
            raise UserInputError(f"{checkpoint}: {', '.join(unknown)}: not a class of it")
        table = {**(parse(payload.get(key)) or {}), **dict(counts)}
        table = {name: n for name, n in table.items() if n != neutral}
        update_checkpoint(checkpoint, **{key: table or None})
    except UserInputError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(f"{checkpoint}: {key} {table or f'none ({neutral} each)'}")
    return 0


def count_tool(
    description: str,
    key: str,
    parse: Parse,
    allowed: Collection[int],
    wanted: str,
    neutral: int,
) -> int:
    """The whole tool: ``CHECKPOINT CLASS=N ...`` from the command line, ``N`` one of
    ``allowed`` (described as ``wanted``), merged into the checkpoint's ``key`` table by
    :func:`set_counts`; its exit status."""
    setting = count_parser(allowed, wanted)
    return table_tool(description, key, parse, setting, "CLASS=N", neutral)


def table_tool(
    description: str,
    key: str,
    parse: Parse,
    setting: Callable[[str], tuple[str, float]],
    metavar: str,
    neutral: float,
) -> int:
    """The whole tool for any per-class value: ``CHECKPOINT SETTING ...`` from the command
    line, each read by ``setting`` (an argparse type giving ``(class, value)``), merged into
    the checkpoint's ``key`` table by :func:`set_counts`; its exit status."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("settings", nargs="+", type=setting, metavar=metavar)
    args = parser.parse_args()
    return set_counts(args.checkpoint, key, parse, args.settings, neutral)
