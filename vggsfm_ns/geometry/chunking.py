"""Chunk sizes for per-point work, from a configured cap or the free memory of the device."""

from __future__ import annotations

import os
from typing import Iterator, Tuple, Union

import torch

#: Fraction of the free memory one chunk may use.
MEMORY_FRACTION = 0.25
#: Fallback when the free memory cannot be read (bytes).
DEFAULT_BUDGET = 2 << 30


def free_memory_bytes(device: Union[str, torch.device, None] = None) -> int:
    """Free memory of ``device`` in bytes: CUDA's ``mem_get_info``, else the host's available RAM."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil is a nerfstudio dependency; /proc fallback
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return DEFAULT_BUDGET


def chunk_size(n: int, bytes_per_item: float, max_items: int = 0, device=None, min_items: int = 1) -> int:
    """How many of ``n`` items to process at once.

    Args:
        n: total number of items (tracks, points).
        bytes_per_item: peak bytes one item needs.
        max_items: a fixed cap (``SfMConfig.max_points_per_chunk``); 0 = derive it from
            ``MEMORY_FRACTION`` of the free memory of ``device`` (env ``VGGSFM_NS_CHUNK`` overrides).
        device: where the work runs.
        min_items: lower bound of the chunk size.

    Returns:
        An integer in ``[min(min_items, n), max(n, 1)]``.
    """
    n = max(int(n), 1)
    if max_items <= 0:
        env = os.environ.get("VGGSFM_NS_CHUNK")
        if env:
            max_items = int(env)
    if max_items <= 0:
        budget = free_memory_bytes(device) * MEMORY_FRACTION
        max_items = int(budget // max(bytes_per_item, 1.0))
    return int(min(n, max(max_items, min_items, 1)))


def chunks(n: int, size: int) -> Iterator[Tuple[int, int]]:
    """``(start, stop)`` ranges covering ``range(n)`` in steps of ``size``."""
    size = max(int(size), 1)
    for s in range(0, n, size):
        yield s, min(n, s + size)
