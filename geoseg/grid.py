"""The tile grid: overlapping windows over a scene, and which pixels each tile owns.

Glossary (used across geoseg):

- **scene**: the whole raster, ``shape_yx`` pixels.
- **tile**: a ``tile_px`` x ``tile_px`` window that the model sees at once. Tiles overlap by
  ``overlap_px`` (the *halo*, Dask's *depth*) so that an object near a tile border is seen
  whole by at least one tile.
- **core**: the part of a tile's window that the tile *owns*. The cores partition the scene:
  every pixel is owned by exactly one tile. Between two neighbouring tiles the core boundary
  runs through the middle of their shared strip, so every owned pixel has at least
  ``overlap_px // 2`` pixels of context on each side that is a seam (more at the last tile
  of a row or column, which is shifted back to end on the scene edge instead of hanging over
  it).
- **seam side**: a side of a tile's window that lies inside the scene (not on its edge).
  An instance that touches a seam side may be cut there: it is a fragment, to be matched with
  its neighbours' fragments (see :mod:`geoseg.stitch`).

Why the overlap must exceed the object size: an object of at most ``overlap_px // 2`` pixels
across is whole in every tile that owns a part of it, and an object of at most ``overlap_px``
pixels is whole in at least one tile. Larger objects (a 1 km field in 0.5 m imagery) are seen
only in pieces; their pieces are merged by their agreement in the shared strips, which is
the weaker evidence, so set the overlap above the size of the objects you care about most.

This module needs only the standard library; it imports neither rasterio nor torch.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

from geoseg.errors import UserInputError

__all__ = ["PixelWindow", "Tile", "TileGrid", "axis_offsets", "core_bounds"]


@dataclass(frozen=True, slots=True)
class PixelWindow:
    """A rectangle of whole pixels: rows ``row_off:row_off+height``, columns ``col_off:...``."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def row_stop(self) -> int:
        return self.row_off + self.height

    @property
    def col_stop(self) -> int:
        return self.col_off + self.width

    @property
    def bbox_xyxy(self) -> tuple[int, int, int, int]:
        """``(col_min, row_min, col_max, row_max)``: the window in pixel-corner coordinates."""
        return (self.col_off, self.row_off, self.col_stop, self.row_stop)

    @property
    def area_px(self) -> int:
        return self.height * self.width

    def intersection(self, other: PixelWindow) -> PixelWindow | None:
        """The overlap of two windows, or ``None`` when they do not overlap."""
        row0, col0 = max(self.row_off, other.row_off), max(self.col_off, other.col_off)
        row1, col1 = min(self.row_stop, other.row_stop), min(self.col_stop, other.col_stop)
        if row1 <= row0 or col1 <= col0:
            return None
        return PixelWindow(row0, col0, row1 - row0, col1 - col0)

    def relative_to(self, outer: PixelWindow) -> PixelWindow:
        """This window in the pixel coordinates of ``outer`` (whose origin becomes 0, 0)."""
        return PixelWindow(
            self.row_off - outer.row_off, self.col_off - outer.col_off, self.height, self.width
        )

    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices for indexing a NumPy array laid out like this window."""
        return slice(self.row_off, self.row_stop), slice(self.col_off, self.col_stop)

    def __dask_tokenize__(self) -> tuple:
        return ("PixelWindow", self.row_off, self.col_off, self.height, self.width)


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    ``window`` is what is read from the scene (clipped to the scene); ``core`` is what the tile
    owns; ``seam_sides`` names the sides of ``window`` that lie inside the scene, among
    ``"top"``, ``"bottom"``, ``"left"``, ``"right"``.
    """

    index_yx: tuple[int, int]
    window: PixelWindow
    core: PixelWindow
    seam_sides: frozenset[str]

    def __dask_tokenize__(self) -> tuple:
        return ("Tile", self.index_yx, self.window, self.core, tuple(sorted(self.seam_sides)))


def axis_offsets(length_px: int, tile_px: int, overlap_px: int) -> list[int]:
    """Start offsets of the tiles along one axis of ``length_px`` pixels.

    Tiles step by ``tile_px - overlap_px``; the last one is shifted back to end exactly on the
    scene edge, so no tile hangs over the scene and the edge is always covered. A scene shorter
    than one tile gets a single tile at 0.

    >>> axis_offsets(1000, 512, 128)
    [0, 384, 488]
    >>> axis_offsets(300, 512, 128)
    [0]
    """
    if length_px <= tile_px:
        return [0]
    stride = tile_px - overlap_px
    count = math.ceil((length_px - tile_px) / stride) + 1
    return [min(i * stride, length_px - tile_px) for i in range(count)]


