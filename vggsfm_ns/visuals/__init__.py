"""Pictures of a reconstruction (``--visuals``): ``visuals/reproj.mp4``, ``visuals/tracks.mp4``,
``visuals/errors.png``.

Videos are encoded with PyAV (H.264 when the build has it, else MPEG-4), even canvas sides, the
longer side capped (default 1280 px). Drawing uses OpenCV, the plot matplotlib (Agg, no pyplot state).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:  # pragma: no cover
    from ..progress import PipelineObserver
    from ..types import ReconstructionResult


def write_visuals(
    result: "ReconstructionResult",
    output_dir: Path,
    observer: Optional["PipelineObserver"] = None,
    max_size: int = 1280,
    fps: float = 10.0,
) -> List[Path]:
    """Write the pictures of ``result`` into ``output_dir/visuals/``.

    Args:
        result: what :func:`vggsfm_ns.reconstruct` returned.
        output_dir: the dataset folder (``visuals/`` is created in it).
        observer: progress receiver (one stage per video).
        max_size: longer side of the videos in pixels (never upscaled).
        fps: video frame rate.

    Returns:
        The written files: ``reproj.mp4``, ``tracks.mp4`` (only when ``result.tracks`` is set) and
        ``errors.png``.

    Raises:
        vggsfm_ns.errors.InputError: a frame image cannot be read.
    """
    from .plot import write_error_plot
    from .reproj import write_reproj_video
    from .tracks import write_tracks_video

    out = Path(output_dir) / "visuals"
    out.mkdir(parents=True, exist_ok=True)
    written = [write_reproj_video(result, out / "reproj.mp4", max_size=max_size, fps=fps, observer=observer)]
    if result.tracks is not None:
        written.append(write_tracks_video(result, out / "tracks.mp4", max_size=max_size, fps=fps, observer=observer))
    written.append(write_error_plot(result, out / "errors.png"))
    return written


__all__ = ["write_visuals"]
