"""Write synthetic Sentinel-2-like port crops for training: ships at quays at 5-10 m GSD.

Casablanca's ships, moored against concrete quays and container terminals, are what the
default model misses on Sentinel-2 (model card): `geoseg synth` draws its 10 m ships as bright
hulls in open water beside enlarged houses. Each seed here draws one crop (``--size`` px, GSD
log-uniform in ``--gsd-range``): a coast with piers and sometimes a breakwater, concrete and
container yards on land, dark water, and ships (80-330 m) moored along the piers (some two
abreast) or at anchor, in the hull colours of merchant ships. The scene is drawn 4 times finer
and averaged down, then blurred (a Sentinel-2-like point spread) and stored as uint16, as the
sen2ships scenes are. Ship labels are the hull grown by about a pixel (``--grow-px``), as
sen2ships outlines its ships. A GeoTIFF and a GeoPackage (layer ``labels``, class ``ship``) per
seed.

    python tools/default_model/port_scenes.py OUT_DIR --seeds 9500 9560
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter, zoom
from shapely import affinity
from shapely.geometry import Polygon, box

from geoseg.learn.synth import LABEL_LAYER

SUPERSAMPLE = 4
HULLS = (  # merchant hull colours, RGB 0..1 as Sentinel-2 shows them after a 2-98 % stretch
    (0.32, 0.10, 0.08),
    (0.45, 0.16, 0.10),
    (0.07, 0.07, 0.08),
    (0.30, 0.31, 0.33),
    (0.10, 0.18, 0.35),
    (0.78, 0.78, 0.76),
    (0.14, 0.26, 0.18),
)
CARGO = ((0.75, 0.25, 0.15), (0.2, 0.35, 0.7), (0.85, 0.85, 0.8), (0.3, 0.55, 0.3), (0.8, 0.6, 0.2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs=2, default=(9500, 9560))
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--gsd-range", type=float, nargs=2, default=(5.0, 10.0))
    parser.add_argument("--grow-px", type=float, nargs=2, default=(0.7, 1.3))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in range(*args.seeds):
        name = args.out / f"port_{seed}"
        n = write_crop(name, seed, args.size, args.gsd_range, args.grow_px)
        print(f"{name}: {n} ships" if n else f"{name}: no ship fitted, skipped")


def write_crop(
    name: Path,
    seed: int,
    size: int,
    gsd_range: tuple[float, float],
    grow_px: tuple[float, float] = (0.7, 1.3),
) -> int:
    """Draw the crop of ``seed`` and write ``name``.tif and ``name``.gpkg (ship labels: the
    hulls grown by ``grow_px`` pixels, drawn uniformly); the ship count. Nothing is written
    where no ship fitted."""
    rng = np.random.default_rng(seed)
    gsd = float(math.exp(rng.uniform(math.log(gsd_range[0]), math.log(gsd_range[1]))))
    side = size * gsd
    land, quays = _coast(rng, side)
    ships = _ships(rng, land, quays, side, gsd)
    image = _render(rng, size, gsd, land, ships)
    east, north = 400_000.0 + rng.uniform(0, 1e5), 3_700_000.0 + rng.uniform(0, 1e5)
    transform = from_origin(east, north + side, gsd, gsd)
    crs = f"EPSG:{32629 + int(rng.integers(0, 20))}"
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint16",
        "crs": crs, "transform": transform, "compress": "deflate",
    }  # fmt: skip
    grow = [rng.uniform(*grow_px) * gsd for _ in ships]
    outlines = [
        affinity.translate(hull.buffer(g, join_style="mitre"), east, north)
        for (hull, *_), g in zip(ships, grow, strict=True)
    ]
    frame = box(east, north, east + side, north + side)
    labels = gpd.GeoDataFrame(
        {"class": ["ship"] * len(outlines)},
        geometry=[o.intersection(frame) for o in outlines],
        crs=crs,
    )
    labels = labels[~labels.is_empty & (labels.area > 4 * gsd * gsd)]
    if labels.empty:  # no ship fitted: no crop
        return 0
    with rasterio.open(name.with_suffix(".tif"), "w", **profile) as dst:
        dst.write(image)
    labels.to_file(name.with_suffix(".gpkg"), layer=LABEL_LAYER, driver="GPKG")
    return len(labels)


def _coast(rng: np.random.Generator, side: float) -> tuple[Polygon, list[Polygon]]:
    """Land (a half-plane cut by a straight coast, with its piers) and the piers alone, in
    metres from the crop's south-west corner."""
    angle = rng.uniform(0, 2 * math.pi)
    normal = np.array([math.cos(angle), math.sin(angle)])
    centre = np.array([side / 2, side / 2]) - normal * side * rng.uniform(0.05, 0.3)
    along = np.array([-normal[1], normal[0]])
    far = side * 3
    shore = Polygon(
        [
            centre + along * far,
            centre + along * far - normal * far,
            centre - along * far - normal * far,
            centre - along * far,
        ]
    )
    quays = []
    for _ in range(int(rng.integers(2, 5))):
        at = rng.uniform(-0.45, 0.45) * side
        length = rng.uniform(150, 0.5 * side + 150)
        width = rng.uniform(50, 250)
        tilt = rng.normal(0, 0.15)
        direction = normal * math.cos(tilt) + along * math.sin(tilt)
        side_dir = np.array([-direction[1], direction[0]])
        base = centre + along * at - direction * 30
        quay = Polygon(
            [
                base - side_dir * width / 2,
                base + side_dir * width / 2,
                base + side_dir * width / 2 + direction * length,
                base - side_dir * width / 2 + direction * length,
            ]
        )
        if not any(quay.buffer(120).intersects(q) for q in quays):
            quays.append(quay)
    if rng.random() < 0.5:  # a breakwater off the coast
        at = centre + normal * rng.uniform(0.3, 0.5) * side
        wall = shapely.LineString([at - along * side * 0.4, at + along * side * 0.2])
        quays.append(wall.buffer(rng.uniform(10, 25), cap_style="flat"))
    return shapely.union_all([shore, *quays]), quays


