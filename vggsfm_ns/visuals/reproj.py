"""``visuals/reproj.mp4``: every frame with its 2D observations and the reprojected 3D points.

Counterpart of the official ``make_reproj_video`` (``create_video_with_reprojections``), which draws
the projections of each frame's 3D points coloured by distance to the scene centre. Here the colour
is the reprojection error, so bad frames and bad regions stand out: each observation is a white
ring, its 3D point's projection a dot coloured from green (0 px) to red (``max_error_px``), joined
by a line. Unregistered frames are shown with a red note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..io.colmap import image_reprojections
from ..progress import PipelineObserver, Stage
from ..types import ReconstructionResult
from .draw import GREEN, RED, WHITE, colormap, draw_circles, draw_segments, put_header
from .video import CanvasLayout, VideoWriter


def frame_reprojections(recon, name: str) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Observations of one registered image and the projections of their 3D points.

    Args:
        recon: ``pycolmap.Reconstruction`` (original pixels, corner convention).
        name: image name.

    Returns:
        ``(obs (n, 2), proj (n, 2), err (n,))`` float64 in original pixels, corner convention,
        ``err = |proj - obs|`` in px; None if the image is absent or has no pose.
    """
    img = next((im for im in recon.images.values() if im.name == name), None)
    if img is None or not img.has_pose:
        return None
    return image_reprojections(recon, img)


def write_reproj_video(
    result: ReconstructionResult,
    path: Path,
    max_size: int = 1280,
    fps: float = 10.0,
    max_error_px: Optional[float] = None,
    reliable_max_error_px: Optional[float] = None,
    reliable_min_observations: Optional[int] = None,
    observer: Optional[PipelineObserver] = None,
) -> Path:
    """Write the reprojection video of ``result`` (one video frame per input frame, input order).

    Args:
        result: the reconstruction (``result.sfm.reconstruction`` and ``result.frames``).
        path: output ``.mp4``.
        max_size: longer side of the video canvas in pixels (frames are never upscaled).
        fps: frame rate.
        max_error_px: error that maps to full red (default: the run's ``sfm.max_reproj_error``, 4 px).
        reliable_max_error_px, reliable_min_observations: thresholds of the "unreliable" note
            (default: :mod:`vggsfm_ns.report`'s).
        observer: progress receiver (stage ``"visuals: reproj"``, one step per frame).

    Returns:
        ``path``.
    """
    from .. import report as _report

    if max_error_px is None:
        max_error_px = float(result.config.sfm.max_reproj_error) if result.config is not None else 4.0
    max_err_rel = _report.RELIABLE_MAX_ERROR_PX if reliable_max_error_px is None else reliable_max_error_px
    min_obs_rel = _report.RELIABLE_MIN_OBSERVATIONS if reliable_min_observations is None else reliable_min_observations

    frames = result.frames
    recon = result.sfm.reconstruction
    layout = CanvasLayout.fit(frames.sizes, max_size)
    unit = layout.draw_unit
    radius = max(1.5, 2.5 * unit)
    with Stage(observer, "visuals: reproj", total=len(frames)) as st, VideoWriter(path, layout.size, fps) as vw:
        for i in range(len(frames)):
            canvas = layout.place(i, frames.image(i))
            rep = frame_reprojections(recon, frames.names[i])
            header = [(f"{frames.names[i]}", WHITE)]
            if rep is None:
                header.append(("not registered", RED))
            else:
                obs, proj, err = rep
                a, b = layout.to_canvas(i, obs), layout.to_canvas(i, proj)
                cols = colormap(err, 0.0, max_error_px)
                draw_segments(canvas, a, b, cols)
                draw_circles(canvas, a, radius + 1.0, np.array(WHITE, np.uint8), thickness=1)
                draw_circles(canvas, b, radius, cols)
                mean = float(err.mean()) if len(err) else float("nan")
                ok = len(err) >= min_obs_rel and mean < max_err_rel
                header.append((f"{len(err)} obs, mean {mean:.2f} px", GREEN if ok else RED))
                if not ok:
                    header.append(("unreliable", RED))
            put_header(canvas, header, unit)
            vw.write(canvas)
            st.advance()
    return Path(path)
