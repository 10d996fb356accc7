"""The journal of a batch: what is done, with what input, model and parameters.

A JSON-lines file in the output folder (``geoseg-journal.jsonl``), appended to and fsynced
after each scene's outputs are in place, never rewritten: a batch killed at any moment leaves a
journal whose every line is true. A ``writing`` line goes first when a scene's outputs are
about to be replaced, so a kill between two renames is seen. The last line about a scene
wins. A scene counts as done when its last line says ``done`` with the same input
fingerprint, model checksum and parameters, and its outputs are all there; anything else is
done again.

The fingerprint of an input is, by default (``quick``), its size, its modification time and
the SHA-256 of its first and last MiB: cheap for multi-gigabyte scenes, and it changes when a
scene is rewritten; but an edit in the middle of a file that keeps its size and modification
time (a tool that restores the mtime, a copy with ``cp -p`` of a patched file) is not seen.
``content`` hashes the whole file, streamed (a full read of every scene on every rerun), for
archives where that matters.
Outputs are recorded relative to the output folder, which can therefore be moved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from geoseg.errors import UserInputError

__all__ = [
    "JOURNAL_NAME",
    "LOCK_NAME",
    "VERIFY_MODES",
    "Journal",
    "JournalEntry",
    "batch_lock",
    "fingerprint",
    "params_digest",
]

JOURNAL_NAME = "geoseg-journal.jsonl"
LOCK_NAME = ".geoseg-batch.lock"
_EDGE_BYTES = 1 << 20
_CHUNK_BYTES = 8 << 20
VERIFY_MODES = ("quick", "content")


def fingerprint(path: str | Path, verify: str = "quick") -> str:
    """``size:mtime_ns:sha256(first and last MiB)`` of a file (``quick``), or
    ``size:sha256:<digest of the whole file>`` (``content``); ``missing`` if it is not there."""
    path = Path(path)
    if verify not in VERIFY_MODES:
        raise UserInputError(f"--verify {verify!r}: use {' or '.join(VERIFY_MODES)}")
    if verify == "content":
        return _content_fingerprint(path)
    try:
        stat = path.stat()
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            digest.update(f.read(_EDGE_BYTES))
            if stat.st_size > _EDGE_BYTES:
                f.seek(max(_EDGE_BYTES, stat.st_size - _EDGE_BYTES))
                digest.update(f.read(_EDGE_BYTES))
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}:{digest.hexdigest()[:32]}"


def _content_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            size = 0
            while chunk := f.read(_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
    except OSError:
        return "missing"
    return f"{size}:sha256:{digest.hexdigest()}"


def params_digest(params: dict[str, Any]) -> str:
    """A short stable digest of run parameters."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One line of the journal."""

    scene: str
    status: str  # "writing" (outputs being replaced), "done" or "failed"
    fingerprint: str
    model_checksum: str
    params: str
    outputs: tuple[str, ...] = ()
    counts: tuple[tuple[str, int], ...] = ()
    n_tiles: int = 0
    seconds: float = 0.0
    error: str = ""

    def to_json(self) -> str:
        data = {
            "scene": self.scene,
            "status": self.status,
            "fingerprint": self.fingerprint,
            "model_checksum": self.model_checksum,
            "params": self.params,
            "outputs": list(self.outputs),
            "counts": dict(self.counts),
            "n_tiles": self.n_tiles,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> JournalEntry:
        d = json.loads(line)
        return cls(
            scene=d["scene"],
            status=d["status"],
            fingerprint=d["fingerprint"],
            model_checksum=d["model_checksum"],
            params=d["params"],
            outputs=tuple(d.get("outputs", ())),
            counts=tuple(d.get("counts", {}).items()),
            n_tiles=int(d.get("n_tiles", 0)),
            seconds=float(d.get("seconds", 0.0)),
            error=d.get("error", ""),
        )


class Journal:
    """Append-only record of a batch in ``outdir``."""

    def __init__(self, outdir: str | Path) -> None:
        self.path = Path(outdir) / JOURNAL_NAME
        self._last: dict[str, JournalEntry] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = JournalEntry.from_json(line)
                except (ValueError, KeyError):
                    continue  # a torn last line from a kill: ignored, the scene is redone
                self._last[entry.scene] = entry

    def last(self, scene: str | Path) -> JournalEntry | None:
        """The last line about ``scene``, or ``None``."""
        return self._last.get(str(scene))

    def output_paths(self, entry: JournalEntry) -> list[Path]:
        """An entry's outputs as paths (recorded relative to the journal's folder)."""
        return [self.path.parent / p for p in entry.outputs]

    def is_done(
        self, scene: str | Path, *, fingerprint: str, model_checksum: str, params: str
    ) -> bool:
        """Whether the last line about ``scene`` is ``done`` with these values, and its
        outputs are all there."""
        entry = self.last(scene)
        return (
            entry is not None
            and entry.status == "done"
            and entry.fingerprint == fingerprint
            and entry.model_checksum == model_checksum
            and entry.params == params
            and all(p.exists() for p in self.output_paths(entry))
        )

    def record(self, entry: JournalEntry) -> None:
        """Append one line and make it durable before returning. Outputs inside the
        journal's folder are recorded relative to it, so the folder can be moved."""
        root = self.path.parent.absolute()
        entry = replace(
            entry,
            outputs=tuple(
                str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else str(p)
                for p in entry.outputs
            ),
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(entry.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._last[entry.scene] = entry


@contextlib.contextmanager
def batch_lock(outdir: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``outdir`` (creating it) so that two batches never write
    the same outputs and journal; the kernel drops it when the process dies, even by SIGKILL.

    Raises :class:`~geoseg.errors.UserInputError` if another process holds it. Where
    ``fcntl`` is missing (Windows), no lock is taken.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield outdir
        return
    with open(outdir / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserInputError(
                f"{outdir}: another geoseg batch is writing here; wait for it to finish "
                "or choose another output folder"
            ) from None
        try:
            yield outdir
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
