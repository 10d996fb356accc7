"""CPU time of a model's ``embed`` per tile (what ``geoseg select`` compares tiles by).

Reads 512 px tiles from a scene exactly as ``geoseg run`` does, then times ``embed`` over them
for a few rounds, with one torch thread::

    python benchmarks/embed_time.py --scene ../shared/data/buildings-oam/nairobi_1_z19.tif
"""

from __future__ import annotations

import argparse
import time

import torch
from model_tile_time import tiles_as_run_reads_them

from geoseg.model.protocol import load_segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--scene", default="sample_data/atlanta_pan.tif")
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    _, pixels = tiles_as_run_reads_them(args.scene, args.model, args.tiles)
    model = load_segmenter(args.model, device="cpu")
    model.embed(pixels[:1])  # the first call exports the graph
    for round_ in range(args.rounds):
        start = time.process_time()
        model.embed(pixels)
        seconds = (time.process_time() - start) / len(pixels)
        print(f"round {round_ + 1}: {seconds:.3f} CPU s per tile ({len(pixels)} tiles)")


if __name__ == "__main__":
    main()
