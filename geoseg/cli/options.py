"""Options and parameter types shared by the commands, defined once: the run options of
``geoseg run`` and ``geoseg batch``, file and folder paths, comma-separated lists."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from geoseg.config import TTA_VIEW_COUNTS, RunOptions

__all__ = ["DIR", "FILE", "comma_list", "options_from_cli", "parse_bands", "run_options"]

_DEFAULTS = RunOptions()

#: A file path (not a folder), as a :class:`~pathlib.Path`.
FILE = click.Path(path_type=Path, dir_okay=False)
#: A folder path (not a file), as a :class:`~pathlib.Path`.
DIR = click.Path(path_type=Path, file_okay=False)


def comma_list(kind: type = str, *, empty: str = "give at least one value") -> Any:
    """A callback that parses ``"a,b,c"`` into a tuple of ``kind`` (None stays None); an
    unparsable item or an empty list is a :class:`click.BadParameter` (``empty``: its text)."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            items = tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(
                f"{value!r} is not a comma-separated list", param_hint=f"--{param.name}"
            ) from None
        if not items:
            raise click.BadParameter(empty, param_hint=f"--{param.name}")
        return items

    return callback


def parse_bands(value: str | None) -> tuple[int, ...] | None:
    """``"1,2,3"`` -> ``(1, 2, 3)``; raises :class:`click.BadParameter` for anything else."""
    if value is None or value == "":
        return None
    try:
        bands = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of band numbers", param_hint="--bands"
        ) from None
    if any(b < 1 for b in bands):
        raise click.BadParameter("band numbers start at 1", param_hint="--bands")
    return bands


def _formats_callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    from geoseg.errors import UserInputError
    from geoseg.formats import check_formats

    if value is None:
        return None
    items = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
    try:
        return check_formats(items)
    except UserInputError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint="--format") from None


def _bands_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    return parse_bands(value)


def _scheduler_callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from geoseg.errors import UserInputError
    from geoseg.scheduler import ACCEPTED, check_scheduler

    try:
        return check_scheduler(value)
    except UserInputError:
        raise click.BadParameter(f"{value!r}: use {ACCEPTED}", param_hint="--scheduler") from None


class FiniteFloatRange(click.FloatRange):
    """A :class:`click.FloatRange` that refuses ``nan`` and ``inf``."""

    name = "float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _device_callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise click.BadParameter(f"{value!r}: use auto, cpu, cuda or cuda:N", param_hint="--device")


_OPTIONS = [
    click.option(
        "--model",
        "model",
        default=_DEFAULTS.model,
        show_default=True,
        help="'default' (the model shipped with geoseg), a checkpoint written by "
        "'geoseg train' (model.pt), or your own 'package.module:factory'.",
    ),
    click.option(
        "--tile-size",
        "tile_px",
        type=click.IntRange(min=32),
        default=_DEFAULTS.tile_px,
        show_default=True,
        help="Side of the square tiles the model sees, in pixels.",
    ),
    click.option(
        "--overlap",
        "overlap_px",
        type=click.IntRange(min=1),
        default=_DEFAULTS.overlap_px,
        show_default=True,
        help="Pixels shared by neighbouring tiles; make it larger than the objects "
        "you care about so they are seen whole.",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=_DEFAULTS.batch_size,
        show_default="4 on the CPU, sized to the free memory on a GPU",
        help="Tiles per model call (and per Dask task).",
    ),
    click.option(
        "--device",
        default=_DEFAULTS.device,
        show_default=True,
        callback=_device_callback,
        help="auto (a GPU if there is one), cpu, cuda or cuda:N.",
    ),
    click.option(
        "--min-score",
        type=FiniteFloatRange(0, 1),
        default=None,
        help="Drop objects the model is less sure of. Default: the threshold the model "
        "was tuned to on its validation data (a geoseg train checkpoint records it), else 0.5.",
    ),
    click.option(
        "--bands",
        default=None,
        callback=_bands_callback,
        metavar="1,2,3",
        help="Bands to read, numbered from 1. Default: red, green, blue by colour "
        "interpretation, else by band descriptions (Red, B04, ...), else the first three.",
    ),
    click.option(
        "--scheduler",
        default="threads",
        show_default=True,
        callback=_scheduler_callback,
        help="threads, processes, or the address of a Dask scheduler "
        "(tcp://host:8786) to run on an existing cluster.",
    ),
    click.option(
        "--simplify",
        "simplify_px",
        type=FiniteFloatRange(min=0),
        default=_DEFAULTS.simplify_px,
        show_default=True,
        help="Smooth outlines by this tolerance in pixels; 0 keeps them pixel-exact.",
    ),
    click.option(
        "--crs",
        default=None,
        metavar="EPSG:XXXX",
        help="CRS of a scene that has a geotransform but no CRS.",
    ),
    click.option(
        "--gsd",
        "gsd_m",
        type=FiniteFloatRange(min=0, min_open=True),
        default=None,
        help="Read the scene resampled to this many metres per pixel (default: the "
        "range the model was trained on, if the scene is outside it).",
    ),
    click.option(
        "--format",
        "formats",
        default=",".join(_DEFAULTS.formats),
        show_default=True,
        callback=_formats_callback,
        metavar="gpkg,geojson,parquet,fgb",
        help="Vector formats to write: gpkg (one layer per class, styled for QGIS), geojson "
        "(WGS84), parquet (GeoParquet 1.1), fgb (FlatGeobuf); the last three one file per class.",
    ),
    click.option(
        "--preview/--no-preview",
        default=_DEFAULTS.preview,
        show_default=True,
        help="Write SCENE_preview.png: the scene with the objects outlined per class.",
    ),
    click.option(
        "--webmap/--no-webmap",
        default=_DEFAULTS.webmap,
        show_default=True,
        help="Write SCENE.html: an offline web map of the objects over the scene.",
    ),
    click.option(
        "--classes",
        default=None,
        callback=comma_list(str, empty="name at least one class"),
        metavar="building,field,ship",
        help="Search only these classes of the model (default: all); the others are not "
        "read for, which saves their readings' tiles, and their layers stay empty.",
    ),
    click.option(
        "--tta",
        type=click.Choice([str(n) for n in TTA_VIEW_COUNTS]),
        default=None,
        callback=lambda ctx, param, value: None if value is None else int(value),
        help="See each tile in this many views (flipped; 8: also turned) and fuse what the "
        "model finds: fewer false objects and fuller outlines for N times the model's time. "
        "Default: what the model recommends (the default model: 4 for buildings and ships, "
        "and for fields read at 3 m or finer; 1 for other fields); 1 turns it off.",
    ),
    click.option(
        "--regularize",
        is_flag=True,
        default=_DEFAULTS.regularize,
        help="Square building outlines: right angles along their dominant directions.",
    ),
]


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with the options every run shares."""
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def options_from_cli(**kwargs: Any) -> RunOptions:
    """Build :class:`RunOptions` from the parsed options (ignoring ones it does not know)."""
    fields = set(RunOptions.__dataclass_fields__)
    return RunOptions(**{k: v for k, v in kwargs.items() if k in fields})
