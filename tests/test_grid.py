"""Tile-grid invariants: tiles cover the scene, cores partition it, every pixel has one owner."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import UserInputError
from geoseg.grid import TileGrid, axis_offsets


@st.composite
def grids(draw: st.DrawFn) -> TileGrid:
    tile = draw(st.integers(32, 200))
    overlap = draw(st.integers(1, tile - 1))
    shape = (draw(st.integers(1, 400)), draw(st.integers(1, 400)))
    return TileGrid.from_shape(shape, tile_px=tile, overlap_px=overlap)


@settings(max_examples=60, deadline=None)
@given(grids())
def test_cores_partition_the_scene_and_lie_in_their_tiles(grid: TileGrid) -> None:
    owners = np.zeros(grid.shape_yx, dtype=np.int32)
    covered = np.zeros(grid.shape_yx, dtype=bool)
    for tile in grid:
        owners[tile.core.slices()] += 1
        covered[tile.window.slices()] = True
        assert tile.core.intersection(tile.window) == tile.core
        assert tile.window.height <= grid.tile_px and tile.window.width <= grid.tile_px
    assert (owners == 1).all(), "every pixel has exactly one owner"
    assert covered.all()


@settings(max_examples=60, deadline=None)
@given(grids())
def test_owned_pixels_have_half_the_overlap_as_context_on_seams(grid: TileGrid) -> None:
    margin = grid.overlap_px // 2
    for tile in grid:
        w, c = tile.window, tile.core
        if "left" in tile.seam_sides:
            assert c.col_off - w.col_off >= margin
        if "right" in tile.seam_sides:
            assert w.col_stop - c.col_stop >= margin
        if "top" in tile.seam_sides:
            assert c.row_off - w.row_off >= margin
        if "bottom" in tile.seam_sides:
            assert w.row_stop - c.row_stop >= margin


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5000), st.integers(32, 600), st.data())
def test_offsets_step_by_stride_and_end_on_the_edge(length: int, tile: int, data) -> None:
    overlap = data.draw(st.integers(1, tile - 1))
    offsets = axis_offsets(length, tile, overlap)
    assert offsets[0] == 0
    assert offsets == sorted(set(offsets))
    if length > tile:
        assert offsets[-1] == length - tile
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(offsets))


@settings(max_examples=40, deadline=None)
@given(grids(), st.integers(1, 6))
def test_bands_give_every_tile_once_a_column_at_a_time(grid: TileGrid, band_rows: int) -> None:
    order = [t.index_yx for t in grid.in_bands(band_rows)]
    assert sorted(order) == sorted(t.index_yx for t in grid)
    bands = [i // band_rows for i, _ in order]
    assert bands == sorted(bands)  # band after band
    for band in set(bands):  # inside a band: column by column, top to bottom
        inside = [(j, i) for i, j in order if i // band_rows == band]
        assert inside == sorted(inside)
    if band_rows == 1:
        assert order == [t.index_yx for t in grid]


def test_scene_smaller_than_a_tile_is_one_tile_without_seams() -> None:
    grid = TileGrid.from_shape((40, 90), tile_px=128, overlap_px=32)
    (tile,) = list(grid)
    assert tile.window.height == 40 and tile.window.width == 90
    assert tile.seam_sides == frozenset()


@pytest.mark.parametrize(("tile", "overlap"), [(16, 4), (128, 0), (128, 128), (128, 200)])
def test_bad_sizes_are_refused(tile: int, overlap: int) -> None:
    with pytest.raises(UserInputError):
        TileGrid.from_shape((100, 100), tile_px=tile, overlap_px=overlap)


def test_grid_values_are_hashable_and_tokenize_deterministically() -> None:
    from dask.base import tokenize

    a = TileGrid.from_shape((300, 300), tile_px=128, overlap_px=32)
    b = TileGrid.from_shape((300, 300), tile_px=128, overlap_px=32)
    assert hash(a) == hash(b) and tokenize(list(a)) == tokenize(list(b))


def test_light_modules_do_not_import_torch_or_rasterio() -> None:
    code = (
        "import sys, geoseg, geoseg.grid, geoseg.stitch; "
        "print(any(m in sys.modules for m in ('torch', 'rasterio', 'dask')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