def _hull(length: float, beam: float) -> Polygon:
    bow = min(length * 0.15, beam * 1.2)
    half = beam / 2
    return Polygon(
        [(-length / 2, -half), (length / 2 - bow, -half), (length / 2, 0),
         (length / 2 - bow, half), (-length / 2, half)]
    )  # fmt: skip


def _ships(
    rng: np.random.Generator, land: Polygon, quays: list[Polygon], side: float, gsd: float
) -> list[tuple[Polygon, tuple[float, float, float], str]]:
    """``(hull, colour, cargo kind)`` of each ship, placed in the water without overlaps."""
    placed: list[tuple[Polygon, tuple[float, float, float], str]] = []
    water = box(0, 0, side, side).difference(land)

    def add(hull: Polygon) -> bool:
        if not water.buffer(gsd).contains(hull) or hull.area < 6 * gsd * gsd:
            return False
        if any(hull.buffer(gsd * 0.5).intersects(p) for p, _, _ in placed):
            return False
        colour = HULLS[int(rng.integers(0, len(HULLS)))]
        kind = str(rng.choice(["plain", "containers", "tanker"], p=[0.4, 0.35, 0.25]))
        placed.append((hull, colour, kind))
        return True

    for quay in quays:  # moored alongside the long edges of the piers
        ring = np.asarray(quay.minimum_rotated_rectangle.exterior.coords)[:4]
        edges = [(ring[i], ring[(i + 1) % 4]) for i in range(4)]
        for a, b in edges:
            edge = b - a
            span = float(np.hypot(*edge))
            if span < 100 or rng.random() < 0.25:
                continue
            unit = edge / span
            out = np.array([unit[1], -unit[0]])
            if land.contains(shapely.Point(*(a + b) / 2 + out * 20)):
                out = -out
            at = rng.uniform(10, 60)
            while at < span - 60:
                length, beam = _size(rng)
                if at + length > span:
                    break
                gap = rng.uniform(0, 8)
                centre = a + unit * (at + length / 2) + out * (beam / 2 + gap)
                hull = _placed(_hull(length, beam), centre, unit, rng)
                if add(hull) and rng.random() < 0.2:  # a second ship abreast
                    beam2 = max(length * rng.uniform(0.6, 1.0) / 6.5, 12.0)
                    centre2 = centre + out * (beam / 2 + beam2 / 2 + rng.uniform(0, 6))
                    add(_placed(_hull(length * rng.uniform(0.6, 1.0), beam2), centre2, unit, rng))
                at += length + rng.uniform(5, 120)
    for _ in range(int(rng.integers(1, 8))):  # at anchor
        length, beam = _size(rng)
        centre = rng.uniform(0, side, 2)
        heading = rng.uniform(0, 2 * math.pi)
        add(
            _placed(
                _hull(length, beam), centre, np.array([math.cos(heading), math.sin(heading)]), rng
            )
        )
    return placed


