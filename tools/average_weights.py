"""Average the weights of several checkpoints of one network (a "model soup").

Models fine-tuned from one start can be averaged tensor by tensor into one model that costs
nothing more at run time. The output keeps the first checkpoint's read settings (GSD ranges,
thresholds, views) and records the sources in its training record::

    python tools/average_weights.py soup.pt default.pt ft21.pt ft22.pt

``--keep-class ship`` keeps the first checkpoint's own rows for that class in the heads' last
layers (its score, box regression and mask logits), averaging everything else. The shipped
default's weights for readings at 1 m or finer are such a soup (model card, "Two weight sets
by GSD"). The checkpoints must share the architecture, the classes and every tensor's shape;
the file is written atomically.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from geoseg.errors import UserInputError
from geoseg.model.checkpoint import read_checkpoint, run_settings, save_checkpoint

CLASS_ROWS = {
    "roi_heads.box_predictor.cls_score.weight": 1,
    "roi_heads.box_predictor.cls_score.bias": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
    "roi_heads.box_predictor.bbox_pred.bias": 4,
    "roi_heads.mask_predictor.mask_fcn_logits.weight": 1,
    "roi_heads.mask_predictor.mask_fcn_logits.bias": 1,
}
"""The heads' per-class tensors and the rows each class has in them (torchvision's labels: 0
is the background, class ``i`` of the checkpoint's list is label ``i + 1``)."""


def average_weights(output: Path, sources: list[Path], keep_classes: Sequence[str] = ()) -> Path:
    """Write to ``output`` the mean of the ``sources``' floating-point tensors (the others,
    e.g. batch counters, from the first), with the first's settings; the rows of
    ``keep_classes`` in :data:`CLASS_ROWS` stay the first's."""
    payloads = [read_checkpoint(path) for path in sources]
    first = payloads[0]
    shapes = _shapes(first)
    for path, payload in zip(sources[1:], payloads[1:], strict=True):
        if payload["arch"] != first["arch"] or payload["classes"] != first["classes"]:
            raise UserInputError(f"{path}: not the same network or classes as {sources[0]}")
        if _shapes(payload) != shapes:
            raise UserInputError(f"{path}: its tensors differ from those of {sources[0]}")
    unknown = sorted(set(keep_classes) - set(first["classes"]))
    if unknown:
        raise UserInputError(f"{sources[0]}: has no class {', '.join(unknown)}")
    state = {}
    for key, value in first["state_dict"].items():
        if torch.is_floating_point(value):
            total = sum(p["state_dict"][key].double() for p in payloads)
            state[key] = (total / len(payloads)).to(value.dtype)
            for name in keep_classes if key in CLASS_ROWS else ():
                rows = CLASS_ROWS[key]
                label = first["classes"].index(name) + 1
                state[key][label * rows : (label + 1) * rows] = value[
                    label * rows : (label + 1) * rows
                ]
        else:
            state[key] = value
    train = dict(first.get("train") or {})
    train["averaged_from"] = [str(path) for path in sources]
    if keep_classes:
        train["averaged_keeping_classes"] = list(keep_classes)
    return save_checkpoint(
        output,
        state_dict=state,
        arch=first["arch"],
        classes=first["classes"],
        normalization=first["normalization"],
        train=train,
        **run_settings(first),
    )


def _shapes(payload: dict) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in payload["state_dict"].items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("sources", nargs="+", type=Path, help="two or more checkpoints")
    parser.add_argument(
        "--keep-class",
        action="append",
        default=[],
        metavar="NAME",
        help="keep the first checkpoint's head rows for this class (repeatable)",
    )
    args = parser.parse_args()
    if len(args.sources) < 2:
        parser.error("give two or more checkpoints to average")
    try:
        path = average_weights(args.output, args.sources, args.keep_class)
    except UserInputError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: the mean of {len(args.sources)} checkpoints' weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
