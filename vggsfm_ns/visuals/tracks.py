"""``visuals/tracks.mp4``: the predicted 2D tracks (``result.tracks``) drawn on the original frames.

Each track has one colour (hue from its x position in its query frame, across the drawn tracks,
like the official track visualiser's rainbow). On frame ``i`` a track is a filled dot where it is observed
(:meth:`~vggsfm_ns.types.TrackSet.valid_mask`: ``vis > 0.05`` and ``score > 0.5``), a faded ring
where the tracker predicts it but does not see it, and a tail over the previous ``trail`` frames
through its observed positions. Track positions are mapped from the processed frame the tracker
ran on back to original pixels with ``TrackSet.transforms``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..conventions import center_to_corner
from ..progress import PipelineObserver, Stage
from ..types import ReconstructionResult, TrackSet
from .draw import WHITE, blend, colormap, draw_circles, draw_segments, put_header
from .video import CanvasLayout, VideoWriter


def tracks_in_original_pixels(tracks: TrackSet) -> np.ndarray:
    """``(S, N, 2)`` float64 track positions in each frame's original pixels, corner convention.

    ``TrackSet.tracks`` are pixel-centre coordinates in the processed frame; each frame's
    :class:`~vggsfm_ns.conventions.ImageTransform` maps them back.
    """
    t = tracks.tracks.detach().cpu().double().numpy()
    out = np.empty_like(t)
    for i, tf in enumerate(tracks.transforms):
        out[i] = center_to_corner(tf.proc_to_orig(t[i], "center"))
    return out


def select_tracks(num_tracks: int, max_tracks: int) -> np.ndarray:
    """Evenly spaced subset of at most ``max_tracks`` track indices (all when fewer), int64."""
    if num_tracks <= max_tracks:
        return np.arange(num_tracks)
    return np.unique(np.linspace(0, num_tracks - 1, max_tracks).round().astype(np.int64))


def write_tracks_video(
    result: ReconstructionResult,
    path: Path,
    max_size: int = 1280,
    fps: float = 10.0,
    max_tracks: int = 1500,
    trail: int = 8,
    observer: Optional[PipelineObserver] = None,
) -> Path:
    """Write the track video of ``result.tracks`` (one video frame per input frame).

    Args:
        result: the reconstruction; ``result.tracks`` must not be None.
        path: output ``.mp4``.
        max_size: longer side of the video canvas (frames are never upscaled).
        fps: frame rate.
        max_tracks: at most this many tracks are drawn (evenly spaced subset).
        trail: length of the tail in frames (0: no tail).
        observer: progress receiver (stage ``"visuals: tracks"``, one step per frame).

    Returns:
        ``path``.

    Raises:
        ValueError: ``result.tracks`` is None or its frame count differs from ``result.frames``.
    """
    ts = result.tracks
    frames = result.frames
    if ts is None:
        raise ValueError("write_tracks_video: the result has no tracks")
    if ts.num_frames != len(frames):
        raise ValueError(f"write_tracks_video: {ts.num_frames} track frames for {len(frames)} frames")

    sel = select_tracks(ts.num_tracks, max_tracks)
    xy = tracks_in_original_pixels(ts)[:, sel]  # (S, M, 2)
    valid = ts.valid_mask().cpu().numpy()[:, sel]  # (S, M)
    q = ts.query_frames.cpu().numpy()[sel]
    qx = xy[q, np.arange(len(sel)), 0]  # x of each track in its query frame (original px)
    lo, hi = (float(np.nanmin(qx)), float(np.nanmax(qx))) if len(sel) else (0.0, 1.0)
    colors = colormap(qx, lo, hi if hi > lo else lo + 1.0, "gist_rainbow")

    layout = CanvasLayout.fit(frames.sizes, max_size)
    unit = layout.draw_unit
    radius = max(1.5, 2.2 * unit)
    with Stage(observer, "visuals: tracks", total=len(frames)) as st, VideoWriter(path, layout.size, fps) as vw:
        for i in range(len(frames)):
            canvas = layout.place(i, frames.image(i))
            p_now = layout.to_canvas(i, xy[i])
            # Tail: segments between consecutive observed positions, each drawn in its own frame's
            # canvas placement (frames may differ in size).
            for j in range(max(1, i - trail + 1), i + 1):
                both = valid[j - 1] & valid[j]
                if both.any():
                    draw_segments(canvas, layout.to_canvas(j - 1, xy[j - 1, both]), layout.to_canvas(j, xy[j, both]), colors[both])
            hidden = ~valid[i]
            if hidden.any():
                faded = canvas.copy()
                draw_circles(faded, p_now[hidden], radius, colors[hidden], thickness=1)
                blend(canvas, faded, np.any(faded != canvas, axis=2), 0.35)
            draw_circles(canvas, p_now[valid[i]], radius, colors[valid[i]])
            put_header(canvas, [(f"{frames.names[i]}", WHITE), (f"{int(valid[i].sum())}/{len(sel)} tracks visible ({ts.source})", WHITE)], unit)
            vw.write(canvas)
            st.advance()
    return Path(path)
