"""Helpers for the VGGSfM golden-vector tests (``tests/test_golden_*.py``).

The golden folder is ``$VGGSFM_NS_GOLDEN`` (default ``tests/golden/vggsfm``). Tests **fail** when it
is missing. Files are found by pattern; sizes and counts come from the stored tensors.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Dict, List

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: Max abs error allowed for every robust golden target (float32).
TOL = 1e-4


def golden_dir() -> Path:
    d = Path(os.environ.get("VGGSFM_NS_GOLDEN", REPO / "tests" / "golden" / "vggsfm"))
    if not d.is_dir():
        pytest.fail(f"golden folder {d} not found (set VGGSFM_NS_GOLDEN)")
    return d


def golden_files(pattern: str) -> List[Path]:
    files = sorted(golden_dir().glob(pattern))
    if not files:
        pytest.fail(f"no golden file matching {pattern!r} in {golden_dir()}")
    return files


@functools.lru_cache(maxsize=None)
def load_golden(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def golden(pattern: str) -> Dict[str, torch.Tensor]:
    """The single golden file matching ``pattern``."""
    return load_golden(golden_files(pattern)[0])


def manifest_path() -> Path:
    return golden_files("state_dict_manifest.json")[0]


@functools.lru_cache(maxsize=1)
def golden_model():
    """VGGSfMModel with the deterministic weights (shared by all golden tests, CPU, eval)."""
    from vggsfm_ns.networks import VGGSfMModel, deterministic_state_dict

    return VGGSfMModel.from_state_dict(deterministic_state_dict(manifest_path()))


def maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    assert tuple(a.shape) == tuple(b.shape), f"shape {tuple(a.shape)} != golden {tuple(b.shape)}"
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> float:
    err = maxerr(ours, ref)
    assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:.1g}"
    return err


class exact_mode:
    """Context manager: run the golden model with the bit-exact official arithmetic."""

    def __init__(self, model, exact: bool = True):
        self.model, self.exact = model, exact

    def __enter__(self):
        self.model.set_exact(self.exact)
        return self.model

    def __exit__(self, *exc):
        self.model.set_exact(False)
