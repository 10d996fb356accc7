"""``geoseg batch``: many scenes, resumable, on a Dask cluster."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from geoseg.cli.options import DIR, FILE, options_from_cli, parse_bands, run_options
from geoseg.errors import UserInputError, first_line

__all__ = ["batch_command", "load_spec"]

_SPEC_KEYS = {
    "inputs",
    "outdir",
    "model",
    "tile_size",
    "overlap",
    "batch_size",
    "device",
    "min_score",
    "bands",
    "scheduler",
    "simplify",
    "crs",
    "gsd",
    "format",
    "preview",
    "webmap",
    "regularize",
    "classes",
    "merge",
    "asset",
    "workers",
    "gpu",
    "cluster",
    "verify",
}
# spec key -> click parameter name, where they differ
_RENAMES = {
    "tile_size": "tile_px",
    "overlap": "overlap_px",
    "simplify": "simplify_px",
    "gsd": "gsd_m",
    "format": "formats",
}


def load_spec(path: Path) -> dict[str, Any]:
    """Read a YAML or TOML job spec; relative ``inputs`` and ``outdir`` are taken from its
    folder. Keys are the long option names with ``_`` for ``-`` (``tile_size``)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read the job spec ({exc.strerror})") from exc
    try:
        if path.suffix.lower() == ".toml":
            spec = tomllib.loads(text)
        else:
            import yaml

            spec = yaml.safe_load(text) or {}
    except Exception as exc:
        raise UserInputError(f"{path}: not a valid job spec ({first_line(exc)})") from exc
    if not isinstance(spec, dict):
        raise UserInputError(f"{path}: a job spec is a mapping of option names to values")
    from geoseg.batch.cluster import reject_unknown_keys

    reject_unknown_keys(spec, _SPEC_KEYS, where=str(path))
    base = path.parent
    if "inputs" in spec:
        items = spec["inputs"] if isinstance(spec["inputs"], list) else [spec["inputs"]]
        spec["inputs"] = [str(p if Path(p).is_absolute() else base / p) for p in items]
    if "outdir" in spec:
        spec["outdir"] = str(
            Path(spec["outdir"]) if Path(spec["outdir"]).is_absolute() else base / spec["outdir"]
        )
    if "cluster" in spec:
        from geoseg.batch.cluster import check_cluster_spec

        spec["cluster"] = check_cluster_spec(spec["cluster"], where=f"{path}: cluster")
    for key in ("bands", "classes"):  # lists in the spec, comma lists on the command line
        if isinstance(spec.get(key), list):
            spec[key] = ",".join(str(v) for v in spec[key])
    return {_RENAMES.get(k, k): v for k, v in spec.items()}


def _spec_callback(ctx: click.Context, param: click.Parameter, value: Path | None) -> Any:
    if value is not None:
        spec = load_spec(value)
        ctx.default_map = {**(ctx.default_map or {}), **spec}
    return value


@click.command("batch")
@click.argument("inputs", nargs=-1)
@click.option(
    "--spec",
    type=FILE,
    is_eager=True,
    expose_value=False,
    callback=_spec_callback,
    help="A YAML or TOML job spec (see workflows/); options given here override it.",
)
@click.option(
    "-o",
    "--outdir",
    type=DIR,
    default=None,
    help="Output folder (required, here or in the spec).",
)
@click.option(
    "--asset", default=None, help="STAC asset to read from each item (default: the visual/RGB one)."
)
@click.option(
    "--merge",
    is_flag=True,
    default=False,
    help="Also write OUTDIR/merged.gpkg with objects seen in several scenes once.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Workers of the local cluster (threads: 1, processes: 2).",
)
@click.option(
    "--gpu",
    is_flag=True,
    default=False,
    help="Run inference only on Dask workers that have the resource GPU=1 "
    "(dask worker --resources GPU=1), one model per worker.",
)
@click.option(
    "--verify",
    type=click.Choice(["quick", "content"]),
    default="quick",
    show_default=True,
    help="How a rerun knows a scene is unchanged: quick (size, modification time, first and "
    "last MiB; misses an edit inside a file that keeps both) or content (hashes every byte).",
)
@run_options
@click.pass_context
def batch_command(
    ctx: click.Context,
    inputs: tuple[str, ...],
    outdir: Path | None,
    asset: str | None,
    merge: bool,
    workers: int | None,
    gpu: bool,
    verify: str,
    scheduler: str,
    **kwargs: Any,
) -> None:
    """Segment many scenes: GeoTIFFs, folders, globs, manifests or STAC catalogues.

    Each scene gets its own SCENE.gpkg and GeoJSON files in OUTDIR, as with 'geoseg run'. A
    journal in OUTDIR (geoseg-journal.jsonl) records what is done: run the same command again
    after a crash or a kill and only unfinished, failed or changed scenes are processed. A
    scene that fails is reported and the others go on. The tiles of all scenes share one Dask
    cluster: a local one, an existing one (--scheduler), or one a spec starts (SLURM,
    Kubernetes: see workflows/README.md).

    Exit status: 0 every scene done, 1 some scene failed, 2 a usage error.

    \b
    Examples:
      geoseg batch archive/ -o out/
      geoseg batch 'tiles/**/*.tif' scenes.txt -o out/ --merge
      geoseg batch catalog.json --asset visual -o out/ --scheduler tcp://10.0.0.5:8786
      geoseg batch --spec workflows/local.yaml
    """
    from geoseg.batch import run_batch
    from geoseg.batch.inputs import resolve_inputs

    spec = ctx.default_map or {}
    inputs = inputs or tuple(spec.get("inputs", ()))
    if not inputs:
        raise click.UsageError("give INPUTS (files, folders, globs, manifests, STAC) or --spec")
    if outdir is None:
        raise click.UsageError("give -o/--outdir (or 'outdir' in the spec)")
    if isinstance(kwargs.get("bands"), str):
        kwargs["bands"] = parse_bands(kwargs["bands"])
    options = options_from_cli(**kwargs)
    scenes = resolve_inputs(inputs, asset=asset)
    verbosity = (ctx.obj or {}).get("verbosity", 0)
    _quiet_dask(verbosity)
    progress = _Progress(verbosity)
    with contextlib.ExitStack() as stack:
        stack.callback(progress.close)
        from_command_line = ctx.get_parameter_source("scheduler") == ParameterSource.COMMANDLINE
        if spec.get("cluster") and not from_command_line:
            from geoseg.batch.cluster import start_cluster

            scheduler = stack.enter_context(start_cluster(spec["cluster"]))
        report = run_batch(
            scenes,
            outdir,
            options=options,
            scheduler=scheduler,
            workers=workers,
            predict_resources={"GPU": 1} if gpu else None,
            merge=merge,
            on_event=progress,
            verify=verify,
        )
    if verbosity >= 0:
        _summary(report)
    else:  # -q: errors only
        for outcome in report.failed:
            click.echo(f"FAILED {outcome.scene}: {outcome.error}", err=True)
    if report.failed:
        sys.exit(1)


