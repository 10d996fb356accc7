"""Time the merge of a class read at two GSDs (``geoseg.reading_merge.ReadingMerger``) alone.

Random rectangles (8-60 px) over a 20,000 px square, ``--objects`` from each of two readings
(the second at twice the GSD), handed over band by band as a streaming run hands them over,
each band followed by an ``advance`` with both readings' frontiers. Prints the time, the
objects kept and the most held at once::

    python benchmarks/bench_reading_merge.py --objects 20000
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
from affine import Affine
from shapely.geometry import box

from geoseg.reading_merge import ReadingMerger
from geoseg.stitch import StitchedObject

SIZE_PX = 20_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=20_000, help="per reading")
    parser.add_argument("--band", type=int, default=50, help="rows per hand-over")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    transforms = [Affine(1, 0, 0, 0, -1, 0), Affine(2, 0, 0, 0, -2, 0)]
    bands: dict[tuple[int, int], list[StitchedObject]] = defaultdict(list)
    for k, scale in enumerate((1.0, 2.0)):
        for _ in range(args.objects):
            y, x = rng.uniform(0, SIZE_PX, 2)
            h, w = rng.uniform(8, 60, 2)
            outline = box(x / scale, y / scale, (x + w) / scale, (y + h) / scale)
            score = float(rng.uniform(0.3, 1.0))
            bands[(k, int(y // args.band))].append(StitchedObject(outline, 0, score, 1))
    merger = ReadingMerger(transforms, [0])
    start = time.perf_counter()
    kept, most = 0, 0
    for band in range(SIZE_PX // args.band + 2):
        for k in (0, 1):
            merger.add(k, bands.get((k, band - 1), []))
        row = band * args.band  # everything starting above it has been handed over
        kept += len(merger.advance([row, row / 2]))
        most = max(most, merger.n_held)
    kept += len(merger.finish())
    seconds = time.perf_counter() - start
    print(f"{2 * args.objects} objects merged in {seconds:.2f} s: {kept} kept, at most {most} held")


if __name__ == "__main__":
    main()
