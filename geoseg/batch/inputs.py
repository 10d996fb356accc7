"""Turn ``geoseg batch`` inputs into a list of scenes: files, folders, globs, manifests, STAC.

- a GeoTIFF file (``.tif``/``.tiff``): itself;
- a folder: every GeoTIFF below it, recursively, sorted;
- a glob pattern (``archive/**/*.tif``): its matches, sorted;
- a text manifest (any other file that is not JSON): one path per line, blank lines and
  ``#`` comments skipped, relative paths taken from the manifest's folder;
- a STAC ItemCollection, Catalog or Collection on disk (``.json``): one asset per item, the
  one named by ``asset`` or else the visual/RGB one, read with pystac;
- an ``https://`` or ``s3://`` URL (a Cloud-Optimized GeoTIFF), and STAC assets that are
  URLs: read remotely with range requests (:func:`geoseg.remote.remote_path`).

A path named on the command line that does not exist is a usage error; a path listed in a
manifest or a STAC item that does not exist is still a scene, which will fail and be reported.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from geoseg.errors import UserInputError
from geoseg.remote import is_remote, remote_path, scene_stem

__all__ = ["output_stems", "resolve_inputs"]

GEOTIFF_SUFFIXES = (".tif", ".tiff")
_GLOB_CHARS = set("*?[")
_VISUAL_ASSET_KEYS = ("visual", "rgb", "RGB", "image", "data")


def resolve_inputs(inputs: Sequence[str | Path], *, asset: str | None = None) -> list[Path]:
    """Absolute scene paths, in input order, each once."""
    scenes: list[Path] = []
    for item in inputs:
        scenes.extend(_expand(str(item), asset))
    unique: dict[Path, None] = {}
    for scene in scenes:
        local = not is_remote(scene) and scene.exists()
        unique.setdefault(scene.resolve() if local else scene.absolute(), None)
    if not unique:
        raise UserInputError(f"no scenes found in {', '.join(map(str, inputs))}")
    return list(unique)


def _expand(item: str, asset: str | None) -> Iterable[Path]:
    if is_remote(item):
        return [remote_path(item)]
    path = Path(item)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in GEOTIFF_SUFFIXES)
    if path.is_file():
        if path.suffix.lower() in GEOTIFF_SUFFIXES:
            return [path]
        if path.suffix.lower() == ".json":
            return _stac_assets(path, asset)
        return _manifest(path)
    if _GLOB_CHARS & set(item):
        matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
        if not matches:
            raise UserInputError(f"{item}: the pattern matches no file")
        return [p for m in matches for p in _expand(str(m), asset)]
    raise UserInputError(f"{item}: no such file, folder or pattern")


def _manifest(path: Path) -> list[Path]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: not a readable text manifest ({exc})") from exc
    entries = [line.strip() for line in lines]
    return [
        (p if p.is_absolute() else path.parent / p)
        for p in (Path(e) for e in entries if e and not e.startswith("#"))
    ]


def _stac_assets(path: Path, asset: str | None) -> list[Path]:
    import pystac

    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(document, dict):
        raise UserInputError(
            f"{path}: holds a JSON {type(document).__name__}, not a STAC object (an "
            "ItemCollection, Item, Catalog or Collection)"
        )
    kind = document.get("type")
    try:
        if kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_file(str(path)))
        elif kind == "Feature":
            items = [pystac.Item.from_file(str(path))]
        else:
            catalog = pystac.read_file(str(path))
            items = list(catalog.get_items(recursive=True))
    except Exception as exc:
        raise UserInputError(f"{path}: not a STAC ItemCollection or catalogue ({exc})") from exc
    return [_pick_asset(item, asset, path) for item in items]


def _absolute_href(asset: object, item: object, source: Path) -> Path:
    """An asset's path: relative hrefs are taken from the item's own file, else from the
    file the items were read from (items of an ItemCollection have no file of their own)."""
    if is_remote(asset.href):  # type: ignore[attr-defined]
        return remote_path(asset.href)  # type: ignore[attr-defined]
    href = Path(asset.href)  # type: ignore[attr-defined]
    if href.is_absolute():
        return href
    self_href = item.get_self_href()  # type: ignore[attr-defined]
    base = Path(self_href).parent if self_href else source.parent
    return (base / href).resolve()


def _pick_asset(item: object, asset: str | None, source: Path) -> Path:
    assets = item.assets  # type: ignore[attr-defined]
    if asset is not None:
        if asset not in assets:
            raise UserInputError(
                f"{source}: item {item.id!r} has no asset {asset!r} "  # type: ignore[attr-defined]
                f"(it has {', '.join(assets)})"
            )
        chosen = assets[asset]
    else:
        chosen = next((assets[k] for k in _VISUAL_ASSET_KEYS if k in assets), None)
        if chosen is None:
            chosen = next(
                (
                    a
                    for a in assets.values()
                    if "visual" in (a.roles or []) or "image/tiff" in (a.media_type or "")
                ),
                None,
            )
        if chosen is None:
            raise UserInputError(
                f"{source}: item {item.id!r} has no visual/RGB asset; "  # type: ignore[attr-defined]
                f"choose one with --asset (it has {', '.join(assets)})"
            )
    return _absolute_href(chosen, item, source)


def output_stems(scenes: Sequence[Path]) -> dict[Path, str]:
    """File stems for each scene's outputs; scenes that share a stem get a path hash."""
    counts: dict[str, int] = {}
    for scene in scenes:
        counts[scene_stem(scene)] = counts.get(scene_stem(scene), 0) + 1
    return {
        scene: scene_stem(scene)
        if counts[scene_stem(scene)] == 1
        else f"{scene_stem(scene)}-{hashlib.sha1(str(scene).encode()).hexdigest()[:8]}"
        for scene in scenes
    }
