"""``geoseg train``: fine-tune (or train from scratch) a Mask R-CNN on labelled GeoTIFFs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from geoseg.cli.options import FILE, comma_list

__all__ = ["train_command"]

log = logging.getLogger(__name__)


def _comma_lists(kind: type) -> Any:
    """:func:`comma_list` for an option given several times: a tuple of tuples."""
    one = comma_list(kind)

    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
        return tuple(one(ctx, param, v) for v in values)

    return callback


@click.command("train")
@click.option(
    "--images",
    multiple=True,
    help="Labelled GeoTIFFs: a file, a folder, a quoted glob ('picks/chips/*.tif') or a "
    "manifest, as for 'geoseg batch' (repeat for more).",
)
@click.option(
    "--labels",
    multiple=True,
    type=FILE,
    help="A vector file of object polygons with a CRS (repeat for more); one file may cover "
    "many images, and each image takes the polygons of every file that lie over it.",
)
@click.option(
    "--label-class",
    multiple=True,
    metavar="CLASS",
    help="Class of the polygons of label files that have no 'class' column: once for all "
    "files, or once per --labels in the same order ('-' for a file with the column).",
)
@click.option(
    "--classes",
    default="building,field,ship",
    show_default=True,
    callback=comma_list(str),
    help="The classes the model learns, in order.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=FILE,
    help="The model file to write (model.pt); checkpoints and logs go to <stem>.train/ "
    "beside it, and a rerun resumes from there.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--steps-per-epoch",
    type=click.IntRange(min=1),
    default=None,
    help="Optimizer steps per epoch [default: one pass over the training chips].",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--init",
    default="default",
    show_default=True,
    help="Start from 'default' (the shipped model), 'imagenet' (a MobileNetV2 backbone "
    "pretrained on ImageNet, shipped with geoseg), 'none' (random), a checkpoint, or a "
    "torchvision mobilenet_v2 state dict (.pth) for the backbone.",
)
@click.option(
    "--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Peak learning rate [default: 1e-3 for adamw, 0.02 for sgd].",
)
@click.option(
    "--chip-size",
    "chip_px",
    type=click.IntRange(32, 2048),
    default=256,
    show_default=True,
    help="Side of the square training chips, in pixels.",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of each image, its eastern strip, held out for validation.",
)
@click.option(
    "--scales",
    multiple=True,
    callback=_comma_lists(float),
    help="Also read each image this many times coarser (e.g. 1,2,4), so the model learns "
    "several ground sampling distances: once for all images, or once per --images in the "
    "same order [default: 1].",
)
@click.option(
    "--synthetic",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Add this many synthetic labelled scenes (geoseg.learn.synth).",
)
@click.option(
    "--synthetic-seed",
    type=click.IntRange(min=100),
    default=1000,
    show_default=True,
    help="Seed of the first synthetic scene (0-99 are kept for evaluation).",
)
@click.option(
    "--synthetic-size",
    "synthetic_size_px",
    type=click.IntRange(min=64),
    default=512,
    show_default=True,
    help="Side of each synthetic scene, in pixels.",
)
@click.option(
    "--val-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Score the validation chips every N epochs (0: only at the end).",
)
@click.option(
    "--tune-on",
    type=click.Choice(["all", "real"]),
    default="all",
    show_default=True,
    help="Validation chips that set each class's score threshold: all, or only those of "
    "--images (not synthetic scenes), for classes with 20 or more objects there.",
)
@click.option(
    "--all-labelled",
    is_flag=True,
    help="Every image was labelled completely: an image with no polygon over it is learnt as "
    "background. Without it such images are skipped as unlabelled (e.g. chips of "
    "'geoseg select' that were not corrected). Polygons outside every image are ignored.",
)
@click.option(
    "--copy-paste",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Share of training chips given objects of another chip read at a similar GSD, "
    "pasted where they lay in it (copy-paste augmentation; objects of up to a quarter of "
    "a chip).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for torch [default: torch's choice]; 1 is often faster on a busy machine.",
)
@click.pass_context
def train_command(
    ctx: click.Context,
    images: tuple[str, ...],
    labels: tuple[Path, ...],
    label_class: tuple[str, ...],
    output: Path,
    threads: int | None,
    **kwargs: Any,
) -> None:
    """Train a Mask R-CNN on GeoTIFFs and polygon labels, and write it to OUTPUT.

    Each image is cut into chips (read as 'geoseg run' reads tiles); the eastern strip of
    every image is held out, and the model is scored on it at the end (F1 at IoU 0.5 per
    class). The model is written after every epoch; run the same command again to resume.

    \b
    Examples:
      geoseg train --images a.tif --images b.tif --labels roofs.gpkg -o roofs.pt
      geoseg train --images pan.tif --labels houses.geojson --label-class building \\
          --classes building --epochs 20 --init none -o houses.pt
      geoseg train --synthetic 200 --init none --epochs 12 -o synth.pt
      geoseg run scene.tif --model roofs.pt -o out/
    """
    from geoseg.learn.train import TrainOptions, train

    verbosity = (ctx.obj or {}).get("verbosity", 0)
    if not images and not kwargs["synthetic"]:
        raise click.UsageError("give --images with --labels, or --synthetic N")
    sources = _label_sources(labels, label_class)
    paths = _image_paths(images)
    scales = kwargs.pop("scales") or ((1.0,),)
    if len(scales) > 1 and len(scales) != len(paths):
        raise click.BadParameter(
            f"given {len(scales)} times for {len(paths)} --images: give it once, or once "
            "per --images in the same order",
            param_hint="--scales",
        )
    per_image = tuple(scales) if len(scales) > 1 else None
    options = TrainOptions(scales=scales[0], image_scales=per_image, **kwargs)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    with _Reporter(verbosity) as report:
        result = train(paths, sources, output, options=options, progress=report)
    if verbosity >= 0:
        _summary(result)


def _image_paths(images: tuple[str, ...]) -> list[Path]:
    """``--images`` values as files: a quoted glob or a folder gives its GeoTIFFs, sorted."""
    import glob

    from geoseg.batch.inputs import GEOTIFF_SUFFIXES
    from geoseg.errors import UserInputError

    paths: list[Path] = []
    for item in images:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in GEOTIFF_SUFFIXES)
        elif not path.exists() and set("*?[") & set(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            found = [path]
        if not found:
            raise UserInputError(f"--images {item}: matches no GeoTIFF")
        paths.extend(found)
    return paths


def _label_sources(labels: tuple[Path, ...], label_class: tuple[str, ...]) -> list[Any]:
    from geoseg.learn.train import LabelSource

    if len(label_class) > 1 and len(label_class) != len(labels):
        raise click.BadParameter(
            f"given {len(label_class)} times for {len(labels)} --labels: give it once, or once "
            "per --labels in the same order",
            param_hint="--label-class",
        )
    if len(label_class) == 1:
        label_class = label_class * len(labels)
    if not label_class:
        label_class = (None,) * len(labels)  # type: ignore[assignment]
    return [
        LabelSource(str(p), None if c == "-" else c)
        for p, c in zip(labels, label_class, strict=True)
    ]


class _Reporter:
    """Turns training events into a tqdm bar per epoch and a line per epoch."""

    def __init__(self, verbosity: int) -> None:
        self.verbosity = verbosity
        self.bar: Any = None

    def __enter__(self) -> _Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, event: Any) -> None:
        if self.verbosity < 0:
            return
        if event.kind == "data":
            info = event.info
            click.echo(
                f"Chips: {info['train_chips']} training, {info['val_chips']} validation; "
                f"objects {_counts(info['train_objects'])} / {_counts(info['val_objects'])}",
                err=True,
            )
        elif event.kind == "epoch_start":
            from tqdm import tqdm

            self.bar = tqdm(
                total=event.n_steps, desc=f"epoch {event.epoch}", unit="step", dynamic_ncols=True
            )
        elif event.kind == "step" and self.bar is not None:
            losses = event.losses
            self.bar.set_postfix(
                loss=f"{losses['loss']:.3f}",
                mask=f"{losses.get('loss_mask', 0):.3f}",
                cls=f"{losses.get('loss_classifier', 0):.3f}",
                refresh=False,
            )
            self.bar.update(1)
        elif event.kind == "epoch_end" and self.bar is not None:
            self.bar.close()
            self.bar = None
        elif event.kind == "validation":
            info = dict(event.info)
            score = info.pop("min_score")
            f1 = ", ".join(
                f"{c} {_fmt(m['f1'])} (score >= {score[c]:.2f})" for c, m in info.items()
            )
            click.echo(f"Validation F1 (IoU 0.5) after epoch {event.epoch}: {f1}", err=True)


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {c}" for c, n in counts.items())


def _summary(result: Any) -> None:
    click.echo(
        f"Trained {result.trained_epochs} epoch(s) ({result.epochs} in all) on "
        f"{result.n_train_chips} chips, GSD {result.gsd_range_m[0]:.3g}-"
        f"{result.gsd_range_m[1]:.3g} m"
    )
    if result.validation:
        click.echo(
            "Validation (mask IoU >= 0.5; per class, the score threshold with the best F1, "
            "which the model records as its --min-score):"
        )
        for name, m in result.validation.items():
            click.echo(
                f"  {name:10s} score >= {result.min_score[name]:.2f}  F1 {_fmt(m['f1'])}  "
                f"precision {_fmt(m['precision'])}  recall {_fmt(m['recall'])}  "
                f"({m['tp']} tp, {m['fp']} fp, {m['fn']} fn)"
            )
    click.echo(f"Wrote {result.output}")
