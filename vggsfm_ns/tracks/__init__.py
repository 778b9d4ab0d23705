"""Track sources: the learned VGGSfM tracker and the weight-free KLT and SIFT trackers.

Every source returns a :class:`vggsfm_ns.types.TrackSet` (``tracks (S, N, 2)`` pixel-centre
coordinates in each frame's processed frame, ``vis (S, N)``, ``query_frames (N,)``):

* :func:`vggsfm_ns.tracks.klt.track_klt`: pyramidal Lucas-Kanade for ordered frames (video).
* :func:`vggsfm_ns.tracks.sift.track_sift`: SIFT matches chained into tracks, any order.
* ``vggsfm_ns.tracks.vggsfm.track_vggsfm``: the learned tracker (needs the checkpoint).

This package imports nothing heavy at import time; the entry points are resolved lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vggsfm_ns._lazy import lazy_getattr

_LAZY = {
    "track_klt": "vggsfm_ns.tracks.klt",
    "track_points_klt": "vggsfm_ns.tracks.klt",
    "track_sift": "vggsfm_ns.tracks.sift",
    "track_vggsfm": "vggsfm_ns.tracks.vggsfm",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)


if TYPE_CHECKING:  # pragma: no cover
    from .klt import track_klt, track_points_klt
    from .sift import track_sift
    from .vggsfm import track_vggsfm
