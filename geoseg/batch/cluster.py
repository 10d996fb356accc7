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
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Set
from typing import Any

from geoseg.errors import UserInputError

__all__ = ["CLUSTER_KEYS", "check_cluster_spec", "reject_unknown_keys", "start_cluster"]

CLUSTER_KEYS = frozenset({"class", "options", "scale", "adapt"})


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
        cls = getattr(importlib.import_module(module_name), attr)
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


def _split(name: str) -> tuple[str, str]:
    """``"a.b:C"`` or ``"a.b.C"`` -> ``("a.b", "C")``; ``("", name)`` if there is no module."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
    else:
        module_name, _, attr = name.rpartition(".")
    return (module_name, attr) if attr else ("", name)
