"""Painting: ground, roads, fields, trees, shadows, objects, atmosphere and sensor
noise."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from geoseg.learn.synth.constants import (
    _FIELD,
    ASPHALT,
    CLOUD,
    CONCRETE,
    DIRT,
    FOAM,
    GRASS,
    SAND,
    SOIL,
    TREE,
    UINT16_MAX,
    URBAN_GROUND,
    WATER,
)
from geoseg.learn.synth.geometry import _burn, _Scales
from geoseg.learn.synth.layout import _Layout
from geoseg.learn.synth.objects import _Objects


def _noise(rng: np.random.Generator, shape_yx: tuple[int, int], cell_px: float) -> np.ndarray:
    """Smooth fractal noise with features about ``cell_px`` across; zero mean, unit std.

    Octaves are summed on a small grid (finest spacing at least 8 px), which one separable
    bilinear resampling brings to full size; ``cell_px`` <= 1 gives white noise.
    """
    height, width = shape_yx
    if cell_px <= 1:
        return rng.standard_normal(shape_yx, dtype=np.float32)
    octaves = int(np.clip(math.log2(cell_px / 8) + 1, 1, 4))
    grid = rng.standard_normal((int(height / cell_px) + 2, int(width / cell_px) + 2))
    for octave in range(1, octaves):
        grid = ndimage.zoom(grid, 2, order=1)
        grid += 0.55**octave * rng.standard_normal(grid.shape)
    step = cell_px / 2 ** (octaves - 1)
    lower, frac = _bilinear(height, grid.shape[0], step)
    rows = grid[lower].astype(np.float32) * (1 - frac)[:, None]
    rows += grid[lower + 1].astype(np.float32) * frac[:, None]
    lower, frac = _bilinear(width, grid.shape[1], step)
    out = rows[:, lower] * (1 - frac)
    out += rows[:, lower + 1] * frac
    sample = out[::4, ::4]
    out -= sample.mean()
    out /= max(float(sample.std()), 1e-6)
    return out


def _bilinear(n_out: int, n_in: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbour and weight of the upper one, resampling a grid of ``step`` px."""
    pos = np.minimum((np.arange(n_out) + 0.5) / step, n_in - 1.001)
    lower = np.floor(pos).astype(int)
    return lower, (pos - lower).astype(np.float32)


def _discs(shape_yx: tuple[int, int], xyr: np.ndarray) -> np.ndarray:
    """A mask of discs ``(x, y, radius)`` in pixels (radii rounded to half pixels)."""
    mask = np.zeros(shape_yx, dtype=bool)
    radii = np.maximum(np.rint(xyr[:, 2] * 2) / 2, 0.5)
    for radius in np.unique(radii):
        centres = np.floor(xyr[radii == radius, :2]).astype(int)
        k = math.ceil(radius)
        dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
        inside = dx**2 + dy**2 <= radius**2
        cols = centres[:, :1] + dx[inside]
        rows = centres[:, 1:] + dy[inside]
        ok = (rows >= 0) & (rows < shape_yx[0]) & (cols >= 0) & (cols < shape_yx[1])
        mask[rows[ok], cols[ok]] = True
    return mask


def _rgb(colour: Any) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32)


def _paint(
    rng: np.random.Generator, layout: _Layout, objects: _Objects, ids: np.ndarray, sc: _Scales
) -> np.ndarray:
    """The scene in 0..1 reflectance-like floats, ``(H, W, 3)``."""
    shape = layout.shape_yx
    fine = _noise(rng, shape, 1.0)
    water = _burn([layout.water], shape).astype(bool)
    img = _ground(rng, layout, sc, water, fine)
    free = ids == 0
    road = _paint_roads(layout, img, fine)
    _paint_fields(rng, objects, ids, img, sc)
    _paint_wakes(objects, img, water & free)
    _paint_trees(rng, layout, objects, img, free & ~water & ~road, fine, sc)
    shadow = _burn(objects.shadows, shape).astype(bool) & free
    img[shadow] *= _rgb((0.45, 0.47, 0.55))
    _paint_objects(objects, ids, img, fine)
    return img


def _ground(
    rng: np.random.Generator,
    layout: _Layout,
    sc: _Scales,
    water: np.ndarray,
    fine: np.ndarray,
) -> np.ndarray:
    """Grass, bare soil and dry patches; town ground; beach; water."""
    shape = layout.shape_yx
    soil = np.clip(_noise(rng, shape, sc.px(120, 6)) * 0.7 - 0.5, 0, 1)
    patches = _noise(rng, shape, sc.px(25, 3))
    light = 1 + 0.07 * patches + 0.05 * fine
    img = np.empty((*shape, 3), dtype=np.float32)
    for band, (grass, bare) in enumerate(zip(GRASS, SOIL, strict=True)):
        img[..., band] = (grass + (bare - grass) * soil) * light
    town = _burn([layout.town], shape).astype(bool)
    img[town] = 0.4 * img[town] + 0.6 * _rgb(URBAN_GROUND) * light[town, None]
    beach = _burn([layout.beach], shape).astype(bool)
    img[beach] = _rgb(SAND) * (1 + 0.05 * fine[beach, None])
    swell = _noise(rng, shape, sc.px(200, 8))
    img[water] = _rgb(WATER) * (1 + 0.12 * swell[water, None] + 0.03 * fine[water, None])
    return img


