"""Bad inputs: a one-line error naming the file, exit 2, and nothing left in OUTDIR."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.testing import encode_instances
from tests.conftest import ORACLE, UTM, UTM_TRANSFORM


def geoseg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geoseg", *args], capture_output=True, text=True, timeout=120
    )


def write_tif(
    path: Path, *, crs: str | None = UTM, transform: Affine | None = UTM_TRANSFORM, size: int = 256
) -> Path:
    profile = {"driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8"}
    if crs:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    ids = np.zeros((size, size), dtype=np.int32)
    ids[10:40, 20:70] = 1
    data = encode_instances(ids, {1: 0})
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def missing(tmp: Path) -> Path:
    return tmp / "nope.tif"


def text_file(tmp: Path) -> Path:
    path = tmp / "notes.tif"
    path.write_text("this is not a GeoTIFF\n")
    return path


def truncated(tmp: Path) -> Path:
    path = write_tif(tmp / "cut.tif")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def no_crs(tmp: Path) -> Path:
    return write_tif(tmp / "nocrs.tif", crs=None)


def no_transform(tmp: Path) -> Path:
    return write_tif(tmp / "nogeo.tif", crs=None, transform=None)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (missing, "no such file"),
        (text_file, "not a readable raster"),
        (truncated, "cut.tif"),
        (no_crs, "--crs"),
        (no_transform, "no geotransform"),
    ],
)
def test_bad_scene_gives_one_line_and_exit_2(tmp_path: Path, make, words: str) -> None:
    scene = make(tmp_path)
    outdir = tmp_path / "out"
    proc = geoseg(
        "run",
        str(scene),
        "-o",
        str(outdir),
        "--model",
        ORACLE,
        "--tile-size",
        "128",
        "--overlap",
        "16",
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert len(errors) == 1 and str(scene) in errors[0] and words in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not outdir.exists() or not any(outdir.iterdir())


def test_scene_without_crs_runs_with_crs_option(tmp_path: Path) -> None:
    scene = no_crs(tmp_path)
    proc = geoseg(
        "-q",
        "run",
        str(scene),
        "-o",
        str(tmp_path / "out"),
        "--model",
        ORACLE,
        "--crs",
        "EPSG:32633",
        "--tile-size",
        "128",
        "--overlap",
        "16",
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "nocrs.gpkg").exists()


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [
        (["--tile-size", "8"], 2),
        (["--overlap", "600"], 2),
        (["--bands", "1,x"], 2),
        (["--bands", "7"], 2),
        (["--device", "tpu"], 2),
        (["--model", "no_such_mod:make"], 2),
        (["--min-score", "3"], 2),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, args: list[str], exit_code: int) -> None:
    scene = write_tif(tmp_path / "ok.tif")
    base = ["--model", ORACLE] if "--model" not in args else []
    proc = geoseg("run", str(scene), "-o", str(tmp_path / "out"), *base, *args)
    assert proc.returncode == exit_code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_help_explains_options() -> None:
    proc = geoseg("run", "--help")
    assert proc.returncode == 0
    for option in [
        "--tile-size",
        "--overlap",
        "--batch-size",
        "--device",
        "--min-score",
        "--bands",
        "--scheduler",
        "--simplify",
        "--crs",
        "--model",
        "Example",
    ]:
        assert option in proc.stdout
