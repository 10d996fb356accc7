"""Train geoseg's Mask R-CNN on labelled GeoTIFFs (and synthetic scenes), resumably.

:func:`train` cuts chips from every scene (:mod:`geoseg.learn.chips`, optionally at several
GSDs), holds out the eastern strip of each scene for validation, trains with random flips,
90-degree turns and radiometric jitter, writes the model after every epoch, and scores the
validation chips at the end (instance F1 at mask IoU 0.5, per class).

Everything a run needs to go on lives in a *sidecar directory* next to the output,
``<output stem>.train/``:

- ``last.pt``: the latest checkpoint with optimizer state (it loads as a model too);
- ``history.jsonl``: one line per epoch (mean losses, learning rate, seconds, F1 if scored);
- ``synthetic/``: the synthetic scenes asked for with ``synthetic=N`` (GeoTIFF + GeoPackage).

Run it again with the same data and options and it resumes after the last finished epoch;
with more ``epochs`` it trains on (the learning-rate schedule stretches to the new length).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoseg.config import (
    DEFAULT_MIN_SCORE,
    GsdThresholds,
    MaskCuts,
    as_box_refinements,
    as_fuse_iou,
    as_tta_views,
    as_tta_views_by_gsd,
    value_at_gsd,
    views_at_gsd,
)
from geoseg.errors import UserInputError
from geoseg.learn.chips import (
    PASTE_GSD_RATIO,
    Chip,
    augment,
    cut_chips,
    paste_objects,
    read_labels,
    targets_from_ids,
)
from geoseg.learn.kept_weights import KeptWeights
from geoseg.model.checkpoint import read_checkpoint, save_checkpoint
from geoseg.model.maskrcnn import (
    DEFAULT_CLASSES,
    DEFAULT_WEIGHTS,
    IMAGENET_BACKBONE,
    PRETRAINED_ARCH,
    MaskRCNNArch,
    MaskRCNNSegmenter,
    build_network,
    load_backbone_weights,
    network_normalization,
    resolve_device,
)
from geoseg.model.protocol import Instances
from geoseg.model.read_settings import READ_SETTINGS
from geoseg.scene import open_scene

__all__ = [
    "LabelSource",
    "TrainEvent",
    "TrainOptions",
    "TrainResult",
    "f1_scores",
    "match_instances",
    "sidecar_dir",
    "train",
]

log = logging.getLogger(__name__)

LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
MIN_TUNING_REFS = 20
"""Real validation objects a class needs before ``tune_on="real"`` sets its threshold."""
SCORE_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))
"""The score thresholds tried on the validation chips; the best for each class (F1) is
recorded in the checkpoint as the model's ``min_score``."""
KEPT_SETTINGS = tuple(s.key for s in READ_SETTINGS if s.kept)
"""How a checkpoint is read (its extra readings and mask thresholds): kept in a model
fine-tuned from it, for the classes it trains."""


@dataclass(frozen=True, slots=True)
class LabelSource:
    """A label file, and the class of its polygons when it has no ``class`` column."""

    path: str
    label_class: str | None = None


