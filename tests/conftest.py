"""Fixtures that write small real GeoTIFFs (coded scenes) and read results back."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry import shape

from geoseg.model.bf16_backbone import BF16_ENV
from geoseg.testing import write_coded_scene

# float32 on every CPU, so that figures compared across code paths hold on any machine (the
# bfloat16 path of CPUs with AMX is tested on its own, tests/test_bf16_backbone.py); the CLI
# tests' subprocesses inherit it
os.environ[BF16_ENV] = "0"

ORACLE = "geoseg.testing:OracleSegmenter"
UTM = "EPSG:32633"


def utm_transform(gsd_m: float) -> Affine:
    """A north-up grid of ``gsd_m`` metres in :data:`UTM`, where the coded scenes here lie."""
    return Affine(gsd_m, 0.0, 500_000.0, 0.0, -gsd_m, 4_000_000.0)


UTM_TRANSFORM = utm_transform(0.5)


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    """Put torch's thread count back after each test: a test that runs ``geoseg train
    --threads N`` in-process would otherwise set it for every later test of its worker."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture
def coded_scene(tmp_path: Path) -> Callable[..., Path]:
    """Write a coded scene from an id raster; returns its path."""

    def make(
        ids: np.ndarray,
        class_of: dict[int, int],
        *,
        name: str = "scene.tif",
        transform: Affine = UTM_TRANSFORM,
        crs: str | None = UTM,
        nodata: np.ndarray | None = None,
    ) -> Path:
        return write_coded_scene(
            tmp_path / name, ids, class_of, transform=transform, crs=crs, nodata_yx=nodata
        )

    return make


def truth_polygon(ids: np.ndarray, instance_id: int, transform: Affine) -> shapely.Geometry:
    """The pixel-exact outline of one painted instance, in the scene's CRS."""
    mask = ids == instance_id
    parts = [
        shape(g) for g, _ in features.shapes(mask.astype(np.uint8), mask=mask, transform=transform)
    ]
    return shapely.union_all(parts)


def assert_same_shape(got: shapely.Geometry, want: shapely.Geometry, tol: float = 1e-6) -> None:
    """Equal up to floating point: symmetric difference is a negligible share of the area."""
    diff = shapely.symmetric_difference(got, want).area
    assert diff <= tol * max(want.area, 1e-12), f"shapes differ by {diff} (area {want.area})"
