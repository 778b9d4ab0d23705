"""Progress reporting and live observation of a running reconstruction.

Every stage reports through a :class:`PipelineObserver`. The default one draws rich progress bars;
the viser viewer (``vggsfm_ns.viewer``) is another observer that receives
:class:`ReconstructionSnapshot` objects as the model grows. :class:`Observers` fans out to several.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class ReconstructionSnapshot:
    """The state of the reconstruction at one moment, for live views.

    Attributes:
        label: what just happened, e.g. ``"initial BA"``, ``"window 3/12"``.
        names: frame names, length S.
        extrinsics: ``(S, 3, 4)`` float64 OpenCV ``cam_from_world``.
        intrinsics: ``(S, 3, 3)`` float64 K in *original* pixels (corner convention).
        image_sizes: ``(S, 2)`` original ``(width, height)``.
        registered: ``(S,)`` bool, frames with a pose.
        points: ``(P, 3)`` float64 world points.
        colors: ``(P, 3)`` uint8.
        point_errors: ``(P,)`` float64 mean reprojection error (px) per point.
        frame_errors: ``(S,)`` float64 mean reprojection error (px) per frame, NaN if unregistered.
        frame_observations: ``(S,)`` int64 inlier observations per frame.
        progress: ``(done, total)`` e.g. windows in video mode, or None.
    """

    label: str
    names: List[str]
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    image_sizes: np.ndarray
    registered: np.ndarray
    points: np.ndarray
    colors: np.ndarray
    point_errors: np.ndarray
    frame_errors: np.ndarray
    frame_observations: np.ndarray
    progress: Optional[tuple] = None


def empty_frame_arrays(num_frames: int) -> Tuple[np.ndarray, ...]:
    """Per-frame arrays of a :class:`ReconstructionSnapshot` for ``S = num_frames`` unregistered frames.

    Returns:
        ``extrinsics (S, 3, 4)`` float64 identity, ``intrinsics (S, 3, 3)`` float64 identity,
        ``sizes (S, 2)`` int64 zeros (width, height px), ``registered (S,)`` bool False,
        ``frame_errors (S,)`` float64 NaN (px), ``frame_observations (S,)`` int64 zeros.
    """
    S = int(num_frames)
    return (
        np.tile(np.eye(4)[:3], (S, 1, 1)),
        np.tile(np.eye(3), (S, 1, 1)),
        np.zeros((S, 2), np.int64),
        np.zeros(S, bool),
        np.full(S, np.nan),
        np.zeros(S, np.int64),
    )


def snapshot_from_reconstruction(recon, names: Sequence[str], label: str, progress: Optional[tuple] = None) -> ReconstructionSnapshot:
    """Build a :class:`ReconstructionSnapshot` from a ``pycolmap.Reconstruction``.

    Frames are matched by image name; names absent from the model are unregistered. Intrinsics are
    taken as they are in the model (the caller decides which pixel frame the model is in).
    """
    from .io.colmap import image_reprojections, model_points

    ext, K, sizes, reg, ferr, fobs = empty_frame_arrays(len(names))
    by_name = {img.name: img for img in recon.images.values()}
    for i, n in enumerate(names):
        img = by_name.get(n)
        if img is None:
            continue
        cam = recon.cameras[img.camera_id]
        K[i] = cam.calibration_matrix()
        sizes[i] = (cam.width, cam.height)
        if not img.has_pose:
            continue
        reg[i] = True
        ext[i] = img.cam_from_world().matrix()
        errs = image_reprojections(recon, img, check_cheirality=True)[2]
        errs = errs[np.isfinite(errs)]  # points in front of the camera only
        fobs[i] = len(errs)
        ferr[i] = float(np.mean(errs)) if len(errs) else np.nan
    _, xyz, rgb, perr = model_points(recon)
    return ReconstructionSnapshot(label, list(names), ext, K, sizes, reg, xyz, rgb, perr, ferr, fobs, progress)


class PipelineObserver:
    """Receives progress and snapshots from the pipeline. All methods are optional no-ops."""

    def frames_loaded(self, frames) -> None:
        """The input :class:`~vggsfm_ns.types.FrameSet` is known (e.g. for frustum thumbnails)."""

    def stage_started(self, name: str, total: Optional[int] = None) -> None:
        """A stage began; ``total`` steps are expected (None: indeterminate)."""

    def stage_advanced(self, name: str, advance: int = 1, note: Optional[str] = None) -> None:
        """A stage made ``advance`` steps of progress."""

    def stage_finished(self, name: str, seconds: float) -> None:
        """A stage ended after ``seconds``."""

    def message(self, text: str, level: str = "info") -> None:
        """A one-line note (``level``: info, warning, error)."""

    def reconstruction_updated(self, snapshot: ReconstructionSnapshot) -> None:
        """The model changed (new frames registered, BA finished, a window landed)."""

    def close(self) -> None:
        """The pipeline ended."""


class Observers(PipelineObserver):
    """Fan-out to several observers."""

    def __init__(self, observers: Sequence[PipelineObserver] = ()):
        self.observers = [o for o in observers if o is not None]

    def frames_loaded(self, frames):
        for o in self.observers:
            o.frames_loaded(frames)

    def stage_started(self, name, total=None):
        for o in self.observers:
            o.stage_started(name, total)

    def stage_advanced(self, name, advance=1, note=None):
        for o in self.observers:
            o.stage_advanced(name, advance, note)

    def stage_finished(self, name, seconds):
        for o in self.observers:
            o.stage_finished(name, seconds)

    def message(self, text, level="info"):
        for o in self.observers:
            o.message(text, level)

    def reconstruction_updated(self, snapshot):
        for o in self.observers:
            o.reconstruction_updated(snapshot)

    def close(self):
        for o in self.observers:
            o.close()


class RichProgress(PipelineObserver):
    """Rich progress bars, one per stage, and messages printed above them."""

    def __init__(self, console=None, transient: bool = False):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=self.console,
            transient=transient,
        )
        self._tasks: Dict[str, int] = {}
        self._started = False

    def _ensure(self):
        if not self._started:
            self._progress.start()
            self._started = True

    def stage_started(self, name, total=None):
        self._ensure()
        self._tasks[name] = self._progress.add_task(name, total=total, note="")

    def stage_advanced(self, name, advance=1, note=None):
        if name not in self._tasks:
            self.stage_started(name)
        kw = {"note": note} if note is not None else {}
        self._progress.update(self._tasks[name], advance=advance, **kw)

    def stage_finished(self, name, seconds):
        if name in self._tasks:
            t = self._tasks[name]
            task = self._progress.tasks[[x.id for x in self._progress.tasks].index(t)]
            total = task.total if task.total is not None else max(task.completed, 1)
            self._progress.update(t, total=total, completed=total, note=f"{seconds:.1f} s")

    def message(self, text, level="info"):
        style = {"warning": "yellow", "error": "bold red"}.get(level, "")
        self._ensure()
        self._progress.console.print(f"[{style}]{text}[/{style}]" if style else text)

    def close(self):
        if self._started:
            self._progress.stop()
            self._started = False


class Stage:
    """Context manager timing one stage and reporting it to an observer.

    Example::

        with Stage(observer, "tracks", total=S, timings=timings) as st:
            for i in range(S):
                ...
                st.advance()
    """

    def __init__(self, observer: Optional[PipelineObserver], name: str, total: Optional[int] = None, timings: Optional[Dict[str, float]] = None):
        self.observer = observer or PipelineObserver()
        self.name = name
        self.total = total
        self.timings = timings
        self.seconds = 0.0

    def __enter__(self) -> "Stage":
        self._t0 = time.perf_counter()
        self.observer.stage_started(self.name, self.total)
        return self

    def advance(self, n: int = 1, note: Optional[str] = None) -> None:
        """``n`` more steps done (``note``: shown beside the bar)."""
        self.observer.stage_advanced(self.name, n, note)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.seconds = time.perf_counter() - self._t0
        if self.timings is not None:
            self.timings[self.name] = self.timings.get(self.name, 0.0) + self.seconds
        self.observer.stage_finished(self.name, self.seconds)