@dataclass(frozen=True, slots=True)
class TrainOptions:
    """Options of :func:`train`.

    ``epochs``: how many epochs in all (a resumed run trains only the missing ones).
    ``steps_per_epoch``: optimizer steps per epoch (``None``: one pass over the training
    chips). ``init``: ``"default"`` (the shipped weights, when installed), ``"imagenet"`` (a
    MobileNetV2 backbone pretrained on ImageNet, shipped with geoseg, and the rest random),
    ``"none"`` (random), a checkpoint path (layers whose shape differs, such as other classes,
    start random) or the path of a torchvision ``mobilenet_v2`` state dict (as ``imagenet``
    with those backbone weights). ``scales``: factors by which each scene is also read
    coarser (``(1.0, 2.0)``: at its own GSD and at twice it); ``image_scales``, when given,
    holds one such tuple per image instead. ``synthetic``: how many synthetic scenes of
    ``synthetic_size_px`` pixels to add, seeds from ``synthetic_seed`` on. ``val_every``: score
    the validation chips every that many epochs (0: only at the end). ``tune_on``: the
    validation chips whose F1 sets each class's score threshold: ``"all"``, or ``"real"``
    (those of the given images, not the synthetic scenes, for each class with at least
    :data:`MIN_TUNING_REFS` objects there; a model meant for real imagery should not take its
    thresholds from synthetic scenes, where it is surer). ``all_labelled``: every given image
    was labelled completely, so one with no polygon over it is trained on as background
    (``False``: such an image is skipped as unlabelled, e.g. a chip of ``geoseg select``
    that was not corrected; polygons outside every image are ignored either way).
    ``copy_paste``: the share of training chips given objects of another training chip read
    at a similar GSD, pasted where they lay in it (:func:`~geoseg.learn.chips.paste_objects`).
    """

    classes: tuple[str, ...] = DEFAULT_CLASSES
    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 4
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 1e-4
    init: str = "default"
    chip_px: int = 256
    val_fraction: float = 0.2
    scales: tuple[float, ...] = (1.0,)
    image_scales: tuple[tuple[float, ...], ...] | None = None
    synthetic: int = 0
    synthetic_seed: int = 1000
    synthetic_size_px: int = 512
    device: str = "auto"
    seed: int = 0
    val_every: int = 0
    tune_on: str = "all"
    all_labelled: bool = False
    arch: MaskRCNNArch = field(default_factory=MaskRCNNArch)
    copy_paste: float = 0.0

    def validate(self) -> None:
        """Raise :class:`~geoseg.errors.UserInputError` for options that cannot work."""
        checks = [
            (bool(self.classes) and len(set(self.classes)) == len(self.classes), "--classes"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1, "--steps-per-epoch"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.optimizer in ("adamw", "sgd"), "--optimizer must be adamw or sgd"),
            (self.lr is None or self.lr > 0, "--lr must be positive"),
            (32 <= self.chip_px <= 2048, "--chip-size must be 32 to 2048 pixels"),
            (0.0 <= self.val_fraction < 1.0, "--val-fraction must be in [0, 1)"),
            (bool(self.scales) and all(s > 0 for s in self.scales), "--scales must be > 0"),
            (
                all(bool(t) and all(s > 0 for s in t) for t in self.image_scales or ()),
                "--scales must be > 0",
            ),
            (self.synthetic >= 0, "--synthetic must be 0 or more"),
            (self.synthetic_seed >= 100, "--synthetic-seed: seeds 0-99 are kept for evaluation"),
            (self.tune_on in ("all", "real"), "--tune-on must be all or real"),
            (0.0 <= self.copy_paste <= 1.0, "--copy-paste must be in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserInputError(f"bad training option: {message}")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.optimizer == "adamw" else 0.02

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True, slots=True)
class TrainEvent:
    """What :func:`train` reports to its ``progress`` callback.

    ``kind``: ``"data"`` (chips cut; ``info`` has counts), ``"epoch_start"``, ``"step"``
    (``losses`` are running means over the epoch), ``"epoch_end"``, ``"validation"``.
    """

    kind: str
    epoch: int = 0
    step: int = 0
    n_steps: int = 0
    losses: Mapping[str, float] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)


Progress = Callable[[TrainEvent], None]


@dataclass(slots=True)
class TrainResult:
    """What a training run did."""

    output: Path
    epochs: int
    trained_epochs: int
    n_train_chips: int
    n_val_chips: int
    gsd_range_m: tuple[float, float]
    history: list[dict[str, Any]]
    validation: dict[str, dict[str, float]]
    min_score: dict[str, float] | None = None


def sidecar_dir(output: str | Path) -> Path:
    """The directory of checkpoints and logs that goes with the model file ``output``."""
    output = Path(output)
    return output.with_name(output.stem + ".train")