def _quiet_dask(verbosity: int) -> None:
    """Dask's own logs: none but failures by default (a failed scene is in the summary and
    the journal), warnings with -v, everything with -vv. Set after importing distributed,
    whose import sets its loggers' levels."""
    import distributed  # noqa: F401

    if verbosity >= 2:
        return
    levels = {"distributed": logging.ERROR if verbosity < 1 else logging.WARNING}
    if verbosity < 1:  # "Compute Failed" tracebacks of tasks the summary reports
        levels["distributed.worker"] = logging.CRITICAL
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


class _Progress:
    """Scenes done out of total, tiles per second and time left (tqdm on stderr).

    Time left is counted in tiles, not scenes: scenes differ in size, and the ones a rerun
    skips take no time.
    """

    def __init__(self, verbosity: int) -> None:
        self.verbosity = verbosity
        self.bar: Any = None
        self.tiles_total = 0
        self.tiles_done = 0
        self.start = 0.0

    def __call__(self, kind: str, payload: Any) -> None:
        if self.verbosity < 0:
            return
        if kind == "start":
            from tqdm import tqdm

            self.bar = tqdm(
                total=payload,
                unit="scene",
                desc="scenes",
                dynamic_ncols=True,
                bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed}{postfix}",
            )
        elif kind == "planned":
            self.tiles_total = payload
            self.start = time.perf_counter()
        elif kind == "dashboard":  # the cluster is up: tiles/s counts from here
            self.start = time.perf_counter()
            if payload:
                self.bar.write(f"Dask dashboard: {payload}", file=sys.stderr)
        elif kind == "tiles":
            self.tiles_done += payload
            self.bar.set_postfix_str(self._rate())
        elif kind == "scene":
            self.bar.update(1)
            if payload.status == "failed":
                self.bar.write(f"FAILED {payload.scene.name}: {payload.error}", file=sys.stderr)

    def _rate(self) -> str:
        rate = self.tiles_done / max(time.perf_counter() - self.start, 1e-9)
        left = max(self.tiles_total - self.tiles_done, 0) / rate if rate > 0 else 0.0
        minutes, seconds = divmod(int(left), 60)
        return (
            f"{self.tiles_done}/{self.tiles_total} tiles, {rate:.1f} tiles/s, "
            f"{minutes}:{seconds:02d} left"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _summary(report: Any) -> None:
    rows = [("scene", "status", "objects", "tiles", "seconds", "error")]
    for o in report.outcomes:
        rows.append(
            (
                o.scene.name,
                o.status,
                str(sum(o.counts.values())),
                str(o.n_tiles),
                f"{o.seconds:.1f}",
                o.error[:80],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    done = sum(o.status == "done" for o in report.outcomes)
    skipped = sum(o.status == "skipped" for o in report.outcomes)
    click.echo(
        f"{done} done, {skipped} already done, {len(report.failed)} failed "
        f"in {report.seconds:.1f} s"
    )
    if report.merged:
        click.echo(f"Wrote {report.merged}")
