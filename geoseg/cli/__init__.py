"""The ``geoseg`` command group: thin commands that parse, validate, call the library, report.

Subcommands live in their own modules and are imported only when invoked, so ``geoseg --help``
does not load torch, rasterio or dask. Exit status: 0 success, 1 internal failure, 2 a user's
mistake (bad option, unreadable or ungeoreferenced input).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import sys
import warnings

import click

from geoseg.errors import (
    GeoSegError,
    LabelError,
    OutputError,
    SceneError,
    UntrainedModelWarning,
    UserInputError,
)

__all__ = ["cli", "main"]

# command name -> (module, attribute, one-line help shown by `geoseg --help`)
_COMMANDS = {
    "run": ("geoseg.cli.run", "run_command", "Segment one GeoTIFF scene into polygons."),
    "batch": ("geoseg.cli.batch", "batch_command", "Segment many scenes, resumably, on Dask."),
    "train": ("geoseg.cli.train", "train_command", "Fine-tune a Mask R-CNN on labelled GeoTIFFs."),
    "eval": ("geoseg.cli.eval", "eval_command", "Score predicted polygons against references."),
    "synth": ("geoseg.cli.synth", "synth_command", "Make a synthetic labelled aerial scene."),
    "select": ("geoseg.cli.select", "select_command", "Pick the tiles most worth labelling."),
}

USER_ERRORS = (UserInputError, SceneError, LabelError, OutputError)


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in _COMMANDS if _available(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS or not _available(cmd_name):
            return None
        module_name, attr, _ = _COMMANDS[cmd_name]
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if not rows:
            return
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _available(name: str) -> bool:
    return importlib.util.find_spec(_COMMANDS[name][0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log messages (-vv for debug).")
@click.option("-q", "--quiet", count=True, help="Fewer messages: no progress bar, errors only.")
@click.version_option(package_name="geoseg")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int) -> None:
    """geoseg: buildings, fields and ships from GeoTIFFs to georeferenced polygons.

    \b
    Example:
      geoseg run scene.tif -o out/
    """
    level = logging.WARNING - 10 * verbose + 10 * quiet
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=max(level, logging.DEBUG), format=fmt)
    if verbose == 0:  # GDAL's own warnings (via rasterio) only when asked for
        logging.getLogger("rasterio").setLevel(logging.ERROR)
    if verbose < 2:  # distributed logs every worker start at INFO
        logging.getLogger("distributed").setLevel(logging.WARNING)
    # The commands say it themselves, in their words, once.
    warnings.filterwarnings("ignore", category=UntrainedModelWarning)
    # rasterio.features.shapes makes in-memory rasters without a transform and warns about
    # them; it is not about the user's scene (those are checked in geoseg.scene).
    warnings.filterwarnings("ignore", message="Dataset has no geotransform")
    ctx.obj = {"verbosity": verbose - quiet}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that clean-up runs as for Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group and map geoseg errors to one line and an exit code.

    Ctrl-C exits with 130 and SIGTERM with 143, after the clean-up of temporary files and
    worker processes that an error gets.
    """
    with contextlib.suppress(ValueError):  # not in the main thread: leave SIGTERM alone
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Terminated:
        click.echo("Terminated.", err=True)
        sys.exit(143)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}{_help_hint(exc)}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except USER_ERRORS as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except GeoSegError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # an internal failure: one line, the traceback with -v
        logging.getLogger("geoseg").debug("internal error", exc_info=True)
        click.echo(
            f"Error (internal): {type(exc).__name__}: {exc} (rerun with -vv for details)", err=True
        )
        sys.exit(1)
    sys.exit(0)


def _help_hint(exc: click.ClickException) -> str:
    """`` (see 'geoseg run --help')`` for a usage error, on the same line."""
    ctx = getattr(exc, "ctx", None)
    if not isinstance(exc, click.UsageError) or ctx is None:
        return ""
    return f" (see '{ctx.command_path} {ctx.help_option_names[-1]}')"
