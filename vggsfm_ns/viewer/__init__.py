"""Live and offline inspection of reconstructions in the browser (viser 0.2.7, nerfstudio's pin).

* :func:`start_live_viewer` → :class:`LiveViewer`, a :class:`~vggsfm_ns.progress.PipelineObserver`
  that redraws cameras and points whenever the pipeline reports a snapshot.
* :func:`view_dataset` opens the same view on a finished output folder.

Importing this package is cheap: viser and the drawing code load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vggsfm_ns._lazy import lazy_getattr

_LAZY = {
    "start_live_viewer": "vggsfm_ns.viewer.live",
    "LiveViewer": "vggsfm_ns.viewer.live",
    "view_dataset": "vggsfm_ns.viewer.view",
    "load_dataset": "vggsfm_ns.viewer.view",
    "ReconstructionScene": "vggsfm_ns.viewer.scene",
    "SceneSettings": "vggsfm_ns.viewer.scene",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)


if TYPE_CHECKING:  # pragma: no cover
    from .live import LiveViewer, start_live_viewer
    from .scene import ReconstructionScene, SceneSettings
    from .view import load_dataset, view_dataset
