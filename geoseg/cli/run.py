"""``geoseg run``: one scene to polygons."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from geoseg.cli.options import DIR, options_from_cli, run_options

__all__ = ["run_command"]


@click.command("run")
@click.argument("scene", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--outdir",
    type=DIR,
    default=Path("geoseg-out"),
    show_default=True,
    help="Folder for SCENE.gpkg (one layer per class, scene CRS) and "
    "SCENE_<class>.geojson (WGS84).",
)
@run_options
@click.pass_context
def run_command(
    ctx: click.Context, scene: str, outdir: Path, scheduler: str, **kwargs: Any
) -> None:
    """Segment SCENE (a GeoTIFF, or an https:// or s3:// Cloud-Optimized GeoTIFF) into
    building, field and ship polygons.

    The scene is read in overlapping tiles, never whole; objects cut by tile borders are
    merged, so each comes out once and whole. Besides the vector files, SCENE_preview.png
    and SCENE.html (an offline web map) show the result at once.

    \b
    Examples:
      geoseg run scene.tif -o out/
      geoseg run ortho.tif --tile-size 1024 --overlap 256 --device cuda
      geoseg run strip.tif --scheduler tcp://10.0.0.5:8786 --model my_pkg.models:build
      geoseg run https://example.com/cog.tif --format gpkg,parquet --regularize
      geoseg run naip.tif --classes field
    """
    import time

    from geoseg.commit import check_writable, scene_lock
    from geoseg.compute import connected, model_copies, sized_for_cluster
    from geoseg.pipeline import assemble_scene, iter_results, plan_scene, scene_tasks
    from geoseg.remote import is_remote

    verbosity = (ctx.obj or {}).get("verbosity", 0)
    options = options_from_cli(**kwargs)
    start = time.perf_counter()
    check_writable(outdir)
    where = scene if is_remote(scene) else Path(scene)
    with connected(scheduler) as scheduler:  # one connection to a cluster, for both steps
        options = sized_for_cluster(options, scheduler)  # its workers measure their GPUs
        plan = plan_scene(where, options, model_copies=model_copies(scheduler))
        _announce(plan, verbosity)
        with scene_lock(outdir, plan.scene.stem), _progress_bar(plan.n_tiles, verbosity) as bar:
            results = iter_results(scene_tasks(plan), scheduler, bar.update if bar else None)
            result = assemble_scene(plan, results, outdir, started=start)
    if verbosity >= 0:
        _summary(result)


def _announce(plan: Any, verbosity: int) -> None:
    model, scene = plan.model, plan.scene
    if model.untrained:
        click.secho(
            "Warning: the model is UNTRAINED (random weights): its polygons mean "
            "nothing. Train one with 'geoseg train' or pass --model.",
            fg="yellow",
            err=True,
        )
    if verbosity < 0:
        return
    click.echo(
        f"Model: {model.name} ({model.checksum[:19]}), classes: {', '.join(model.classes)}",
        err=True,
    )
    note = scene.projection_note()
    if note:
        click.echo(f"{note}.", err=True)
    for reading in plan.passes:
        if len(plan.passes) == 1 and not reading.scene.resampled:
            break
        working = reading.scene
        names = ", ".join(model.classes[k] for k in reading.classes)
        how = "resampled to" if working.resampled else "at its own GSD,"
        click.echo(
            f"Scene GSD {working.file_gsd_m:.3g} m is read {how} {working.gsd_m:.3g} m "
            f"({working.shape_yx[1]} x {working.shape_yx[0]} px) for {names}; "
            "polygons stay in the scene's CRS. Use --gsd to choose.",
            err=True,
        )
    for note in plan.notes:
        click.echo(f"Note: {note}.", err=True)
    if scene.assumed_crs:
        click.echo("Scene has no CRS: using --crs as given.", err=True)
    logging.getLogger(__name__).info(
        "%d tiles of %d px, overlap %d", plan.n_tiles, plan.grid.tile_px, plan.grid.overlap_px
    )


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress_bar(total: int, verbosity: int) -> Any:
    if verbosity < 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="tile", desc="tiles", leave=False, dynamic_ncols=True)


def _listing(items: Iterable[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    *head, last = items
    return f"{', '.join(head)} and {last}" if head else last


def _how_read(result: Any, name: str) -> str:
    """`` (at 5 m, score >= 0.65)``: the GSD a class was read at and the score it was kept
    from, where the run recorded them; `` (not searched)`` for a class no reading kept
    (``--classes`` left it out, or the scene is too coarse for it)."""
    if result.class_gsd_m and name not in result.class_gsd_m:
        return " (not searched)"
    parts = []
    readings = result.class_readings_m.get(name, ())
    scores = result.class_readings_min_score.get(name, ())
    if len(readings) > 1:
        parts.append(f"at {_listing(f'{g:.3g}' for g in readings)} m, merged")
    elif name in result.class_gsd_m:
        parts.append(f"at {result.class_gsd_m[name]:.3g} m")
    if len(set(scores)) > 1:
        parts.append(f"score >= {_listing(f'{s:.2f}' for s in scores)}")
    elif name in result.class_min_score:
        parts.append(f"score >= {result.class_min_score[name]:.2f}")
    if name in result.class_tta_views:
        parts.append(f"{result.class_tta_views[name]} views")
    return f" ({', '.join(parts)})" if parts else ""


def _summary(result: Any) -> None:
    counts = ", ".join(f"{n} {name}{_how_read(result, name)}" for name, n in result.counts.items())
    click.echo(f"Objects: {counts}")
    click.echo(
        f"Tiles: {result.n_tiles} ({result.n_skipped} skipped as nodata) in "
        f"{result.seconds:.1f} s, {result.tiles_per_second:.1f} tiles/s"
    )
    for path in result.outputs:
        click.echo(f"Wrote {path}")
