"""Shared pytest fixtures.

Real data: tests that need the project's real scenes read them from ``$VGGSFM_NS_DATA`` (default:
``../shared/data`` beside the repository, which CI provides). The small sample shipped in
``assets/sample`` is always available.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets"


def data_root() -> Path:
    return Path(os.environ.get("VGGSFM_NS_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real scenes (dtu_scan24, kitchen, ...); skips when it is not present."""
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set VGGSFM_NS_DATA)")
    return root


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    # CI machines have 2 cores; keep torch from oversubscribing them.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def split_every_job(monkeypatch):
    """Split work over worker threads however small it is (``threads.MIN_JOB_SECONDS = 0``), so that
    tests of the parallel code paths exercise them on small problems."""
    import vggsfm_ns.threads as threads

    monkeypatch.setattr(threads, "MIN_JOB_SECONDS", 0.0)
