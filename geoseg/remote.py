"""Scenes on object storage: ``https://`` and ``s3://`` URLs read through GDAL's virtual file
systems (``/vsicurl/``, ``/vsis3/``), with HTTP range requests only.

A Cloud-Optimized GeoTIFF is read like a local file: its header, then only the blocks (or the
overview blocks) a read touches. GDAL is told not to list the remote folder and to read no
side-car files, so a scene costs a handful of requests beyond the blocks themselves.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, quote, urlsplit

__all__ = ["REMOTE_ENV", "gdal_path", "is_remote", "remote_path", "scene_stem"]

_URL_PREFIXES = ("http://", "https://", "s3://")
_VSI_PREFIXES = (
    "/vsicurl/",
    "/vsicurl?",
    "/vsis3/",
    "/vsigs/",
    "/vsiaz/",
    "/vsiadls/",
    "/vsioss/",
    "/vsiswift/",
)

REMOTE_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.vrt,.jp2",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "VSI_CACHE": "TRUE",
}
"""GDAL settings for remote scenes: no folder listing, no side-car probes, merged ranges."""


def is_remote(path: str | Path) -> bool:
    """Whether ``path`` is a URL or a GDAL virtual file system path (not a local file)."""
    text = str(path)
    return text.startswith(_URL_PREFIXES) or text.startswith(_VSI_PREFIXES)


def gdal_path(path: str | Path) -> str:
    """The path GDAL opens: ``https://h/a.tif`` -> ``/vsicurl/https://h/a.tif``,
    ``s3://bucket/key.tif`` -> ``/vsis3/bucket/key.tif``; anything else unchanged."""
    text = str(path)
    if text.startswith("/vsicurl?"):  # the Path-safe form of remote_path
        text = parse_qs(text[len("/vsicurl?") :]).get("url", [text])[0]
    if text.startswith(("http://", "https://")):
        return f"/vsicurl/{text}"
    if text.startswith("s3://"):
        return f"/vsis3/{text[len('s3://') :]}"
    return text


def remote_path(url: str) -> Path:
    """A URL as a :class:`~pathlib.Path` that survives ``Path`` (which would fold ``//``):
    ``/vsicurl?url=<percent-encoded URL>`` for http(s), ``/vsis3/bucket/key`` for s3."""
    if url.startswith(("http://", "https://")):
        return Path(f"/vsicurl?url={quote(url, safe='')}")
    return Path(gdal_path(url))


def scene_stem(path: str | Path) -> str:
    """The file stem that names a scene's outputs, for local paths and URLs alike (a URL's
    query string, e.g. a signature, is ignored)."""
    text = str(path)
    if text.startswith("/vsicurl?"):
        text = parse_qs(text[len("/vsicurl?") :]).get("url", [text])[0]
    for prefix in ("/vsicurl/", "/vsis3/"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if text.startswith(_URL_PREFIXES):
        return PurePosixPath(urlsplit(text).path).stem
    return Path(text).stem
