"""Start the Dask cluster that a job spec describes (SLURM, Kubernetes, local, ...).

A spec's ``cluster`` section names a cluster class and its keyword arguments, so that one file
says what to run and where::

    cluster:
      class: dask_jobqueue.SLURMCluster      # or "package.module:Class"
      options: {cores: 8, memory: 32GB, walltime: "02:00:00"}
      scale: {jobs: 4}                        # cluster.scale(jobs=4); or scale: 4 (workers)
      adapt: {minimum: 1, maximum: 20}        # or adapt instead of scale

Any class that builds a ``distributed`` cluster works (``distributed.LocalCluster``,
``dask_jobqueue.SLURMCluster``, ``dask_kubernetes.operator.KubeCluster``); its package is
imported only here, when the batch starts.

While a batch runs, :func:`keep_workers` asks a cluster made of jobs (dask-jobqueue's, or any
``distributed.SpecCluster``) again for the workers it lost: a job killed at its walltime or
retired by ``--lifetime`` is submitted anew, whether the cluster was sized with ``scale`` or
``adapt`` (neither does it reliably by itself: dask/dask-jobqueue#611, #691). Kubernetes
restarts lost worker pods itself.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
from collections.abc import Iterator, Mapping, Set
from typing import Any

from geoseg.errors import UserInputError

__all__ = [
    "CLUSTER_KEYS",
    "check_cluster_spec",
    "keep_workers",
    "reject_unknown_keys",
    "start_cluster",
]

log = logging.getLogger(__name__)

CLUSTER_KEYS = frozenset({"class", "options", "scale", "adapt"})

#: How often :func:`keep_workers` looks for lost jobs, in seconds.
KEEP_WORKERS_INTERVAL_S = 2.0


def reject_unknown_keys(spec: Mapping[str, Any], known: Set[str], *, where: str) -> None:
    """A one-line error naming the keys of ``spec`` that are not ``known`` (typos never fall
    back to defaults silently)."""
    unknown = set(spec) - known
    if unknown:
        raise UserInputError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )


def check_cluster_spec(spec: Any, *, where: str = "cluster") -> dict[str, Any]:
    """Validate a ``cluster`` section without importing anything; returns it as a dict."""
    if not isinstance(spec, Mapping):
        raise UserInputError(f"{where}: a mapping with 'class' and optional 'options'")
    reject_unknown_keys(spec, CLUSTER_KEYS, where=where)
    name = spec.get("class")
    if not isinstance(name, str) or not _split(name)[0]:
        raise UserInputError(
            f"{where}.class: {name!r} is not a class name like dask_jobqueue.SLURMCluster"
        )
    for key in ("options", "adapt"):
        if not isinstance(spec.get(key, {}), Mapping):
            raise UserInputError(f"{where}.{key}: a mapping of keyword arguments")
    scale = spec.get("scale")
    if scale is not None and not isinstance(scale, int | Mapping):
        raise UserInputError(f"{where}.scale: a number of workers or a mapping like {{jobs: 4}}")
    if scale is not None and "adapt" in spec:
        raise UserInputError(f"{where}: give 'scale' or 'adapt', not both")
    return dict(spec)


def start_cluster(spec: Mapping[str, Any]) -> Any:
    """Create, scale and return the cluster ``spec`` describes; the caller closes it."""
    spec = check_cluster_spec(spec)
    module_name, attr = _split(spec["class"])
    try:
        cls = getattr(_import_keeping_sigint(module_name), attr)
    except ImportError as exc:
        package = module_name.split(".")[0].replace("_", "-")
        raise UserInputError(
            f"cluster.class: cannot import {module_name} ({exc}); install it "
            f"(pip install {package})"
        ) from exc
    except AttributeError:
        raise UserInputError(f"cluster.class: {module_name} has no {attr}") from None
    cluster = cls(**dict(spec.get("options", {})))
    try:
        scale = spec.get("scale")
        if isinstance(scale, Mapping):
            cluster.scale(**scale)
        elif scale is not None:
            cluster.scale(scale)
        if "adapt" in spec:
            cluster.adapt(**dict(spec["adapt"]))
    except BaseException:
        cluster.close()
        raise
    return cluster


@contextlib.contextmanager
def keep_workers(cluster: Any, *, interval_s: float | None = None) -> Iterator[None]:
    """While the block runs, submit again every job of ``cluster`` whose worker is gone.

    For a ``distributed.SpecCluster`` (dask-jobqueue's clusters, ``LocalCluster``): a worker
    that leaves the scheduler (killed, or retired at its ``--lifetime``) is dropped from the
    cluster's jobs after ``distributed.deploy.lost-worker-timeout`` but stays in its plan.
    ``scale`` never replaces it, nor does ``adapt`` while its target stays at the plan's size
    (a long batch at ``maximum_jobs``), so a batch whose jobs all reached their walltime
    would wait forever. Every ``interval_s`` (default :data:`KEEP_WORKERS_INTERVAL_S`) this
    asks the cluster for its plan again, which submits those jobs anew (same names). Other
    clusters (Kubernetes restarts its pods itself; an address) are left alone.
    """
    from distributed import SpecCluster

    if not isinstance(cluster, SpecCluster):
        yield
        return
    from distributed.core import Status
    from tornado.ioloop import PeriodicCallback

    seen: set[Any] = set()

    def check() -> None:
        if cluster.status != Status.running:
            return
        seen.update(cluster.workers)
        lost = (seen & set(cluster.worker_spec)) - set(cluster.workers)
        if lost:
            log.warning("%d Dask worker job(s) ended: submitting them again", len(lost))
            seen.difference_update(lost)  # until they are back
            SpecCluster.scale(cluster, len(cluster.worker_spec))  # counted in jobs

    callback = PeriodicCallback(check, (interval_s or KEEP_WORKERS_INTERVAL_S) * 1000)
    cluster.loop.add_callback(callback.start)
    try:
        yield
    finally:
        cluster.loop.add_callback(callback.stop)


def _import_keeping_sigint(module_name: str) -> Any:
    """Import a cluster package without letting it change what Ctrl-C does here
    (dask_jobqueue, on import, makes SIGINT exit with status 0)."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        return importlib.import_module(module_name)
    finally:
        if signal.getsignal(signal.SIGINT) is not handler and handler is not None:
            with contextlib.suppress(ValueError):  # not the main thread: nothing to undo
                signal.signal(signal.SIGINT, handler)


def _split(name: str) -> tuple[str, str]:
    """``"a.b:C"`` or ``"a.b.C"`` -> ``("a.b", "C")``; ``("", name)`` if there is no module."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
    else:
        module_name, _, attr = name.rpartition(".")
    return (module_name, attr) if attr else ("", name)
