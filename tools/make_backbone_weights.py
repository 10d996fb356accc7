"""Rebuild ``geoseg/model/weights/mobilenet_v2_imagenet.pt`` from its Apache-2.0 original.

The original is google-coral/test_data's ``mobilenet_v2_1.0_224_quant.tflite`` (MobileNetV2
1.0 trained on ImageNet, 8-bit), converted to a torchvision ``mobilenet_v2`` state dict with
batch norm folded into the convolutions (``../shared/data/weights``; see its PROVENANCE.md).
This script checks that state dict's SHA-256, keeps the ``features`` blocks the Mask R-CNN
uses (0-17, strides 2 to 32), stores them as fp16 and prints the result's SHA-256::

    python tools/make_backbone_weights.py \
        ../shared/data/weights/mobilenet_v2_imagenet_from_tf1_quant.pth
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

SOURCE_SHA256 = "585faed566c9d35f6066b970292fc393c327db7297f2399b2329f29a622403d7"
LAST_BLOCK = 17
OUTPUT = Path(__file__).resolve().parents[1] / "geoseg/model/weights/mobilenet_v2_imagenet.pt"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="mobilenet_v2_imagenet_from_tf1_quant.pth")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    digest = sha256(args.source)
    if digest != SOURCE_SHA256:
        print(f"{args.source}: sha256 {digest}, expected {SOURCE_SHA256}", file=sys.stderr)
        return 2
    state = torch.load(args.source, map_location="cpu", weights_only=True)
    kept = {
        k: v.to(torch.float16) if v.is_floating_point() else v
        for k, v in state.items()
        if k.startswith("features.") and int(k.split(".")[1]) <= LAST_BLOCK
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(kept, args.output)
    print(f"{args.output}: {len(kept)} tensors, sha256 {sha256(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
