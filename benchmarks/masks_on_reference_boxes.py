"""How well a model's mask head outlines reference objects when it is given their own boxes.

A diagnostic that splits a detector's misses between its boxes and its masks: every reference
polygon that lies wholly inside one tile of ``geoseg run``'s first reading of the scene gets
its own bounding box put through the mask head (one view), and the mask, cut at each of
``--cuts``, is compared with the reference's pixels (IoU). The box itself, filled, is the
baseline. Prints, per cut, how many references reach IoU 0.5::

    python benchmarks/masks_on_reference_boxes.py ../shared/data/buildings-oam/nairobi_2_z19.tif \
        ../shared/data/buildings-oam/nairobi_2_z19.gpkg --class building
"""

from __future__ import annotations

import argparse

import geopandas as gpd
import numpy as np
import shapely
import torch
from rasterio.features import rasterize
from torchvision.models.detection.roi_heads import maskrcnn_inference, paste_masks_in_image

from geoseg.config import RunOptions
from geoseg.model.maskrcnn import MaskRCNNSegmenter
from geoseg.model.protocol import load_segmenter
from geoseg.pipeline import plan_scene, read_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene")
    parser.add_argument("reference", help="polygons of the class, any CRS")
    parser.add_argument("--class", dest="klass", default="building")
    parser.add_argument("--model", default="default")
    parser.add_argument("--cuts", type=float, nargs="+", default=[0.2, 0.35, 0.5])
    args = parser.parse_args()
    torch.set_num_threads(2)
    plan = plan_scene(args.scene, RunOptions(model=args.model, gsd_m=None))
    first = plan.passes[0]
    model = load_segmenter(args.model, device="cpu")
    assert isinstance(model, MaskRCNNSegmenter)
    label = model.classes.index(args.klass) + 1
    to_pixels = ~first.scene.transform  # the reading's grid (resampled or not)
    refs = gpd.read_file(args.reference).to_crs(first.scene.crs)
    outlines = [
        shapely.affinity.affine_transform(
            g, [to_pixels.a, to_pixels.b, to_pixels.d, to_pixels.e, to_pixels.c, to_pixels.f]
        )
        for g in refs.geometry
    ]
    tiles = [t for index, batch in plan.batches if index == 0 for t in batch]
    batch = read_stage(first.scene, tiles, plan.options.tile_px)
    side = plan.options.tile_px
    net = model._network_at(first.scene.gsd_m)  # the weights this reading runs through
    heads = net.network.roi_heads
    rows: list[list[float]] = []
    done: set[int] = set()
    with torch.inference_mode():
        for tile, pixels in zip(batch.tiles, batch.pixels, strict=True):
            col, row = tile.window.col_off, tile.window.row_off
            inside = [
                (i, shapely.affinity.translate(o, -col, -row))
                for i, o in enumerate(outlines)
                if i not in done
                and o.bounds[0] >= col
                and o.bounds[1] >= row
                and o.bounds[2] <= col + side
                and o.bounds[3] <= row + side
            ]
            if not inside:
                continue
            images, _ = net.network.transform([torch.from_numpy(pixels).float()])
            features, _ = model._features_and_proposals(net, images)
            boxes = torch.tensor([o.bounds for _, o in inside], dtype=torch.float32)
            pooled = heads.mask_roi_pool(features, [boxes], images.image_sizes)
            logits = heads.mask_predictor(heads.mask_head(pooled))
            probs = maskrcnn_inference(logits, [torch.full((len(boxes),), label)])[0]
            pasted = paste_masks_in_image(probs, boxes, (side, side))[:, 0].numpy()
            for (i, outline), prob, box in zip(inside, pasted, boxes, strict=True):
                ref = rasterize([(outline, 1)], out_shape=(side, side)).astype(bool)
                filled = np.zeros_like(ref)
                x0, y0, x1, y1 = box.round().int().tolist()
                filled[y0:y1, x0:x1] = True
                masks = [prob >= cut for cut in args.cuts] + [filled]
                rows.append([(ref & m).sum() / max((ref | m).sum(), 1) for m in masks])
                done.add(i)
    table = np.array(rows).reshape(-1, len(args.cuts) + 1)
    print(
        f"{len(table)} of {len(refs)} references lie inside a tile of the "
        f"{first.scene.gsd_m:.3g} m reading; mask IoU with the reference, given its own box:"
    )
    for name, ious in zip(
        [f"mask cut at {cut:g}" for cut in args.cuts] + ["the box, filled"], table.T, strict=True
    ):
        print(
            f"  {name:18s} IoU >= 0.5: {int((ious >= 0.5).sum()):4d}   0.3-0.5: "
            f"{int(((ious >= 0.3) & (ious < 0.5)).sum()):4d}   < 0.3: {int((ious < 0.3).sum()):4d}"
            f"   median {np.median(ious):.2f}"
        )


if __name__ == "__main__":
    main()
