"""``geoseg synth``: write a synthetic labelled aerial scene (GeoTIFF + GeoPackage)."""

from __future__ import annotations

from pathlib import Path

import click

from geoseg.cli.options import FILE

__all__ = ["synth_command"]


@click.command("synth")
@click.argument("output", type=FILE)
@click.option(
    "--size",
    "size_wh",
    nargs=2,
    type=click.IntRange(min=32, max=10_000),
    default=(1024, 1024),
    show_default=True,
    metavar="W H",
    help="Width and height in pixels.",
)
@click.option(
    "--gsd",
    "gsd_m",
    type=click.FloatRange(min=0.05, max=100),
    default=0.5,
    show_default=True,
    help="Ground sampling distance, metres per pixel (0.5 to 10 is the designed range).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Same seed, same scene (CRS and origin included).",
)
@click.option(
    "--dtype",
    type=click.Choice(["uint8", "uint16"]),
    default="uint8",
    show_default=True,
    help="uint16 holds the same scene scaled to 0..4095 (12-bit).",
)
@click.option(
    "--dense-town",
    is_flag=True,
    help="Pack the town's blocks with rows of small houses a metre or two apart, many "
    "with flat roofs, and at 1 m or finer draw roof details: corrugated metal, parapets, "
    "water tanks, stair houses (dense informal and mixed housing).",
)
@click.option(
    "--labels",
    "labels_path",
    type=FILE,
    default=None,
    help="Where to write the labels [default: OUTPUT with suffix .gpkg].",
)
@click.pass_context
def synth_command(
    ctx: click.Context,
    output: Path,
    size_wh: tuple[int, int],
    gsd_m: float,
    seed: int,
    dtype: str,
    dense_town: bool,
    labels_path: Path | None,
) -> None:
    """Write a synthetic aerial scene OUTPUT (RGB GeoTIFF in a UTM zone) and its labels.

    Buildings (houses, L/T shapes, terraces), fields and ships, each labelled by a polygon
    in layer "labels" of OUTPUT.gpkg with a 'class' column (building, field or ship);
    labels match the drawn pixels exactly. Object sizes follow the GSD; buildings and ships
    are enlarged at coarse GSD so they stay at least 6 and 4 px wide.

    \b
    Example:
      geoseg synth scene.tif --size 1024 1024 --gsd 0.5 --seed 7
      geoseg synth town.tif --gsd 0.3 --seed 8 --dense-town
      geoseg train --images scene.tif --labels scene.gpkg -o model.pt
    """
    from geoseg.learn.synth import write_scene

    image_path, written_labels = write_scene(
        output,
        size_wh=size_wh,
        gsd_m=gsd_m,
        seed=seed,
        dtype=dtype,
        dense_town=dense_town,
        labels_path=labels_path,
    )
    if ctx.find_root().obj is None or ctx.find_root().obj.get("verbosity", 0) >= 0:
        click.echo(f"wrote {image_path} and {written_labels}", err=True)
