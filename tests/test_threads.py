"""The CPU threading policy (:mod:`vggsfm_ns.threads`) and the thread-safe glog silencer."""

from __future__ import annotations

import threading

import pytest
import torch

from vggsfm_ns.threads import (
    JOBS_PER_WORKER, MAX_WORKERS, cpu_workers, device_workers, job_ranges, min_job_items, parallel_workers,
    thread_map, torch_threads,
)


@pytest.fixture
def three_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(old)


def test_torch_threads_sets_restores_and_nests(three_threads):
    with torch_threads(1):
        assert torch.get_num_threads() == 1
        assert cpu_workers() == 3  # the caller's count, not the block's
        with torch_threads(2):
            assert torch.get_num_threads() == 2
            assert cpu_workers() == 3
        assert torch.get_num_threads() == 1  # the inner block gives back the outer block's value
    assert torch.get_num_threads() == 3
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 3 and cpu_workers() == 3


def test_cpu_workers_clipped(three_threads):
    torch.set_num_threads(MAX_WORKERS + 8)
    assert cpu_workers() == MAX_WORKERS


def test_device_workers(three_threads):
    with torch_threads(1):
        assert device_workers("cpu") == 3 and device_workers(torch.device("cpu"), 2) == 2
    assert device_workers("cpu", 0) == 1
    assert device_workers("cuda") == 1 and device_workers("cuda:1", 4) == 1  # the device parallelises itself


def test_thread_map_order_parallelism_and_single_threaded_torch(three_threads):
    barrier = threading.Barrier(3, timeout=30)  # only passes if three jobs run at the same time
    seen = []

    def job(i):
        if i < 3:
            barrier.wait()
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return i * i

    assert list(thread_map(job, range(10))) == [i * i for i in range(10)]
    assert len({t for t, _ in seen}) == 3
    assert all(n == 1 for _, n in seen)  # torch runs one intra-op thread inside jobs
    assert torch.get_num_threads() == 3


def test_thread_map_serial_cases_and_errors(three_threads):
    main = threading.get_ident()
    ids = []
    out = list(thread_map(lambda i: ids.append(threading.get_ident()) or -i, [4, 5, 6], workers=1))
    assert out == [-4, -5, -6] and set(ids) == {main}
    assert list(thread_map(lambda i: i, [])) == []

    def bad(i):
        if i == 2:
            raise ValueError(f"job {i}")
        return i

    with pytest.raises(ValueError, match="job 2"):
        list(thread_map(bad, range(5), workers=2))
    assert torch.get_num_threads() == 3


def test_quiet_glog_restores_level_with_overlapping_threads():
    import pycolmap

    from vggsfm_ns.sfm.colmap_build import quiet_glog

    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 0
    try:
        entered = threading.Barrier(2, timeout=30)
        first_left = threading.Event()
        levels = []

        def first():
            with quiet_glog():
                entered.wait()
            first_left.set()

        def second():
            with quiet_glog():
                entered.wait()
                first_left.wait(30)
                levels.append(pycolmap.logging.minloglevel)  # still silenced: one block is open

        ts = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert levels == [2]
        assert pycolmap.logging.minloglevel == 0  # the last block out restores the caller's level
    finally:
        pycolmap.logging.minloglevel = old


def test_bundle_adjustment_threads_follow_cpu_workers(three_threads):
    from vggsfm_ns.sfm.colmap_build import ba_options

    with torch_threads(1):  # the back end's own block: Ceres still gets the caller's count
        assert ba_options().ceres.solver_options.num_threads == 3
    torch.set_num_threads(1)
    assert ba_options().ceres.solver_options.num_threads == 1


def test_job_ranges_cover_in_order_with_bounded_size():
    assert job_ranges(10, 4, 1) == [(0, 4), (4, 8), (8, 10)]
    assert job_ranges(0, 4, 2) == []
    r = job_ranges(1000, 10**9, 2)  # one worker's worth of memory, split for two workers
    assert len(r) == 2 * JOBS_PER_WORKER and r[0] == (0, 125) and r[-1][1] == 1000
    assert all(b == a2 for (_, b), (a2, _) in zip(r, r[1:]))
    r = job_ranges(7, 100, 16)  # never empty ranges
    assert r == [(i, i + 1) for i in range(7)]
    assert job_ranges(7, 100, 16, item_seconds=0.0) == r  # no cost estimate: as before


def test_small_work_is_not_split(monkeypatch):
    """Jobs hold at least MIN_JOB_SECONDS of estimated work, and small work uses fewer workers."""
    import vggsfm_ns.threads as threads

    monkeypatch.setattr(threads, "MIN_JOB_SECONDS", 0.04)
    assert parallel_workers(0.01, 2) == 1 and parallel_workers(0.079, 2) == 1
    assert parallel_workers(0.08, 2) == 2 and parallel_workers(10.0, 3) == 3 and parallel_workers(10.0, 0) == 1
    assert min_job_items(1e-3) == 40 and min_job_items(0.0) == 1
    # 1000 items of 0.1 ms: 0.1 s of work, jobs of at least 400 items instead of 1000 / 8
    assert job_ranges(1000, 10**9, 2, item_seconds=1e-4) == [(0, 400), (400, 800), (800, 1000)]
    assert job_ranges(1000, 100, 2, item_seconds=1e-4)[0] == (0, 100)  # memory still caps the size
    # 1 s of work: the per-worker split is coarser than the floor, so it wins
    assert len(job_ranges(1000, 10**9, 2, item_seconds=1e-3)) == 2 * JOBS_PER_WORKER
    monkeypatch.setattr(threads, "MIN_JOB_SECONDS", 0.0)  # split_every_job's setting: any work is split
    assert parallel_workers(1e-9, 2) == 2 and min_job_items(1e-9) == 1
    assert len(job_ranges(1000, 10**9, 2, item_seconds=1e-9)) == 2 * JOBS_PER_WORKER
