"""Query frames and query points: where tracks start.

* :func:`vggsfm_ns.query.frames.select_query_frames` picks the frames tracks are seeded in
  (official ``generate_rank_by_midpoint`` / ``generate_rank_by_interval`` / ``generate_rank_by_dino``).
* :func:`vggsfm_ns.query.points.detect_query_points` finds the points to track in one frame
  (official ``get_query_points``: ALIKED, SIFT, plus a regular grid and Shi-Tomasi corners for KLT).

Submodules are imported lazily; ``import vggsfm_ns.query`` loads neither kornia nor OpenCV.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vggsfm_ns._lazy import lazy_getattr

_LAZY = {
    "select_query_frames": "vggsfm_ns.query.frames",
    "farthest_point_sampling": "vggsfm_ns.query.frames",
    "rank_by_midpoint": "vggsfm_ns.query.frames",
    "rank_by_interval": "vggsfm_ns.query.frames",
    "detect_query_points": "vggsfm_ns.query.points",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)


if TYPE_CHECKING:  # pragma: no cover
    from .frames import farthest_point_sampling, rank_by_interval, rank_by_midpoint, select_query_frames
    from .points import detect_query_points
