"""Put a scene's output files in place all or nothing, under a per-scene lock.

:func:`commit_outputs` is the one way geoseg writes outputs: give it ``{final path: writer}``,
where a writer is a callable that writes the file at the (temporary) path it is given. Every
writer runs into a private staging folder inside the output folder (``.geoseg-staging-*``, so
that renames stay on one file system); only when all have succeeded are the files renamed into
place, the ones they replace and the stale ones of the previous commit (files it wrote that
this one does not, such as the GeoJSON of a class the new model lacks) moved aside, and
removed at the end. A failure at any step puts the previous files back and removes the new
ones: the folder holds either the old outputs or the new, never a mix, and nothing temporary.

:class:`Staging` is the same commit opened early: a run that writes its objects as it finds
them (:class:`geoseg.output.OutputStream`) opens the staging folder before the first tile and
commits it after the last; :func:`commit_outputs` is a staging opened, filled and committed at
once. Both share the swap, the rollback, the manifest and the removal of stale files.

Each commit records the file names it wrote in ``.STEM.outputs.json``, which is how the next
commit knows its stale files. A ``kill -9`` can only leave a staging folder (removed by the
next commit in that folder, as no process holds its lock any more), or, during the final
renames (a few milliseconds), a mix of old and new files; ``geoseg batch``'s journal redoes
such a scene.

:func:`scene_lock` serializes the runs that write one scene's outputs into one folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path

from geoseg.errors import OutputError, UserInputError

__all__ = [
    "STAGING_PREFIX",
    "Staging",
    "Writer",
    "check_targets",
    "check_writable",
    "commit_outputs",
    "remove_orphans",
    "scene_lock",
]

Writer = Callable[[Path], None]
"""Writes one output file at the path it is given (a temporary name)."""

STAGING_PREFIX = ".geoseg-staging-"
_LOCK = ".lock"
_FULL_BYTES = 64 << 10  # less free space than this after a failed write: the disk is full
_ORPHAN_AGE_S = 60.0  # a staging folder without its lock file is taken for dead after this


def manifest_path(outdir: Path, stem: str) -> Path:
    """Where the file names of a scene's last commit are recorded."""
    return outdir / f".{stem}.outputs.json"


def commit_outputs(
    writers: Mapping[Path, Writer], *, stem: str, outdir: str | Path | None = None
) -> list[Path]:
    """Write every output through its writer, then put them all in place, or none.

    All paths must be in one folder (``outdir``, created if need be). Files that the previous
    commit of ``stem`` there wrote and this one does not are removed with the commit. Raises
    :class:`~geoseg.errors.OutputError` (no space left, a folder in the way, ...) with the
    folder as it was before.
    """
    finals = [Path(p) for p in writers]
    folder = Path(outdir) if outdir is not None else finals[0].parent
    check_targets(folder, finals)
    with Staging.open(folder, stem) as staging:
        for final, write in writers.items():
            staging.write(Path(final), write)
        return staging.commit(finals)


def check_targets(folder: Path, finals: Sequence[Path]) -> None:
    """Raise if a final path is not in ``folder`` (:class:`ValueError`) or if something that
    is not a file is in its way (:class:`~geoseg.errors.OutputError`)."""
    if any(Path(p).parent != folder for p in finals):
        raise ValueError(f"outputs must all be in {folder}")
    for final in finals:
        if final.is_dir() or (final.exists() and not final.is_file()):
            raise OutputError(f"{final}: something that is not a file is in the way; move it")


