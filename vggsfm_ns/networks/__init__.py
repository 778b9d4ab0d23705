"""The VGGSfM v2 networks, re-implemented to load the official checkpoint strictly.

* :class:`VGGSfMModel` (``from_checkpoint(path, device)``): ``track_predictor``
  (:class:`~vggsfm_ns.networks.tracker.TrackerPredictor`), ``camera_predictor``
  (:class:`~vggsfm_ns.networks.camera.CameraPredictor`) and a parameter-free ``triangulator``.
* :func:`~vggsfm_ns.networks.ranking.rank_frames_by_dino`: query-frame ranking.
* :func:`~vggsfm_ns.networks.deterministic.deterministic_state_dict`: the golden-test weights.

Sub-modules: ``blocks`` (attention / conv blocks), ``embeddings`` (positional embeddings, sampling),
``tracker``, ``camera``, ``ranking``, ``deterministic``, ``model``.
"""

from __future__ import annotations

from .deterministic import deterministic_state_dict
from .model import Triangulator, VGGSfMModel
from .ranking import rank_frames_by_dino

__all__ = ["VGGSfMModel", "Triangulator", "rank_frames_by_dino", "deterministic_state_dict"]
