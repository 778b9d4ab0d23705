"""Top-level VGGSfM v2 network container and checkpoint loading.

Source: official ``vggsfm/models/vggsfm.py`` (``VGGSfM`` with ``track_predictor``,
``camera_predictor``, ``triangulator``) and ``VGGSfM.from_pretrained`` (strict loading of
``vggsfm_v2_0_0.bin``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

from .blocks import set_exact
from .camera import CameraPredictor
from .tracker import TrackerPredictor

__all__ = ["VGGSfMModel", "Triangulator"]


class Triangulator(nn.Module):
    """Placeholder for the official ``Triangulator`` module: it has no learned parameters (the
    learnable triangulator was removed after v1.1); the geometry lives in :mod:`vggsfm_ns.sfm`."""

    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError("the VGGSfM triangulator has no network; use vggsfm_ns.sfm")


class VGGSfMModel(nn.Module):
    """The VGGSfM v2 networks: ``track_predictor``, ``camera_predictor``, ``triangulator``.

    ``state_dict()`` has exactly the 690 keys (shapes, float32) of the official checkpoint, in the
    official order, and ``load_state_dict(official_state_dict, strict=True)`` works.

    Use :meth:`from_checkpoint` to build a ready-to-run model. :meth:`set_exact` switches every
    block to the bit-exact official arithmetic (slower; for golden tests).
    """

    def __init__(self):
        super().__init__()
        self.track_predictor = TrackerPredictor()
        self.camera_predictor = CameraPredictor()
        self.triangulator = Triangulator()

    def set_exact(self, exact: bool = True) -> "VGGSfMModel":
        """Bit-exact official numerics (True) or the fast path (False, default). Returns self."""
        set_exact(self, exact)
        return self

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], device: Union[str, torch.device] = "cpu", source: Optional[Path] = None) -> "VGGSfMModel":
        """Build the model on ``device`` from an official-layout ``state_dict`` (strict).

        The modules are created on the meta device and the checkpoint tensors are assigned, so no
        random initialisation is computed and no extra copy is made on CPU.

        Raises:
            vggsfm_ns.errors.CheckpointError: if keys or shapes do not match (names the file).
        """
        from ..errors import CheckpointError

        with torch.device("meta"):
            model = cls()
        try:
            model.load_state_dict(dict(state_dict), strict=True, assign=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            detail = "; ".join(line.strip() for line in first[1:4]) or first[0]
            raise CheckpointError(f"not a VGGSfM v2 checkpoint ({detail[:300]})", source) from None
        for p in model.parameters():
            p.requires_grad_(False)
        return model.to(device).eval()

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> "VGGSfMModel":
        """Load the official ``vggsfm_v2_0_0.bin`` (or a ``.safetensors`` copy) strictly.

        Args:
            path: checkpoint file (see :func:`vggsfm_ns.checkpoints.resolve_checkpoint`).
            device: torch device for the model.

        Returns:
            The model in eval mode, parameters frozen.

        Raises:
            vggsfm_ns.errors.CheckpointError: missing, unreadable or incompatible file.
        """
        from ..checkpoints import load_state_dict

        path = Path(path)
        return cls.from_state_dict(load_state_dict(path), device=device, source=path)
