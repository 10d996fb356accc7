"""The segmenter protocol that every geoseg model follows, and ``--model`` resolution.

A segmenter is any object with

- ``classes``: a tuple of class names, e.g. ``("building", "field", "ship")``;
- ``predict(tiles)``: ``tiles`` is a float32 array ``(N, bands, H, W)`` (uint8 imagery arrives
  as value / 255, other types through the per-scene stretch of :mod:`geoseg.scene`); it returns
  a sequence of N instance sets, each with ``masks`` (bool ``(K, H, W)``), ``labels`` (int
  ``(K,)``, indices into ``classes``) and ``scores`` (float ``(K,)``), as attributes or as
  mapping keys. ``predict`` may also accept a keyword ``min_score``: geoseg then passes
  ``--min-score``, so the model can drop lower-scored instances before building their masks.

Optional attributes that geoseg reads when present: ``name`` (str), ``checksum`` (str),
``untrained`` (bool), ``min_score`` (the score threshold the model recommends, a float or
``{class name: float}``, used when ``--min-score`` is not given), ``gsd_range_m``
(``(min, max)`` ground sampling distances in metres the model was trained on),
``class_gsd_range_m`` (the same per class, ``{class name: (min, max)}``: geoseg then reads
the scene once per working GSD, each class clamped to its own range) and ``input_bands``
(how many bands ``predict`` wants; geoseg repeats a single band or keeps the first bands to
match). ``predict`` gets the lowest of the run's thresholds as ``min_score``.

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

from geoseg.config import as_min_score
from geoseg.errors import ModelError, UserInputError
from geoseg.model.checksum import file_sha256

__all__ = [
    "Instances",
    "ModelInfo",
    "Segmenter",
    "describe_model",
    "describe_spec",
    "load_segmenter",
]


@runtime_checkable
class Segmenter(Protocol):
    """What ``geoseg run`` needs of a model."""

    classes: tuple[str, ...]

    def predict(self, tiles: np.ndarray) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class Instances:
    """The instances found in one tile, validated: masks ``(K, H, W)`` bool, labels, scores."""

    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    @classmethod
    def from_any(cls, obj: Any, *, shape_hw: tuple[int, int], n_classes: int) -> Instances:
        """Accept an object with attributes or a mapping, convert to NumPy and check shapes."""

        def field(name: str) -> Any:
            if isinstance(obj, Mapping):
                if name not in obj:
                    raise ModelError(f"model output lacks {name!r}")
                return obj[name]
            if not hasattr(obj, name):
                raise ModelError(f"model output lacks {name!r}")
            return getattr(obj, name)

        masks = _to_numpy(field("masks"))
        labels = _to_numpy(field("labels")).astype(np.int64).reshape(-1)
        scores = _to_numpy(field("scores")).astype(np.float32).reshape(-1)
        count = len(labels)
        if count == 0:
            masks = np.zeros((0, *shape_hw), dtype=bool)
        if masks.ndim == 4 and masks.shape[1] == 1:  # torchvision's (K, 1, H, W)
            masks = masks[:, 0]
        if masks.shape != (count, *shape_hw) or len(scores) != count:
            raise ModelError(
                f"model returned masks {masks.shape}, labels ({count},), scores ({len(scores)},)"
                f" for a tile of {shape_hw}: expected masks ({count}, {shape_hw[0]}, "
                f"{shape_hw[1]})"
            )
        if count and (labels.min() < 0 or labels.max() >= n_classes):
            raise ModelError(f"model returned label {labels.max()} outside its {n_classes} classes")
        if masks.dtype != bool:
            masks = masks > 0.5
        return cls(masks, labels, scores)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What outputs record about the model that made them."""

    spec: str
    name: str
    checksum: str
    classes: tuple[str, ...]
    untrained: bool
    gsd_range_m: tuple[float, float] | None
    min_score: float | dict[str, float] | None = None
    class_gsd_range_m: dict[str, tuple[float, float]] | None = None


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
        min_score=as_min_score(getattr(model, "min_score", None)),
        class_gsd_range_m=_class_ranges(getattr(model, "class_gsd_range_m", None)),
    )


def _class_ranges(value: Any) -> dict[str, tuple[float, float]] | None:
    if not value:
        return None
    return {str(c): (float(r[0]), float(r[1])) for c, r in dict(value).items()}


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
            min_score=as_min_score(payload.get("min_score")),
            class_gsd_range_m=_class_ranges(payload.get("class_gsd_m")),
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
