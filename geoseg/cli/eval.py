"""``geoseg eval``: score predicted polygons against reference polygons."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from geoseg.cli.options import FILE, comma_list

__all__ = ["eval_command"]


@click.command("eval")
@click.argument("pred", type=FILE)
@click.argument("ref", type=FILE)
@click.option(
    "--iou",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="IoU a prediction needs to count as a true positive (precision, recall, F1).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Also write the results as JSON to this file ('-': JSON to stdout, no table).",
)
@click.option(
    "--classes",
    callback=comma_list(str, empty="give at least one class name"),
    metavar="NAME,...",
    help="Evaluate only these classes [default: every class in either file].",
)
@click.option(
    "--ref-class",
    default=None,
    metavar="NAME",
    help="Class of the reference polygons when REF has no 'class' column or class layers "
    "[default: the predictions' only class].",
)
@click.option(
    "--boundary-width",
    type=click.FloatRange(0, min_open=True),
    default=None,
    metavar="METRES",
    help="Width d of the Boundary IoU band, the same for every pair [default: per pair, "
    "d = 0.1 * sqrt(area of the reference), used for both polygons].",
)
def eval_command(
    pred: Path,
    ref: Path,
    iou: float,
    json_path: str | None,
    classes: tuple[str, ...] | None,
    ref_class: str | None,
    boundary_width: float | None,
) -> None:
    """Score predicted polygons PRED against reference polygons REF, per class.

    Both are vector files with a CRS (predictions in another CRS are reprojected); every
    layer is read. A polygon's class is its 'class' column, else its layer's name when the
    file has one layer per class (as 'geoseg run' writes). Ranking uses the 'score' column
    (1.0 where there is none). Reports COCO mask AP (IoU 0.50:0.05:0.95), AP50, AP75, and
    precision, recall and F1 at --iou with one-to-one greedy matching by score.

    Outline quality: BoundIoU is the mean Boundary IoU (Cheng et al., 2021) of the pairs
    matched at --iou; BoundAP is AP with each pair's IoU replaced by min(IoU, Boundary IoU).
    Boundary IoU is the IoU of the two polygons' inner bands of width d: the part of each
    polygon within d of its outline (the whole polygon where it is at most 2 d wide). By
    default d = 0.1 * sqrt(area of the reference), in metres, for both polygons of a pair
    (1.2 m on a 12 m square building, 30 m on a 300 m square field); --boundary-width fixes
    it. The JSON records the band under "boundary_band".

    \b
    Example:
      geoseg eval out/scene.gpkg truth.gpkg --iou 0.5 --json scores.json
      geoseg eval pred.gpkg buildings.geojson --ref-class building --classes building
      geoseg eval pred.gpkg fields.gpkg --boundary-width 20
    """
    from geoseg.learn.evaluate import evaluate_files, format_table

    result = evaluate_files(
        pred, ref, iou=iou, classes=classes, ref_class=ref_class, boundary_width=boundary_width
    )
    text = json.dumps(result, indent=2)
    if json_path == "-":
        click.echo(text)
        return
    click.echo(format_table(result))
    if json_path is not None:
        _write_text(Path(json_path), text + "\n")


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` under a temporary name beside ``path``, then rename it into place."""
    from geoseg.errors import UserInputError

    if not path.parent.is_dir():
        raise UserInputError(f"--json {path}: no such folder {path.parent}")
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)
