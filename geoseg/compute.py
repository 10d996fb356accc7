"""Run batch tasks on a Dask scheduler and hand their results over as they complete.

:func:`iter_results` yields each :class:`~geoseg.plan.BatchResult` as soon as its batch is
done, so that the caller stitches and writes while the workers go on, and so that no batch's
fragments stay in memory once they are consumed:

- on ``threads``, ``processes`` and ``sync``, ``dask.compute`` runs in a helper thread with a
  Dask callback that passes each finished result to the caller through a bounded queue (the
  scheduler waits while :data:`MAX_WAITING` results wait for the caller), and empties the
  scheduler's own copy (which Dask would otherwise hold until every task is done);
- on a ``distributed`` scheduler (an address or a ``Client``), ``as_completed`` over the
  futures, each released once it is read.

If the caller stops early (an error while writing, Ctrl-C), no new task is started and the
helper thread is joined before the exception goes on.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import dask
from dask.callbacks import Callback
from dask.delayed import Delayed
from dask.system import CPU_COUNT

from geoseg.config import RunOptions
from geoseg.errors import UserInputError
from geoseg.gpu import CPU_BATCH, GpuMemory, batch_for_memory, gpu_memory
from geoseg.plan import BatchResult
from geoseg.scheduler import check_reachable, is_local

__all__ = [
    "MAX_WAITING",
    "Progress",
    "batch_for_workers",
    "client_for",
    "compute_tasks",
    "connected",
    "iter_results",
    "model_copies",
    "sized_for_cluster",
]

Progress = Callable[[int], None]

_POLL_S = 0.2  # how often a waiting caller wakes up (so that Ctrl-C is seen at once)

MAX_WAITING = 2
"""Finished batches that may wait for the consumer (local schedulers): when stitching and
writing fall behind (a dense city with a fast model), the scheduler starts no new task until
they catch up, so memory stays bounded and the work after the last tile stays short."""


class _Cancelled(Exception):
    """Raised inside the scheduler to stop it when the consumer has gone."""


class _Forward(Callback):
    """Puts each finished batch result on a queue and lets the scheduler's copy go."""

    def __init__(self, sink: queue.Queue, stop: threading.Event) -> None:
        super().__init__()
        self._sink = sink
        self._stop = stop

    def _pretask(self, key: Any, dsk: Any, state: Any) -> None:
        if self._stop.is_set():
            raise _Cancelled

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if not isinstance(result, BatchResult):
            return
        handed = replace(result)
        result.fragments = []  # Dask keeps the result object until compute returns
        # a full queue holds the scheduler back until the consumer catches up
        if not _put(self._sink, handed, self._stop):
            raise _Cancelled


_DONE = object()


def iter_results(
    tasks: Sequence[Delayed], scheduler: Any = "threads", progress: Progress | None = None
) -> Iterator[BatchResult]:
    """Each task's :class:`BatchResult`, in the order they complete (see the module doc).

    ``scheduler`` is ``threads``, ``processes``, ``sync``, an address or a ``Client``;
    ``progress`` is called with the number of tiles of each result.
    """
    if is_local(scheduler):
        results = _iter_local(tasks, scheduler)
    else:
        results = _iter_distributed(tasks, scheduler)
    for result in results:
        if progress:
            progress(result.n_tiles + result.n_skipped)
        yield result


def compute_tasks(tasks: Sequence[Delayed], scheduler: Any = "threads") -> list[Any]:
    """Every task's result, in task order, all at once (for small jobs such as
    ``geoseg select``'s; a scene goes through :func:`iter_results`)."""
    if is_local(scheduler):
        return list(dask.compute(*tasks, scheduler=scheduler, **_local_options(scheduler)))
    with client_for(scheduler) as client:
        return list(client.gather(client.compute(list(tasks))))