def train(
    images: Sequence[str | Path],
    labels: Sequence[LabelSource],
    output: str | Path,
    *,
    options: TrainOptions | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train (or resume training) a Mask R-CNN and write it to ``output`` after every epoch."""
    options = options or TrainOptions()
    options.validate()
    emit = progress or (lambda event: None)
    output = Path(output)
    side = sidecar_dir(output)
    side.mkdir(parents=True, exist_ok=True)
    sources = _sources(images, labels, options, side)
    synthetic = frozenset(s["image"] for s in sources if s["labels"] is not None)
    chips = _all_chips(sources, labels, options)
    train_chips = [c for c in chips if c.split == "train"]
    val_chips = [c for c in chips if c.split == "val"]
    if not train_chips:
        raise UserInputError(
            "no training chips: the images hold no labelled valid pixel west of the split "
            "(images with no label polygon over them are skipped unless --all-labelled)"
        )
    gsds = [c.gsd_m for c in chips]
    gsd_range = (float(min(gsds)), float(max(gsds)))
    class_gsd = class_gsd_ranges(train_chips, options.classes)
    emit(TrainEvent("data", info=_data_info(train_chips, val_chips, options.classes)))
    setup = _setup(sources, labels, options)

    device = resolve_device(options.device)
    resume = _resume_state(side / "last.pt", setup)
    arch, network, init_note, start, kept = _initial_network(options, resume, gsd_range)
    start_gsd, start_class_gsd = _gsd_range(start), _class_gsd(start)
    if start_gsd:  # the GSDs learned include the starting checkpoint's (a resumed run's hold it)
        gsd_range = (min(gsd_range[0], start_gsd[0]), max(gsd_range[1], start_gsd[1]))
    options = replace(options, arch=arch)
    network.to(device)
    optimizer = _optimizer(network, options)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    # one loss scaler for the run (its scale carries over epochs and resumes); CUDA only
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    if resume is not None:
        optimizer.load_state_dict(resume["resume"]["optimizer"])
        if resume["resume"].get("scaler"):
            scaler.load_state_dict(resume["resume"]["scaler"])
        history = list(resume["resume"].get("history", []))
        start_epoch = int(resume["resume"]["epoch"])
        log.info("resuming %s after epoch %d", side / "last.pt", start_epoch)

    steps = options.steps_per_epoch or math.ceil(len(train_chips) / options.batch_size)
    total_steps = steps * options.epochs
    meta = {
        "arch": arch,
        "gsd_range": gsd_range,
        "class_gsd": _merged_class_gsd(class_gsd, start_class_gsd),
        "setup": setup,
        "options": options,
        "sources": sources,
        "init": init_note,
        "reading": {k: start[k] for k in KEPT_SETTINGS if k in start},
        "kept": kept,
        "scaler": scaler,
    }
    if meta["reading"]:
        log.info("keeping how %s is read: %s", init_note, meta["reading"])
    reading = StartReading.of(meta["reading"], options.classes)
    validation = Validation({}, None)
    for epoch in range(start_epoch + 1, options.epochs + 1):
        summary = _train_epoch(
            network,
            optimizer,
            scaler,
            train_chips,
            options,
            device,
            epoch,
            steps,
            total_steps,
            emit,
        )
        if options.val_every and epoch % options.val_every == 0 and epoch < options.epochs:
            validation = _validate(
                network, val_chips, options, device, epoch, emit, synthetic, reading
            )
            summary["val_f1"] = {c: m["f1"] for c, m in validation.scores.items()}
            summary["val_min_score"] = validation.min_score
        history.append(summary)
        _append_history(side / "history.jsonl", summary)
        _save(output, side, network, optimizer, epoch, history, validation, meta)
    validation = _validate(
        network, val_chips, options, device, options.epochs, emit, synthetic, reading
    )
    _save(output, side, network, optimizer, options.epochs, history, validation, meta)
    return TrainResult(
        output=output,
        epochs=options.epochs,
        trained_epochs=options.epochs - start_epoch,
        n_train_chips=len(train_chips),
        n_val_chips=len(val_chips),
        gsd_range_m=gsd_range,
        history=history,
        validation=validation.scores,
        min_score=validation.min_score,
    )


# --- data -------------------------------------------------------------------------------------


def _sources(
    images: Sequence[str | Path],
    labels: Sequence[LabelSource],
    options: TrainOptions,
    side: Path,
) -> list[dict[str, Any]]:
    """Each image (given and synthetic) with the GSDs to cut it at."""
    paths = [Path(p) for p in images]
    for path in paths:
        if not path.is_file():
            raise UserInputError(f"--images {path}: no such file")
    if paths and not labels:
        raise UserInputError("--images need --labels (vector files with the objects to learn)")
    per_image = options.image_scales or (options.scales,) * len(paths)
    if len(per_image) != len(paths):
        raise UserInputError(
            f"--scales given {len(per_image)} times for {len(paths)} --images: give it once "
            "for all images or once per image"
        )
    out = []
    for path, scales in zip(paths, per_image, strict=True):
        native = open_scene(path).file_gsd_m
        out.append({"image": str(path), "labels": None, "gsds": _gsds(native, scales)})
    if options.synthetic:
        for image, label_file, gsd in _synthetic_scenes(side / "synthetic", options):
            out.append({"image": str(image), "labels": str(label_file), "gsds": [gsd]})
    if not out:
        raise UserInputError("nothing to train on: give --images and --labels, or --synthetic N")
    return out


def _gsds(native: float, scales: Sequence[float]) -> list[float]:
    return sorted({round(native * s, 6) for s in scales})


def _synthetic_scenes(directory: Path, options: TrainOptions) -> list[tuple[Path, Path, float]]:
    """Write (or find, when resuming) the synthetic scenes; ``(image, labels, gsd)`` each."""
    try:
        from geoseg.learn import synth
    except ImportError as exc:
        raise UserInputError(
            f"--synthetic needs geoseg.learn.synth, which is missing ({exc})"
        ) from exc

    directory.mkdir(parents=True, exist_ok=True)
    out = []
    size = options.synthetic_size_px
    for seed in range(options.synthetic_seed, options.synthetic_seed + options.synthetic):
        gsd, dtype = synthetic_recipe(seed)
        image = directory / f"synth_{seed}_{size}px.tif"
        label_file = image.with_suffix(".gpkg")
        if not (image.is_file() and label_file.is_file()):
            synth.write_scene(image, size_wh=(size, size), gsd_m=gsd, seed=seed, dtype=dtype)
        out.append((image, label_file, gsd))
    return out


def synthetic_recipe(seed: int) -> tuple[float, str]:
    """The GSD (log-uniform, 0.5 to 10 m) and data type of synthetic scene ``seed``."""
    rng = np.random.default_rng([seed, 7])
    gsd = float(np.exp(rng.uniform(np.log(0.5), np.log(10.0))))
    dtype = "uint8" if rng.random() < 0.6 else "uint16"
    return round(gsd, 3), dtype


def _all_chips(
    sources: Sequence[Mapping[str, Any]], labels: Sequence[LabelSource], options: TrainOptions
) -> list[Chip]:
    given = [
        read_labels(s.path, classes=options.classes, label_class=s.label_class) for s in labels
    ]
    chips: list[Chip] = []
    for source in sources:
        gdfs = given
        if source["labels"] is not None:
            gdfs = [read_labels(source["labels"], classes=options.classes)]
        for gsd in source["gsds"]:
            chips.extend(
                cut_chips(
                    source["image"],
                    gdfs,
                    classes=options.classes,
                    chip_px=options.chip_px,
                    val_fraction=options.val_fraction,
                    gsd_m=gsd,
                    skip_unlabelled=source["labels"] is None and not options.all_labelled,
                )
            )
    return chips


def class_gsd_ranges(
    chips: Sequence[Chip], classes: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """Per class, the smallest and largest GSD of the chips that hold one of its objects."""
    seen: dict[str, list[float]] = {}
    for chip in chips:
        _, _, cls = targets_from_ids(chip.ids, chip.classes)
        for k in np.unique(cls):
            seen.setdefault(classes[int(k)], []).append(chip.gsd_m)
    return {c: (float(min(g)), float(max(g))) for c, g in seen.items()}


def _class_gsd(start: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """The per-class GSD ranges a run starts from (none from scratch)."""
    ranges = start.get("class_gsd_m") or {}
    return {c: (float(r[0]), float(r[1])) for c, r in ranges.items()}


def _merged_class_gsd(
    *ranges: Mapping[str, tuple[float, float]],
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for mapping in ranges:
        for c, (lo, hi) in mapping.items():
            old = out.get(c, [lo, hi])
            out[c] = [min(old[0], lo), max(old[1], hi)]
    return out


def _data_info(
    train_chips: Sequence[Chip], val_chips: Sequence[Chip], classes: Sequence[str]
) -> dict[str, Any]:
    def counts(chips: Sequence[Chip]) -> dict[str, int]:
        n = np.zeros(len(classes), dtype=np.int64)
        for chip in chips:
            _, _, cls = targets_from_ids(chip.ids, chip.classes)
            n += np.bincount(cls, minlength=len(classes))
        return {c: int(k) for c, k in zip(classes, n, strict=True)}

    return {
        "train_chips": len(train_chips),
        "val_chips": len(val_chips),
        "train_objects": counts(train_chips),
        "val_objects": counts(val_chips),
    }


_NOT_SETUP = ("epochs", "device", "val_every", "tune_on")
_TEST_TIME = ("rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "box_detections_per_img")


def _setup(
    sources: Sequence[Mapping[str, Any]], labels: Sequence[LabelSource], options: TrainOptions
) -> dict[str, Any]:
    """What must not change between a run and its resumption: the data and the options,
    except ``epochs``, the device, how often to validate and the test-time settings.
    """
    return {
        "options": _setup_options(options.to_dict()),
        "data": [
            {"image": Path(s["image"]).name, "gsds_m": [float(g) for g in s["gsds"]]}
            for s in sources
        ],
        "labels": [[Path(s.path).name, s.label_class] for s in labels],
    }


def _setup_options(options: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in options.items() if k not in _NOT_SETUP}
    if not out.get("all_labelled"):  # runs from before the option resume as they were
        out.pop("all_labelled", None)
    out["arch"] = {k: v for k, v in dict(out.get("arch", {})).items() if k not in _TEST_TIME}
    return out


# --- model and optimizer ----------------------------------------------------------------------


def _resume_state(path: Path, setup: Mapping[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    payload = read_checkpoint(path)
    state = payload.get("resume")
    if not isinstance(state, dict):
        return None
    saved = state.get("setup")
    if saved is None:  # written before "setup" was recorded: rebuild it from "train"
        train_info = payload.get("train", {})
        saved = {
            "options": _setup_options(train_info.get("options", {})),
            "data": train_info.get("data"),
        }
    changed = [key for key in saved if saved[key] != setup[key]]
    if "options" in changed:
        old, new = saved["options"], setup["options"]
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)] + [
            k for k in changed if k != "options"
        ]
    if changed:
        raise UserInputError(
            f"{path.parent}: holds a training run with other {', '.join(changed)}; delete that "
            "directory to start afresh, or write to another -o"
        )
    return payload


def _initial_network(
    options: TrainOptions, resume: Mapping[str, Any] | None, chip_gsd_m: tuple[float, float]
) -> tuple[MaskRCNNArch, torch.nn.Module, str, dict[str, Any], KeptWeights | None]:
    """The network to train, its arch, a note on where it started, what it keeps of the
    checkpoint it started from (:func:`_start_settings`; empty from random or backbone-only
    weights): fine-tuning the default on 0.3 m imagery keeps the 0.5-10 m it learned as
    well, and its second readings and mask thresholds; and the start's weight sets that serve
    none of the chips (``chip_gsd_m``: finest, coarsest), kept as they were in the model it
    writes (:mod:`geoseg.learn.kept_weights`; ``None``: none are).

    From a checkpoint with weights by GSD (the default's), it starts from the set that serves
    the coarsest chip (the first whose GSD reaches it), else from its main weights."""
    n_classes = len(options.classes)
    if resume is not None:
        arch = MaskRCNNArch.from_dict(resume["arch"])
        arch = replace(arch, **{k: getattr(options.arch, k) for k in _TEST_TIME})
        network = build_network(arch, n_classes)
        network.load_state_dict(resume["state_dict"])
        note = str(resume.get("train", {}).get("init", "resumed"))
        kept = KeptWeights.from_payload(resume["resume"].get("kept_weights"))
        return arch, network, note, _start_settings(resume, options.classes), kept
    torch.manual_seed(options.seed)
    init = options.init
    if init == "none":
        return options.arch, build_network(options.arch, n_classes), "none", {}, None
    if init == "default":
        if not DEFAULT_WEIGHTS.is_file():
            log.warning("--init default: no default weights are installed; starting from random")
            return options.arch, build_network(options.arch, n_classes), "none", {}, None
        init = str(DEFAULT_WEIGHTS)
    if init == "imagenet" or _is_backbone_state_dict(init):
        source = IMAGENET_BACKBONE if init == "imagenet" else Path(init)
        arch = replace(PRETRAINED_ARCH, **{k: getattr(options.arch, k) for k in _TEST_TIME})
        network = build_network(arch, n_classes)
        loaded = load_backbone_weights(network, source)
        log.info("initialised the backbone from %s (%d tensors)", source, loaded)
        return arch, network, init if init == "imagenet" else source.name, {}, None
    payload = read_checkpoint(init)
    arch = MaskRCNNArch.from_dict(payload["arch"])
    network = build_network(arch, n_classes)
    own = network.state_dict()
    # the set that `geoseg run` would read the coarsest chip with
    steps = [(gsd, (state, gsd)) for gsd, state in payload.get("weights_by_gsd") or ()]
    weights, reach = value_at_gsd(steps, chip_gsd_m[1], (payload["state_dict"], None))
    note = Path(init).name
    if reach is not None:
        note += f" (its weights for readings up to {reach:g} m)"
    fits = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    network.load_state_dict(fits, strict=False)
    skipped = len(own) - len(fits)
    log.info("initialised from %s (%d tensors; %d left random)", note, len(fits), skipped)
    kept = KeptWeights.of(payload, chip_gsd_m)
    if kept is not None and list(payload["classes"]) != list(options.classes):
        log.info("%s: other classes, so its other weights are not kept", Path(init).name)
        kept = None
    if kept is not None:
        note += f"; its own weights kept for {kept.note()}"
    return arch, network, note, _start_settings(payload, options.classes), kept


def _is_backbone_state_dict(init: str) -> bool:
    """Whether ``init`` names a torchvision ``mobilenet_v2`` state dict (not a checkpoint)."""
    path = Path(init)
    if not path.is_file():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # read_checkpoint reports unreadable files with the right message
        return False
    return (
        isinstance(state, Mapping)
        and "format" not in state
        and any(str(k).startswith("features.") for k in state)
    )


def _start_settings(payload: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """What a run keeps of the checkpoint it starts from: the GSDs it learned and how it is
    read (:data:`KEPT_SETTINGS`, for the classes this run trains). Score thresholds are tuned
    anew on this run's validation chips, so ``min_score`` and ``min_score_by_gsd`` are not."""
    out = {k: payload[k] for k in ("gsd_range_m", "class_gsd_m") if payload.get(k)}
    for setting in READ_SETTINGS:
        kept = payload.get(setting.key) if setting.kept else None
        if kept and setting.per_class:
            kept = {c: v for c, v in kept.items() if c in classes}
        if kept:
            out[setting.key] = kept
    return out


def _gsd_range(payload: Mapping[str, Any]) -> tuple[float, float] | None:
    gsd = payload.get("gsd_range_m")
    return (float(gsd[0]), float(gsd[1])) if gsd else None


def _optimizer(network: torch.nn.Module, options: TrainOptions) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in network.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": options.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if options.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=options.learning_rate, momentum=0.9)
    return torch.optim.AdamW(groups, lr=options.learning_rate)


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over the first 5% of steps (at most 300), then a cosine to 2%."""
    warmup = max(1, min(300, total // 20))
    if step < warmup:
        return 0.05 + 0.95 * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- training ---------------------------------------------------------------------------------


def backbone_autocast(
    network: torch.nn.Module,
    device_type: str,
    dtype: torch.dtype = torch.float16,
    *,
    enabled: bool = True,
) -> contextlib.AbstractContextManager[None]:
    """Within it ``network.backbone`` runs under ``torch.autocast(device_type, dtype)`` and
    hands its features on as float32, so that the proposals, the heads and the box
    regression targets stay float32 (as at inference, see
    :meth:`geoseg.model.maskrcnn.MaskRCNNSegmenter._detect`); in float16 a 2,048 px chip's
    box coordinates would hold only whole pixels. Does nothing unless ``enabled``."""
    if not enabled:
        return contextlib.nullcontext()
    return _BackboneAutocast(network.backbone, device_type, dtype)


class _BackboneAutocast(contextlib.AbstractContextManager[None]):
    def __init__(self, backbone: torch.nn.Module, device_type: str, dtype: torch.dtype) -> None:
        self.backbone, self.device_type, self.dtype = backbone, device_type, dtype

    def __enter__(self) -> None:
        plain = self.backbone.forward

        def forward(*args: Any, **kwargs: Any) -> OrderedDict[str, torch.Tensor]:
            with torch.autocast(self.device_type, dtype=self.dtype):
                features = plain(*args, **kwargs)
            return OrderedDict((name, level.float()) for name, level in features.items())

        self.backbone.forward = forward  # the instance's, over its class's

    def __exit__(self, *_: object) -> None:
        del self.backbone.forward


def _train_epoch(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    chips: Sequence[Chip],
    options: TrainOptions,
    device: torch.device,
    epoch: int,
    steps: int,
    total_steps: int,
    emit: Progress,
) -> dict[str, Any]:
    rng = np.random.default_rng([options.seed, epoch])
    torch.manual_seed(options.seed * 100_003 + epoch)
    order = np.concatenate(
        [
            rng.permutation(len(chips))
            for _ in range(math.ceil(steps * options.batch_size / len(chips)))
        ]
    )
    donors = _Donors(chips) if options.copy_paste > 0 else None
    cuda = device.type == "cuda"
    network.train()
    sums = dict.fromkeys((*LOSS_NAMES, "loss"), 0.0)
    started = time.monotonic()
    emit(TrainEvent("epoch_start", epoch=epoch, n_steps=steps))
    for step in range(steps):
        global_step = (epoch - 1) * steps + step
        lr = options.learning_rate * _lr_factor(global_step, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = [
            chips[i] for i in order[step * options.batch_size : (step + 1) * options.batch_size]
        ]
        images, targets = _batch(batch, rng, device, donors, options.copy_paste)
        with backbone_autocast(network, "cuda", enabled=cuda):
            losses = network(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 10.0)
        scaler.step(optimizer)
        scaler.update()
        for name, value in losses.items():
            sums[name] += float(value.detach())
        sums["loss"] += float(loss.detach())
        means = {k: v / (step + 1) for k, v in sums.items()}
        emit(TrainEvent("step", epoch=epoch, step=step + 1, n_steps=steps, losses=means))
    summary = {
        "epoch": epoch,
        "steps": steps,
        "lr": lr,
        "seconds": round(time.monotonic() - started, 1),
        **{k: round(v / steps, 5) for k, v in sums.items()},
    }
    log.info("epoch %d: %s", epoch, json.dumps(summary))
    emit(TrainEvent("epoch_end", epoch=epoch, n_steps=steps, losses=summary))
    return summary


class _Donors:
    """The training chips that copy-paste may take objects from for a chip: those read at a
    GSD within :data:`~geoseg.learn.chips.PASTE_GSD_RATIO` of its own (all of one size, the
    run's ``chip_px``)."""

    def __init__(self, chips: Sequence[Chip]) -> None:
        self.chips = chips
        self._log_gsd = np.log([chip.gsd_m for chip in chips])
        self._near: dict[float, np.ndarray] = {}

    def pick(self, chip: Chip, rng: np.random.Generator) -> Chip:
        near = self._near.get(chip.gsd_m)
        if near is None:
            gap = np.abs(self._log_gsd - math.log(chip.gsd_m))
            near = self._near[chip.gsd_m] = np.flatnonzero(gap <= math.log(PASTE_GSD_RATIO))
        return self.chips[int(near[rng.integers(len(near))])]


def _batch(
    chips: Sequence[Chip],
    rng: np.random.Generator,
    device: torch.device,
    donors: _Donors | None = None,
    copy_paste: float = 0.0,
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Each chip augmented, and, where ``donors`` are given, with probability ``copy_paste``
    given objects of another (:func:`~geoseg.learn.chips.paste_objects`), as torchvision's
    training targets."""
    images, targets = [], []
    for chip in chips:
        pixels, ids = augment(chip, rng)
        chip_classes = chip.classes
        if donors is not None and rng.random() < copy_paste:
            donor = donors.pick(chip, rng)
            if donor is not chip:
                pixels, ids, chip_classes = paste_objects(
                    pixels, ids, chip_classes, (*augment(donor, rng), donor.classes), rng
                )
        masks, boxes, classes = targets_from_ids(ids, chip_classes)
        images.append(torch.from_numpy(pixels).to(device))
        targets.append(
            {
                "boxes": torch.from_numpy(boxes).to(device),
                "labels": torch.from_numpy(classes + 1).to(device),
                "masks": torch.from_numpy(masks.astype(np.uint8)).to(device),
            }
        )
    return images, targets


# --- validation -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartReading:
    """How ``geoseg run`` reads with the start's settings, which validation reads as: its mask
    cuts by GSD, the views each class is seen in and the refinements of its boxes."""

    cuts: MaskCuts
    views: dict[str, int] | None
    refinements: dict[str, int] | None
    views_by_gsd: GsdThresholds | None = None
    fuse_iou: dict[str, float] | None = None

    @classmethod
    def of(cls, settings: Mapping[str, Any], classes: Sequence[str]) -> StartReading:
        """From the start's kept read settings (unchecked); bad values name "the start"."""
        return cls(
            MaskCuts.of(settings, classes, "the start"),
            as_tta_views(settings.get("class_tta_views"), "the start"),
            as_box_refinements(settings.get("class_box_refinements"), "the start"),
            as_tta_views_by_gsd(settings.get("tta_views_by_gsd"), "the start"),
            as_fuse_iou(settings.get("class_fuse_iou"), "the start"),
        )

    def views_at(self, gsd_m: float) -> dict[str, int] | None:
        """The views each class is seen in when read at ``gsd_m``, where more than one (as
        ``geoseg run`` sets them: a step of ``views_by_gsd``, else ``views``)."""
        names = {*(self.views or {}), *(self.views_by_gsd or {})}
        return views_at_gsd(sorted(names), self.views, self.views_by_gsd, gsd_m)


@dataclass(frozen=True, slots=True)
class Validation:
    """Validation figures per class, each at its ``min_score``: the threshold that scored best."""

    scores: dict[str, dict[str, Any]]
    min_score: dict[str, float] | None


def _validate(
    network: torch.nn.Module,
    chips: Sequence[Chip],
    options: TrainOptions,
    device: torch.device,
    epoch: int,
    emit: Progress,
    synthetic: frozenset[str] = frozenset(),
    reading: StartReading | None = None,
) -> Validation:
    """Score the validation chips as ``geoseg run`` would read them with the start's
    ``reading`` (its mask cuts, views and box refinements; torchvision's defaults when
    ``None``): the score thresholds tuned here fit those."""
    if not chips:
        return Validation({}, None)
    reading = reading or StartReading.of({}, options.classes)
    segmenter = MaskRCNNSegmenter(
        network,
        classes=options.classes,
        arch=options.arch,
        device=str(device),
        class_box_refinements=reading.refinements,
        class_fuse_iou=reading.fuse_iou,
    )
    n_classes = len(options.classes)
    scores: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    matched: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    real: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    n_ref = np.zeros(n_classes, dtype=np.int64)
    n_real_ref = np.zeros(n_classes, dtype=np.int64)
    for start in range(0, len(chips), options.batch_size):
        batch = chips[start : start + options.batch_size]
        found_in = _predict_in_views(segmenter, batch, reading)
        for chip, pred in zip(batch, found_in, strict=True):
            found = Instances.from_any(
                pred,
                shape_hw=chip.valid.shape,
                n_classes=n_classes,
                class_mask_thresholds=reading.cuts.at(chip.gsd_m),
            )
            masks = found.masks & chip.valid
            ref_masks, _, ref_cls = targets_from_ids(chip.ids, chip.classes)
            for k in range(n_classes):
                mine = pred["labels"] == k
                scores[k].append(pred["scores"][mine])
                matched[k].append(
                    greedy_matches(masks[mine], pred["scores"][mine], ref_masks[ref_cls == k])
                )
                is_real = chip.source not in synthetic
                real[k].append(np.full(int(mine.sum()), is_real))
                n_ref[k] += int((ref_cls == k).sum())
                n_real_ref[k] += int((ref_cls == k).sum()) if is_real else 0
    network.train()
    flat = [(np.concatenate(s), np.concatenate(m)) for s, m in zip(scores, matched, strict=True)]
    best = tune_min_scores(flat, n_ref)
    if options.tune_on == "real":
        on_real = [np.concatenate(r) for r in real]
        real_best = tune_min_scores(
            [(s[r], m[r]) for (s, m), r in zip(flat, on_real, strict=True)], n_real_ref
        )
        best = [
            rb if n >= MIN_TUNING_REFS else b
            for b, rb, n in zip(best, real_best, n_real_ref, strict=True)
        ]
    result = f1_scores(
        np.array([_counts_at(*f, r, t) for f, r, t in zip(flat, n_ref, best, strict=True)]),
        options.classes,
    )
    thresholds = dict(zip(options.classes, best, strict=True))
    log.info(
        "validation after epoch %d at min scores %s: %s",
        epoch,
        json.dumps(thresholds),
        json.dumps(result),
    )
    emit(TrainEvent("validation", epoch=epoch, info={"min_score": thresholds, **result}))
    return Validation(result, thresholds)


def _predict_in_views(
    segmenter: MaskRCNNSegmenter, batch: Sequence[Chip], reading: StartReading
) -> list[dict[str, np.ndarray]]:
    """``predict`` on the chips of ``batch``, each in the views ``reading`` sees its GSD in
    (chips that share views go through one call), in the batch's order."""
    groups: dict[tuple[tuple[str, int], ...], list[int]] = {}
    for index, chip in enumerate(batch):
        views = reading.views_at(chip.gsd_m) or {}
        groups.setdefault(tuple(sorted(views.items())), []).append(index)
    found: list[dict[str, np.ndarray]] = [{} for _ in batch]
    for views, indexes in groups.items():
        pixels = np.stack([batch[i].pixels.astype(np.float32) / 255.0 for i in indexes])
        preds = segmenter.predict(pixels, **({"tta_views": dict(views)} if views else {}))
        for index, pred in zip(indexes, preds, strict=True):
            found[index] = pred
    return found


def _counts_at(scores: np.ndarray, matched: np.ndarray, n_ref: int, threshold: float) -> tuple:
    """``(tp, fp, fn)`` of one class keeping the predictions scored at least ``threshold``."""
    keep = scores >= threshold
    tp = int(matched[keep].sum())
    return tp, int(keep.sum()) - tp, int(n_ref) - tp


def tune_min_scores(
    flat: Sequence[tuple[np.ndarray, np.ndarray]], n_ref: np.ndarray
) -> list[float]:
    """Per class, the threshold of :data:`SCORE_GRID` with the best F1 (the middle one of a
    tie; :data:`~geoseg.config.DEFAULT_MIN_SCORE` for a class without references).

    ``flat`` holds, per class, every prediction's score and whether greedy matching in score
    order paired it with a reference: the matching at a threshold is a prefix of that order,
    so one matching serves every threshold.
    """
    out = []
    for (scores, matched), refs in zip(flat, n_ref, strict=True):
        if refs == 0:
            out.append(DEFAULT_MIN_SCORE)
            continue
        f1s = []
        for threshold in SCORE_GRID:
            tp, fp, fn = _counts_at(scores, matched, refs, threshold)
            f1s.append(2 * tp / (2 * tp + fp + fn))
        tied = [t for t, f1 in zip(SCORE_GRID, f1s, strict=True) if f1 >= max(f1s) - 1e-12]
        out.append(float(tied[len(tied) // 2]))
    return out


def match_instances(
    pred_masks: np.ndarray, pred_scores: np.ndarray, ref_masks: np.ndarray, iou: float = 0.5
) -> np.ndarray:
    """``[tp, fp, fn]``: one-to-one matching of predicted to reference masks at ``iou``.

    Predictions are taken in descending score order, each matched to the unmatched reference
    it overlaps most, if their mask IoU reaches ``iou``.
    """
    tp = int(greedy_matches(pred_masks, pred_scores, ref_masks, iou).sum())
    return np.array([tp, len(pred_masks) - tp, len(ref_masks) - tp], dtype=np.int64)


def greedy_matches(
    pred_masks: np.ndarray, pred_scores: np.ndarray, ref_masks: np.ndarray, iou: float = 0.5
) -> np.ndarray:
    """Whether each prediction is matched (see :func:`match_instances`), in input order."""
    n_pred, n_ref = len(pred_masks), len(ref_masks)
    hit = np.zeros(n_pred, dtype=bool)
    if n_pred == 0 or n_ref == 0:
        return hit
    p = pred_masks.reshape(n_pred, -1).astype(np.float32)
    r = ref_masks.reshape(n_ref, -1).astype(np.float32)
    inter = p @ r.T
    union = p.sum(1)[:, None] + r.sum(1)[None, :] - inter
    ious = inter / np.maximum(union, 1.0)
    taken = np.zeros(n_ref, dtype=bool)
    for i in np.argsort(-pred_scores, kind="stable"):
        candidates = np.where(taken, -1.0, ious[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou:
            taken[j] = True
            hit[i] = True
    return hit


def f1_scores(counts: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Precision, recall and F1 per class from ``[tp, fp, fn]`` rows (``None`` for a class
    with neither references nor predictions).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, (tp, fp, fn) in zip(classes, counts, strict=True):
        scores: dict[str, Any] = {"precision": None, "recall": None, "f1": None}
        if tp + fp + fn:
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            scores = {
                k: round(float(v), 4) for k, v in zip(scores, (precision, recall, f1), strict=True)
            }
        out[name] = {**scores, "tp": int(tp), "fp": int(fp), "fn": int(fn)}
    return out


# --- output -----------------------------------------------------------------------------------


def _save(
    output: Path,
    side: Path,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, Any]],
    validation: Validation,
    meta: Mapping[str, Any],
) -> None:
    options: TrainOptions = meta["options"]
    train_info = {
        "epochs": epoch,
        "options": options.to_dict(),
        "init": meta["init"],
        "data": meta["setup"]["data"],
        "labels": meta["setup"]["labels"],
        "history": history[-3:],
        "validation": dict(validation.scores),
        "validation_min_score": validation.min_score,
        "torch": str(torch.__version__),
        "untrained": False,
    }
    kept: KeptWeights | None = meta["kept"]
    common = {
        "state_dict": network.state_dict(),
        "arch": meta["arch"].to_dict(),
        "classes": options.classes,
        "normalization": network_normalization(meta["arch"]),
        "gsd_range_m": meta["gsd_range"],
        "class_gsd_m": meta["class_gsd"],
        "train": train_info,
        "min_score": validation.min_score,
        **meta["reading"],
    }
    resume = {
        "epoch": epoch,
        "setup": meta["setup"],
        "optimizer": optimizer.state_dict(),
        "scaler": meta["scaler"].state_dict(),  # empty unless on CUDA
        "history": history,
        "kept_weights": None if kept is None else kept.to_payload(),
    }
    save_checkpoint(side / "last.pt", **common, resume=resume)
    if kept is not None:  # the start's other sets serve the GSDs no chip was read at
        state_dict, weights_by_gsd = kept.weights(common["state_dict"])
        min_score, min_score_by_gsd = kept.thresholds(validation.min_score, options.classes)
        common |= {"state_dict": state_dict, "weights_by_gsd": weights_by_gsd}
        common |= {"min_score": min_score, "min_score_by_gsd": min_score_by_gsd}
    save_checkpoint(output, **common)


def _append_history(path: Path, summary: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(summary) + "\n")
