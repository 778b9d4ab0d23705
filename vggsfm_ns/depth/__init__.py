"""Dense depth: Depth-Anything-V2 predictions aligned to the SfM points (official ``dense_depth``).

Entry points (imported lazily so that ``import vggsfm_ns.depth`` stays cheap):

* :func:`vggsfm_ns.depth.model.load_depth_model` -> :class:`~vggsfm_ns.depth.model.DepthModel`
* :func:`vggsfm_ns.depth.align.sparse_depth_from_sfm`, :func:`~vggsfm_ns.depth.align.fit_inverse_depth`,
  :func:`~vggsfm_ns.depth.align.smooth_alignment_over_time`
* :func:`vggsfm_ns.depth.estimate.estimate_depth` -> :class:`vggsfm_ns.types.DepthResult`
* :func:`vggsfm_ns.depth.seed.dense_seed_points` (dense splat seed)
* :func:`vggsfm_ns.depth.export.save_depth_maps`, :func:`~vggsfm_ns.depth.export.write_colmap_depth`,
  :func:`~vggsfm_ns.depth.export.read_colmap_depth`
"""

from __future__ import annotations

from vggsfm_ns._lazy import lazy_getattr

_LAZY = {
    "DepthModel": "vggsfm_ns.depth.model",
    "load_depth_model": "vggsfm_ns.depth.model",
    "processing_size": "vggsfm_ns.depth.model",
    "DEFAULT_DEPTH_MODEL": "vggsfm_ns.depth.model",
    "SparseDepth": "vggsfm_ns.depth.align",
    "AlignmentFit": "vggsfm_ns.depth.align",
    "sparse_depth_from_sfm": "vggsfm_ns.depth.align",
    "fit_inverse_depth": "vggsfm_ns.depth.align",
    "smooth_alignment_over_time": "vggsfm_ns.depth.align",
    "apply_alignment": "vggsfm_ns.depth.align",
    "estimate_depth": "vggsfm_ns.depth.estimate",
    "dense_seed_points": "vggsfm_ns.depth.seed",
    "save_depth_maps": "vggsfm_ns.depth.export",
    "write_colmap_depth": "vggsfm_ns.depth.export",
    "read_colmap_depth": "vggsfm_ns.depth.export",
    "DEPTH_UNIT_SCALE_FACTOR": "vggsfm_ns.depth.export",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
