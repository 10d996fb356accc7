"""How many tiles go to the model at once: 4 on the CPU, as many as a GPU's free memory holds.

Torch is imported only when the device may be a GPU (``auto``, ``cuda``, ``cuda:N``) and torch
is installed, so a CPU run with a torch-free model never loads it.
"""

from __future__ import annotations

import importlib.util

__all__ = ["CPU_BATCH", "GPU_BYTES_PER_MEGAPIXEL", "MAX_GPU_BATCH", "auto_batch_size"]

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
    :data:`GPU_SHARE` of its free memory, split between the ``model_copies`` models that will
    run on it at once (one per worker process of Dask's ``processes`` scheduler), over
    :data:`GPU_BYTES_PER_MEGAPIXEL` per tile, between :data:`CPU_BATCH` and
    :data:`MAX_GPU_BATCH`."""
    if device == "cpu" or importlib.util.find_spec("torch") is None:
        return CPU_BATCH
    import torch

    if not torch.cuda.is_available():
        return CPU_BATCH
    try:
        index = torch.device("cuda" if device == "auto" else device).index
        free, _ = torch.cuda.mem_get_info(index if index is not None else 0)
    except (RuntimeError, ValueError):  # a bad device name is reported where it is used
        return CPU_BATCH
    per_tile = GPU_BYTES_PER_MEGAPIXEL * tile_px * tile_px / 1e6
    share = GPU_SHARE * free / max(1, model_copies)
    return int(min(MAX_GPU_BATCH, max(CPU_BATCH, share // per_tile)))
