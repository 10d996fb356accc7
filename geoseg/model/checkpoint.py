"""The checkpoint file of geoseg's Mask R-CNN: written atomically, read with ``weights_only``.

A checkpoint is a dict saved with :func:`torch.save` that holds only tensors, strings, numbers,
lists and dicts, so :func:`torch.load` reads it with ``weights_only=True`` (no pickled code)::

    {"format": "geoseg-maskrcnn", "version": 1,
     "arch": {...},              # MaskRCNNArch.to_dict()
     "classes": ["building", ...],
     "normalization": {...},     # how pixels were scaled before the network saw them
     "gsd_range_m": [min, max],  # or None: ground sampling distances trained on
     "class_gsd_m": {"field": [min, max], ...},  # optional: the same per class
     "state_dict": {...},        # the network's tensors
     "train": {...},             # what made it: options, epochs, data, validation figures
     "min_score": {"ship": 0.3, ...},  # optional: score thresholds tuned on validation data
     "min_score_by_gsd": {"ship": [[1.0, 0.5]]},  # optional: other thresholds for a class
                                                  # read at a GSD up to 1.0 m
     "class_extra_gsd_m": {"building": [0.6]},  # optional: also read a class at these GSDs
                                                # (where the scene is 1.5x finer), merged
     "mask_threshold": {"building": 0.4},  # optional: a class's mask probability from
                                           # which a pixel is in (0.5 where unset)
     "mask_threshold_by_gsd": {"building": [[1.0, 0.35]]},  # optional: other values for a
                                                           # class read at up to 1.0 m
     "weights_by_gsd": [[1.0, {...}]]}  # optional (version 2): other weights of the same
                                        # network for tiles read at up to 1.0 m

``weights_by_gsd`` lets one checkpoint hold a network tuned for each range of scales: its
steps, by increasing GSD, each hold a whole state dict; tiles read at a GSD up to a step's
run through that step's weights, coarser ones through ``state_dict``. A checkpoint with them
is version 2, which a geoseg that would ignore them refuses to read.

A training checkpoint (the ``last.pt`` that ``geoseg train`` resumes from) also holds
``"resume"``: optimizer state and the epoch reached; it loads as a model all the same.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geoseg.errors import UserInputError, first_line
from geoseg.model.read_settings import READ_SETTINGS, to_payload

__all__ = [
    "FORMAT",
    "VERSION",
    "read_checkpoint",
    "run_settings",
    "save_checkpoint",
    "set_weights_by_gsd",
    "update_checkpoint",
]

FORMAT = "geoseg-maskrcnn"
VERSION = 2
"""The newest checkpoint version this geoseg reads: 2 holds ``weights_by_gsd``, 1 does not
(and is still what a checkpoint without them is written as)."""
_REQUIRED = ("arch", "classes", "state_dict")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
_PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle (protocol 2 or later)


def save_checkpoint(
    path: str | Path,
    *,
    state_dict: Mapping[str, Any],
    arch: Mapping[str, Any],
    classes: tuple[str, ...] | list[str],
    normalization: Mapping[str, Any],
    gsd_range_m: tuple[float, float] | list[float] | None,
    train: Mapping[str, Any] | None = None,
    resume: Mapping[str, Any] | None = None,
    weights_by_gsd: Sequence[tuple[float, Mapping[str, Any]]] | None = None,
    **settings: Any,
) -> Path:
    """Write a checkpoint to ``path`` atomically (a temporary file, then :func:`os.replace`).

    ``settings`` are the run settings it recommends, by checkpoint key (``min_score``,
    ``class_gsd_m``, ...: :data:`~geoseg.model.read_settings.READ_SETTINGS`), each checked
    and written as plain values; ``None`` or empty ones are left out. ``weights_by_gsd``: the
    other weights and the finest GSD each serves up to (see the module doc). Tensors are moved
    to the CPU, so a checkpoint written on a GPU loads anywhere.
    """
    import torch

    path = Path(path)
    steps = _weight_steps(weights_by_gsd or (), str(path))
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": 2 if steps else 1,
        "arch": dict(arch),
        "classes": list(classes),
        "normalization": dict(normalization),
        "gsd_range_m": [float(g) for g in gsd_range_m] if gsd_range_m else None,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "train": dict(train or {}),
        **to_payload(settings, str(path)),
    }
    if steps:
        payload["weights_by_gsd"] = steps
    if resume is not None:
        payload["resume"] = dict(resume)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a model file is for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_RUN_SETTINGS = ("gsd_range_m", *(s.key for s in READ_SETTINGS))
"""The keywords of :func:`save_checkpoint` that say how a checkpoint is run."""


def update_checkpoint(path: str | Path, **changes: Any) -> Path:
    """Rewrite the checkpoint at ``path`` atomically with some of its run settings replaced
    (``gsd_range_m``, and the read settings by checkpoint key: ``min_score``, ``class_gsd_m``,
    ... as in :data:`~geoseg.model.read_settings.READ_SETTINGS`; ``None`` drops one); weights,
    training records and everything else are kept."""
    unknown = sorted(set(changes) - set(_RUN_SETTINGS))
    if unknown:
        raise TypeError(f"update_checkpoint cannot change {', '.join(unknown)}")
    payload = read_checkpoint(path)
    return _rewrite(path, payload, run_settings(payload) | changes)


def set_weights_by_gsd(
    path: str | Path, steps: Sequence[tuple[float, Mapping[str, Any]]], note: Any = None
) -> Path:
    """Rewrite the checkpoint at ``path`` atomically with ``steps`` as its ``weights_by_gsd``
    (none: one set of weights again), ``note`` recorded in its training record as
    ``weights_by_gsd_from``; its own weights and settings are kept."""
    payload = read_checkpoint(path)
    train = dict(payload.get("train") or {})
    train["weights_by_gsd_from"] = note
    return _rewrite(path, payload, run_settings(payload), weights_by_gsd=steps, train=train)


def _rewrite(
    path: str | Path,
    payload: Mapping[str, Any],
    settings: Mapping[str, Any],
    *,
    weights_by_gsd: Sequence[tuple[float, Mapping[str, Any]]] | None = None,
    train: Mapping[str, Any] | None = None,
) -> Path:
    """:func:`save_checkpoint` of ``payload`` with ``settings``, and its own weights by GSD
    and training record where none are given."""
    if weights_by_gsd is None:
        weights_by_gsd = payload.get("weights_by_gsd")
    return save_checkpoint(
        path,
        state_dict=payload["state_dict"],
        arch=payload["arch"],
        classes=payload["classes"],
        normalization=payload["normalization"],
        train=payload.get("train") if train is None else train,
        resume=payload.get("resume"),
        weights_by_gsd=weights_by_gsd,
        **settings,
    )


def run_settings(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's run settings as stored (``None`` where absent), by keyword of
    :func:`save_checkpoint`: ``gsd_range_m`` and each of the read settings."""
    return {key: payload.get(key) for key in _RUN_SETTINGS}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint (on the CPU, ``weights_only=True``).

    Raises :class:`~geoseg.errors.UserInputError` with a one-line message when the file is
    missing, unreadable, not a PyTorch file, or not a geoseg Mask R-CNN checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: model checkpoint not found")
    hint = "give a .pt file written by 'geoseg train'"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read the model ({exc.strerror}); {hint}") from exc
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise UserInputError(
            f"{path}: not a readable PyTorch checkpoint (neither a zip archive nor a pickle, "
            f"as torch.save writes); {hint}"
        )
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols and the like
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # holds objects weights_only does not load
        raise UserInputError(
            f"{path}: not a geoseg/torchvision checkpoint (it holds Python objects other than "
            f"tensors and plain values, which geoseg never loads); {hint}"
        ) from exc
    except Exception as exc:  # truncated, damaged, or not torch's format after all
        raise UserInputError(
            f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{first_line(exc, max_chars=120)}); {hint}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserInputError(
            f"{path}: not a geoseg Mask R-CNN checkpoint (no 'format': '{FORMAT}'); "
            "give a .pt file written by 'geoseg train'"
        )
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise UserInputError(
            f"{path}: checkpoint version {version!r} is newer than this geoseg reads "
            f"({VERSION}); upgrade geoseg"
        )
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise UserInputError(f"{path}: checkpoint lacks {', '.join(missing)}; it is damaged")
    if payload.get("weights_by_gsd") is not None:
        payload["weights_by_gsd"] = _weight_steps(payload["weights_by_gsd"], str(path))
    return payload


def _weight_steps(steps: Sequence[Any], source: str) -> list[list[Any]]:
    """``weights_by_gsd`` checked: ``[gsd, state dict]`` pairs, GSDs positive and increasing,
    tensors on the CPU (a :class:`~geoseg.errors.UserInputError` naming ``source`` if not)."""
    import torch

    out: list[list[Any]] = []
    for step in steps:
        try:
            gsd, weights = step
            gsd = float(gsd)
            ok = (
                gsd > 0
                and (not out or gsd > out[-1][0])
                and isinstance(weights, Mapping)
                and all(isinstance(v, torch.Tensor) for v in weights.values())
            )
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UserInputError(
                f"{source}: weights_by_gsd must be [GSD in metres, state dict] steps by "
                "increasing GSD"
            )
        out.append([gsd, {k: v.detach().cpu() for k, v in weights.items()}])
    return out
