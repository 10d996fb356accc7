"""``geoseg select``: the tiles most worth labelling, as chips with the model's pre-labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from geoseg.cli.options import DIR, options_from_cli, run_options

__all__ = ["select_command"]


@click.command("select")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-o",
    "--outdir",
    type=DIR,
    default=Path("picks"),
    show_default=True,
    help="Folder for chips/, prelabels.gpkg, selection.gpkg and README.txt.",
)
@click.option(
    "-n",
    "n",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many tiles to pick.",
)
@click.option(
    "--random",
    "random_pick",
    is_flag=True,
    help="Pick at random (never overlapping), for comparison.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of --random (the uncertain+diverse pick is deterministic).",
)
@click.option(
    "--pool-factor",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="k-center chooses among the pool-factor x n most uncertain tiles.",
)
@click.option(
    "--min-valid",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="Least share of valid (not nodata) pixels in a tile.",
)
@click.option("--asset", default=None, help="The STAC asset to read [default: the visual one].")
@run_options
def select_command(
    inputs: tuple[str, ...],
    outdir: Path,
    n: int,
    random_pick: bool,
    seed: int,
    pool_factor: int,
    min_valid: float,
    asset: str | None,
    scheduler: str,
    **kwargs: Any,
) -> None:
    """Pick the N tiles of INPUTS most worth labelling, cut them out and pre-label them.

    INPUTS are scenes as for 'geoseg batch': GeoTIFFs, folders, globs, manifests, STAC.
    Each scene is cut into non-overlapping tiles of --tile-size (on the grid 'geoseg run'
    reads); the model scores each tile (streamed, one Dask task per batch of tiles):
    uncertainty (score entropy and disagreement with the mirrored tile) and an embedding of
    its backbone features. The picks are the most uncertain tiles, spread by k-center over
    the embeddings so they do not all show the same place; tiles with less than --min-valid
    valid pixels never count, and picks never overlap.

    Writes OUTDIR/chips/<scene>_<row>_<col>.tif (your own pixels), prelabels.gpkg (the
    model's polygons, to correct in QGIS), selection.gpkg (footprints, rank, uncertainty)
    and README.txt (what to run next).

    \b
    Examples:
      geoseg select archive/ --model default -n 40 -o picks/
      geoseg select 'tiles/**/*.tif' catalog.json --asset visual -n 20 -o picks/
      geoseg select archive/ -n 40 --random --seed 1 -o random_picks/
      geoseg train --images 'picks/chips/*.tif' --labels picks/prelabels.gpkg \\
          --all-labelled -o mine.pt
    """
    from geoseg.learn.select import SelectOptions, select

    options = SelectOptions(
        n=n,
        random=random_pick,
        seed=seed,
        pool_factor=pool_factor,
        min_valid=min_valid,
        asset=asset,
    )
    result = select(
        inputs, outdir, options=options, run=options_from_cli(**kwargs), scheduler=scheduler
    )
    click.echo(
        f"Picked {len(result.picks)} of {result.n_candidates} tiles in {result.n_scenes} "
        f"scene(s) ({result.method}) in {result.seconds:.1f} s"
    )
    for row in result.picks[:10]:
        click.echo(f"  {row['rank']:3d}  {row['chip']}  uncertainty {row['uncertainty']:.3f}")
    if len(result.picks) > 10:
        click.echo(f"  ... ({len(result.picks) - 10} more in {result.selection})")
    for note in result.skipped:
        click.echo(f"  skipped: {note}", err=True)
    click.echo(f"Wrote {result.outdir}/: chips/, prelabels.gpkg, selection.gpkg, README.txt")