def _iter_local(tasks: Sequence[Delayed], scheduler: str) -> Iterator[BatchResult]:
    if not tasks:
        return
    sink: queue.Queue = queue.Queue(maxsize=MAX_WAITING)
    stop = threading.Event()

    def compute() -> None:
        try:
            callbacks = [*Callback.active, _Forward(sink, stop)._callback]  # and the user's own
            dask.compute(
                *tasks, scheduler=scheduler, callbacks=callbacks, **_local_options(scheduler)
            )
            _put(sink, _DONE, stop)
        except BaseException as exc:  # handed to the consumer, raised there
            _put(sink, exc, stop)

    worker = threading.Thread(target=compute, name="geoseg-compute", daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = sink.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


EXTRA_THREADS = 2
"""Threads beyond one per core on ``threads``: reads wait on the disk and GDAL without holding
the GIL, so two more keep the cores busy (the sparse 20,000 px benchmark: 60 s of tiles with
4 threads on 2 cores against 73 s with 2)."""


def model_copies(scheduler: Any) -> int:
    """How many copies of the model ``scheduler`` runs at once on this machine: one per worker
    process of ``processes`` (Dask's ``num_workers``, else the CPU count), one otherwise (the
    threads of ``threads`` share one model; a ``distributed`` worker holds its own)."""
    if isinstance(scheduler, str) and scheduler == "processes":
        return int(dask.config.get("num_workers", None) or CPU_COUNT)
    return 1


def sized_for_cluster(options: RunOptions, scheduler: Any) -> RunOptions:
    """``options`` with a batch size for the GPUs of a ``distributed`` scheduler's workers
    (:func:`batch_for_workers` of what each measures, :func:`~geoseg.gpu.gpu_memory`), which
    the planning process cannot see from where it runs.
    Unchanged where the batch size is set, the device is the CPU, or the scheduler is local
    (the planner sizes batches by this machine's GPU, see :func:`model_copies`)."""
    if options.batch_size is not None or options.device == "cpu" or is_local(scheduler):
        return options
    with client_for(scheduler) as client:  # each worker measures the GPU it resolves to
        seen = client.run(gpu_memory, options.device)
    return replace(options, batch_size=batch_for_workers(seen, options.tile_px))


def batch_for_workers(seen: Mapping[str, GpuMemory | None], tile_px: int) -> int:
    """The smallest batch that the workers' GPUs (``seen``: a worker's address to its GPU,
    ``None`` without one) hold, where the workers that see one GPU (same host and UUID) split
    its memory; :data:`~geoseg.gpu.CPU_BATCH` where no worker has a GPU."""
    from distributed.comm import get_address_host

    gpus = [
        ((get_address_host(address), memory.uuid), memory.free_bytes)
        for address, memory in seen.items()
        if memory is not None
    ]
    if not gpus:
        return CPU_BATCH
    sharing = Counter(gpu for gpu, _ in gpus)
    return min(batch_for_memory(free, tile_px, sharing[gpu]) for gpu, free in gpus)


def _local_options(scheduler: str) -> dict[str, int]:
    """Options for Dask's local schedulers, each left to the user's Dask config if set there:

    - ``num_workers`` on ``threads``: called from a thread other than the main one,
      ``dask.threaded`` would otherwise start ``min(32, cores + 4)`` threads, each task with
      its results and a model's working memory;
    - ``chunksize`` 1 on ``processes``: Dask hands each worker process 6 tasks at a time by
      default, which suits tiny tasks. A geoseg task is a batch of tiles through a model
      (seconds), so six of them made Ctrl-C wait for up to six batches per worker, let six
      results through the bounded queue at once, and left one worker busy at the end.
    """
    if scheduler == "threads" and dask.config.get("num_workers", None) is None:
        return {"num_workers": CPU_COUNT + EXTRA_THREADS}
    if scheduler == "processes" and dask.config.get("chunksize", None) is None:
        return {"chunksize": 1}
    return {}


def _put(sink: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` on ``sink``, waiting while it is full; ``False`` if the consumer left."""
    while not stop.is_set():
        try:
            sink.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _iter_distributed(tasks: Sequence[Delayed], scheduler: Any) -> Iterator[BatchResult]:
    from distributed import as_completed

    with client_for(scheduler) as client:
        done = as_completed(client.compute(list(tasks)))
        for future in done:  # as_completed lets go of each future once it is yielded
            result = future.result()
            future.release()
            yield result


@contextlib.contextmanager
def connected(scheduler: Any) -> Iterator[Any]:
    """``scheduler`` as it is where it is local; otherwise one ``Client`` for it
    (:func:`client_for`), open for the whole block, so that sizing batches and running a
    scene share one connection."""
    if is_local(scheduler):
        yield scheduler
        return
    with client_for(scheduler) as client:
        yield client


@contextlib.contextmanager
def client_for(scheduler: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for an address or a ``Cluster`` (closed after; a ``Cluster``
    itself is the caller's), or the ``Client`` given (left open). An address where no
    scheduler answers is a one-line :class:`~geoseg.errors.UserInputError`."""
    from distributed import Client
    from distributed.deploy import Cluster

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if isinstance(scheduler, Cluster):  # the caller's: only this client is closed after
        with Client(scheduler) as client:
            yield client
        return
    check_reachable(str(scheduler))
    try:
        client = Client(scheduler, timeout="20s")
    except OSError as exc:
        raise UserInputError(
            f"--scheduler {scheduler}: cannot reach a Dask scheduler ({exc})"
        ) from exc
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()
