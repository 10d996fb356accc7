"""The exceptions and warnings of geoseg.

Every error a user can cause derives from :class:`GeoSegError` and from the builtin
that fits it, so ``except OSError`` keeps working for callers that do not know geoseg.
Messages name the offending file or value and, where there is one, the fix.
"""

from __future__ import annotations


class GeoSegError(Exception):
    """Root of all geoseg errors."""


class UserInputError(GeoSegError, ValueError):
    """A bad option or argument given by the user (the CLI exits with 2)."""


class SceneError(GeoSegError, OSError):
    """A scene cannot be read or is not georeferenced well enough to be processed."""


class MissingCRSError(SceneError):
    """A scene has a geotransform but no CRS."""


class MissingTransformError(SceneError):
    """A scene has no geotransform (nor GCPs or RPCs that geoseg could use)."""


class ModelError(GeoSegError, RuntimeError):
    """A model cannot be loaded or returned output that breaks the protocol."""


class OutputError(GeoSegError, OSError):
    """An output cannot be written: no space left, a read-only folder, a folder in the way."""


class LabelError(GeoSegError, ValueError):
    """Vector labels or reference polygons cannot be read or do not fit the imagery."""


def first_line(exc: BaseException, *, max_chars: int | None = None) -> str:
    """The first line of an exception's message (its type name when it has none), for
    one-line errors that quote a library's reason."""
    lines = str(exc).strip().splitlines()
    return lines[0][:max_chars] if lines else type(exc).__name__


class GeoSegWarning(UserWarning):
    """Root of geoseg warnings."""


class UntrainedModelWarning(GeoSegWarning):
    """The model in use has random weights: its polygons mean nothing."""
