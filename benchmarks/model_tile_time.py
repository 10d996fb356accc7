"""Per-tile CPU time of models' ``predict`` on the same real tiles (issue 9's speed budget).

Reads 512 px tiles from a scene exactly as ``geoseg run`` does, then times ``predict`` of each
model on them in turn, several rounds interleaved (so that a busy machine slows every model
alike), with one torch thread, and prints seconds per tile and the ratio to the first model::

    python benchmarks/model_tile_time.py old.pt default --scene sample_data/atlanta_pan.tif
    python benchmarks/model_tile_time.py old.pt default default default --tta 1 1 4 8
    python benchmarks/model_tile_time.py old.pt default default --tta 1 4 4 --plain 0 1
    python benchmarks/model_tile_time.py old.pt default default --proposals 2000:1000 1000:300

``--batch`` sets the tiles per forward pass (the CPU default is ``geoseg.gpu.CPU_BATCH``);
``--plain`` names models (by position, 0 first) that run as torchvision built them: the
backbone as torchvision's module, as geoseg ran it before session 26 folded the batch norm
(``geoseg.model.folded_backbone``), and torchvision's RoIAlign, as before session 31
(``geoseg.model.roi_sampling``): the first default as it ran when issue 9 was filed is
``--plain 0``. On a CPU with fast bfloat16 (AMX Xeons, AMD Zen 4 and later), tiles read at
1 m or finer run the backbone and the box head's two layers in bfloat16
(``geoseg.model.bf16_backbone``); ``--float32`` names models that run them in float32,
``--float32-box-head`` those whose box head stays float32 on that path (as before session
48), and ``--unfused`` those whose bfloat16 convolutions run layer by layer under autocast,
as before session 41 fused each with its activation (``geoseg.model.bf16_convs``).
``--torch`` names models whose folded backbone runs in torch, as before session 31 ran it
through ONNX Runtime (``geoseg.model.onnx_backbone``); ``--torch-roialign`` those that pool
with torchvision's RoIAlign. ``--proposals PRE:POST``
(one per model, in order; the model's own for the rest) sets how many proposals the RPN keeps
per pyramid level before its NMS and per tile after it, at test time; the rest are told the
tiles' GSD, as ``geoseg run`` tells them, and so keep the counts of their
``rpn_proposals_by_gsd``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from torchvision.ops import MultiScaleRoIAlign

from geoseg.config import RunOptions
from geoseg.model.bf16_backbone import Bf16Backbone
from geoseg.model.folded_backbone import FoldedBackbone
from geoseg.model.maskrcnn import MaskRCNNSegmenter, rpn_test_counts, set_rpn_test_counts
from geoseg.model.protocol import load_segmenter, predict_accepts
from geoseg.model.roi_sampling import SampledRoIAlign
from geoseg.pipeline import plan_scene, read_stage
from geoseg.plan import ScenePlan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="--model specs; the first is the baseline")
    parser.add_argument("--scene", default="sample_data/atlanta_pan.tif")
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=None, help="tiles per forward pass")
    parser.add_argument(
        "--plain", type=int, nargs="*", default=[], help="models run with the unfolded backbone"
    )
    parser.add_argument(
        "--float32-box-head",
        type=int,
        nargs="*",
        default=[],
        help="models whose box head stays float32 where their backbone runs in bfloat16",
    )
    parser.add_argument(
        "--torch",
        type=int,
        nargs="*",
        default=[],
        help="models whose folded backbone runs in torch rather than ONNX Runtime",
    )
    parser.add_argument(
        "--float32",
        type=int,
        nargs="*",
        default=[],
        help="models whose fine tiles run in float32 on a CPU with AMX, where they would run "
        "in bfloat16 (geoseg.model.bf16_backbone; --plain and --torch imply it)",
    )
    parser.add_argument(
        "--unfused",
        type=int,
        nargs="*",
        default=[],
        help="models whose bfloat16 convolutions and activations run one by one under autocast",
    )
    parser.add_argument(
        "--torch-roialign",
        type=int,
        nargs="*",
        default=[],
        help="models that pool with torchvision's RoIAlign",
    )
    parser.add_argument(
        "--tta",
        type=int,
        nargs="*",
        default=[],
        help="views per model (1, 2, 4 or 8; one per model, in order; 1 for the rest): every "
        "class seen in that many views, as geoseg run --tta does",
    )
    parser.add_argument(
        "--proposals",
        type=proposal_counts,
        nargs="*",
        default=[],
        metavar="PRE:POST",
        help="RPN proposals kept per level before NMS and per tile after it, one per model",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plan, pixels = tiles_as_run_reads_them(args.scene, args.models[0], args.tiles)
    models = [load_segmenter(spec, device="cpu") for spec in args.models]
    for model in models:
        model.batch_size = args.batch or model.batch_size
    # load_segmenter caches by spec, so one object may serve two positions: each call below
    # sets the backbone its position asks for (the folded copy, or torchvision's own module)
    folded = {id(model): model._backbone for model in models}
    bf16 = {id(model): (model._bf16, list(model._by_gsd)) for model in models}
    unfused = {id(model): _unfused(*bf16[id(model)]) for model in models}
    float32 = {*args.plain, *args.torch, *args.float32}
    backbones = [
        model.network.backbone
        if index in args.plain
        else FoldedBackbone(model.network.backbone)
        if index in args.torch
        else folded[id(model)]
        for index, model in enumerate(models)
    ]
    views = [*args.tta, *[1] * len(models)][: len(models)]
    keywords = [
        {"tta_views": dict.fromkeys(model.classes, n)} if n > 1 else {}
        for model, n in zip(models, views, strict=True)
    ]
    for index, model in enumerate(models[len(args.proposals) :], start=len(args.proposals)):
        if predict_accepts(model, "gsd_m"):  # told the GSD, as geoseg run tells it
            keywords[index]["gsd_m"] = plan.scene.gsd_m
    defaults = [rpn_test_counts(model.network.rpn) for model in models]
    proposals = [*args.proposals, *defaults[len(args.proposals) :]][: len(models)]

    plain_pooling = {*args.plain, *args.torch_roialign}

    def prepare(m: int) -> MaskRCNNSegmenter:
        """Model ``m`` with the backbone, RoIAlign and proposal counts of its position."""
        model = models[m]
        model._backbone = backbones[m]
        main, by_gsd = unfused[id(model)] if m in args.unfused else bf16[id(model)]
        if m in float32:  # fine tiles too through the float32 runner
            main, by_gsd = None, [(gsd, net._replace(bf16=None)) for gsd, net in by_gsd]
        model._bf16, model._by_gsd = main, by_gsd
        model.box_head_bf16 = m not in args.float32_box_head
        heads = model.network.roi_heads
        heads.box_roi_pool = _pooler(heads.box_roi_pool, m in plain_pooling)
        heads.mask_roi_pool = _pooler(heads.mask_roi_pool, m in plain_pooling)
        set_rpn_test_counts(model.network.rpn, proposals[m])
        return model

    for m in range(len(models)):  # warm up
        prepare(m).predict(pixels[:1], **keywords[m])
    seconds = np.zeros((len(models), args.rounds))
    for r in range(args.rounds):
        for m in range(len(models)):
            model = prepare(m)
            start = time.process_time()
            model.predict(pixels, min_score=0.5, **keywords[m])
            seconds[m, r] = (time.process_time() - start) / len(pixels)
    base = seconds[0].min()
    print(
        f"{len(pixels)} tiles of {plan.options.tile_px} px from {args.scene}, "
        f"{args.threads} thread(s), {models[0].batch_size} a pass, best of {args.rounds} rounds "
        "(CPU seconds per tile)"
    )
    for index, (spec, n, row) in enumerate(zip(args.models, views, seconds, strict=True)):
        name = f"{spec} ({n} views)" if n > 1 else spec
        name += " (unfolded)" if index in args.plain else ""
        name += " (bf16 unfused)" if index in args.unfused else ""
        name += " (float32 box head)" if index in args.float32_box_head else ""
        name += " (torch backbone)" if index in args.torch and index not in args.plain else ""
        name += (
            " (torch RoIAlign)" if index in args.torch_roialign and index not in args.plain else ""
        )
        if index < len(args.proposals):
            name += " ({}:{} proposals)".format(*proposals[index])
        print(f"  {name:40s} {row.min():.3f} s/tile  x{row.min() / base:.2f}")


def tiles_as_run_reads_them(scene: str, model: str, count: int) -> tuple[ScenePlan, np.ndarray]:
    """``geoseg run --model model``'s plan of ``scene`` and its first ``count`` tiles, read as
    the run reads them (normalized): ``(count, bands, tile, tile)``."""
    plan = plan_scene(scene, RunOptions(model=model, gsd_m=None))
    tiles = [tile for _, batch in plan.batches for tile in batch][:count]
    return plan, read_stage(plan.scene, tiles, plan.options.tile_px).pixels


def _unfused(main: Bf16Backbone | None, by_gsd: list[tuple[float, Any]]) -> tuple[Any, list[Any]]:
    """A segmenter's bfloat16 runners (its own, and those of its weights by GSD) again, with
    their convolutions left unfused."""

    def again(runner: Bf16Backbone | None) -> Bf16Backbone | None:
        if runner is None:
            return None
        return Bf16Backbone(runner.source, runner.proposal_head, fuse=False)

    return again(main), [(gsd, net._replace(bf16=again(net.bf16))) for gsd, net in by_gsd]


def _pooler(pooler: MultiScaleRoIAlign, plain: bool) -> MultiScaleRoIAlign:
    """``pooler`` as torchvision's own class (``plain``) or geoseg's CPU one."""
    kind = MultiScaleRoIAlign if plain else SampledRoIAlign
    if type(pooler) is kind:
        return pooler
    return kind(
        pooler.featmap_names,
        pooler.output_size,
        pooler.sampling_ratio,
        canonical_scale=pooler.canonical_scale,
        canonical_level=pooler.canonical_level,
    )


def proposal_counts(text: str) -> tuple[int, int]:
    """``PRE:POST`` as two positive counts."""
    pre, _, post = text.partition(":")
    if not (pre.isdigit() and post.isdigit() and int(pre) > 0 and int(post) > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: write PRE:POST, e.g. 1000:300")
    return int(pre), int(post)


if __name__ == "__main__":
    main()
