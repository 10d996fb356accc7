"""The streaming stitcher gives exactly the objects of the global stitch, for any order in
which tiles finish and any batching, while holding only the objects near unfinished tiles.

Fragments are made as the pipeline makes them: a coded id-image is cut into each tile's mask
crops (optionally drawn a pixel too large or small per tile, as a real model does, with
scores), each crop becomes a pixel-exact polygon with :func:`geoseg.vectorize.crop_to_polygon`.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from geoseg.fragments import MaskCrop, touches_seam
from geoseg.grid import Tile, TileGrid
from geoseg.stitch import Fragment, StitchedObject, StreamingStitcher, stitch
from geoseg.vectorize import crop_to_polygon

TileFragments = dict[tuple[int, int], list[Fragment]]


def fragment(tile: Tile, mask: np.ndarray, label: int, score: float) -> Fragment:
    """One instance of one tile (``mask`` laid out like the tile's window), as the pipeline
    makes it: bounding-box crop, seam flag, pixel-exact polygon."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = MaskCrop(
        row_off=tile.window.row_off + int(r0),
        col_off=tile.window.col_off + int(c0),
        mask=mask[r0:r1, c0:c1],
        label=label,
        score=score,
        touches_seam=touches_seam(tile, int(r0), int(c0), int(r1), int(c1)),
    )
    return Fragment(tile, crop_to_polygon(crop), crop.label, crop.score, crop.touches_seam)


def cut_fragments(
    ids: np.ndarray,
    class_of: dict[int, int],
    grid: TileGrid,
    *,
    seed: int | None = None,
    duplicate_share: float = 0.0,
) -> TileFragments:
    """Each tile's fragments of a coded id-image. With a ``seed``, each instance is drawn
    one pixel too large or too small, differently in every tile, with a random score, and
    ``duplicate_share`` of them get a second, shifted copy with another score (a duplicate
    the model drew apart)."""
    out: TileFragments = {}
    for tile in grid:
        window = ids[tile.window.slices()]
        rng = np.random.default_rng(None if seed is None else (seed, *tile.index_yx))
        frags = []
        for k in np.unique(window[window > 0]).tolist():
            mask = window == k
            score = 1.0
            if seed is not None:
                op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
                mask = op(mask) if op(mask).any() else mask
                score = float(np.float32(rng.uniform(0.5, 1.0)))
            frags.append(fragment(tile, mask, class_of[k], score))
            if seed is not None and rng.random() < duplicate_share:
                shifted = np.roll(
                    mask, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), (0, 1)
                )
                if shifted.any():
                    frags.append(fragment(tile, shifted, class_of[k], round(score - 0.1, 3)))
        out[tile.index_yx] = frags
    return out


def canonical(objects: list[StitchedObject]) -> list[tuple]:
    """Objects as a sorted list of exact values (polygons as normalized WKB)."""
    return sorted(
        (o.label, o.score, o.n_fragments, shapely.to_wkb(shapely.normalize(o.polygon_px)))
        for o in objects
    )


def stream(
    grid: TileGrid, per_tile: TileFragments, batches: list[list[tuple[int, int]]]
) -> list[StitchedObject]:
    """Objects from feeding the batches in turn (finish() then has nothing left)."""
    stitcher = StreamingStitcher(grid)
    out: list[StitchedObject] = []
    frontier = stitcher.frontier_row()
    for batch in batches:
        found = stitcher.add(batch, [f for t in batch for f in per_tile[t]])
        # no object starts above the row the stitcher promised before this batch
        assert all(o.polygon_px.bounds[1] >= frontier for o in found)
        assert stitcher.frontier_row() >= frontier
        frontier = stitcher.frontier_row()
        out += found
    left = stitcher.finish()
    assert stitcher.frontier_row() == float("inf")
    assert not left  # the last tile's add() settles everything
    assert stitcher.n_fragments_held == 0 and stitcher.n_objects_held == 0
    return out