def _paint_roads(layout: _Layout, img: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Asphalt roads and streets, dirt tracks, concrete piers; returns the road mask."""
    shape = layout.shape_yx
    tracks = _burn([layout.tracks], shape).astype(bool)
    img[tracks] = _rgb(DIRT) * (1 + 0.06 * fine[tracks, None])
    road = _burn([layout.roads], shape).astype(bool)
    img[road] = _rgb(ASPHALT) * (1 + 0.03 * fine[road, None])
    piers = _burn(list(layout.piers), shape).astype(bool)
    img[piers] = _rgb(CONCRETE) * (1 + 0.03 * fine[piers, None])
    return road | tracks | piers


def _paint_fields(
    rng: np.random.Generator, objects: _Objects, ids: np.ndarray, img: np.ndarray, sc: _Scales
) -> None:
    """Field colour, crop rows (a sine across the row direction) and in-field variation."""
    classes = np.array([-1, *objects.classes])
    yy, xx = np.nonzero(classes[ids] == _FIELD)
    if not len(yy):
        return
    fid = ids[yy, xx]
    stripe = _stripes(objects, fid, yy, xx)
    vigour = _noise(rng, ids.shape, sc.px(60, 4))[yy, xx]  # moisture, growth
    colours = np.array([(0, 0, 0), *objects.colours], dtype=np.float32)[fid]
    img[yy, xx] = colours * (stripe * (1 + 0.05 * vigour))[:, None]


def _paint_wakes(objects: _Objects, img: np.ndarray, water: np.ndarray) -> None:
    if not objects.wakes:
        return
    wake = _burn([(g, round(v * 255)) for g, v in objects.wakes], water.shape).astype(np.float32)
    wake = ndimage.gaussian_filter(wake / 255, 1.0)[water][:, None] * 0.8
    img[water] = img[water] * (1 - wake) + _rgb(FOAM) * wake


def _paint_trees(
    rng: np.random.Generator,
    layout: _Layout,
    objects: _Objects,
    img: np.ndarray,
    allowed: np.ndarray,
    fine: np.ndarray,
    sc: _Scales,
) -> None:
    """Woods and single trees (where no object, road or water is), with their shadows."""
    crowns = np.concatenate([*objects.trees, _tree_crowns(rng, layout, sc)])
    tree = _discs(layout.shape_yx, crowns) | _burn(objects.woods, layout.shape_yx).astype(bool)
    offset = np.multiply(objects.sun_xy, sc.px(8, 1.0) * layout.shadow_ratio)
    shadow = _shifted(tree, round(offset[0]), round(offset[1])) & allowed & ~tree
    img[shadow] *= _rgb((0.5, 0.52, 0.6))
    tree &= allowed
    canopy = 0.3 * _noise(rng, layout.shape_yx, sc.px(3, 1.0))[tree] + 0.15 * fine[tree]
    img[tree] = _rgb(TREE) * np.maximum(1 + canopy, 0.3)[:, None]


def _shifted(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``mask`` moved by whole pixels (``dx`` columns right, ``dy`` rows down), zero-filled."""
    out = np.zeros_like(mask)
    height, width = mask.shape
    if abs(dx) >= width or abs(dy) >= height:
        return out
    src = mask[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def _tree_crowns(rng: np.random.Generator, layout: _Layout, sc: _Scales) -> np.ndarray:
    """Scattered trees and copses: ``(x, y, radius)`` rows."""
    lo, hi = sc.px(2, 0.7), sc.px(6, 1.2)
    n = int(min(30_000, 0.15 * layout.width * layout.height / (math.pi * ((lo + hi) / 2) ** 2)))
    xy = rng.uniform((0, 0), (layout.width, layout.height), size=(n, 2))
    density = _noise(rng, (layout.height // 8 + 1, layout.width // 8 + 1), sc.px(150, 16) / 8)
    near = density[(xy[:, 1] // 8).astype(int), (xy[:, 0] // 8).astype(int)]
    keep = (near > 0.6) | (rng.random(n) < 0.08)
    return np.column_stack([xy[keep], rng.uniform(lo, hi, size=int(keep.sum()))])


def _paint_objects(objects: _Objects, ids: np.ndarray, img: np.ndarray, fine: np.ndarray) -> None:
    """Roofs and hulls, then shaded roof halves, ridges and ship decks."""
    classes = np.array([-1, *objects.classes])
    mask = (ids > 0) & (classes[ids] != _FIELD)
    colours = np.array([(0, 0, 0), *objects.colours], dtype=np.float32)
    img[mask] = colours[ids[mask]] * (1 + 0.03 * fine[mask, None])
    _paint_ribs(objects, ids, img, mask)
    if objects.shade:
        index, hit = _overlay_hits([(g, o) for g, o, _ in objects.shade], ids)
        factors = np.array([1.0, *(f for _, _, f in objects.shade)], dtype=np.float32)
        img[hit] = np.clip(img[hit] * factors[index[hit], None], 0, 1)
    if objects.paint:
        index, hit = _overlay_hits([(g, o) for g, o, _ in objects.paint], ids)
        paints = np.array([(0, 0, 0), *(c for _, _, c in objects.paint)], dtype=np.float32)
        img[hit] = paints[index[hit]] * (1 + 0.03 * fine[hit, None])


def _paint_ribs(objects: _Objects, ids: np.ndarray, img: np.ndarray, mask: np.ndarray) -> None:
    """Corrugated sheeting: a sine across the ribs of the roofs that have them."""
    amplitude = np.array([0.0, *(r[2] for r in objects.rows)], dtype=np.float32)
    yy, xx = np.nonzero(mask & (amplitude > 0)[ids])
    if len(yy):
        img[yy, xx] *= _stripes(objects, ids[yy, xx], yy, xx)[:, None]


def _stripes(objects: _Objects, oid: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """``1 + amplitude * sin`` across each pixel's object's rows ``(angle, period, amplitude)``:
    crop rows of fields, ribs of metal roofs (``oid``: object numbers, 0 for none)."""
    rows = np.array([(0.0, 1.0, 0.0), *objects.rows], dtype=np.float32)[oid]
    phase = (xx * np.cos(rows[:, 0]) + yy * np.sin(rows[:, 0])) / rows[:, 1]
    return 1 + rows[:, 2] * np.sin(2 * np.pi * phase)


def _overlay_hits(overlays: list[tuple[Any, int]], ids: np.ndarray) -> tuple[np.ndarray, Any]:
    """Rasterized overlay numbers and where they fall on their own object."""
    index = _burn([(g, k + 1) for k, (g, _) in enumerate(overlays)], ids.shape, "int32")
    owners = np.array([0, *(o for _, o in overlays)], dtype=np.int32)
    return index, (index > 0) & (owners[index] == ids)


def _atmosphere(
    rng: np.random.Generator, img: np.ndarray, sc: _Scales, sun_xy: tuple[float, float]
) -> np.ndarray:
    """Clouds (in about half the scenes) with their shadows, haze, uneven illumination."""
    height, width = img.shape[:2]
    if rng.random() < 0.5:
        alpha, dark = _clouds(rng, (height, width), sc, sun_xy)
        keep = (1 - 0.5 * dark) * (1 - alpha)
        for band, cloud in enumerate(CLOUD):
            img[..., band] *= keep
            img[..., band] += cloud * alpha
    haze = rng.uniform(0.0, 0.12)
    img *= 1 - haze
    img += haze * _rgb((0.72, 0.76, 0.82))
    angle = rng.uniform(0, 2 * np.pi)
    ramp_x = (np.arange(width, dtype=np.float32) - width / 2) * np.cos(angle)
    ramp_y = (np.arange(height, dtype=np.float32) - height / 2) * np.sin(angle)
    light = 1 + 0.08 * (ramp_y[:, None] + ramp_x[None, :]) / max(height, width)
    gain = rng.uniform(0.9, 1.1, 3).astype(np.float32) * rng.uniform(0.85, 1.15)
    offset = rng.uniform(-0.01, 0.03, 3)
    for band in range(3):
        img[..., band] *= light * gain[band]
        img[..., band] += offset[band]
    return img


def _clouds(
    rng: np.random.Generator, shape_yx: tuple[int, int], sc: _Scales, sun_xy: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Cloud opacity, and the same clouds moved along the shadow direction (their shadows)."""
    height, width = shape_yx
    shift = min(sc.px(rng.uniform(200, 800)), 0.2 * max(height, width))
    dy, dx = round(abs(shift * sun_xy[1])), round(abs(shift * sun_xy[0]))
    puffs = _noise(rng, (height + dy, width + dx), min(sc.px(700), max(height, width) / 3))
    threshold = np.quantile(puffs[::4, ::4], 1 - rng.uniform(0.03, 0.25))
    alpha = np.clip((puffs - threshold) / 0.7, 0, 1) * rng.uniform(0.6, 1.0)
    y0, x0 = (dy if sun_xy[1] > 0 else 0), (dx if sun_xy[0] > 0 else 0)
    cloud = alpha[y0 : y0 + height, x0 : x0 + width]
    shadow = alpha[dy - y0 : dy - y0 + height, dx - x0 : dx - x0 + width]
    return cloud, shadow


def _quantize(rng: np.random.Generator, img: np.ndarray, dtype: str) -> np.ndarray:
    """Add sensor noise and scale 0..1 to 0..255 (uint8) or 0..4095 (uint16), bands first."""
    noise = rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(0.003, 0.01)
    top = 255 if dtype == "uint8" else UINT16_MAX
    out = np.rint(np.clip(img + noise, 0, 1) * top).astype(dtype)
    return np.ascontiguousarray(out.transpose(2, 0, 1))
