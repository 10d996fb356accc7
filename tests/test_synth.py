"""Synthetic scenes: labels match pixels, sizes follow the GSD, files are complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio import features

from geoseg.cli import main
from geoseg.errors import UserInputError
from geoseg.learn.synth import CLASSES, make_scene, render_scene, write_scene
from geoseg.learn.synth import labels as synth_labels
from geoseg.learn.synth.constants import MIN_FIELD_AREA_M2


@pytest.fixture(scope="module")
def scene():
    return render_scene((160, 128), gsd_m=1.0, seed=3)


def _rect_sides(geoms) -> np.ndarray:
    """Short and long side of each polygon's minimum rotated rectangle, ``(n, 2)``."""
    rects = shapely.oriented_envelope(np.asarray(geoms))
    coords = shapely.get_coordinates(rects).reshape(len(rects), 5, 2)
    return np.sort(np.linalg.norm(coords[:, 1:3] - coords[:, 0:2], axis=2), axis=1)


def _extent_px(geoms, gsd_m: float) -> np.ndarray:
    """Short side of each polygon's minimum rotated rectangle, in pixels."""
    return _rect_sides(geoms)[:, 0] / gsd_m


def test_make_scene_returns_georeferenced_image_and_labels():
    image, labels, transform, crs = make_scene((160, 128), gsd_m=1.0, seed=3)
    assert image.shape == (3, 128, 160) and image.dtype == np.uint8
    assert transform.a == 1.0 and transform.e == -1.0 and transform.b == transform.d == 0
    assert crs.to_epsg() is not None and 32601 <= crs.to_epsg() <= 32660
    assert labels.crs == crs
    assert list(labels.columns) == ["id", "class", "geometry"]
    assert set(labels["class"]) == set(CLASSES)
    assert labels.geometry.is_valid.all() and (labels.geom_type == "Polygon").all()
    left, top = transform.c, transform.f
    assert labels.total_bounds[0] >= left and labels.total_bounds[2] <= left + 160
    assert labels.total_bounds[1] >= top - 128 and labels.total_bounds[3] <= top


def _burnt(scene) -> np.ndarray:
    return features.rasterize(
        zip(scene.labels.geometry, scene.labels["id"], strict=True),
        out_shape=scene.ids_yx.shape,
        transform=scene.transform,
        dtype="int32",
    )


def test_labels_match_the_painted_pixels_exactly(scene):
    np.testing.assert_array_equal(_burnt(scene), scene.ids_yx)
    assert set(np.unique(scene.ids_yx)) == {0, *scene.labels["id"]}
    assert np.bincount(scene.ids_yx.ravel())[1:].min() >= 12


def test_field_scraps_are_neither_labelled_nor_drawn(monkeypatch):
    """Roads and the scene's edge cut scraps of a few m² from the parcels; at 0.5 m they
    would be hundreds of pixels. A field piece under 300 m² is left out and its ground
    painted as the land around it; everything else stays as it was."""
    scene = render_scene((256, 256), gsd_m=0.5, seed=2)
    monkeypatch.setattr(synth_labels, "MIN_FIELD_AREA_M2", 0.0)
    with_scraps = render_scene((256, 256), gsd_m=0.5, seed=2)

    def fields(s):
        return s.labels[s.labels["class"] == "field"]

    assert (fields(with_scraps).area < MIN_FIELD_AREA_M2).sum() >= 3
    assert len(fields(scene)) and fields(scene).area.min() >= MIN_FIELD_AREA_M2
    assert (
        len(fields(with_scraps)) - len(fields(scene))
        == (fields(with_scraps).area < MIN_FIELD_AREA_M2).sum()
    )
    others = [
        s.labels[s.labels["class"] != "field"].geometry.to_numpy() for s in (scene, with_scraps)
    ]
    assert len(others[0]) == len(others[1]) and shapely.equals(*others).all()
    np.testing.assert_array_equal(_burnt(scene), scene.ids_yx)
    scraps = (with_scraps.ids_yx > 0) & (scene.ids_yx == 0)
    assert scraps.sum() >= 12
    np.testing.assert_array_equal(scene.image[:, ~scraps], with_scraps.image[:, ~scraps])
    assert not np.array_equal(scene.image[:, scraps], with_scraps.image[:, scraps])


def test_same_seed_same_scene_other_seed_other_scene():
    a = render_scene((96, 64), gsd_m=2.0, seed=11)
    b = render_scene((96, 64), gsd_m=2.0, seed=11)
    c = render_scene((96, 64), gsd_m=2.0, seed=12)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.labels.geometry.geom_equals(b.labels.geometry).all() and a.crs == b.crs
    assert not np.array_equal(a.image, c.image)


def test_uint16_is_the_same_scene_in_12_bits():
    u8 = render_scene((64, 64), gsd_m=2.0, seed=5, dtype="uint8")
    u16 = render_scene((64, 64), gsd_m=2.0, seed=5, dtype="uint16")
    assert u16.image.dtype == np.uint16 and u16.image.max() <= 4095
    rescaled = u16.image.astype(float) * 255 / 4095
    assert np.abs(rescaled - u8.image).max() <= 1.0
    assert u8.labels.geometry.geom_equals(u16.labels.geometry).all()


