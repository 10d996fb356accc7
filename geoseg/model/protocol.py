"""The segmenter protocol that every geoseg model follows, and ``--model`` resolution.

A segmenter is any object with

- ``classes``: a tuple of class names, e.g. ``("building", "field", "ship")``;
- ``predict(tiles)``: ``tiles`` is a float32 array ``(N, bands, H, W)`` (uint8 imagery arrives
  as value / 255, other types through the per-scene stretch of :mod:`geoseg.scene`); it returns
  a sequence of N instance sets, one per tile, as attributes or as mapping keys, each with
  ``labels`` (int ``(K,)``, indices into ``classes``), ``scores`` (float ``(K,)``) and the
  masks in one of three forms:

  - full-tile ``masks``: ``(K, H, W)`` (or torchvision's ``(K, 1, H, W)``), bool, or floats
    where a pixel is in when > 0.5;
  - box-local ``boxes`` + ``masks``: ``boxes`` ``(K, 4)`` float ``x0, y0, x1, y1`` in tile
    pixels and ``masks`` ``(K, h, w)`` (or ``(K, 1, h, w)``), any ``h, w``, bool or
    probabilities, e.g. torchvision's 28 x 28 mask probabilities before pasting. geoseg
    resizes each into its box as torchvision's ``paste_masks_in_image`` does: the mask is
    padded by one pixel of zeros and the box grown about its centre by ``(w + 2) / w`` in x
    and ``(h + 2) / h`` in y (float32), the grown corners are cut to integers toward zero,
    the padded mask is resized bilinearly (``align_corners=False``) to the integer box
    inclusive of both corners (at least 1 x 1), cut to the tile, and a pixel is in where the
    value is >= 0.5 (bool masks count as 0 and 1). A Mask R-CNN thus gives the same pixels
    in this form as torchvision's pasted masks, without a ``(K, H, W)`` array. Masks of
    exactly the tile's ``(H, W)`` are always read as full-tile, so torchvision's own output
    (which carries ``boxes`` too) keeps working;
  - ``label_image``: ``(H, W)`` int, 0 background, ``i`` instance ``i - 1`` of ``labels`` and
    ``scores`` (for models whose instances never overlap).

  With either form of ``masks``, an instance set may also carry ``mask_thresholds`` (float
  ``(K,)``, each in (0, 1)): each instance's mask value from which a pixel is in, in place
  of 0.5.

  ``predict`` may also accept a keyword ``min_score``: geoseg then passes the floor it keeps
  instances from for stitching, so the model can drop lower-scored instances before building
  their masks. It may also accept
  ``tta_views``: geoseg then passes ``{class name: views}`` (2, 4 or 8; classes not named get
  1) for the classes a reading keeps, from ``--tta`` or the model's ``class_tta_views`` and
  ``tta_views_by_gsd``, and
  the model predicts those classes from that many views of each tile (the built-in Mask R-CNN:
  flipped, and turned for 8, fused; see :mod:`geoseg.model.flip_views`). And it may accept
  ``gsd_m``: geoseg then passes the ground sampling distance in metres the tiles were read
  at (the built-in Mask R-CNN sets how many region proposals it weighs by it, from its
  ``rpn_proposals_by_gsd``). Wrong shapes or types are reported as a one-line
  :class:`~geoseg.errors.ModelError`.

Optional attributes that geoseg reads when present: ``name`` (str), ``checksum`` (str),
``untrained`` (bool), ``min_score`` (the score threshold the model recommends, a float or
``{class name: float}``, used when ``--min-score`` is not given), ``gsd_range_m``
(``(min, max)`` ground sampling distances in metres the model was trained on),
``class_gsd_range_m`` (the same per class, ``{class name: (min, max)}``: geoseg then reads
the scene once per working GSD, each class clamped to its own range), ``min_score_by_gsd``
(``{class name: [(up to m, threshold), ...]}``: when ``--min-score`` is not given, a class
read at a GSD up to a step's takes that step's threshold instead of its ``min_score``),
``class_extra_gsd_m`` (``{class name: [GSD m, ...]}``: where the scene is at least 1.5 times
finer, the class is also read at these GSDs and the readings' objects merged, each object
kept once from the reading that scored it best; see :mod:`geoseg.reading_merge`),
``class_coarse_reading`` (``{class name: (upsampling, up to m)}``: where the scene is coarser
than the class's range, the class is read at the scene's GSD divided by the upsampling, no
finer than the range's top and no coarser than ``up to m``),
``class_fine_gsd_m`` (``{class name: [GSD m, ...]}``: the same for GSDs finer than the scene,
read upsampled where the scene is 1.5 to 2 times coarser; see :mod:`geoseg.plan`),
``mask_threshold`` (``{class name: value}``: the mask value from which a pixel of the class
is in, 0.5 where unset, for probabilities; it replaces any ``mask_thresholds`` of the output),
``mask_threshold_by_gsd`` (``{class name: [(up to m, value), ...]}``: the same for a class
read at a GSD up to a step's), ``class_tta_views`` (``{class name: views}``: how many views of
each tile ``geoseg run`` asks ``predict`` to fuse per class, see ``tta_views`` above),
``tta_views_by_gsd`` (``{class name: [(up to m, views), ...]}``: the same for a class read at
a GSD up to a step's), ``class_fuse_iou`` (``{class name: IoU}``, recorded with the outputs;
the built-in Mask R-CNN takes the boxes that a class's views find for one object from that
box IoU, 0.55 where unset),
``rpn_proposals_by_gsd`` (recorded with the outputs; the model applies it itself, see
``gsd_m`` above), ``class_box_refinements`` (``{class name: n}``, recorded with the outputs;
the built-in Mask R-CNN moves each kept object's box by its box head n more times) and
``input_bands``
(how many bands ``predict`` wants; geoseg repeats a single band or keeps the first bands to
match). ``predict`` gets :data:`~geoseg.plan.STITCH_FLOOR_SHARE` of the lowest of the run's
thresholds as ``min_score``: thresholds apply to the stitched objects.

``geoseg select`` also uses, when present, ``embed(tiles)``: the same float32 tiles, one
feature vector per tile, float32 ``(N, D)`` (the built-in Mask R-CNN average-pools its
feature pyramid); tiles that look alike to the model should lie close. Without it, select
describes a tile by its per-band means and standard deviations and an 8 x 8 thumbnail
(:func:`geoseg.learn.uncertainty.pixel_embedding`).

``--model`` accepts ``default`` (the weights shipped in the package), a path to a ``.pt``
checkpoint written by ``geoseg train``, or ``package.module:factory`` (``factory()`` is
called once per worker process, with ``device=...`` if it accepts that keyword).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from geoseg.config import CoarseReading, GsdThresholds, ProposalSteps
from geoseg.errors import ModelError, UserInputError
from geoseg.model.box_masks import Crop, box_mask_crops, label_image_crops
from geoseg.model.checksum import file_sha256
from geoseg.model.read_settings import settings_from_model, settings_from_payload

__all__ = [
    "Instances",
    "ModelInfo",
    "Segmenter",
    "describe_model",
    "describe_spec",
    "load_segmenter",
    "match_input_bands",
    "predict_accepts",
]


@runtime_checkable
class Segmenter(Protocol):
    """What ``geoseg run`` needs of a model."""

    classes: tuple[str, ...]

    def predict(self, tiles: np.ndarray) -> Sequence[Any]: ...


class Instances:
    """The instances found in one tile, validated: ``labels`` (int ``(K,)``), ``scores``
    (float32 ``(K,)``) and one bool mask each, held as a full-tile stack or as box-local crops.

    ``Instances(masks, labels, scores)`` holds full-tile masks ``(K, H, W)``;
    :meth:`from_crops` holds crops (what the box and label-image forms give);
    :meth:`crop` reads either without copying a tile, and :attr:`masks` always gives the
    full-tile stack (built on demand from crops).
    """

    __slots__ = ("_crops", "_full", "labels", "scores", "shape_hw")

    def __init__(self, masks: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> None:
        self._full = np.asarray(masks, dtype=bool)
        self._crops: list[Crop] | None = None
        self.labels = np.asarray(labels)
        self.scores = np.asarray(scores)
        self.shape_hw: tuple[int, int] = (int(self._full.shape[1]), int(self._full.shape[2]))

    @classmethod
    def from_crops(
        cls,
        crops: Sequence[Crop],
        labels: np.ndarray,
        scores: np.ndarray,
        *,
        shape_hw: tuple[int, int],
    ) -> Instances:
        """Instances from box-local crops ``(row0, col0, mask)`` that lie inside the tile."""
        self = cls.__new__(cls)
        self._full = None
        self._crops = list(crops)
        self.labels, self.scores = np.asarray(labels), np.asarray(scores)
        self.shape_hw = (int(shape_hw[0]), int(shape_hw[1]))
        return self

    def __len__(self) -> int:
        return len(self.labels)

    def crop(self, k: int) -> Crop:
        """Instance ``k``'s mask as ``(row0, col0, mask)``, a view (the whole tile for the
        full-tile form)."""
        if self._crops is None:
            return 0, 0, self._full[k]
        return self._crops[k]

    @property
    def masks(self) -> np.ndarray:
        """The full-tile bool masks ``(K, H, W)`` (built anew for crops: K x H x W bytes)."""
        if self._full is not None:
            return self._full
        out = np.zeros((len(self), *self.shape_hw), dtype=bool)
        for k, (row0, col0, mask) in enumerate(self._crops or ()):
            out[k, row0 : row0 + mask.shape[0], col0 : col0 + mask.shape[1]] = mask
        return out

    @classmethod
    def from_any(
        cls,
        obj: Any,
        *,
        shape_hw: tuple[int, int],
        n_classes: int,
        class_mask_thresholds: np.ndarray | None = None,
    ) -> Instances:
        """Accept an object with attributes or a mapping in any of the module doc's three
        forms, convert to NumPy and check shapes (a one-line :class:`ModelError` if wrong).
        ``class_mask_thresholds`` (one per class index), when given, is where the masks of
        each class are cut, in place of the output's ``mask_thresholds`` or 0.5."""
        labels, scores = _labels_scores(obj, n_classes)
        count = len(labels)
        shape_hw = (int(shape_hw[0]), int(shape_hw[1]))
        if _has(obj, "label_image"):
            crops = label_image_crops(
                _label_image(_field(obj, "label_image"), count, shape_hw), count
            )
            return cls.from_crops(crops, labels, scores, shape_hw=shape_hw)
        masks = _to_numpy(_field(obj, "masks"))
        if masks.ndim == 4 and masks.shape[1] == 1:  # torchvision's (K, 1, H, W) or (K, 1, h, w)
            masks = masks[:, 0]
        if count == 0:
            return cls(np.zeros((0, *shape_hw), dtype=bool), labels, scores)
        cuts = (
            _mask_thresholds(obj, count)
            if class_mask_thresholds is None
            else np.asarray(class_mask_thresholds, dtype=np.float32)[labels]
        )
        if _has(obj, "boxes") and masks.shape[1:] != shape_hw:
            boxes = _boxes(_field(obj, "boxes"), masks, count)
            crops = box_mask_crops(boxes, masks, shape_hw, cuts)
            return cls.from_crops(crops, labels, scores, shape_hw=shape_hw)
        if masks.shape != (count, *shape_hw):
            raise ModelError(
                f"model returned masks {masks.shape}, labels ({count},), scores ({count},)"
                f" for a tile of {shape_hw}: expected masks ({count}, {shape_hw[0]}, "
                f"{shape_hw[1]}), or box-local masks with 'boxes' ({count}, 4)"
            )
        if masks.dtype != bool:
            masks = masks > (0.5 if cuts is None else cuts[:, None, None])
        return cls(masks, labels, scores)


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        if name not in obj:
            raise ModelError(f"model output lacks {name!r}")
        return obj[name]
    if not hasattr(obj, name):
        raise ModelError(f"model output lacks {name!r}")
    return getattr(obj, name)


