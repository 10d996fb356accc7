"""Resolving `geoseg batch` inputs: folders, globs, manifests, STAC catalogues (no raster read)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pystac
import pytest

from geoseg.batch.inputs import output_stems, resolve_inputs
from geoseg.errors import UserInputError

WHEN = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not read here")
    return path


def stac_item(item_id: str, assets: dict[str, pystac.Asset]) -> pystac.Item:
    item = pystac.Item(id=item_id, geometry=None, bbox=None, datetime=WHEN, properties={})
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def test_folders_are_searched_recursively_for_geotiffs_only(tmp_path: Path) -> None:
    a = touch(tmp_path / "archive" / "2023" / "a.tif")
    b = touch(tmp_path / "archive" / "2024" / "deep" / "b.TIFF")
    touch(tmp_path / "archive" / "2024" / "notes.txt")
    touch(tmp_path / "archive" / "2024" / "a.tif.aux.xml")
    assert resolve_inputs([tmp_path / "archive"]) == [a, b]


def test_each_scene_once_in_input_order(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "x" / "a.tif"), touch(tmp_path / "x" / "b.tif")
    got = resolve_inputs([b, str(tmp_path / "x" / "*.tif"), tmp_path / "x"])
    assert got == [b, a]


def test_manifest_keeps_listed_paths_that_do_not_exist(tmp_path: Path) -> None:
    a = touch(tmp_path / "data" / "a.tif")
    manifest = tmp_path / "lists" / "scenes.txt"
    manifest.parent.mkdir()
    manifest.write_text(f"# archive\n\n../data/a.tif\n  {tmp_path / 'gone.tif'}  \n")
    # a listed scene that is missing is reported as a failed scene by the batch, not refused
    assert resolve_inputs([manifest]) == [a, tmp_path / "gone.tif"]


def test_command_line_paths_and_patterns_must_match(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="no such file"):
        resolve_inputs([tmp_path / "missing.tif"])
    with pytest.raises(UserInputError, match="matches no file"):
        resolve_inputs([str(tmp_path / "*.tif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no scenes found"):
        resolve_inputs([tmp_path / "empty"])


def test_stac_catalogue_with_relative_asset_hrefs(tmp_path: Path) -> None:
    scenes = [touch(tmp_path / "stac" / "data" / f"s{k}.tif") for k in range(2)]
    catalog = pystac.Catalog(id="region", description="a region over the years")
    catalog.add_item(
        stac_item("by-key", {"visual": pystac.Asset(href=str(scenes[0]), roles=["data"])})
    )
    catalog.add_item(
        stac_item(
            "by-role",
            {
                "B04": pystac.Asset(href=str(scenes[1]), media_type=pystac.MediaType.GEOTIFF),
                "true-colour": pystac.Asset(
                    href=str(scenes[1]), media_type=pystac.MediaType.COG, roles=["visual"]
                ),
            },
        )
    )
    catalog.normalize_hrefs(str(tmp_path / "stac" / "catalog"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    path = tmp_path / "stac" / "catalog" / "catalog.json"
    assert resolve_inputs([path]) == scenes
    with pytest.raises(UserInputError, match="item 'by-key' has no asset 'B04'"):
        resolve_inputs([path], asset="B04")


def test_stac_item_without_a_visual_asset_asks_for_asset(tmp_path: Path) -> None:
    band = touch(tmp_path / "b08.tif")
    item = stac_item("nir-only", {"B08": pystac.Asset(href=str(band), roles=["data"])})
    path = tmp_path / "items.json"
    pystac.ItemCollection([item]).save_object(dest_href=str(path))
    with pytest.raises(UserInputError, match="choose one with --asset"):
        resolve_inputs([path])
    assert resolve_inputs([path], asset="B08") == [band]


def test_json_that_is_not_stac_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"type": "Something", "hello": 1}')
    with pytest.raises(UserInputError, match="not a STAC"):
        resolve_inputs([path])


def test_output_stems_tell_apart_scenes_of_the_same_name(tmp_path: Path) -> None:
    twins = [tmp_path / "2023" / "tile_12.tif", tmp_path / "2024" / "tile_12.tif"]
    single = tmp_path / "other.tif"
    stems = output_stems([*twins, single])
    assert stems[single] == "other"
    assert len({stems[t] for t in twins}) == 2
    assert all(stems[t].startswith("tile_12-") for t in twins)
    assert output_stems([*twins, single]) == stems  # stable between runs