@pytest.mark.parametrize("gsd_m", [0.5, 2.0, 10.0])
def test_every_class_present_and_large_enough_at_any_gsd(gsd_m):
    scene = render_scene((256, 256), gsd_m=gsd_m, seed=0)
    labels = scene.labels
    for cls in CLASSES:
        geoms = labels.geometry[labels["class"] == cls]
        assert len(geoms), f"no {cls} at {gsd_m} m"
        bounds = geoms.bounds
        extent_px = np.maximum(bounds.maxx - bounds.minx, bounds.maxy - bounds.miny) / gsd_m
        assert extent_px.max() >= 6, f"{cls} too small at {gsd_m} m"


def test_buildings_are_at_least_6_px_wide_at_coarse_gsd():
    scene = render_scene((256, 256), gsd_m=10.0, seed=1)
    edge = shapely.box(*scene.labels.total_bounds).boundary
    buildings = scene.labels[scene.labels["class"] == "building"]
    whole = buildings[~buildings.geometry.intersects(edge.buffer(1.0))]
    assert len(whole) and _extent_px(whole.geometry, 10.0).min() >= 5.99


def test_real_world_sizes_at_fine_gsd():
    scene = render_scene((512, 512), gsd_m=0.5, seed=2)
    labels = scene.labels.assign(short_m=_extent_px(scene.labels.geometry, 1.0))
    buildings = labels[labels["class"] == "building"]
    assert buildings.short_m.max() <= 31  # 8-30 m houses, not scaled up at 0.5 m
    bounds = labels.geometry.bounds
    length_m = np.maximum(bounds.maxx - bounds.minx, bounds.maxy - bounds.miny)
    assert length_m[labels["class"] == "ship"].max() <= 260 * 1.5  # diagonal of a 250 m hull


def _ship_lengths_m(labels) -> np.ndarray:
    return _rect_sides(labels.geometry[labels["class"] == "ship"].to_numpy())[:, 1]


def test_marinas_of_small_boats_only_at_fine_gsd():
    """At 0.5 m some piers are marina berths: rows of 5-15 m boats, each its own instance,
    touching none of the others; at 2 m no ship is that small (berths would be specks)."""
    fine = render_scene((512, 512), gsd_m=0.5, seed=2).labels
    lengths = _ship_lengths_m(fine)
    assert (lengths < 16).sum() >= 20 and lengths.min() >= 4.5
    boats = fine.geometry[fine["class"] == "ship"].to_numpy()
    assert not shapely.overlaps(boats[:, None], boats[None, :]).any()
    for seed in range(6):
        assert _ship_lengths_m(render_scene((512, 512), gsd_m=2.0, seed=seed).labels).min() > 19


def test_adjacent_instances_touch_without_overlapping():
    labels = render_scene((400, 400), gsd_m=1.0, seed=0).labels
    geoms = labels.geometry.to_numpy()
    tree = shapely.STRtree(geoms)
    pairs = tree.query(geoms, predicate="intersects")
    pairs = pairs[:, pairs[0] < pairs[1]]
    overlap = shapely.area(shapely.intersection(geoms[pairs[0]], geoms[pairs[1]]))
    assert (overlap < 1e-6).all()
    shared = shapely.length(shapely.intersection(geoms[pairs[0]], geoms[pairs[1]]))
    touching = labels["class"].to_numpy()[pairs[0][shared > 1.0]]
    assert "building" in set(touching)  # terraced houses


def test_touching_houses_show_the_wall_between_them():
    """A party wall darkens the edge one terrace unit shares with the next, so the pixels
    tell the instances apart (without it the edge is as bright as the roofs, ratio ~0.95)."""
    from scipy import ndimage

    scene = render_scene((400, 400), gsd_m=1.0, seed=2)
    ids, grey = scene.ids_yx, scene.image.astype(np.float32).mean(axis=0)
    building = dict(zip(scene.labels["id"], scene.labels["class"] == "building", strict=True))
    pairs = set()
    for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1], ids[1:])):
        edge = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted((int(x), int(y)))) for x, y in zip(a[edge], b[edge], strict=True)}
    ratios = []
    for a, b in (p for p in pairs if building[p[0]] and building[p[1]]):
        sides = []
        for me, other in ((a, b), (b, a)):
            mine = ids == me
            border = mine & ndimage.binary_dilation(ids == other)
            sides.append(grey[border].mean() / np.median(grey[mine]))
        ratios.append(min(sides))
    assert len(ratios) >= 10
    assert np.median(ratios) < 0.85 and np.mean(np.array(ratios) < 0.9) > 0.75, sorted(ratios)


def _overlap_areas(labels) -> np.ndarray:
    geoms = labels.geometry.to_numpy()
    pairs = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pairs = pairs[:, pairs[0] < pairs[1]]
    return shapely.area(shapely.intersection(geoms[pairs[0]], geoms[pairs[1]]))


