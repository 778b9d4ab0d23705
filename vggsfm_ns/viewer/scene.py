"""Drawing a reconstruction into a viser (0.2.7) server: frustums, thumbnails, points, GUI controls.

Conventions
-----------
:class:`~vggsfm_ns.progress.ReconstructionSnapshot` holds OpenCV ``cam_from_world`` extrinsics
``[R | t]``. viser draws camera frustums in the OpenCV camera convention as well (+Z forward, +X
right, +Y down; ``add_camera_frustum`` docstring), so a frustum's pose is the camera-to-world
transform with **no axis flip**: ``wxyz = quat(R^T)``, ``position = -R^T t`` (the camera centre). The
frustum ``fov`` is vertical: ``2 atan(H / (2 fy))``, ``aspect = W / H`` (original pixels).

The scene's "up" is estimated from the cameras (mean of their ``-y`` axes) and handed to viser's
``set_up_direction``, so COLMAP worlds (y down) and nerfstudio worlds (z up) both show upright.

Colours: points by image colour or by mean reprojection error (green 0 px → red at
``error_color_max``); frustums blue for reliable frames, red for unreliable ones (registered with fewer
than :data:`vggsfm_ns.report.RELIABLE_MIN_OBSERVATIONS` inliers or a mean error of at least
:data:`vggsfm_ns.report.RELIABLE_MAX_ERROR_PX`), unless the caller passes its own flags.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..geometry.camera import camera_centers
from ..progress import ReconstructionSnapshot

#: Frustum colour of reliable frames (RGB).
RELIABLE_COLOR = (40, 110, 225)
#: Frustum colour of unreliable / high-error frames (RGB).
UNRELIABLE_COLOR = (235, 40, 40)

ThumbnailFn = Callable[[int], Optional[np.ndarray]]

#: Range of the "point size (%)" slider, percent of the scene extent.
POINT_SIZE_RANGE = (0.05, 5.0)
#: Range of the "max error (px)" slider; its right end means "show every point".
MAX_ERROR_RANGE = (0.25, 10.0)


@dataclass
class SceneSettings:
    """What the GUI controls (and the Python API) set.

    Attributes:
        point_size: point size in percent of the scene extent (median camera distance from the
            cameras' median centre).
        color_mode: ``"image"`` (point colours) or ``"error"`` (reprojection error colour map).
        max_error_px: hide points whose mean reprojection error is above this; None = show all.
        show_frames: draw the camera frustums.
        error_color_max: error (px) that maps to full red in ``"error"`` mode.
    """

    point_size: float = 0.4
    color_mode: str = "image"
    max_error_px: Optional[float] = None
    show_frames: bool = True
    error_color_max: float = 4.0


def frustum_pose(extrinsic: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(3, 4)`` OpenCV ``cam_from_world`` -> viser ``(wxyz (4,), position (3,))`` of the frustum."""
    import viser.transforms as vtf

    R = np.asarray(extrinsic[:3, :3], np.float64)
    return vtf.SO3.from_matrix(R.T).wxyz, camera_centers(extrinsic)


def estimate_up(extrinsics: np.ndarray) -> Optional[np.ndarray]:
    """Unit world "up": the mean of the cameras' up axes (``-y`` of OpenCV cameras), or None."""
    if len(extrinsics) == 0:
        return None
    up = -np.asarray(extrinsics)[:, 1, :3].sum(0)
    n = np.linalg.norm(up)
    return up / n if n > 1e-9 else None


def frame_reliability(snapshot: ReconstructionSnapshot) -> np.ndarray:
    """``(S,)`` bool: registered, enough inlier observations and a low mean error
    (thresholds of :mod:`vggsfm_ns.report`)."""
    from .. import report as _report

    err = np.asarray(snapshot.frame_errors, np.float64)
    obs = np.asarray(snapshot.frame_observations)
    with np.errstate(invalid="ignore"):
        return np.asarray(snapshot.registered, bool) & (obs >= _report.RELIABLE_MIN_OBSERVATIONS) & (err < _report.RELIABLE_MAX_ERROR_PX)


class ReconstructionScene:
    """Keeps a viser server's scene and GUI in sync with the latest reconstruction snapshot.

    Args:
        server: a running ``viser.ViserServer``.
        thumbnails: ``i -> (h, w, 3) uint8`` image of frame ``i`` (snapshot order) or None; called
            once per frame, results are cached. Shown on the frustums.
        max_points: at most this many points are sent (random subset, fixed seed).
        settings: initial :class:`SceneSettings`.
        title: heading of the GUI panel.

    Thread-safe: :meth:`update` may be called from the pipeline thread while GUI callbacks run.
    """

    def __init__(
        self,
        server,
        thumbnails: Optional[ThumbnailFn] = None,
        max_points: int = 500_000,
        settings: Optional[SceneSettings] = None,
        title: str = "VGGSfM reconstruction",
    ):
        self.server = server
        self.thumbnails = thumbnails
        self.max_points = int(max_points)
        self.settings = settings or SceneSettings()
        self.snapshot: Optional[ReconstructionSnapshot] = None
        self.reliable: Optional[np.ndarray] = None
        self.extra_points: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.RLock()
        self._thumb_cache: Dict[str, Optional[np.ndarray]] = {}
        self._frustums: Dict[int, object] = {}
        self._frustum_keys: Dict[int, tuple] = {}
        self._extra_handles: Dict[str, object] = {}
        self._up: Optional[np.ndarray] = None
        self._view: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None
        self.scene_scale = 1.0
        self._build_gui(title)
        server.on_client_connect(self._on_connect)

    # ------------------------------------------------------------------ GUI

    def _build_gui(self, title: str) -> None:
        gui = self.server.gui
        s = self.settings
        self.gui_title = gui.add_markdown(f"**{title}**")
        self.gui_status = gui.add_markdown("waiting for the first reconstruction ...")
        self.gui_stage = gui.add_markdown(" ")
        self.gui_progress = gui.add_progress_bar(0.0, visible=False)
        with gui.add_folder("Display"):
            self.gui_point_size = gui.add_slider(
                "point size (%)", min=POINT_SIZE_RANGE[0], max=POINT_SIZE_RANGE[1], step=0.05, initial_value=float(np.clip(s.point_size, *POINT_SIZE_RANGE))
            )
            self.gui_color_mode = gui.add_dropdown("colour", options=("image", "error"), initial_value=s.color_mode)
            self.gui_max_error = gui.add_slider(
                "max error (px)",
                min=MAX_ERROR_RANGE[0],
                max=MAX_ERROR_RANGE[1],
                step=0.25,
                initial_value=MAX_ERROR_RANGE[1] if s.max_error_px is None else float(np.clip(s.max_error_px, *MAX_ERROR_RANGE)),
            )
            self.gui_show_frames = gui.add_checkbox("show frames", initial_value=s.show_frames)
        self.gui_frames = gui.add_markdown(" ")
        self.gui_messages = gui.add_markdown(" ")

        self.gui_point_size.on_update(lambda _: self._from_gui())
        self.gui_color_mode.on_update(lambda _: self._from_gui())
        self.gui_max_error.on_update(lambda _: self._from_gui())
        self.gui_show_frames.on_update(lambda _: self._from_gui())

    def _from_gui(self) -> None:
        with self._lock:
            v = float(self.gui_max_error.value)
            new = SceneSettings(
                point_size=float(self.gui_point_size.value),
                color_mode=str(self.gui_color_mode.value),
                max_error_px=None if v >= MAX_ERROR_RANGE[1] else v,
                show_frames=bool(self.gui_show_frames.value),
                error_color_max=self.settings.error_color_max,
            )
            if new == self.settings:  # an echo of apply_settings: already drawn
                return
            self.settings = new
            self._draw_points()
            self._draw_frames()

    def apply_settings(self, **changes) -> None:
        """Change :class:`SceneSettings` fields (``point_size``, ``color_mode``, ``max_error_px``,
        ``show_frames``, ``error_color_max``), mirror them in the GUI and redraw now.

        ``point_size`` and ``max_error_px`` are clipped to the sliders' ranges
        (:data:`POINT_SIZE_RANGE`, :data:`MAX_ERROR_RANGE`; the latter's right end means no filter).

        Raises:
            ValueError: an unknown field or colour mode.
        """
        with self._lock:
            for k, v in changes.items():
                if not hasattr(self.settings, k):
                    raise ValueError(f"unknown scene setting {k!r}")
                if k == "color_mode" and v not in ("image", "error"):
                    raise ValueError(f"colour mode must be 'image' or 'error', got {v!r}")
                setattr(self.settings, k, v)
            s = self.settings
            s.point_size = float(np.clip(s.point_size, *POINT_SIZE_RANGE))
            if s.max_error_px is not None:
                s.max_error_px = float(np.clip(s.max_error_px, *MAX_ERROR_RANGE))
                s.max_error_px = None if s.max_error_px >= MAX_ERROR_RANGE[1] else s.max_error_px
            self.gui_point_size.value = float(np.clip(s.point_size, *POINT_SIZE_RANGE))
            self.gui_color_mode.value = s.color_mode
            self.gui_max_error.value = MAX_ERROR_RANGE[1] if s.max_error_px is None else float(np.clip(s.max_error_px, *MAX_ERROR_RANGE))
            self.gui_show_frames.value = bool(s.show_frames)
            self._draw_points()
            self._draw_frames()

    def set_stage(self, text: str, fraction: Optional[float] = None) -> None:
        """Show the current pipeline stage (markdown) and, when known, its progress in [0, 1]."""
        self.gui_stage.content = text or " "
        if fraction is None:
            self.gui_progress.visible = False
        else:
            self.gui_progress.value = float(np.clip(fraction, 0.0, 1.0) * 100.0)
            self.gui_progress.visible = True

    def set_messages(self, lines: Sequence[str]) -> None:
        """Show the last pipeline messages (markdown list)."""
        self.gui_messages.content = "\n".join(f"- {m}" for m in lines) if lines else " "

    # ------------------------------------------------------------------ camera

    def set_view(self, position: Sequence[float], look_at: Sequence[float], up: Optional[Sequence[float]] = None) -> None:
        """Place every browser's camera (connected now and later) at ``position`` looking at
        ``look_at`` (world coordinates); ``up`` defaults to the scene's estimated up."""
        if up is None:
            up = self._up if self._up is not None else np.array([0.0, 0.0, 1.0])
        self._view = (np.asarray(position, np.float64), np.asarray(look_at, np.float64), np.asarray(up, np.float64))
        for client in self.server.get_clients().values():
            self._apply_view(client)

    def _apply_view(self, client) -> None:
        if self._view is None:
            return
        pos, look, up = self._view
        with client.atomic():
            client.camera.position = pos
            client.camera.look_at = look
            client.camera.up_direction = up

    def _on_connect(self, client) -> None:
        self._apply_view(client)

    def default_view(self, snapshot: ReconstructionSnapshot) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """``(position, look_at)`` behind the first registered camera, looking at the point median."""
        reg = np.nonzero(np.asarray(snapshot.registered, bool))[0]
        if len(reg) == 0:
            return None
        C = camera_centers(snapshot.extrinsics[reg])
        look = np.median(snapshot.points, 0) if len(snapshot.points) else C.mean(0)
        c0 = C[0]
        back = c0 - look
        n = np.linalg.norm(back)
        if n < 1e-9:
            back, n = -snapshot.extrinsics[reg[0], 2, :3], 1.0
        up = self._up if self._up is not None else np.zeros(3)
        return c0 + back / n * 0.8 * self.scene_scale + up * 0.4 * self.scene_scale, look

    # ------------------------------------------------------------------ data

    def update(self, snapshot: ReconstructionSnapshot, reliable: Optional[np.ndarray] = None) -> None:
        """Show ``snapshot`` (replaces the previous one).

        Args:
            snapshot: the reconstruction state (OpenCV extrinsics, original-pixel intrinsics).
            reliable: ``(S,)`` bool per-frame quality flags; default :func:`frame_reliability`.
        """
        with self._lock:
            self.snapshot = snapshot
            self.reliable = np.asarray(reliable, bool) if reliable is not None else frame_reliability(snapshot)
            reg = np.asarray(snapshot.registered, bool)
            C = camera_centers(np.asarray(snapshot.extrinsics)[reg]) if reg.any() else np.zeros((0, 3))
            self.scene_scale = self._extent(C, np.asarray(snapshot.points))
            up = estimate_up(np.asarray(snapshot.extrinsics)[reg]) if reg.sum() >= 1 else None
            if up is not None and self._up is None:  # fixed once, so the view does not jump
                self._up = up
                self.server.scene.set_up_direction(up)
            if self._view is None:
                v = self.default_view(snapshot)
                if v is not None:
                    self.set_view(v[0], v[1])
            self._draw_points()
            self._draw_frames()
            self._write_status()

    def add_extra_points(self, name: str, points: np.ndarray, colors: np.ndarray, visible: bool = False) -> None:
        """An additional toggleable point cloud (e.g. the dense seed points), image colours only."""
        with self._lock:
            self.extra_points[name] = (np.asarray(points, np.float32).reshape(-1, 3), np.asarray(colors, np.uint8).reshape(-1, 3))
            cb = self.server.gui.add_checkbox(f"show {name}", initial_value=visible)
            cb.on_update(lambda e, n=name: self._set_extra_visible(n, bool(e.target.value)))
            self._set_extra_visible(name, visible)

    def _set_extra_visible(self, name: str, visible: bool) -> None:
        with self._lock:
            pts, cols = self.extra_points[name]
            pts, cols = self._subsample(pts, cols)
            self._extra_handles[name] = self.server.scene.add_point_cloud(
                f"/vggsfm/{name}", pts, cols, point_size=self._point_size(), visible=visible
            )

    @staticmethod
    def _extent(C: np.ndarray, P: np.ndarray) -> float:
        pts = C if len(C) >= 2 else (P if len(P) else C)
        if len(pts) < 2:
            return 1.0
        centre = np.median(pts, 0)
        ext = float(np.median(np.linalg.norm(pts - centre, axis=1)))
        return ext if ext > 1e-9 else 1.0

    def _point_size(self) -> float:
        return float(self.settings.point_size) / 100.0 * self.scene_scale

    def _subsample(self, pts: np.ndarray, cols: np.ndarray, extra: Optional[np.ndarray] = None):
        if len(pts) <= self.max_points:
            return (pts, cols) if extra is None else (pts, cols, extra)
        idx = np.sort(np.random.default_rng(0).choice(len(pts), self.max_points, replace=False))
        return (pts[idx], cols[idx]) if extra is None else (pts[idx], cols[idx], extra[idx])

    def visible_points(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(points (M, 3) float32, colours (M, 3) uint8)`` as currently drawn (after the error
        filter, the colour mode and the ``max_points`` subset)."""
        snap, s = self.snapshot, self.settings
        if snap is None:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        pts = np.asarray(snap.points, np.float32).reshape(-1, 3)
        cols = np.asarray(snap.colors, np.uint8).reshape(-1, 3)
        err = np.asarray(snap.point_errors, np.float64).reshape(-1)
        if len(err) != len(pts):
            err = np.full(len(pts), np.nan)
        if s.max_error_px is not None:
            keep = ~(err > s.max_error_px)  # unknown (NaN) errors are kept
            pts, cols, err = pts[keep], cols[keep], err[keep]
        if s.color_mode == "error":
            from ..visuals.draw import colormap

            cols = colormap(err, 0.0, s.error_color_max)
        pts, cols = self._subsample(pts, cols)
        return pts, cols

    def _draw_points(self) -> None:
        if self.snapshot is None:
            return
        pts, cols = self.visible_points()
        self.server.scene.add_point_cloud("/vggsfm/points", pts, cols, point_size=self._point_size())
        for name, h in list(self._extra_handles.items()):
            self._set_extra_visible(name, bool(h.visible))

    def set_thumbnails(self, fn: Optional[ThumbnailFn]) -> None:
        """Use ``fn(i) -> (H, W, 3) uint8`` for frame ``i``'s frustum image (None: no images) and
        redraw the frustums with it."""
        with self._lock:
            self.thumbnails = fn
            self._thumb_cache.clear()
            self._frustum_keys.clear()
            self._draw_frames()

    def _thumbnail(self, i: int) -> Optional[np.ndarray]:
        if self.thumbnails is None:
            return None
        key = self.snapshot.names[i]  # cached by name: snapshots may list frames differently
        if key not in self._thumb_cache:
            try:
                img = self.thumbnails(i)
            except Exception:  # a missing or unreadable image must not take the viewer down
                img = None
            self._thumb_cache[key] = None if img is None else _shrink(np.asarray(img), 160)
        return self._thumb_cache[key]

    def _draw_frames(self) -> None:
        snap = self.snapshot
        if snap is None:
            return
        reg = np.asarray(snap.registered, bool)
        scale = 0.08 * self.scene_scale
        for i in range(len(snap.names)):
            if not reg[i]:
                if i in self._frustums:
                    self._frustums.pop(i).remove()
                    self._frustum_keys.pop(i, None)
                continue
            K = np.asarray(snap.intrinsics[i], np.float64)
            W, H = (float(v) for v in snap.image_sizes[i])
            if W <= 0 or H <= 0:
                W, H = 2.0 * K[0, 2], 2.0 * K[1, 2]
            fov = 2.0 * np.arctan2(H / 2.0, K[1, 1])
            color = RELIABLE_COLOR if self.reliable[i] else UNRELIABLE_COLOR
            wxyz, pos = frustum_pose(np.asarray(snap.extrinsics[i]))
            key = (round(float(fov), 6), round(W / H, 6), round(scale, 9), color, tuple(np.round(wxyz, 9)), tuple(np.round(pos, 9)))
            if self._frustum_keys.get(i) != key:
                self._frustums[i] = self.server.scene.add_camera_frustum(
                    f"/vggsfm/frames/{i:06d}",
                    fov=float(fov),
                    aspect=W / H,
                    scale=scale,
                    color=color,
                    image=self._thumbnail(i),
                    wxyz=wxyz,
                    position=pos,
                    visible=self.settings.show_frames,
                )
                self._frustum_keys[i] = key
            else:
                self._frustums[i].visible = self.settings.show_frames

    def _write_status(self) -> None:
        snap = self.snapshot
        reg = np.asarray(snap.registered, bool)
        S = len(snap.names)
        err = np.asarray(snap.frame_errors, np.float64)
        mean = float(np.nanmean(err[reg])) if reg.any() and np.isfinite(err[reg]).any() else float("nan")
        lines = [f"**{snap.label}**"]
        if snap.progress is not None:
            done, total = snap.progress
            lines.append(f"window {done} / {total}")
        lines.append(f"{int(reg.sum())} / {S} frames registered, {len(snap.points):,} points")
        if np.isfinite(mean):
            lines.append(f"mean frame reprojection error {mean:.2f} px")
        self.gui_status.content = "  \n".join(lines)
        bad = [snap.names[i] for i in range(S) if reg[i] and not self.reliable[i]]
        missing = [snap.names[i] for i in range(S) if not reg[i]]
        parts = []
        if bad:
            parts.append(f"**unreliable ({len(bad)}):** " + ", ".join(_short(n) for n in bad[:12]) + (" ..." if len(bad) > 12 else ""))
        if missing:
            parts.append(f"**not registered ({len(missing)}):** " + ", ".join(_short(n) for n in missing[:12]) + (" ..." if len(missing) > 12 else ""))
        self.gui_frames.content = "  \n".join(parts) if parts else " "

    def frame_names_drawn(self) -> List[str]:
        """Names of the frames whose frustums are in the scene."""
        return [self.snapshot.names[i] for i in sorted(self._frustums)] if self.snapshot is not None else []


def _short(name: str) -> str:
    return name if len(name) <= 24 else name[:10] + "…" + name[-12:]


def _shrink(img: np.ndarray, max_side: int) -> np.ndarray:
    """``(H, W, 3|4)`` image -> uint8 RGB with the longer side at most ``max_side``."""
    import cv2

    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3])
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    s = max_side / max(h, w)
    if s < 1.0:
        img = cv2.resize(img, (max(1, int(round(w * s))), max(1, int(round(h * s)))), interpolation=cv2.INTER_AREA)
    return img


__all__ = [
    "ReconstructionScene",
    "SceneSettings",
    "frustum_pose",
    "estimate_up",
    "frame_reliability",
    "RELIABLE_COLOR",
    "UNRELIABLE_COLOR",
]