def _size(rng: np.random.Generator) -> tuple[float, float]:
    """A merchant ship's length (70-330 m, log-uniform) and beam (a sixth of it or so)."""
    length = float(math.exp(rng.uniform(math.log(70), math.log(330))))
    return length, max(length / rng.uniform(5.5, 7.5), 12.0)


def _placed(
    hull: Polygon, centre: np.ndarray, unit: np.ndarray, rng: np.random.Generator
) -> Polygon:
    angle = math.degrees(math.atan2(unit[1], unit[0])) + (180 if rng.random() < 0.5 else 0)
    return affinity.translate(affinity.rotate(hull, angle, origin=(0, 0)), *centre)


def _render(
    rng: np.random.Generator,
    size: int,
    gsd: float,
    land: Polygon,
    ships: list[tuple[Polygon, tuple[float, float, float], str]],
) -> np.ndarray:
    """The crop as uint16 (3, size, size): drawn SUPERSAMPLE times finer, averaged down."""
    fine = size * SUPERSAMPLE
    step = gsd / SUPERSAMPLE
    transform = from_origin(0, size * gsd, step, step)

    def burn(geoms: list) -> np.ndarray:
        if not geoms:
            return np.zeros((fine, fine), bool)
        return rasterize(geoms, out_shape=(fine, fine), transform=transform).astype(bool)

    def smooth_noise(cells: int, amount: float) -> np.ndarray:
        coarse = rng.normal(0, amount, (cells, cells))
        return zoom(coarse, fine / cells, order=1)[:fine, :fine]

    img = np.zeros((3, fine, fine), np.float32)
    water_tone = np.array([0.05, 0.09, 0.10]) * rng.uniform(0.6, 1.6) + rng.normal(0, 0.01, 3)
    img[:] = water_tone[:, None, None] * (1 + smooth_noise(6, 0.25))
    glint = rng.random((fine, fine)) < 0.002
    img[:, glint] += 0.08
    on_land = burn([land])
    concrete = np.array([0.55, 0.52, 0.47]) * rng.uniform(0.7, 1.2)
    light = 1 + smooth_noise(12, 0.12) + rng.normal(0, 0.06, (fine, fine))  # one for all bands
    for band in range(3):
        tint = 1 + smooth_noise(8, 0.03)
        img[band][on_land] = (concrete[band] * light * tint)[on_land]
    yards = _rectangles(rng, (3, 9), size * gsd, (100, 400), (100, 400))  # container yards
    in_yard = burn(yards) & on_land
    cell = max(1, round(6 / step))  # a 6 m box
    n = fine // cell + 1
    colours = np.array(CARGO)[rng.integers(0, len(CARGO), (n, n))] * rng.uniform(
        0.6, 1.1, (n, n, 1)
    )
    boxes = np.repeat(np.repeat(colours, cell, 0), cell, 1)[:fine, :fine]
    for band in range(3):
        img[band][in_yard] = boxes[..., band][in_yard]
    roofs = _rectangles(rng, (2, 10), size * gsd, (30, 150), (30, 300))  # warehouses, sheds
    for roof in roofs:
        mask = burn([roof]) & on_land
        tone = np.array([0.85, 0.85, 0.85]) if rng.random() < 0.6 else rng.uniform(0.2, 0.8, 3)
        img[:, mask] = tone[:, None]
    _paint_ships(rng, img, ships, boxes, burn)
    img = img.reshape(3, size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(2, 4))
    sigma = rng.uniform(0.4, 0.8)
    img = np.stack([gaussian_filter(b, sigma) for b in img])
    img += rng.normal(0, 0.008, img.shape)
    scale = rng.uniform(20000, 40000)
    return np.clip(img * scale + rng.uniform(500, 3000), 0, 65535).astype(np.uint16)


