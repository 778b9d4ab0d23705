"""vggsfm-ns: the VGGSfM v2 structure-from-motion pipeline for nerfstudio and gsplat.

Python API (the CLIs are thin shells over it)::

    from vggsfm_ns import reconstruct, export_nerfstudio, preset

    cfg = preset("default")
    result = reconstruct("video.mp4", cfg)
    export_nerfstudio(result, "scene/")

Attributes are imported lazily so that ``import vggsfm_ns`` stays cheap (the ``ns-process-data``
hook imports this package at interpreter start-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vggsfm_ns._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "reconstruct": "vggsfm_ns.api",
    "export_nerfstudio": "vggsfm_ns.export.nerfstudio",
    "ReconstructionConfig": "vggsfm_ns.config",
    "preset": "vggsfm_ns.config",
    "PRESETS": "vggsfm_ns.config",
    "ReconstructionResult": "vggsfm_ns.types",
    "FrameSet": "vggsfm_ns.types",
    "TrackSet": "vggsfm_ns.types",
    "SfMResult": "vggsfm_ns.types",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)


if TYPE_CHECKING:  # pragma: no cover
    from .api import reconstruct
    from .config import PRESETS, ReconstructionConfig, preset
    from .export.nerfstudio import export_nerfstudio
    from .types import FrameSet, ReconstructionResult, SfMResult, TrackSet