def test_roof_details_change_roof_pixels_only(monkeypatch):
    """Tanks, stair houses, parapets and metal ribs come from their own generator: the same
    seed without them has the same labels, and the image differs on building pixels only."""
    from geoseg.learn.synth import scene as synth_scene

    detailed = render_scene((384, 384), gsd_m=0.3, seed=4, dense_town=True)
    plain_buildings = synth_scene._add_buildings

    def without_details(*args, **kwargs):
        return plain_buildings(*args, **{**kwargs, "details": None})

    monkeypatch.setattr(synth_scene, "_add_buildings", without_details)
    plain = render_scene((384, 384), gsd_m=0.3, seed=4, dense_town=True)
    assert plain.labels.geometry.geom_equals(detailed.labels.geometry).all()
    np.testing.assert_array_equal(plain.ids_yx, detailed.ids_yx)
    changed = (plain.image != detailed.image).any(axis=0)
    classes = np.array(["", *detailed.labels["class"]], dtype=object)[detailed.ids_yx]
    assert changed.sum() > 200  # details were drawn
    assert (classes[changed] == "building").all()


def test_roof_details_only_in_a_dense_town(monkeypatch):
    """The default scenes (the evaluation seeds among them) stay as they were drawn."""
    from geoseg.learn.synth import buildings

    def no_details(*args, **kwargs):
        raise AssertionError("roof details drawn outside a dense town")

    monkeypatch.setattr(buildings, "roof_look", no_details)
    assert (render_scene((384, 384), gsd_m=0.3, seed=4).labels["class"] == "building").any()
    with pytest.raises(AssertionError, match="roof details"):
        render_scene((384, 384), gsd_m=0.3, seed=4, dense_town=True)


def test_a_dense_town_packs_more_houses_without_overlaps():
    default = render_scene((512, 512), gsd_m=0.3, seed=9).labels
    dense = render_scene((512, 512), gsd_m=0.3, seed=9, dense_town=True).labels
    n_default = int((default["class"] == "building").sum())
    n_dense = int((dense["class"] == "building").sum())
    assert n_dense >= 2 * max(n_default, 10), (n_default, n_dense)
    assert (_overlap_areas(dense) < 1e-6).all()


def test_write_scene_writes_tiled_geotiff_and_gpkg_atomically(tmp_path: Path):
    tif, gpkg = write_scene(tmp_path / "s.tif", size_wh=(96, 80), gsd_m=2.0, seed=4)
    assert gpkg == tmp_path / "s.gpkg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.gpkg", "s.tif"]
    with rasterio.open(tif) as src:
        assert (src.count, src.width, src.height, src.dtypes[0]) == (3, 96, 80, "uint8")
        assert src.profile["tiled"] and src.compression.name == "deflate"
        assert src.crs.to_epsg() is not None and src.res == (2.0, 2.0)
        crs = src.crs
    assert [name for name, _ in pyogrio.list_layers(gpkg)] == ["labels"]
    labels = pyogrio.read_dataframe(gpkg)
    assert labels.crs.to_epsg() == crs.to_epsg() and set(labels["class"]) <= set(CLASSES)


def test_write_scene_refuses_a_missing_folder(tmp_path: Path):
    with pytest.raises(UserInputError, match="no such folder"):
        write_scene(tmp_path / "nope" / "s.tif", size_wh=(64, 64))


@pytest.mark.parametrize(
    "kwargs",
    [{"size_wh": (8, 64)}, {"gsd_m": 0.0}, {"dtype": "float32"}, {"seed": -1}],
)
def test_bad_arguments_are_user_errors(kwargs):
    with pytest.raises(UserInputError):
        render_scene(**kwargs)


def test_cli_writes_a_scene(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(tmp_path / "a.tif"), "--size", "64", "48", "--gsd", "3", "--seed", "2"])
    assert exit_info.value.code == 0
    assert (tmp_path / "a.tif").is_file() and (tmp_path / "a.gpkg").is_file()


def test_cli_writes_a_dense_town(tmp_path: Path):
    counts = []
    for name, extra in (("plain", []), ("dense", ["--dense-town"])):
        args = ["synth", str(tmp_path / f"{name}.tif"), "--size", "384", "384", "--gsd", "0.3"]
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--seed", "2", *extra])
        assert exit_info.value.code == 0
        labels = pyogrio.read_dataframe(tmp_path / f"{name}.gpkg", layer="labels")
        counts.append(int((labels["class"] == "building").sum()))
    assert counts[1] > 2 * counts[0], counts


@pytest.mark.parametrize(
    "args",
    [["--dtype", "float32"], ["--gsd", "0"], ["--size", "64"]],
)
def test_cli_usage_errors_exit_2(tmp_path: Path, args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(tmp_path / "a.tif"), *args])
    assert exit_info.value.code == 2
    assert not list(tmp_path.iterdir())


def test_cli_missing_folder_is_a_one_line_error(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(tmp_path / "no" / "a.tif"), "--size", "64", "64"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and "no such folder" in err and "\n" not in err