@st.composite
def coded_scenes(draw: st.DrawFn) -> tuple[np.ndarray, dict[int, int]]:
    """Rectangles and discs painted over each other: touching objects, ragged and split
    shapes, objects larger than a tile and objects across several tiles, three classes."""
    height, width = draw(st.integers(40, 180)), draw(st.integers(40, 180))
    ids = np.zeros((height, width), dtype=np.int32)
    yy, xx = np.mgrid[:height, :width]
    class_of = {}
    for k in range(1, draw(st.integers(1, 14)) + 1):
        r0, c0 = draw(st.integers(0, height - 2)), draw(st.integers(0, width - 2))
        size_h, size_w = draw(st.integers(2, 120)), draw(st.integers(2, 120))
        if draw(st.booleans()):
            ids[r0 : r0 + size_h, c0 : c0 + size_w] = k
        else:
            ids[(yy - r0) ** 2 + (xx - c0) ** 2 <= (size_h // 2) ** 2] = k
        class_of[k] = draw(st.integers(0, 2))
    return ids, class_of


@st.composite
def grids(draw: st.DrawFn, shape_yx: tuple[int, int]) -> TileGrid:
    tile = draw(st.integers(32, 72))
    overlap = draw(st.integers(max(1, tile // 8), tile // 2))
    return TileGrid.from_shape(shape_yx, tile_px=tile, overlap_px=overlap)


@st.composite
def batchings(draw: st.DrawFn, grid: TileGrid) -> list[list[tuple[int, int]]]:
    """The grid's tiles in a random order, cut into batches of random sizes."""
    order = draw(st.permutations([t.index_yx for t in grid]))
    batches, start = [], 0
    while start < len(order):
        size = draw(st.integers(1, 5))
        batches.append(order[start : start + size])
        start += size
    return batches


@settings(max_examples=40, deadline=None)
@given(scene=coded_scenes(), data=st.data())
def test_property_streaming_gives_the_objects_of_the_global_stitch(scene, data) -> None:
    ids, class_of = scene
    grid = data.draw(grids(ids.shape))
    noisy = data.draw(st.booleans())
    per_tile = cut_fragments(
        ids,
        class_of,
        grid,
        seed=data.draw(st.integers(0, 2**16)) if noisy else None,
        duplicate_share=data.draw(st.sampled_from([0.0, 0.3])) if noisy else 0.0,
    )
    every = [f for frags in per_tile.values() for f in frags]
    want = canonical(stitch(every))
    got = stream(grid, per_tile, data.draw(batchings(grid)))
    assert canonical(got) == want
    shuffled = data.draw(st.permutations(every))
    assert canonical(stitch(shuffled)) == want  # the global stitch ignores input order too


@settings(max_examples=15, deadline=None)
@given(scene=coded_scenes(), data=st.data())
def test_property_oracle_fragments_give_each_painted_object_once(scene, data) -> None:
    """With exact fragments, the objects cover the painted pixels exactly once, each the
    pixels of one painted instance, none lost (an instance that painting split into parts
    may come out in parts): the machinery still stitches, not just agrees with itself."""
    ids, class_of = scene
    grid = data.draw(grids(ids.shape))
    got = stream(grid, cut_fragments(ids, class_of, grid), data.draw(batchings(grid)))
    assert sum(o.polygon_px.area for o in got) == np.count_nonzero(ids)
    assert shapely.union_all([o.polygon_px for o in got]).area == np.count_nonzero(ids)
    centres_y, centres_x = np.mgrid[: ids.shape[0], : ids.shape[1]] + 0.5
    for o in got:
        assert len(np.unique(ids[shapely.contains_xy(o.polygon_px, centres_x, centres_y)])) == 1
    assert len(got) >= len([k for k in class_of if (ids == k).any()])


def test_row_by_row_holds_a_few_tile_rows_not_the_scene() -> None:
    """A tall scene of small houses (and one field two tiles wide) fed one tile row at a
    time: what the stitcher holds stays at a few rows' worth and does not grow."""
    grid = TileGrid.from_shape((48 * 20 + 16, 150), tile_px=64, overlap_px=16)
    ids = np.zeros(grid.shape_yx, dtype=np.int32)
    class_of = {}
    for k, (r, c) in enumerate(
        itertools.product(range(4, grid.shape_yx[0] - 12, 19), range(3, 140, 19))
    ):
        ids[r : r + 11, c : c + 12] = k + 1
        class_of[k + 1] = k % 3
    ids[600:700, 20:130] = len(class_of) + 1
    class_of[len(class_of) + 1] = 1
    per_tile = cut_fragments(ids, class_of, grid, seed=7)
    n_rows, n_cols = grid.shape_tiles_yx
    stitcher = StreamingStitcher(grid)
    out, held_fragments, held_objects = [], [], []
    for i in range(n_rows):
        row = [(i, j) for j in range(n_cols)]
        out += stitcher.add(row, [f for t in row for f in per_tile[t]])
        held_fragments.append(stitcher.n_fragments_held)
        held_objects.append(stitcher.n_objects_held)
    out += stitcher.finish()
    assert canonical(out) == canonical(stitch([f for fs in per_tile.values() for f in fs]))
    per_row = max(sum(len(per_tile[(i, j)]) for j in range(n_cols)) for i in range(n_rows))
    assert max(held_fragments) <= 2 * per_row, held_fragments
    assert max(held_objects) <= 3 * per_row // 2, held_objects
    assert max(held_fragments[-10:]) <= max(held_fragments[:10]) + per_row // 2
    assert len(out) > 200


def random_batchings(tiles: list[tuple[int, int]], n: int, seed: int = 0) -> list[list[list]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        order = [tiles[k] for k in rng.permutation(len(tiles))]
        cuts = sorted(rng.choice(np.arange(1, len(tiles)), rng.integers(0, 4), replace=False))
        out.append([list(part) for part in np.split(np.array(order), cuts)])
    return [[[tuple(t) for t in batch] for batch in batches] for batches in out]


def by_tile(grid: TileGrid, frags: list[Fragment]) -> TileFragments:
    return {t.index_yx: [f for f in frags if f.tile == t] for t in grid}


def test_a_chain_of_duplicates_is_decided_as_the_greedy_pass_does() -> None:
    """A (0.9) overlaps B (0.8) overlaps C (0.7), A and C apart, drawn by the middle tile of
    a 3 x 3 grid where no other tile sees them: B goes (A was kept), C stays (B, which it
    duplicates, was dropped), whatever the order the tiles finish in."""
    grid = TileGrid.from_shape((150, 150), tile_px=64, overlap_px=20)
    middle = grid.tile(1, 1)
    frags = []
    for c0, score in ((64, 0.9), (67, 0.8), (70, 0.7)):
        mask = np.zeros(grid.shape_yx, dtype=bool)
        mask[66:84, c0 : c0 + 12] = True
        frags.append(fragment(middle, mask[middle.window.slices()], 0, score))
    want = stitch(frags)
    assert sorted(o.score for o in want) == [0.7, 0.9]
    per_tile = by_tile(grid, frags)
    for batches in random_batchings([t.index_yx for t in grid], 40):
        got = stream(grid, per_tile, batches)
        assert canonical(got) == canonical(want)


def test_a_duplicate_drawn_apart_in_one_tile_goes_in_any_order() -> None:
    """A house near a seam, seen whole by its owner and cut by the next tile, which link;
    the owner also drew its left part as a second, nested instance with a lower score (IoU
    0.4, so the in-tile duplicate filter kept it): that one goes."""
    grid = TileGrid.from_shape((100, 120), tile_px=64, overlap_px=24)
    owner, next_tile = grid.tile(0, 0), grid.tile(0, 1)
    house, part = (np.zeros(grid.shape_yx, dtype=bool) for _ in range(2))
    house[20:40, 30:50] = True
    part[20:40, 30:38] = True
    frags = [
        fragment(owner, house[owner.window.slices()], 0, 0.8),
        fragment(owner, part[owner.window.slices()], 0, 0.7),
        fragment(next_tile, house[next_tile.window.slices()], 0, 0.9),
    ]
    want = stitch(frags)
    assert [(o.score, o.n_fragments, o.polygon_px.area) for o in want] == [(0.8, 2, 400)]
    per_tile = by_tile(grid, frags)
    for batches in random_batchings([t.index_yx for t in grid], 40):
        got = stream(grid, per_tile, batches)
        assert canonical(got) == canonical(want)


@pytest.mark.parametrize(("small", "large"), [(0.8, 0.9), (0.9, 0.8)])
def test_a_duplicate_waits_for_its_rival_and_a_kept_object_is_remembered(
    small: float, large: float
) -> None:
    """In a row of four tiles, a small object and a larger one it duplicates (IoU 0.5) are
    both complete once tiles 0-2 are in, but a third object running into tile 3 keeps the
    larger one's box undecided until tile 3 comes: the small one must wait for it (when
    the large one is better) or be remembered until it is decided (when it is worse)."""
    grid = TileGrid.from_shape((60, 200), tile_px=64, overlap_px=16)
    assert grid.shape_tiles_yx == (1, 4)
    frags = []
    for (rows, cols), score in (
        ((slice(10, 30), slice(20, 40)), small),  # seen by tile 0 only
        ((slice(10, 30), slice(20, 60)), large),  # tiles 0, 1
        ((slice(40, 55), slice(70, 150)), 0.7),  # tiles 1, 2, 3
    ):
        painted = np.zeros(grid.shape_yx, dtype=bool)
        painted[rows, cols] = True
        for tile in grid:
            window = painted[tile.window.slices()]
            if window.any():
                frags.append(fragment(tile, window, 0, score))
    want = stitch(frags)
    assert sorted(o.score for o in want) == [0.7, 0.9]
    per_tile = by_tile(grid, frags)
    orders = [[[(0, 0)], [(0, 1)], [(0, 2)], [(0, 3)]], [[(0, 0), (0, 1), (0, 2)], [(0, 3)]]]
    for batches in orders + random_batchings([t.index_yx for t in grid], 20):
        got = stream(grid, per_tile, batches)
        assert canonical(got) == canonical(want)


def test_objects_come_out_before_the_end() -> None:
    grid = TileGrid.from_shape((400, 100), tile_px=64, overlap_px=16)
    ids = np.zeros(grid.shape_yx, dtype=np.int32)
    ids[10:20, 10:20] = 1
    ids[370:380, 10:20] = 2
    per_tile = cut_fragments(ids, {1: 0, 2: 0}, grid)
    stitcher = StreamingStitcher(grid)
    early = []
    for i in range(4):
        row = [(i, j) for j in range(grid.shape_tiles_yx[1])]
        early += stitcher.add(row, [f for t in row for f in per_tile[t]])
    assert len(early) == 1 and early[0].polygon_px.bounds == (10, 10, 20, 20)


def test_misuse_is_refused() -> None:
    grid = TileGrid.from_shape((150, 100), tile_px=64, overlap_px=16)
    stitcher = StreamingStitcher(grid)
    stitcher.add([(0, 0)], [])
    with pytest.raises(ValueError, match="already added"):
        stitcher.add([(0, 0)], [])
    with pytest.raises(ValueError, match="not in a grid"):
        stitcher.add([(9, 9)], [])
    mask = np.ones((5, 5), dtype=bool)
    with pytest.raises(ValueError, match="call that marks it finished"):
        stitcher.add([(0, 1)], [fragment(grid.tile(1, 1), mask, 0, 1.0)])
    other_grid = TileGrid.from_shape((150, 100), tile_px=64, overlap_px=20)
    with pytest.raises(ValueError, match="another grid"):
        stitcher.add([(1, 1)], [fragment(other_grid.tile(1, 1), mask, 0, 1.0)])
    with pytest.raises(ValueError, match=r"tiles were never added.*\(1, 0\)"):
        stitcher.finish()


def test_identical_fragments_give_one_object() -> None:
    grid = TileGrid.from_shape((100, 100), tile_px=64, overlap_px=16)
    mask = np.zeros((64, 64), dtype=bool)
    mask[40:60, 40:60] = True  # across the seams of the first tile
    frags = [fragment(grid.tile(0, 0), mask, 0, 0.9) for _ in range(2)]
    assert len(stitch(frags)) == 1
    assert canonical(stream(grid, by_tile(grid, frags), [[t.index_yx] for t in grid])) == (
        canonical(stitch(frags))
    )
