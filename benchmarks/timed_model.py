"""A wrapper model that records how long each ``predict`` call takes inside a ``geoseg run``.

Used by ``bench_scene.py``: the run is started with ``--model timed_model:timed`` (this folder on
``PYTHONPATH``), ``GEOSEG_BENCH_INNER`` naming the model to wrap and ``GEOSEG_BENCH_TIMES`` a
file that receives one JSON line per process at exit: the ``(start, stop)`` of every call, in
``time.perf_counter`` seconds. Everything else (classes, name, checksum, GSD ranges per class
and extra readings, thresholds, bands) is the wrapped model's.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import threading
import time
from typing import Any

# Not load_segmenter: this factory is itself called by load_segmenter, which holds a
# non-reentrant lock while it loads, so a nested call would wait on itself forever.
from geoseg.model.protocol import _load_uncached
from geoseg.model.read_settings import READ_SETTINGS

_calls: list[tuple[float, float, int]] = []
_lock = threading.Lock()


class TimedSegmenter:
    """Delegates to the wrapped model, timing ``predict`` (with the keywords geoseg gives,
    ``min_score``, ``tta_views`` and ``gsd_m``, where the wrapped ``predict`` takes them)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._takes = set(inspect.signature(inner.predict).parameters)
        self.classes = tuple(inner.classes)
        for name in (
            "name",
            "checksum",
            "untrained",
            "gsd_range_m",
            "input_bands",
            *(setting.attribute for setting in READ_SETTINGS),
        ):
            if hasattr(inner, name):
                setattr(self, name, getattr(inner, name))

    def predict(
        self,
        tiles: Any,
        *,
        min_score: float | None = None,
        tta_views: Any = None,
        gsd_m: float | None = None,
    ) -> Any:
        given = {"min_score": min_score, "tta_views": tta_views, "gsd_m": gsd_m}
        keywords = {k: v for k, v in given.items() if v is not None and k in self._takes}
        start = time.perf_counter()
        out = self._inner.predict(tiles, **keywords)
        stop = time.perf_counter()
        with _lock:
            _calls.append((start, stop, len(tiles)))
        return out


def _dump() -> None:
    path = os.environ.get("GEOSEG_BENCH_TIMES")
    if path and _calls:
        with open(path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "calls": _calls}) + "\n")


atexit.register(_dump)


def timed(device: str = "auto") -> TimedSegmenter:
    """The factory for ``--model timed_model:timed``."""
    inner = os.environ.get("GEOSEG_BENCH_INNER", "geoseg.testing:OracleSegmenter")
    return TimedSegmenter(_load_uncached(inner, device))