def _rectangles(
    rng: np.random.Generator,
    count: tuple[int, int],
    side: float,
    width: tuple[float, float],
    height: tuple[float, float],
) -> list[Polygon]:
    """Randomly placed and turned rectangles (metres), ``count`` as numpy's integers bounds."""
    out = []
    for _ in range(int(rng.integers(*count))):
        c = rng.uniform(0, side, 2)
        w, h = rng.uniform(*width), rng.uniform(*height)
        rect = box(c[0] - w / 2, c[1] - h / 2, c[0] + w / 2, c[1] + h / 2)
        out.append(affinity.rotate(rect, rng.uniform(0, 90)))
    return out


def _paint_ships(
    rng: np.random.Generator,
    img: np.ndarray,
    ships: list[tuple[Polygon, tuple[float, float, float], str]],
    boxes: np.ndarray,
    burn: Callable[[list], np.ndarray],
) -> None:
    """Hulls in their colours, container or tank decks, and a white bridge at one end."""
    for hull, colour, kind in ships:
        mask = burn([hull])
        tone = np.array(colour) * rng.uniform(0.8, 1.2)
        img[:, mask] = tone[:, None]
        deck = hull.buffer(-0.25 * _beam(hull))
        if kind == "containers" and not deck.is_empty:
            cargo = burn([deck])
            img[:, cargo] = np.moveaxis(boxes[cargo], -1, 0)
        elif kind == "tanker" and not deck.is_empty:
            img[:, burn([deck])] = (tone * 0.8 + 0.1)[:, None]
        bridge = _bridge(hull)
        if bridge is not None:
            img[:, burn([bridge])] = 0.9


def _beam(hull: Polygon) -> float:
    ring = np.asarray(hull.minimum_rotated_rectangle.exterior.coords)
    return float(min(np.hypot(*(ring[1] - ring[0])), np.hypot(*(ring[2] - ring[1]))))


def _bridge(hull: Polygon) -> Polygon | None:
    """A white superstructure across one end of the hull."""
    ring = np.asarray(hull.minimum_rotated_rectangle.exterior.coords)[:4]
    e0, e1 = ring[1] - ring[0], ring[2] - ring[1]
    long_edge, short_edge, corner = (
        (e0, e1, ring[0]) if np.hypot(*e0) > np.hypot(*e1) else (e1, e0, ring[1])
    )
    start = corner + long_edge * 0.06
    part = Polygon(
        [start + short_edge * 0.2, start + short_edge * 0.8,
         start + long_edge * 0.12 + short_edge * 0.8, start + long_edge * 0.12 + short_edge * 0.2]
    )  # fmt: skip
    part = part.intersection(hull)
    return part if not part.is_empty else None


if __name__ == "__main__":
    main()