def _has(obj: Any, name: str) -> bool:
    return name in obj if isinstance(obj, Mapping) else hasattr(obj, name)


def _labels_scores(obj: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    labels = _to_numpy(_field(obj, "labels")).astype(np.int64).reshape(-1)
    scores = _to_numpy(_field(obj, "scores")).astype(np.float32).reshape(-1)
    if len(scores) != len(labels):
        raise ModelError(f"model returned {len(labels)} labels but {len(scores)} scores")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ModelError(f"model returned label {labels.max()} outside its {n_classes} classes")
    return labels, scores


def _mask_thresholds(obj: Any, count: int) -> np.ndarray | None:
    if not _has(obj, "mask_thresholds"):
        return None
    cuts = _to_numpy(_field(obj, "mask_thresholds")).astype(np.float32).reshape(-1)
    if len(cuts) != count or not ((cuts > 0) & (cuts < 1)).all():
        raise ModelError(
            f"model returned mask_thresholds {cuts.shape} for {count} instances: expected "
            f"({count},) values between 0 and 1"
        )
    return cuts


def _label_image(value: Any, count: int, shape_hw: tuple[int, int]) -> np.ndarray:
    image = _to_numpy(value)
    if image.shape != shape_hw or not (
        np.issubdtype(image.dtype, np.integer) or image.dtype == bool
    ):
        raise ModelError(
            f"model returned label_image {image.shape} {image.dtype} for a tile of {shape_hw}: "
            f"expected integers ({shape_hw[0]}, {shape_hw[1]})"
        )
    image = image.astype(np.int64, copy=False)
    if image.size and (image.min() < 0 or image.max() > count):
        raise ModelError(
            f"model returned label_image values {image.min()}..{image.max()} for {count} "
            f"instances: expected 0 (background) to {count}"
        )
    return image


def _boxes(value: Any, masks: np.ndarray, count: int) -> np.ndarray:
    boxes = _to_numpy(value).astype(np.float32)
    if boxes.shape != (count, 4) or masks.ndim != 3 or len(masks) != count or 0 in masks.shape:
        raise ModelError(
            f"model returned boxes {boxes.shape} and masks {masks.shape} for {count} instances: "
            f"expected boxes ({count}, 4) and box-local masks ({count}, h, w)"
        )
    if not np.isfinite(boxes).all():
        raise ModelError("model returned boxes that are not finite")
    return boxes


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What outputs record about the model that made them; the fields after ``gsd_range_m``
    are the :data:`~geoseg.model.read_settings.READ_SETTINGS`, one each."""

    spec: str
    name: str
    checksum: str
    classes: tuple[str, ...]
    untrained: bool
    gsd_range_m: tuple[float, float] | None
    min_score: float | dict[str, float] | None = None
    class_gsd_range_m: dict[str, tuple[float, float]] | None = None
    min_score_by_gsd: GsdThresholds | None = None
    class_extra_gsd_m: dict[str, tuple[float, ...]] | None = None
    class_coarse_reading: CoarseReading | None = None
    class_fine_gsd_m: dict[str, tuple[float, ...]] | None = None
    mask_threshold: dict[str, float] | None = None
    mask_threshold_by_gsd: GsdThresholds | None = None
    class_tta_views: dict[str, int] | None = None
    tta_views_by_gsd: GsdThresholds | None = None
    class_fuse_iou: dict[str, float] | None = None
    rpn_proposals_by_gsd: ProposalSteps | None = None
    class_box_refinements: dict[str, int] | None = None


def predict_accepts(model: Any, keyword: str) -> bool:
    """Whether the model's ``predict`` names ``keyword`` (``min_score``, ``tta_views``,
    ``gsd_m``): geoseg passes an optional keyword only to a ``predict`` that takes it."""
    try:
        return keyword in inspect.signature(model.predict).parameters
    except (TypeError, ValueError):
        return False


def match_input_bands(tiles: np.ndarray, model: Any) -> np.ndarray:
    """``tiles`` ``(N, bands, H, W)`` with the bands the model's optional ``input_bands`` asks
    for: the first ones when it wants fewer, repeated in turn when it wants more (one band
    becomes three); unchanged when it says nothing or wants as many."""
    want, have = getattr(model, "input_bands", None), tiles.shape[1]
    if not want or want == have:
        return tiles
    return tiles[:, [i % have for i in range(want)]] if want > have else tiles[:, :want]


def describe_model(model: Segmenter, spec: str) -> ModelInfo:
    """Read the optional attributes of a loaded segmenter into a :class:`ModelInfo`."""
    gsd = getattr(model, "gsd_range_m", None)
    return ModelInfo(
        spec=spec,
        name=str(getattr(model, "name", spec)),
        checksum=str(getattr(model, "checksum", "") or _spec_checksum(spec)),
        classes=tuple(model.classes),
        untrained=bool(getattr(model, "untrained", False)),
        gsd_range_m=(float(gsd[0]), float(gsd[1])) if gsd else None,
        **settings_from_model(model, spec),
    )


def _spec_checksum(spec: str) -> str:
    path = Path(spec)
    if path.is_file():
        return file_sha256(path)
    return "sha256:" + hashlib.sha256(spec.encode()).hexdigest()


_CACHE: dict[tuple[str, str], Segmenter] = {}
_CACHE_LOCK = threading.RLock()  # re-entrant: a factory may load another model
_INFO: dict[tuple[str, int, int], ModelInfo] = {}


def describe_spec(spec: str = "default", *, device: str = "auto") -> ModelInfo:
    """What planning needs of the model ``spec`` names (classes, checksum, GSD ranges, score
    thresholds), without putting it on ``device``, the workers' device (cached per process).

    A checkpoint (``default`` or a ``.pt``) is read without building the network; a factory
    that takes ``device`` is called with ``device="cpu"``, one that does not is loaded as the
    workers load it (the same copy, if they share this process). So a driver without a GPU
    plans a batch whose workers run on CUDA, and a driver with one leaves it to the workers.
    """
    path = _checkpoint_path(spec)
    stat = path.stat() if path is not None else None
    key = (spec, stat.st_size, stat.st_mtime_ns) if stat else (spec, 0, 0)  # a new file: anew
    with _CACHE_LOCK:
        if key not in _INFO:
            _INFO[key] = _describe_uncached(spec, path, device)
        return _INFO[key]


def _describe_uncached(spec: str, path: Path | None, device: str) -> ModelInfo:
    if path is not None:
        from geoseg.model.checkpoint import read_checkpoint

        payload = read_checkpoint(path)
        gsd = payload.get("gsd_range_m")
        return ModelInfo(
            spec=spec,
            name="default" if spec == "default" else path.stem,
            checksum=file_sha256(path),
            classes=tuple(str(c) for c in payload["classes"]),
            untrained=bool(payload.get("train", {}).get("untrained", False)),
            gsd_range_m=(float(gsd[0]), float(gsd[1])) if gsd else None,
            **settings_from_payload(payload, str(path)),
        )
    if ":" in spec and spec != "default" and not _factory_takes_device(spec):
        return describe_model(load_segmenter(spec, device=device), spec)
    return describe_model(load_segmenter(spec, device="cpu"), spec)


def _checkpoint_path(spec: str) -> Path | None:
    """The checkpoint file ``spec`` names, if it names one that exists."""
    if spec == "default":
        from geoseg.model.maskrcnn import DEFAULT_WEIGHTS

        return DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None
    path = Path(spec)
    return path if path.is_file() else None  # as load_segmenter: an existing file is one


def _factory_takes_device(spec: str) -> bool:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr, None)
        return "device" in inspect.signature(factory).parameters  # type: ignore[arg-type]
    except (ImportError, TypeError, ValueError):
        return True  # load_segmenter reports it, on the CPU


def load_segmenter(spec: str = "default", *, device: str = "auto") -> Segmenter:
    """Load the model named by ``spec`` once per process and return it (cached).

    Workers call this inside their tasks, so a model is never pickled into the task graph:
    only ``spec`` and ``device`` travel.
    """
    key = (spec, device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load_uncached(spec, device)
        return _CACHE[key]


def _load_uncached(spec: str, device: str) -> Segmenter:
    if spec == "default":
        from geoseg.model.maskrcnn import load_default

        return load_default(device=device)
    if spec.endswith((".pt", ".pth")) or Path(spec).is_file():
        path = Path(spec)
        if not path.is_file():
            raise UserInputError(f"{spec}: model checkpoint not found")
        from geoseg.model.maskrcnn import load_checkpoint

        return load_checkpoint(path, device=device)
    if ":" in spec:
        return _load_factory(spec, device)
    raise UserInputError(
        f"--model {spec!r}: expected 'default', a .pt checkpoint or 'package.module:factory'"
    )


def _load_factory(spec: str, device: str) -> Segmenter:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserInputError(f"--model {spec!r}: cannot import {module_name!r} ({exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserInputError(f"--model {spec!r}: {module_name} has no callable {attr!r}")
    try:
        accepts_device = "device" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepts_device = False
    model = factory(device=device) if accepts_device else factory()
    if not isinstance(model, Segmenter):
        raise ModelError(
            f"--model {spec!r}: the factory returned {type(model).__name__}, which lacks "
            "'classes' or 'predict'"
        )
    return model
