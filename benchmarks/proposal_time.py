"""CPU time of the region proposals made from the RPN head's maps, torchvision's way and geoseg's.

On the CPU the default model's RPN head runs inside the backbone's ONNX Runtime graph, and
``geoseg.model.onnx_backbone.proposals_from_maps`` turns its maps into proposals. torchvision
(``RegionProposalNetwork.forward`` after its head) decodes every anchor and suppresses each
level's best ``pre_nms_top_n`` in full; geoseg decodes only those and suppresses only the best
boxes until ``post_nms_top_n`` are kept. This reads tiles as ``geoseg run`` does, checks that
both give the same boxes bit for bit, and prints milliseconds per tile and view::

    python benchmarks/proposal_time.py --scene .../nairobi_1_z19.tif --proposals 1000:500
    python benchmarks/proposal_time.py --scene .../casablanca.tif --proposals 2000:1000
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import numpy as np
import torch
from model_tile_time import proposal_counts, tiles_as_run_reads_them
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers

from geoseg.model.maskrcnn import MaskRCNNSegmenter, set_rpn_test_counts
from geoseg.model.onnx_backbone import OnnxBackbone, ProposalMaps, proposals_from_maps
from geoseg.model.protocol import load_segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default="sample_data/atlanta_pan.tif")
    parser.add_argument("--model", default="default")
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--proposals", type=proposal_counts, default=(1000, 500), metavar="PRE:POST"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, pixels = tiles_as_run_reads_them(args.scene, args.model, args.tiles)
    model = load_segmenter(args.model, device="cpu")
    assert isinstance(model, MaskRCNNSegmenter) and isinstance(model._backbone, OnnxBackbone)
    rpn = model.network.rpn
    set_rpn_test_counts(rpn, args.proposals)
    with torch.inference_mode():
        images, _ = model.network.transform(list(torch.from_numpy(np.asarray(pixels)).float()))
        features, maps = model._backbone.run(images.tensors)
        assert maps is not None
        want = torchvisions_proposals(rpn, images, features, maps)
        got = proposals_from_maps(rpn, images, features, maps)
        same = all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
        ms = np.zeros((2, args.rounds))
        for r in range(args.rounds):
            for m, make in enumerate((torchvisions_proposals, proposals_from_maps)):
                start = time.process_time()
                for _ in range(args.repeats):
                    make(rpn, images, features, maps)
                ms[m, r] = (time.process_time() - start) / args.repeats / len(pixels) * 1e3
    print(
        f"{len(pixels)} tiles from {args.scene}, {args.proposals[0]}:{args.proposals[1]} "
        f"proposals, {[len(w) for w in want]} kept, the same boxes: {same}; one thread, "
        f"best of {args.rounds} rounds (CPU ms per tile and view)"
    )
    for name, row in zip(("torchvision", "geoseg"), ms, strict=True):
        print(f"  {name:12s} {row.min():6.1f} ms")


def torchvisions_proposals(
    rpn: RegionProposalNetwork,
    images: ImageList,
    features: OrderedDict[str, torch.Tensor],
    maps: ProposalMaps,
) -> list[torch.Tensor]:
    """``rpn(images, features)``'s proposals from the head's ``maps``, as torchvision makes
    them (and as geoseg did before session 33): every anchor decoded, every box suppressed."""
    anchors = rpn.anchor_generator(images, list(features.values()))
    per_level = [int(o[0].numel()) for o in maps.objectness]
    objectness, deltas = concat_box_prediction_layers(maps.objectness, maps.deltas)
    proposals = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
    return rpn.filter_proposals(proposals, objectness, images.image_sizes, per_level)[0]


if __name__ == "__main__":
    main()
