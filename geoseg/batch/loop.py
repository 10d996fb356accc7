"""Many scenes on one Dask cluster: resumable, each scene isolated from the others' failures.

All scenes are planned first (a scene that cannot be opened is recorded as failed right
away), then the tile batches of every scene are submitted to the cluster together, so workers
stay busy across scene boundaries. As soon as all batches of a scene are in, the scene is
stitched and written (atomically, see :mod:`geoseg.output`) and a line goes to the journal
(:mod:`geoseg.batch.journal`). A rerun skips the scenes the journal shows done with the same
input, model and parameters.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.batch.cluster import keep_workers
from geoseg.batch.inputs import output_stems
from geoseg.batch.journal import (
    VERIFY_MODES,
    Journal,
    JournalEntry,
    batch_lock,
    fingerprint,
    params_digest,
)
from geoseg.commit import remove_orphans, scene_lock
from geoseg.compute import client_for, sized_for_cluster
from geoseg.config import RunOptions
from geoseg.errors import GeoSegError, ModelError, UserInputError
from geoseg.model.protocol import describe_spec, load_segmenter
from geoseg.pipeline import BatchResult, SceneAssembler, ScenePlan, plan_scene, scene_tasks
from geoseg.scheduler import is_local

__all__ = ["MAX_PENDING_BATCHES", "BatchReport", "SceneOutcome", "connect", "run_batch"]

log = logging.getLogger(__name__)

#: Tile batches submitted to the cluster and not yet finished, at most (see ``_compute``).
MAX_PENDING_BATCHES = 4096


@dataclass(slots=True)
class SceneOutcome:
    """What happened to one scene: ``done``, ``skipped`` (done before) or ``failed``."""

    scene: Path
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    n_tiles: int = 0
    seconds: float = 0.0
    error: str = ""
    outputs: list[Path] = field(default_factory=list)


@dataclass(slots=True)
class BatchReport:
    """Every scene's outcome, in input order, and the merged output if one was written."""

    outcomes: list[SceneOutcome]
    seconds: float
    merged: Path | None = None
    dashboard: str | None = None

    @property
    def failed(self) -> list[SceneOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


@dataclass(slots=True)
class _Pending:
    plan: ScenePlan
    stem: str
    fingerprint: str
    futures: list[Any]
    started: float
    done: set[int] = field(default_factory=set)
    assembler: SceneAssembler | None = None

    def add(self, batch: int, result: BatchResult, outdir: Path) -> None:
        """Stitch and write (staged) what one batch makes final."""
        if self.assembler is None:  # opened at the first result: few staged scenes at once
            self.assembler = SceneAssembler(self.plan, outdir, stem=self.stem)
        self.done.add(batch)
        self.assembler.add(result)

    def abort(self) -> None:
        if self.assembler is not None:
            self.assembler.abort()


ProgressEvent = Callable[[str, Any], None]


def _local_workers(scheduler: str, workers: int | None) -> int:
    """How many workers :func:`connect` starts for a local ``scheduler``: ``workers``, else
    one on ``threads`` and two on ``processes``."""
    return workers or (1 if scheduler == "threads" else 2)


@contextlib.contextmanager
def connect(
    scheduler: Any, *, workers: int | None = None, threads_per_worker: int | None = None
) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler``, closed after with whatever was started
    for it.

    ``threads`` starts a local cluster whose worker runs in this process (one copy of the
    model; ``sync``: one thread); ``processes`` a local cluster of worker processes (a model
    in each); an address, a ``Cluster`` or a ``Client`` go through
    :func:`~geoseg.compute.client_for` (a ``Client`` given is used as it is and left open).
    """
    if not is_local(scheduler):
        with client_for(scheduler) as client:
            yield client
        return
    from distributed import Client, LocalCluster

    if scheduler == "sync":
        scheduler, workers, threads_per_worker = "threads", 1, 1
    cluster = LocalCluster(
        n_workers=_local_workers(scheduler, workers),
        threads_per_worker=threads_per_worker,
        processes=scheduler == "processes",
        dashboard_address=":0",
        # worker processes log no more than this process was told to (the batch
        # reports failed tasks itself)
        silence_logs=max(
            logging.WARNING, logging.getLogger("distributed.worker").getEffectiveLevel()
        ),
    )
    with cluster, Client(cluster) as client:
        yield client


def run_batch(
    scenes: Sequence[Path],
    outdir: str | Path,
    *,
    options: RunOptions | None = None,
    scheduler: Any = "threads",
    workers: int | None = None,
    predict_resources: dict[str, float] | None = None,
    merge: bool = False,
    on_event: ProgressEvent | None = None,
    verify: str = "quick",
) -> BatchReport:
    """Process ``scenes`` into ``outdir``; see the module docstring.

    ``scheduler``: see :func:`connect`. ``predict_resources`` (e.g. ``{"GPU": 1}``): worker
    resources that inference tasks need, so that they run only on the workers that have them.
    ``on_event(kind, payload)`` reports progress: ``("start", n_scenes)``, ``("scene",
    outcome)`` for each scene failed, skipped or done, ``("planned", n_tiles)`` once the tiles
    still to run are known, ``("dashboard", url)``, and ``("tiles", n)`` per finished batch.
    ``verify``: how a scene is known unchanged since the journal's line, ``quick`` or
    ``content`` (see :func:`~geoseg.batch.journal.fingerprint`).
    Raises :class:`~geoseg.errors.UserInputError` if another batch is writing to ``outdir``.
    """
    options = options or RunOptions()
    outdir = Path(outdir).absolute()
    emit = on_event or (lambda kind, payload: None)
    start = time.perf_counter()
    if verify not in VERIFY_MODES:
        raise UserInputError(f"verify={verify!r}: use {' or '.join(VERIFY_MODES)}")
    with batch_lock(outdir):
        _check_model(options, scheduler)  # a bad --model stops it here
        remove_orphans(outdir)
        journal = Journal(outdir)
        stems = output_stems(list(scenes))
        params = params_digest(options.to_dict())
        outcomes: dict[Path, SceneOutcome] = {}
        emit("start", len(scenes))

        plans: list[tuple[ScenePlan, str, str]] = []
        # a local cluster of processes holds a model in each worker; the workers of another
        # cluster measure their own GPUs
        copies = _local_workers(scheduler, workers) if scheduler == "processes" else 1
        sized = _sized_for_cluster(options, scheduler)
        for scene in scenes:
            outcome, todo = _plan_or_skip(scene, sized, journal, params, verify, copies)
            if outcome is not None:
                outcomes[scene] = outcome
                emit("scene", outcome)
            if todo is not None:
                plans.append((todo[0], stems[scene], todo[1]))
        emit("planned", sum(plan.n_tiles for plan, _, _ in plans))

        dashboard = None
        if plans:
            with connect(scheduler, workers=workers) as client:
                dashboard = getattr(client, "dashboard_link", None)
                emit("dashboard", dashboard)
                with keep_workers(getattr(client, "cluster", None)):
                    for outcome in _compute(
                        client, plans, outdir, journal, params, predict_resources, emit
                    ):
                        outcomes[outcome.scene] = outcome

        merged = None
        if merge:
            from geoseg.batch.merge import merge_outputs

            done = [o for s in scenes if (o := outcomes.get(s)) and o.status in ("done", "skipped")]
            merged = merge_outputs(done, outdir, merge_iou=options.merge_iou)
    ordered = [outcomes[s] for s in scenes if s in outcomes]
    return BatchReport(ordered, time.perf_counter() - start, merged, dashboard)


def _sized_for_cluster(options: RunOptions, scheduler: Any) -> RunOptions:
    """:func:`~geoseg.compute.sized_for_cluster`, or ``options`` as they are where the cluster
    cannot be reached now: a batch whose scenes are all done still reports them, and one with
    work left stops where it connects, with that message."""
    try:
        return sized_for_cluster(options, scheduler)
    except UserInputError as exc:
        log.info("batches not sized for the cluster's GPUs: %s", exc)
        return options


def _check_model(options: RunOptions, scheduler: Any) -> None:
    """Stop at once on a model that cannot load. Local workers share this machine, so the
    model is loaded here as they will load it (with threads, the very copy they use);
    a cluster's workers may have a device this machine lacks (a GPU node, driven from a login
    node), so only what the model says of itself is read here, never on their device."""
    if is_local(scheduler):
        load_segmenter(options.model, device=options.device)
    else:
        describe_spec(options.model, device=options.device)


def _plan_or_skip(
    scene: Path,
    options: RunOptions,
    journal: Journal,
    params: str,
    verify: str = "quick",
    model_copies: int = 1,
) -> tuple[SceneOutcome | None, tuple[ScenePlan, str] | None]:
    """Plan a scene (batches sized for ``model_copies`` models on a GPU): ``(outcome, None)``
    if it failed or is done, else ``(None, (plan, fingerprint))``."""
    fprint = fingerprint(scene, verify)
    try:
        plan = plan_scene(scene, options, model_copies=model_copies)
    except ModelError:
        raise  # the same for every scene: stop the batch with one message
    except Exception as exc:  # isolate the scene: record it, go on with the others
        error = str(exc) if isinstance(exc, GeoSegError) else f"{type(exc).__name__}: {exc}"
        journal.record(JournalEntry(str(scene), "failed", fprint, "", params, error=error))
        return SceneOutcome(scene, "failed", error=error), None
    if journal.is_done(
        scene, fingerprint=fprint, model_checksum=plan.model.checksum, params=params
    ):
        entry = journal.last(scene)
        assert entry is not None
        outputs = journal.output_paths(entry)
        outcome = SceneOutcome(
            scene, "skipped", dict(entry.counts), entry.n_tiles, 0.0, outputs=outputs
        )
        return outcome, None
    return None, (plan, fprint)


def _compute(
    client: Any,
    plans: list[tuple[ScenePlan, str, str]],
    outdir: Path,
    journal: Journal,
    params: str,
    predict_resources: dict[str, float] | None,
    emit: ProgressEvent,
) -> list[SceneOutcome]:
    """Submit scenes in input order while fewer than ``MAX_PENDING_BATCHES`` tile batches
    are in flight (enough to keep any cluster busy and let an adaptive one grow, few enough
    that the scheduler never holds the graph of a whole archive); finish each scene as soon
    as its last batch is in."""
    from distributed import as_completed

    waiting = deque(enumerate(plans))
    pending: dict[int, _Pending] = {}
    owner: dict[str, tuple[int, int]] = {}
    stream = as_completed()

    def submit_more() -> None:
        in_flight = sum(len(job.futures) - len(job.done) for job in pending.values())
        while waiting and (in_flight < MAX_PENDING_BATCHES or not pending):
            k, (plan, stem, fprint) = waiting.popleft()
            futures = client.compute(scene_tasks(plan, predict_resources=predict_resources))
            pending[k] = _Pending(plan, stem, fprint, futures, time.perf_counter())
            for j, future in enumerate(futures):
                owner[future.key] = (k, j)
            stream.update(futures)
            in_flight += len(futures)

    submit_more()
    outcomes = []
    try:
        for future in stream:
            k, j = owner.pop(future.key)
            job = pending.get(k)
            if job is None:  # a batch of a scene that failed already (cancelled)
                continue
            if future.status in ("pending", "lost"):  # its worker left with it: being redone
                owner[future.key] = (k, j)
                stream.add(future)
                continue
            if future.status != "finished":
                outcomes.append(_fail(job, _error_text(future), journal, params))
                client.cancel([f for f in job.futures if f is not None and f.key != future.key])
                del pending[k]
            else:
                result = future.result()
                job.futures[j] = None  # released on the cluster: a worker lost later costs nothing
                emit("tiles", result.n_tiles + result.n_skipped)
                try:
                    job.add(j, result, outdir)
                except Exception as exc:  # isolate the scene: record it, go on with the others
                    outcomes.append(_fail(job, f"{type(exc).__name__}: {exc}", journal, params))
                    client.cancel([f for f in job.futures if f is not None])
                    del pending[k]
                    emit("scene", outcomes[-1])
                    submit_more()
                    continue
                if len(job.done) < len(job.futures):
                    continue
                outcomes.append(_finish(job, outdir, journal, params))
                del pending[k]
            emit("scene", outcomes[-1])
            submit_more()
    finally:  # an interrupted batch leaves nothing staged behind
        for job in pending.values():
            job.abort()
    return outcomes


_REPR = re.compile(r"^(\w+)\((['\"])(.*)\2,?\)$", re.DOTALL)


def _error_text(future: Any) -> str:
    """``Type: first line of the message`` of a failed task.

    An exception that ``distributed`` could not unpickle on this side (one chained to a GDAL
    error, say) comes back as ``Exception("SceneError('...')")``: its type and message are
    taken out of that text.
    """
    try:
        exc = future.exception()
    except Exception as err:  # cancelled or lost
        exc = err
    name, text = type(exc).__name__, str(exc).strip()
    if type(exc) is Exception and (match := _REPR.match(text)):
        name, text = match.group(1), match.group(3)
    lines = text.splitlines()
    return f"{name}: {lines[0] if lines else ''}"


def _fail(job: _Pending, error: str, journal: Journal, params: str) -> SceneOutcome:
    scene = job.plan.path
    job.abort()
    journal.record(
        JournalEntry(
            str(scene), "failed", job.fingerprint, job.plan.model.checksum, params, error=error
        )
    )
    return SceneOutcome(scene, "failed", error=error)


def _finish(job: _Pending, outdir: Path, journal: Journal, params: str) -> SceneOutcome:
    scene = job.plan.path
    # from here until the "done" line, the scene's files may be a mix of two runs
    journal.record(
        JournalEntry(str(scene), "writing", job.fingerprint, job.plan.model.checksum, params)
    )
    try:
        with scene_lock(outdir, job.stem):
            if job.assembler is None:  # a scene without batches
                job.assembler = SceneAssembler(job.plan, outdir, stem=job.stem)
            result = job.assembler.finish(seconds=time.perf_counter() - job.started)
    except Exception as exc:  # isolate the scene: record it, go on with the others
        return _fail(job, f"{type(exc).__name__}: {exc}", journal, params)
    journal.record(
        JournalEntry(
            str(scene),
            "done",
            job.fingerprint,
            job.plan.model.checksum,
            params,
            outputs=tuple(str(p) for p in result.outputs),
            counts=tuple(result.counts.items()),
            n_tiles=result.n_tiles + result.n_skipped,
            seconds=result.seconds,
        )
    )
    return SceneOutcome(
        scene,
        "done",
        result.counts,
        result.n_tiles + result.n_skipped,
        result.seconds,
        outputs=result.outputs,
    )