class Staging:
    """The private staging folder of one commit, open from the first file to the last.

    :meth:`open` creates it (and the output folder); files are written at :meth:`tmp` paths,
    directly or through :meth:`write` or :meth:`writing` (which turn a full disk or an
    unwritable file into :class:`~geoseg.errors.OutputError`); :meth:`commit` puts them in
    place all or none and removes the folder; :meth:`close` without a commit discards it all.
    A streamed output keeps its staging open for the whole run, under its lock, so that
    another process's :func:`remove_orphans` leaves it alone.
    """

    def __init__(self, folder: Path, stem: str) -> None:
        self.folder = folder
        self.stem = stem
        self._stack = contextlib.ExitStack()
        self.path = self._stack.enter_context(_staging(folder))

    @classmethod
    def open(cls, outdir: str | Path, stem: str) -> Staging:
        """A new staging folder in ``outdir`` (created if need be)."""
        folder = Path(outdir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _output_error(exc, None) from exc
        return cls(folder, stem)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return not self.path.exists()

    def tmp(self, final: Path) -> Path:
        """Where ``final`` is written until the commit."""
        return self.path / Path(final).name

    @contextlib.contextmanager
    def writing(self, final: Path) -> Iterator[Path]:
        """Write (part of) ``final`` at the path yielded; errors as :func:`commit_outputs`."""
        tmp = self.tmp(final)
        try:
            yield tmp
        except OSError as exc:
            raise _output_error(exc, final) from exc
        except Exception as exc:  # GDAL's errors are not OSErrors; a full disk must still say so
            if _is_disk_full(exc) or _no_space_left(tmp.parent):
                raise _output_error(OSError(errno.ENOSPC, "No space left"), final) from exc
            raise

    def write(self, final: Path, write: Writer) -> None:
        """Run ``write`` on the temporary path of ``final``; it must create the file."""
        with self.writing(final) as tmp:
            write(tmp)
        if not tmp.exists():
            raise OutputError(f"{final}: the writer wrote nothing")

    def commit(self, finals: Sequence[Path]) -> list[Path]:
        """Put the staged ``finals`` in place and remove the stale files of the previous
        commit, all or none; then remove the staging folder."""
        finals = [Path(p) for p in finals]
        try:
            check_targets(self.folder, finals)
            manifest = manifest_path(self.folder, self.stem)
            names = set(p.name for p in finals)
            stale = [
                self.folder / n for n in _previous_names(self.folder, self.stem) if n not in names
            ]
            for final in finals:
                if not self.tmp(final).exists():
                    raise OutputError(f"{final}: the writer wrote nothing")
            self.write(manifest, partial(_write_json, value=sorted(names)))
            for final in [*finals, manifest]:
                _sync(self.tmp(final))
            _swap(self.path, [*finals, manifest], stale)
            with contextlib.suppress(OutputError):  # in place already; the renames may lag
                _sync(self.folder)
        finally:
            self.close()
        return finals

    def close(self) -> None:
        """Remove the staging folder and everything in it (idempotent)."""
        self._stack.close()


def _sync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk, so that a file renamed into
    place after it is complete even after a power cut."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise _output_error(exc, None) from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # no fsync for a folder here
            raise _output_error(exc, None) from exc
    finally:
        os.close(fd)


def _write_json(path: Path, *, value: object) -> None:
    path.write_text(json.dumps(value) + "\n")


def _swap(staging: Path, finals: list[Path], stale: list[Path]) -> None:
    """Rename the staged files over ``finals`` and remove ``stale``; undo it all on failure."""
    aside: list[tuple[Path, Path]] = []  # (original place, where it was moved)
    placed: list[Path] = []
    try:
        for k, old in enumerate([*finals, *stale]):
            if old.exists():
                backup = staging / f"{k}.old"
                os.replace(old, backup)
                aside.append((old, backup))
        for final in finals:
            os.replace(staging / final.name, final)
            placed.append(final)
    except BaseException as exc:
        for final in placed:
            with contextlib.suppress(OSError):
                final.unlink()
        for old, backup in aside:
            with contextlib.suppress(OSError):
                os.replace(backup, old)
        if isinstance(exc, OSError):
            where = finals[len(placed)] if len(placed) < len(finals) else None
            raise _output_error(exc, where) from exc
        raise


def _previous_names(folder: Path, stem: str) -> list[str]:
    """File names the last commit of ``stem`` in ``folder`` wrote (a bad record: none)."""
    try:
        names = json.loads(manifest_path(folder, stem).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and n and Path(n).name == n]


def _no_space_left(folder: Path) -> bool:
    """Whether the file system of ``folder`` is full (GDAL reports a full disk as whatever
    SQL statement failed first)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < _FULL_BYTES


def _is_disk_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
        words in text for words in ("no space left", "disk is full", "disk full")
    )


def _output_error(exc: BaseException, final: Path | None) -> OutputError:
    where = final if final is not None else "the output folder"
    if _is_disk_full(exc):
        return OutputError(f"no space left on device writing {where}; nothing was written")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return OutputError(f"cannot write {where} ({reason}); nothing was written")


@contextlib.contextmanager
def _staging(folder: Path) -> Iterator[Path]:
    """A private folder in ``folder``, locked while in use, removed afterwards."""
    remove_orphans(folder)
    try:
        staging = folder / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        staging.mkdir()
        handle = open(staging / _LOCK, "w")  # noqa: SIM115 - held until the end
    except OSError as exc:
        raise _output_error(exc, None) from exc
    try:
        _flock(handle, blocking=True)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        handle.close()


def remove_orphans(folder: str | Path) -> None:
    """Remove the staging folders of commits that died (no process holds their lock)."""
    for staging in Path(folder).glob(f"{STAGING_PREFIX}*"):
        lock = staging / _LOCK
        try:
            handle = open(lock, "r+")  # noqa: SIM115
        except FileNotFoundError:  # being created, or left by a kill: by its age
            with contextlib.suppress(OSError):
                if time.time() - staging.stat().st_mtime > _ORPHAN_AGE_S:
                    shutil.rmtree(staging, ignore_errors=True)
            continue
        except OSError:
            continue
        with handle:
            if _flock(handle, blocking=False):
                shutil.rmtree(staging, ignore_errors=True)


def _flock(handle: object, *, blocking: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locks
        return True
    flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
    try:
        fcntl.flock(handle, flags)  # type: ignore[arg-type]
    except BlockingIOError:
        return False
    return True


def check_writable(outdir: str | Path) -> None:
    """Raise :class:`~geoseg.errors.UserInputError` if ``outdir`` cannot be created or
    written, without creating it (so a run can say so before the model runs)."""
    outdir = Path(outdir)
    probe = outdir
    while not probe.exists():
        if probe.is_symlink() or probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserInputError(
            f"-o {outdir}: cannot be created, {probe} is a file, not a folder"
            if probe != outdir
            else f"-o {outdir}: is a file, not a folder"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is" if probe == outdir else f"cannot be created: {probe} is"
        raise UserInputError(f"-o {outdir}: {what} not writable (read-only or no permission)")


@contextlib.contextmanager
def scene_lock(outdir: str | Path, stem: str) -> Iterator[Path]:
    """Hold the lock on the outputs of ``stem`` in ``outdir`` (created), or raise
    :class:`~geoseg.errors.UserInputError` at once if another process holds it.

    The lock file (``.STEM.lock``) is removed on release; the kernel drops the lock of a
    process that dies, even by SIGKILL.
    """
    outdir = Path(outdir)
    path = outdir / f".{stem}.lock"
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        handle = _locked_file(path)
    except OSError as exc:
        raise UserInputError(
            f"-o {outdir}: cannot write here ({exc.strerror or exc}); choose another folder"
        ) from exc
    if handle is None:
        raise UserInputError(
            f"{outdir}: another geoseg run is writing the outputs of {stem} here; wait for it "
            "to finish or choose another output folder"
        )
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        handle.close()


def _locked_file(path: Path) -> object | None:
    """Open and lock ``path``, making sure the locked file is still the one at ``path``
    (another process may have removed it on release meanwhile); ``None`` if it is held."""
    while True:
        handle = open(path, "a")  # noqa: SIM115 - returned open
        if not _flock(handle, blocking=False):
            handle.close()
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        handle.close()