def core_bounds(offsets: list[int], tile_px: int, length_px: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each tile's core along one axis: midpoints of the shared strips.

    >>> core_bounds([0, 384, 488], 512, 1000)
    [(0, 448), (448, 692), (692, 1000)]
    """
    cuts = [0]
    for prev, nxt in itertools.pairwise(offsets):
        prev_stop = min(prev + tile_px, length_px)
        cuts.append((nxt + prev_stop) // 2)
    cuts.append(length_px)
    return list(itertools.pairwise(cuts))


_Axes = tuple[
    tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]
]


@functools.lru_cache(maxsize=64)
def _grid_axes(shape_yx: tuple[int, int], tile_px: int, overlap_px: int) -> _Axes:
    """Tile offsets and cores along both axes (cached: every ``TileGrid.tile`` call needs them)."""
    height, width = shape_yx
    rows = axis_offsets(height, tile_px, overlap_px)
    cols = axis_offsets(width, tile_px, overlap_px)
    return (
        tuple(rows),
        tuple(cols),
        tuple(core_bounds(rows, tile_px, height)),
        tuple(core_bounds(cols, tile_px, width)),
    )


@dataclass(frozen=True, slots=True)
class TileGrid:
    """Overlapping tiles that cover a scene of ``shape_yx`` pixels, edges included.

    >>> grid = TileGrid.from_shape((1000, 700), tile_px=512, overlap_px=128)
    >>> len(grid), grid.shape_tiles_yx
    (6, (3, 2))
    """

    shape_yx: tuple[int, int]
    tile_px: int
    overlap_px: int

    @classmethod
    def from_shape(
        cls, shape_yx: tuple[int, int], *, tile_px: int = 512, overlap_px: int = 128
    ) -> TileGrid:
        """Validate the sizes and build the grid."""
        height, width = shape_yx
        if height < 1 or width < 1:
            raise UserInputError(f"scene of {height} x {width} pixels has nothing to tile")
        if tile_px < 32:
            raise UserInputError(f"--tile-size {tile_px} is too small: use at least 32 pixels")
        if not 1 <= overlap_px < tile_px:
            raise UserInputError(
                f"--overlap {overlap_px} must be at least 1 (objects cut by a tile border are "
                f"matched in the strip two tiles share) and smaller than --tile-size {tile_px}"
            )
        return cls((int(height), int(width)), int(tile_px), int(overlap_px))

    def _axes(self) -> _Axes:
        return _grid_axes(self.shape_yx, self.tile_px, self.overlap_px)

    @property
    def shape_tiles_yx(self) -> tuple[int, int]:
        rows, cols, _, _ = self._axes()
        return len(rows), len(cols)

    def __len__(self) -> int:
        n_rows, n_cols = self.shape_tiles_yx
        return n_rows * n_cols

    def __iter__(self) -> Iterator[Tile]:
        n_rows, n_cols = self.shape_tiles_yx
        for i in range(n_rows):
            for j in range(n_cols):
                yield self.tile(i, j)

    def in_bands(self, band_rows: int) -> list[Tile]:
        """Every tile, in bands of ``band_rows`` tile rows swept column by column (top to
        bottom inside a column); ``band_rows=1`` is row-major order.

        A streaming stitcher can finish an object once every tile around it is done: in this
        order that happens a column behind the sweep, so at the scene's last tile only the
        last columns of the last band still wait, not the last two whole tile rows.

        >>> grid = TileGrid.from_shape((1000, 700), tile_px=512, overlap_px=128)
        >>> [t.index_yx for t in grid.in_bands(2)]
        [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (2, 1)]
        """
        if band_rows < 1:
            raise ValueError(f"band_rows {band_rows} must be at least 1")
        n_rows, n_cols = self.shape_tiles_yx
        return [
            self.tile(i, j)
            for top in range(0, n_rows, band_rows)
            for j in range(n_cols)
            for i in range(top, min(top + band_rows, n_rows))
        ]

    def tile(self, i: int, j: int) -> Tile:
        """The tile in tile-row ``i``, tile-column ``j``."""
        rows, cols, row_cores, col_cores = self._axes()
        height, width = self.shape_yx
        row0, col0 = rows[i], cols[j]
        window = PixelWindow(
            row0, col0, min(self.tile_px, height - row0), min(self.tile_px, width - col0)
        )
        (crow0, crow1), (ccol0, ccol1) = row_cores[i], col_cores[j]
        core = PixelWindow(crow0, ccol0, crow1 - crow0, ccol1 - ccol0)
        seams = set()
        if window.row_off > 0:
            seams.add("top")
        if window.row_stop < height:
            seams.add("bottom")
        if window.col_off > 0:
            seams.add("left")
        if window.col_stop < width:
            seams.add("right")
        return Tile((i, j), window, core, frozenset(seams))

    def __dask_tokenize__(self) -> tuple:
        return ("TileGrid", self.shape_yx, self.tile_px, self.overlap_px)
