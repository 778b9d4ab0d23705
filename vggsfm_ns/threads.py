"""CPU threading policy: one torch thread per op, parallelism over independent jobs.

The CPU parts of the pipeline (SIFT matching, LO-RANSAC triangulation, pose refinement) consist of
many small, independent jobs: a frame pair, a chunk of tracks, a frame. Each op is too small for an
OpenMP team to pay off, and OpenMP workers spin-wait, which makes every op many times slower when
another process holds a core (measured in ``docs/benchmarks.md``: fox back end 3.8 s -> 7.9 s with
two torch threads and one busy core). So torch runs on one intra-op thread
(:func:`torch_threads`) and :func:`thread_map` runs the jobs on :func:`cpu_workers` Python threads;
torch, numpy, OpenCV, poselib and pycolmap release the GIL inside their kernels.

The worker count follows torch's intra-op thread count as the caller set it (``torch.set_num_threads``
or ``OMP_NUM_THREADS``; torch's default is the number of physical cores), read *outside* any
:func:`torch_threads` block, so ``torch.set_num_threads(1)`` makes the compute stages serial
(bundle adjustment too: :func:`vggsfm_ns.sfm.colmap_build.ba_options`); reading the input frames
and writing the dataset keep their own I/O threads.

Work is split only into jobs of at least :data:`MIN_JOB_SECONDS` of single-core time
(:func:`parallel_workers`, :func:`job_ranges`): a job of many small torch ops spends much of its
time in Python between kernels, holding the GIL, so two such jobs hardly overlap, and every hand-off
of the GIL between a worker and a thread running Python can wait for the interpreter's switch
interval (5 ms). Measured in ``docs/benchmarks.md`` (tenth session): on DTU-sized problems the
point filter and the linear and pairwise triangulations took 1.5-10x longer split over two
workers than on one thread, and the LO-RANSAC triangulation was no faster.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

#: Most worker threads :func:`cpu_workers` returns.
MAX_WORKERS = 16
#: Work split over several workers is cut into at least this many jobs per worker, so that uneven
#: jobs still keep every worker busy (and smaller batches stay in cache).
JOBS_PER_WORKER = 4
#: Least single-core work, in seconds, worth a job of its own on a worker thread (see the module
#: docstring). Callers estimate their work from measured per-item costs; 0 splits any work.
MIN_JOB_SECONDS = 0.04

_lock = threading.Lock()
_outer: List[int] = []  # torch thread counts saved by the active torch_threads blocks, outermost first


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch's CPU ops with ``n`` intra-op threads inside the block, then restore the count.

    Nested blocks and blocks on several Python threads are allowed (the count is process-wide; once
    every block has exited it is the caller's value again). :func:`cpu_workers` keeps returning the
    caller's count inside the block.
    """
    with _lock:
        _outer.append(torch.get_num_threads())
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        with _lock:
            torch.set_num_threads(_outer.pop())


def cpu_workers() -> int:
    """Worker threads for :func:`thread_map`: torch's intra-op thread count outside every active
    :func:`torch_threads` block, clipped to ``[1, MAX_WORKERS]``."""
    with _lock:
        n = _outer[0] if _outer else torch.get_num_threads()
    return max(1, min(MAX_WORKERS, int(n)))


def io_workers(max_workers: int = 8) -> int:
    """Threads for reading or writing image files: the machine's CPU count, at most ``max_workers``.

    Decoding and encoding release the GIL; these pools do not follow :func:`cpu_workers` because a
    user who limits torch's threads still wants the frames read and the dataset written in parallel.
    """
    return max(1, min(int(max_workers), os.cpu_count() or 1))


def device_workers(device, num_workers: Optional[int] = None) -> int:
    """Workers for per-chunk work on ``device``: 1 off the CPU (the device parallelises itself),
    else ``num_workers`` (at least 1) or :func:`cpu_workers`."""
    if torch.device(device).type != "cpu":
        return 1
    return cpu_workers() if num_workers is None else max(1, int(num_workers))


def parallel_workers(seconds: float, workers: int) -> int:
    """Workers worth using for ``seconds`` of estimated single-core work: as many as there are
    :data:`MIN_JOB_SECONDS` jobs in it, at most ``workers``, at least 1."""
    workers = max(1, int(workers))
    if MIN_JOB_SECONDS <= 0:
        return workers
    return max(1, min(workers, int(seconds // MIN_JOB_SECONDS)))


def min_job_items(item_seconds: float) -> int:
    """Fewest items of ``item_seconds`` estimated single-core seconds each that make a job worth a
    worker thread (:data:`MIN_JOB_SECONDS`); 1 when either is not positive."""
    if item_seconds <= 0 or MIN_JOB_SECONDS <= 0:
        return 1
    return max(1, math.ceil(MIN_JOB_SECONDS / item_seconds))


def thread_map(fn: Callable[[T], R], items: Iterable[T], workers: Optional[int] = None) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads (default :func:`cpu_workers`), results in input
    order, with torch on one intra-op thread while it runs.

    Serial (same thread, same order) when there is one worker or at most one item, so a caller's
    results never depend on the worker count as long as the jobs are independent. Exceptions of a
    job propagate to the caller. A generator: consume it to run the jobs.
    """
    items = list(items)
    n = cpu_workers() if workers is None else max(1, int(workers))
    with torch_threads(1):
        if n == 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
            return
        with ThreadPoolExecutor(min(n, len(items))) as ex:
            yield from ex.map(fn, items)


def job_ranges(n: int, max_size: int, workers: int, item_seconds: float = 0.0) -> List[Tuple[int, int]]:
    """``(start, stop)`` ranges covering ``range(n)`` in order, each at most ``max_size`` long and,
    with more than one worker, at most ``ceil(n / (JOBS_PER_WORKER * workers))`` long, but not
    shorter than :data:`MIN_JOB_SECONDS` of work when ``item_seconds`` (estimated single-core
    seconds per item) is given.

    For per-item work whose result does not depend on how the items are batched. Pass the
    ``workers`` of :func:`parallel_workers` so that small work is not split at all.
    """
    size = max(1, int(max_size))
    if workers > 1:
        size = min(size, max(math.ceil(n / (JOBS_PER_WORKER * workers)), min_job_items(item_seconds)))
    return [(a, min(n, a + size)) for a in range(0, max(0, int(n)), size)]


__all__ = [
    "MAX_WORKERS", "JOBS_PER_WORKER", "MIN_JOB_SECONDS", "torch_threads", "cpu_workers", "device_workers",
    "parallel_workers", "min_job_items", "thread_map", "job_ranges",
]
