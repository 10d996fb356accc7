"""How many tiles go to the model at once: 4 on the CPU, as many as a GPU's free memory holds.

Torch is imported only when the device may be a GPU (``auto``, ``cuda``, ``cuda:N``) and torch
is installed, so a CPU run with a torch-free model never loads it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, NamedTuple

__all__ = [
    "CPU_BATCH",
    "GPU_BYTES_PER_MEGAPIXEL",
    "MAX_GPU_BATCH",
    "GpuMemory",
    "auto_batch_size",
    "batch_for_memory",
    "gpu_memory",
    "physical_gpu",
]

CPU_BATCH = 4
"""Tiles per model call on the CPU: enough to amortize a call, small enough for 2 cores."""

MAX_GPU_BATCH = 32
"""More tiles per call than this add memory, not speed (the GPU is already full)."""

GPU_BYTES_PER_MEGAPIXEL = 768 * 2**20
"""Working memory that inference on one megapixel of tile may take on a GPU (a conservative
figure for the default Mask R-CNN in float16: activations, proposals and masks): a 512 px tile
is 0.26 MP, about 200 MB."""

GPU_SHARE = 0.5
"""The share of the GPU's free memory that a batch may take (the rest: CUDA's caching
allocator, other processes, fragmentation)."""


def auto_batch_size(device: str, tile_px: int, model_copies: int = 1) -> int:
    """Tiles per batch for ``device``: :data:`CPU_BATCH` unless it resolves to a CUDA GPU, then
    :func:`batch_for_memory` of its free memory (see :func:`gpu_memory`)."""
    memory = gpu_memory(device)
    if memory is None:
        return CPU_BATCH
    return batch_for_memory(memory.free_bytes, tile_px, model_copies)


def batch_for_memory(free_bytes: int, tile_px: int, model_copies: int = 1) -> int:
    """Tiles per batch on a GPU with ``free_bytes`` free: :data:`GPU_SHARE` of them, split
    between the ``model_copies`` models that will run on it at once (one per worker process
    of Dask's ``processes`` scheduler, or per ``distributed`` worker that shares the GPU),
    over :data:`GPU_BYTES_PER_MEGAPIXEL` per tile, between :data:`CPU_BATCH` and
    :data:`MAX_GPU_BATCH`."""
    per_tile = GPU_BYTES_PER_MEGAPIXEL * tile_px * tile_px / 1e6
    share = GPU_SHARE * free_bytes / max(1, model_copies)
    return int(min(MAX_GPU_BATCH, max(CPU_BATCH, share // per_tile)))


class GpuMemory(NamedTuple):
    """The CUDA GPU a device name resolves to in this process: which one (``uuid``, the same
    for every process that sees it) and its free memory now."""

    uuid: str
    free_bytes: int


def gpu_memory(device: str) -> GpuMemory | None:
    """The GPU that ``device`` (``auto``, ``cuda``, ``cuda:N``) resolves to in this process;
    ``None`` where it resolves to the CPU (``cpu``, no torch, no CUDA, or a bad name, which is
    reported where the model is loaded)."""
    if device == "cpu" or importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        index = torch.device("cuda" if device == "auto" else device).index
        index = index if index is not None else 0
        free, _ = torch.cuda.mem_get_info(index)
    except (RuntimeError, ValueError):
        return None
    return GpuMemory(_uuid(torch, index), int(free))


def _uuid(torch: Any, index: int) -> str:
    """The GPU's UUID; where this torch or driver gives none, the name of the physical GPU
    that ``CUDA_VISIBLE_DEVICES`` maps ``index`` to (``cuda:1``, ``cuda:GPU-8f...``), so two
    workers of one host that each see their own GPU as ``cuda:0`` (dask-cuda's way) are not
    taken for two users of one GPU."""
    try:
        return str(torch.cuda.get_device_properties(index).uuid)
    except Exception:  # an old driver, a mocked device
        return f"cuda:{physical_gpu(index, os.environ.get('CUDA_VISIBLE_DEVICES'))}"


def physical_gpu(index: int, visible: str | None) -> str:
    """The entry of ``visible`` (a ``CUDA_VISIBLE_DEVICES`` value: indices or UUIDs, comma
    separated) that CUDA device ``index`` of this process is; ``index`` itself where the
    variable is unset or has no such entry."""
    entries = [e.strip() for e in (visible or "").split(",") if e.strip()]
    return entries[index] if 0 <= index < len(entries) else str(index)
