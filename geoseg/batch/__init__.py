"""Many scenes: inputs, the journal, the scene loop, the cluster and the merge across scenes.

- :mod:`geoseg.batch.inputs`: files, folders, globs, manifests and STAC to a list of scenes,
  and their output names.
- :mod:`geoseg.batch.journal`: what is done, so that a rerun resumes; one batch per folder.
- :mod:`geoseg.batch.loop`: the scene loop on one Dask cluster (:func:`run_batch`), each
  scene isolated from the others' failures.
- :mod:`geoseg.batch.cluster`: start the cluster a job spec describes.
- :mod:`geoseg.batch.merge`: one GeoPackage for the whole batch.

The loop's names are exported here but loaded on first use: ``import geoseg.batch.journal``
(say) does not import Dask or the pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoseg.batch.loop import BatchReport, SceneOutcome, connect, run_batch

__all__ = ["BatchReport", "SceneOutcome", "connect", "run_batch"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from geoseg.batch import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
