"""Sliding-window reconstruction of long ordered sequences (video) with bounded memory.

Follows the official VGGSfM ``VideoRunner`` (``vggsfm/runners/video_runner.py``, spec §4.9,
``cfgs/video_demo.yaml``):

1. **Initial window** (``init_window_size`` frames): tracks from the window's track source (query
   points doubled, as the official) and :func:`vggsfm_ns.sfm.backend.reconstruct_from_tracks` with
   one shared camera. Its model seeds a ``pycolmap.Reconstruction`` in original pixels (COLMAP
   corner convention) that holds every pose, point and observation from then on.
2. **Moving windows** of ``window_size`` frames (the remainder joins the last window when it is at
   most 1.25 windows, official rule; a window starts right after the last registered frame). The
   *anchor* is the last registered frame:

   * the 3D points it observes (at most ``max_query_pts``, a seeded random subset) are tracked from
     their anchor pixels into the new frames;
   * new tracks are seeded in the window (query frames: middle and last, official);
   * with a camera predictor (learned path) the predicted cameras of the previous and the new frames
     are aligned to the registered poses by a similarity (:func:`align_camera_extrinsics`, official
     ``align_camera_extrinsics``) and serve as initial poses;
   * frames are registered in order by RANSAC PnP (fixed intrinsics) against the tracked existing
     points and, as they become available, the window's new points (our extension: the official
     only refines the aligned predictions); after each round the new tracks are triangulated with
     LO-RANSAC (:func:`vggsfm_ns.geometry.triangulation.triangulate_tracks`) and filtered
     (:func:`vggsfm_ns.geometry.filtering.filter_points3d`), so frames far from the anchor register
     on the new points;
   * the window lands in the model and a local bundle adjustment refines the new poses and points
     with the anchor, all older points and the intrinsics fixed (official ``move_window``), followed
     by the reprojection / triangulation-angle filter.

3. **Joint bundle adjustment** every ``joint_ba_interval`` windows (official ``joint_BA``: refined
   intrinsics, filter at 2 px and 1.5 deg) and a **final global BA** with filtering, then
   ``normalize(5, 0.1, 0.9)`` once, the official frame-validity check and the original-resolution
   :class:`~vggsfm_ns.types.SfMResult`.

Differences from the official runner, for robustness (vggsfm#65, #83, #109, #119) and flat cost:

* A window whose frames cannot be registered (motion blur, a hand over the lens, no valid tracks)
  is reported and skipped instead of stepping back forever: the next frames are probed one by one
  by tracking the anchor's points directly into them (two frames each), and tracking restarts from
  the anchor (the last good frame) with new points at the first frame that registers. After
  ``MAX_GAP_WINDOWS`` windows without success a new segment is initialised; when the sequence
  breaks into disconnected segments the largest is kept and the others are reported as skipped.
  An initial window without enough parallax is skipped with a warning: the back end's own
  parallax test, plus a rotation test (a homography explains most epipolar inliers between the
  window's first and last frames and is ``K R K^-1`` for some focal length), since a rotation-only
  capture can otherwise "initialise" on noise. A rotation-only stretch later on registers on the
  existing points and gives a warning.
* Tracks of a window that cannot be triangulated yet (too little baseline, typical of forward
  motion) are carried to the next window: re-tracked from the anchor together with the existing
  points and triangulated with their earlier observations (at most ``max_query_pts``, over the last
  ``PENDING_SPAN_WINDOWS`` windows). Without this a forward walk starves: few new points per window,
  fewer existing points each window, and tracking breaks.
* Joint bundle adjustment covers the frames of the last ``joint_ba_interval`` windows plus the
  initial window's worth of frames (all earlier observations of their points enter with fixed
  poses); while the model is that small it is a true global BA that also refines the intrinsics.
  The official joint BA always spans every frame so far, which makes the run quadratic in length.
* The world is never re-normalised between windows (the official normalises at each joint BA);
  only the final model is normalised.
* Frames are decoded per window (the track sources cache at most a window of processed frames);
  points and observations live in the pycolmap model; per-window arrays are
  ``(window frames) x (window tracks)``. Nothing is ``O(total frames x total tracks)``.
* Point colours come from the track sources at the query pixels (the official recomputes every
  colour from every observation at the end).

Track sources (:class:`WindowTrackSource`): :class:`KltWindowSource` (``klt``, and ``sift`` since the
frames are ordered), :class:`VggsfmWindowSource` (the learned tracker and camera predictor) and
:class:`SyntheticWindowSource` (simulated observations for tests and benchmarks).
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import ReconstructionConfig
from ..conventions import VGGSFM_IMG_SIZE, ImageTransform, center_to_corner, corner_to_center
from ..errors import InputError, ReconstructionError
from ..geometry.camera import apply_affine, camera_centers, transform_cameras
from ..io.colmap import model_points
from ..progress import Observers, PipelineObserver, ReconstructionSnapshot, Stage
from ..query.points import grid_points
from ..types import CameraPrior, FrameSet, KnownIntrinsics, SfMResult, TrackSet

if TYPE_CHECKING:  # pragma: no cover
    from ..api import TrackerChoice

#: Windows a gap may last (in ``window_size`` frames) before a new segment is initialised.
MAX_GAP_WINDOWS = 2
#: Reprojection threshold (px in the 1024-px frame) of the joint and final BA filters (official
#: ``joint_BA(reproj_error=2.0)``).
JOINT_REPROJ_ERROR = 2.0
#: Camera baseline over median scene depth below which a window counts as rotation only.
ROTATION_PARALLAX = 0.02
#: An initial window whose first and last frames are related by a homography on this fraction of the
#: epipolar inliers (COLMAP's ``max_H_inlier_ratio`` is 0.8) that is a rotation (condition number of
#: ``K^-1 H K`` below ``ROTATION_H_CONDITION`` for some focal length) is rejected: a rotation-only
#: capture can otherwise "initialise" on noise with the points collapsed onto the cameras.
#: (Measured, first vs middle / last frame: synthetic rotation 1.002-1.004; the apple video, mostly
#: a table plane, 1.07-1.28; synthetic forward walk 1.08-1.16, orbit 1.10-1.32.)
ROTATION_H_RATIO, ROTATION_H_CONDITION = 0.85, 1.02
#: Ceres iterations of the local (window), joint and final bundle adjustments.
LOCAL_BA_ITERS, JOINT_BA_ITERS, FINAL_BA_ITERS = 30, 50, 50
#: Untriangulated tracks are carried to the next window with their observations in the registered
#: frames of at most this many past windows (wider baselines for forward motion).
PENDING_SPAN_WINDOWS = 2
#: Fewest observations a frame keeps after its window's BA and filter to stay registered.
MIN_FRAME_OBSERVATIONS = 15


# ================================================================================================
# windows, alignment
# ================================================================================================


def plan_windows(num_frames: int, init_window_size: int, window_size: int) -> List[Tuple[int, int]]:
    """The official window schedule: ``[0, init)`` then windows of ``window_size`` frames, the last
    one taking all remaining frames when they are at most ``1.25 window_size``.

    Returns:
        ``[(start, end), ...]`` half-open frame ranges covering ``[0, num_frames)``.

    Raises:
        ValueError: if a size is not positive.

    Source: official ``VideoRunner.run`` (``while end_idx < T``).
    """
    if init_window_size <= 0 or window_size <= 0:
        raise ValueError(f"window sizes must be positive, got init {init_window_size}, window {window_size}")
    out = [(0, min(num_frames, init_window_size))]
    end = out[0][1]
    while end < num_frames:
        n = num_frames - end if num_frames - end <= int(1.25 * window_size) else window_size
        out.append((end, end + n))
        end += n
    return out


def _next_window_size(remaining: int, window_size: int) -> int:
    return remaining if remaining <= int(1.25 * window_size) else window_size


def align_camera_extrinsics(src: torch.Tensor, tgt: torch.Tensor, estimate_scale: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Similarity of world frames that maps cameras ``src`` onto cameras ``tgt``.

    Finds ``(R, t, s)`` with ``X_tgt = s R X_src + t`` such that every camera ``i`` satisfies
    ``R_tgt_i ~= R_src_i R^T`` and ``t_tgt_i ~= s t_src_i - R_tgt_i t``: the rotation is the
    projection onto SO(3) of ``sum_i R_tgt_i^T R_src_i``, then scale and translation solve the
    stacked linear least squares over all cameras.

    Args:
        src: ``[B, 3, 4]`` OpenCV cam_from_world (e.g. camera-predictor output).
        tgt: ``[B, 3, 4]`` the same cameras in the target world (registered poses).
        estimate_scale: estimate ``s`` (needs two cameras with distinct centres), else ``s = 1``.

    Returns:
        ``(R [3, 3], t [3], s [])`` float64.

    Raises:
        ValueError: if the shapes differ or are not ``[B, 3, 4]``.

    Source: official ``vggsfm/utils/align.py: align_camera_extrinsics`` (same model; the official
    solves scale and translation from ``t^T R_src`` vectors with the source rotations).
    """
    src = torch.as_tensor(src, dtype=torch.float64)
    tgt = torch.as_tensor(tgt, dtype=torch.float64)
    if src.shape != tgt.shape or src.ndim != 3 or src.shape[1:] != (3, 4):
        raise ValueError(f"need matching [B, 3, 4] cameras, got {tuple(src.shape)} and {tuple(tgt.shape)}")
    Rs, ts = src[:, :, :3], src[:, :, 3]
    Rt, tt = tgt[:, :, :3], tgt[:, :, 3]
    M = (Rt.transpose(1, 2) @ Rs).sum(0)
    U, _, Vh = torch.linalg.svd(M)
    D = torch.eye(3, dtype=torch.float64)
    D[2, 2] = torch.sign(torch.linalg.det(U @ Vh))
    R = U @ D @ Vh
    B = src.shape[0]
    if estimate_scale and B >= 2:
        A = torch.cat([ts[:, :, None], -Rt], 2).reshape(3 * B, 4)
        sol = torch.linalg.lstsq(A, tt.reshape(3 * B, 1)).solution[:, 0]
        s, t = sol[0], sol[1:]
        if not torch.isfinite(s) or s <= 0:
            s = torch.tensor(1.0, dtype=torch.float64)
            t = -(Rt.transpose(1, 2) @ (tt - ts)[..., None])[..., 0].mean(0)
    else:
        s = torch.tensor(1.0, dtype=torch.float64)
        t = -(Rt.transpose(1, 2) @ (tt - ts)[..., None])[..., 0].mean(0)
    return R, t, s


# ================================================================================================
# track sources
# ================================================================================================


@dataclass
class WindowTracks:
    """Tracks over the frames of one window, in original pixels.

    Attributes:
        xy: ``(W, N, 2)`` float64 positions in each frame's original pixels, COLMAP pixel-corner
            convention (meaningless where not valid).
        valid: ``(W, N)`` bool, observed (``vis > 0.05`` and ``score > 0.5`` where scores exist) and
            inside the image.
        colors: ``(N, 3)`` uint8 colour at each track's query pixel, or None.
    """

    xy: np.ndarray
    valid: np.ndarray
    colors: Optional[np.ndarray] = None

    @property
    def num_tracks(self) -> int:
        """``N``, the number of tracks."""
        return int(self.xy.shape[1])

    @staticmethod
    def empty(num_frames: int) -> "WindowTracks":
        """No tracks over ``num_frames`` frames."""
        return WindowTracks(np.zeros((num_frames, 0, 2)), np.zeros((num_frames, 0), bool), np.zeros((0, 3), np.uint8))

    @staticmethod
    def from_trackset(tracks: TrackSet, transforms: Sequence[ImageTransform], colors: Optional[np.ndarray] = None) -> "WindowTracks":
        """Convert a :class:`TrackSet` (processed pixels, pixel-centre) with the frames' real
        ``transforms`` (original -> processed) to original corner pixels; observations outside the
        original image are invalid."""
        W = tracks.num_frames
        t = center_to_corner(tracks.tracks.detach().to(torch.float64).cpu().numpy())
        xy = np.stack([transforms[k].proc_to_orig(t[k], "corner") for k in range(W)]) if W else t
        valid = tracks.valid_mask().cpu().numpy() & np.isfinite(xy).all(-1)
        sizes = np.array([tf.orig_size for tf in transforms], np.float64).reshape(W, 1, 2)
        valid &= (xy >= 0).all(-1) & (xy <= sizes).all(-1)
        return WindowTracks(np.where(valid[..., None], xy, 0.0), valid, colors)


class WindowTrackSource(abc.ABC):
    """Where a window's tracks come from. Subclasses implement the three abstract track methods.

    Frame indices always refer to the full :class:`FrameSet` of the run, in temporal order; the
    first index of a window is its anchor (an already registered frame).
    """

    #: Name shown in messages (``klt``, ``vggsfm``, ``synthetic``).
    name: str = "base"
    #: True when :meth:`predict_cameras` returns predicted cameras (learned path).
    has_camera_predictor: bool = False

    @abc.abstractmethod
    def init_tracks(self, frame_indices: Sequence[int], max_points: int) -> Tuple[TrackSet, Optional[CameraPrior]]:
        """Tracks over an initial window for :func:`~vggsfm_ns.sfm.backend.reconstruct_from_tracks`.

        Returns:
            ``(TrackSet over len(frame_indices) frames with the frames' real transforms, camera prior
            or None)``.
        """

    @abc.abstractmethod
    def track_new(self, frame_indices: Sequence[int], max_points: int) -> WindowTracks:
        """New tracks seeded inside the window (``max_points`` per query frame at most)."""

    @abc.abstractmethod
    def track_existing(self, frame_indices: Sequence[int], query_xy: np.ndarray) -> WindowTracks:
        """Track given points of the first frame (``(M, 2)`` original corner pixels) through the
        window; row 0 of the result holds the query points."""

    def predict_cameras(self, frame_indices: Sequence[int]) -> Optional[torch.Tensor]:
        """Predicted ``[W, 3, 4]`` OpenCV cam_from_world of the frames (arbitrary world), or None."""
        return None

    def release(self) -> None:
        """Drop cached images and models."""


def _sample_colors(rgb: np.ndarray, xy_center: np.ndarray) -> np.ndarray:
    """Nearest-pixel colours ``(N, 3)`` uint8 of ``(H, W, 3)`` uint8 at pixel-centre ``(N, 2)``."""
    H, W = rgb.shape[:2]
    x = np.clip(np.round(xy_center[:, 0]).astype(np.int64), 0, W - 1)
    y = np.clip(np.round(xy_center[:, 1]).astype(np.int64), 0, H - 1)
    return rgb[y, x, :3].astype(np.uint8)


def _query_colors(tracks: TrackSet, rgb_of: Callable[[int], Optional[np.ndarray]]) -> np.ndarray:
    """Colour of each track at its query pixel in its query frame (``rgb_of(position)`` gives the
    processed ``(H, W, 3)`` uint8 frame or None -> grey)."""
    N = tracks.num_tracks
    out = np.full((N, 3), 128, np.uint8)
    q = tracks.query_frames.numpy()
    for p in np.unique(q):
        rgb = rgb_of(int(p))
        if rgb is None:
            continue
        sel = np.nonzero(q == p)[0]
        out[sel] = _sample_colors(rgb, tracks.tracks[int(p), sel].double().numpy())
    return out


class KltWindowSource(WindowTrackSource):
    """KLT tracks per window (:func:`vggsfm_ns.tracks.klt.track_klt` for new tracks,
    :func:`vggsfm_ns.tracks.klt.track_points_klt` for existing points).

    Frames are decoded once per window into processed (``max_image_size``) RGB and grey images kept
    in a small LRU cache (``cache_size`` frames); the trackers run on those, so no frame is held at
    full resolution. With dynamic-object masks the original frames are handed to the trackers
    (which then decode them again) so that the masks stay aligned.

    Args:
        frames: the ordered frames.
        track_cfg: ``max_image_size``, ``query_method``, ``complement_nonvisible``, ``min_visible``,
            ``query_frame_ranking`` (initial window), see :func:`~vggsfm_ns.tracks.klt.track_klt`.
        seed: seed of the query-point subsets.
        cache_size: frames kept decoded.
    """

    name = "klt"

    def __init__(self, frames: FrameSet, track_cfg, seed: int = 0, cache_size: int = 40):
        from ..preprocess import resize_transforms

        self.frames = frames
        self.cfg = track_cfg
        self.seed = int(seed)
        self.cache_size = max(4, int(cache_size))
        self.transforms = resize_transforms(frames, track_cfg.max_image_size)
        self._rgb: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._gray: Dict[int, np.ndarray] = {}

    def _load(self, idx: Sequence[int]) -> None:
        from ..preprocess import apply_transform
        from ..query.points import to_gray_uint8

        for i in idx:
            if i in self._rgb:
                self._rgb.move_to_end(i)
                continue
            x = apply_transform(self.frames.image(i), self.transforms[i])
            if x.shape[0] == 1:
                x = x.expand(3, -1, -1)
            self._gray[i] = to_gray_uint8(x[:3])
            self._rgb[i] = np.ascontiguousarray((x[:3] * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy())
        keep = set(int(i) for i in idx)
        while len(self._rgb) > max(self.cache_size, len(keep)):
            k = next(iter(self._rgb))
            if k in keep:
                self._rgb.move_to_end(k)
                continue
            self._rgb.pop(k)
            self._gray.pop(k, None)

    def _window_frames(self, idx: Sequence[int]) -> Tuple[FrameSet, List[ImageTransform]]:
        """The FrameSet the trackers see and its transforms."""
        from ..conventions import resize_transform

        if self.frames.has_masks:
            return self.frames.subset(idx), [self.transforms[i] for i in idx]
        sizes = np.array([self.transforms[i].size for i in idx], np.int64)
        fs = FrameSet(
            names=[self.frames.names[i] for i in idx],
            sizes=sizes,
            paths=[None] * len(idx),
            arrays={k: self._rgb[i] for k, i in enumerate(idx)},
            ordered=True,
            source=self.frames.source,
        )
        return fs, [resize_transform(int(w), int(h), self.cfg.max_image_size) for w, h in sizes]

    def _run_klt(self, idx: Sequence[int], max_points: int, query_positions: Optional[Sequence[int]]) -> TrackSet:
        from ..tracks.klt import track_klt

        self._load(idx)
        fs, _ = self._window_frames(idx)
        cfg = copy.copy(self.cfg)
        cfg.max_query_pts = int(max_points)
        ts = track_klt(fs, cfg, observer=None, query_frames=query_positions, seed=self.seed + int(idx[0]))
        # the tracks are in the processed frame of every frame: attach the real transforms
        return TrackSet(ts.tracks, ts.vis, ts.score, ts.query_frames, [self.transforms[i] for i in idx], "klt")

    def init_tracks(self, frame_indices, max_points):
        idx = [int(i) for i in frame_indices]
        return self._run_klt(idx, max_points, None), None

    def track_new(self, frame_indices, max_points):
        idx = [int(i) for i in frame_indices]
        n = len(idx)
        if n < 2:
            return WindowTracks.empty(n)
        ts = self._run_klt(idx, max_points, sorted({n // 2, n - 1}))
        colors = _query_colors(ts, lambda p: self._rgb.get(idx[p]))
        return WindowTracks.from_trackset(ts, ts.transforms, colors)

    def track_existing(self, frame_indices, query_xy):
        from ..tracks.klt import track_points_klt

        idx = [int(i) for i in frame_indices]
        q = np.asarray(query_xy, np.float64).reshape(-1, 2)
        if q.shape[0] == 0:
            return WindowTracks.empty(len(idx))
        self._load(idx)
        fs, fs_transforms = self._window_frames(idx)
        qp = corner_to_center(self.transforms[idx[0]].orig_to_proc(q, "corner"))
        ts = track_points_klt(fs, fs_transforms, 0, torch.from_numpy(qp).float(), list(range(len(idx))),
                              images={k: self._gray[i] for k, i in enumerate(idx)})
        out = WindowTracks.from_trackset(ts, [self.transforms[i] for i in idx])
        out.xy[0], out.valid[0] = q, True
        return out

    def release(self):
        self._rgb.clear()
        self._gray.clear()


class VggsfmWindowSource(WindowTrackSource):
    """The learned VGGSfM tracker and camera predictor per window
    (:func:`vggsfm_ns.tracks.vggsfm.track_vggsfm`, :func:`vggsfm_ns.cameras.predict_cameras`).

    * initial window: ``track_vggsfm`` with its camera prior (official ``sparse_reconstruct``);
    * new tracks: query frames at the middle and the end of the window stack (official
      ``triangulate_window_points``), no camera prediction;
    * existing points: their anchor pixels are handed to ``track_vggsfm`` as the query points of
      frame 0 through its ``detector`` hook, followed by ``max_query_pts`` grid support points that
      are dropped afterwards (official ``prepare_window_data``), without the complement pass;
    * cameras: ``predict_cameras`` over the requested frames with query frames first, middle, last
      (official ``average_camera_prediction(query_indices=[0, mid, last])``).

    Args:
        frames: the ordered frames.
        cfg: the run's configuration (``track``, ``precision``).
        model: a loaded :class:`vggsfm_ns.networks.VGGSfMModel` on ``device``.
        device: its device.
        seed: query-point seed.
    """

    name = "vggsfm"
    has_camera_predictor = True

    def __init__(self, frames: FrameSet, cfg: ReconstructionConfig, model, device: torch.device, seed: int = 0):
        from ..preprocess import square_transforms

        self.frames = frames
        self.cfg = cfg
        self.model = model
        self.device = torch.device(device)
        self.seed = int(seed)
        self.transforms = square_transforms(frames, cfg.track.img_size)

    def _track(self, idx, track_cfg, query_frames, predict_camera=False, detector=None):
        from ..tracks.vggsfm import track_vggsfm

        sub = self.frames.subset(idx)
        return track_vggsfm(sub, self.model, track_cfg, self.device, self.cfg.precision, None, query_frames,
                            seed=self.seed + int(idx[0]), predict_camera=predict_camera, detector=detector)

    def _colors(self, ts: TrackSet, idx: Sequence[int]) -> np.ndarray:
        def rgb(p: int) -> Optional[np.ndarray]:
            from ..preprocess import apply_transform

            if not _images_available(self.frames, [idx[p]]):
                return None
            x = apply_transform(self.frames.image(idx[p]), self.transforms[idx[p]])
            return (x[:3] * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()

        return _query_colors(ts, rgb)

    def init_tracks(self, frame_indices, max_points):
        idx = [int(i) for i in frame_indices]
        cfg = copy.copy(self.cfg.track)
        cfg.max_query_pts = int(max_points)
        ts, prior = self._track(idx, cfg, None, predict_camera=True)
        return ts, prior

    def track_new(self, frame_indices, max_points):
        idx = [int(i) for i in frame_indices]
        n = len(idx)
        if n < 2:
            return WindowTracks.empty(n)
        cfg = copy.copy(self.cfg.track)
        cfg.max_query_pts = int(max_points)
        ts, _ = self._track(idx, cfg, sorted({n // 2, n - 1}))
        return WindowTracks.from_trackset(ts, [self.transforms[i] for i in idx], self._colors(ts, idx))

    def track_existing(self, frame_indices, query_xy):
        idx = [int(i) for i in frame_indices]
        q = np.asarray(query_xy, np.float64).reshape(-1, 2)
        M = q.shape[0]
        if M == 0:
            return WindowTracks.empty(len(idx))
        t0 = self.transforms[idx[0]]
        qp = torch.from_numpy(corner_to_center(t0.orig_to_proc(q, "corner"))).float()
        x0, y0, x1, y1 = t0.content_box()  # support points on a grid over the image content
        support = grid_points(max(x1 - x0, 1.0), max(y1 - y0, 1.0), int(self.cfg.track.max_query_pts))
        support += torch.tensor([x0, y0], dtype=support.dtype)

        def detector(image, invalid_mask, max_points):
            return torch.cat([qp, support], 0)

        cfg = copy.copy(self.cfg.track)
        cfg.complement_nonvisible = False
        ts, _ = self._track(idx, cfg, [0], detector=detector)
        keep = torch.arange(M)
        ts = TrackSet(ts.tracks[:, keep], ts.vis[:, keep], None if ts.score is None else ts.score[:, keep],
                      ts.query_frames[keep], ts.transforms, ts.source)
        out = WindowTracks.from_trackset(ts, [self.transforms[i] for i in idx])
        out.xy[0], out.valid[0] = q, True
        return out

    def predict_cameras(self, frame_indices):
        from ..cameras import predict_cameras
        from ..preprocess import load_processed

        idx = [int(i) for i in frame_indices]
        n = len(idx)
        images = load_processed(self.frames, self.transforms, idx).to(self.device)
        prior = predict_cameras(images, self.model, sorted({0, n // 2, n - 1}), [self.transforms[i] for i in idx])
        return prior.extrinsics.to(torch.float64).cpu()

    def release(self):
        self.model = None


class SyntheticWindowSource(WindowTrackSource):
    """Simulated observations handed out window by window, as a tracker would deliver them.

    * ``init_tracks`` / ``track_new``: tracks observed in at least two frames of the window and not
      handed out before (a random subset of at most ``max_points``), restricted to the window;
    * ``track_existing``: each query pixel is matched to the simulated track observed at that pixel
      in the anchor frame (within 1e-3 px) and that track's observations are returned, as an ideal
      tracker re-finding the point would;
    * ``dead_frames``: frames with no valid observation at all (a hand over the lens).

    Args:
        observe: ``observe(frame_indices) -> (xy (W, N, 2) original corner px, observed (W, N) bool)``;
            must return the same values every time for a frame.
        num_tracks: N.
        transforms: per-frame processed-frame transforms for the init TrackSet.
        dead_frames: frames whose observations are all dropped.
        seed: seed of the subsets.

    Use :meth:`from_scene` (a :class:`~vggsfm_ns.sfm.synthetic.SyntheticScene`) or
    :meth:`procedural` (frames generated on demand, no ``(S, N)`` array).
    """

    name = "synthetic"

    def __init__(self, observe, num_tracks: int, transforms: Sequence[ImageTransform], dead_frames: Sequence[int] = (), seed: int = 0):
        self._observe = observe
        self.N = int(num_tracks)
        self.transforms = list(transforms)
        self.dead = set(int(f) for f in dead_frames)
        self.handed = np.zeros(self.N, bool)
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_scene(cls, scene, dead_frames: Sequence[int] = (), seed: int = 0) -> "SyntheticWindowSource":
        """Hand out the observations of a :func:`~vggsfm_ns.sfm.synthetic.make_scene` scene."""
        ts = scene.tracks
        tr = center_to_corner(ts.tracks.to(torch.float64).numpy())
        xy = np.stack([ts.transforms[s].proc_to_orig(tr[s], "corner") for s in range(ts.num_frames)])
        obs = ts.valid_mask().numpy()
        return cls(lambda idx: (xy[list(idx)], obs[list(idx)]), ts.num_tracks, ts.transforms, dead_frames, seed)

    @classmethod
    def procedural(cls, points: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray, image_size: Tuple[int, int],
                   noise_px: float = 0.5, outlier_ratio: float = 0.1, missing_ratio: float = 0.3,
                   dead_frames: Sequence[int] = (), seed: int = 0) -> "SyntheticWindowSource":
        """Observations generated per frame on demand with the noise model of
        :func:`~vggsfm_ns.sfm.synthetic.observe_points` (memory ``O(points)``, not ``O(frames x points)``).

        Args:
            points: ``(N, 3)``; extrinsics: ``(S, 3, 4)``; intrinsics: ``(S, 3, 3)`` original corner px.
            image_size: ``(width, height)`` of every frame.
        """
        from ..conventions import resize_transform
        from .synthetic import observe_points

        S = extrinsics.shape[0]
        w, h = int(image_size[0]), int(image_size[1])
        pts = np.asarray(points, np.float64)

        def observe(idx):
            xs, os_ = [], []
            for f in idx:
                rng = np.random.default_rng([int(seed), int(f)])
                xy, ob, _ = observe_points(pts, extrinsics[f:f + 1], intrinsics[f:f + 1], np.array([[w, h]]), rng,
                                           noise_px=noise_px, outlier_ratio=outlier_ratio, missing_ratio=missing_ratio)
                xs.append(xy[0])
                os_.append(ob[0])
            return np.stack(xs), np.stack(os_)

        return cls(observe, pts.shape[0], [resize_transform(w, h, VGGSFM_IMG_SIZE)] * S, dead_frames, seed)

    def _window(self, idx):
        xy, obs = self._observe(idx)
        obs = obs.copy()
        for k, f in enumerate(idx):
            if int(f) in self.dead:
                obs[k] = False
        return xy, obs

    def _hand_out(self, obs: np.ndarray, max_points: int) -> np.ndarray:
        """Like a detector run on the window: a random subset of the tracks seen in two or more of its
        frames, tracks never handed out before first (the rest are re-detections of known points)."""
        cand = np.nonzero(obs.sum(0) >= 2)[0]
        fresh, old = cand[~self.handed[cand]], cand[self.handed[cand]]
        k = int(max_points)
        if fresh.size > k:
            fresh = self.rng.choice(fresh, k, replace=False)
        rest = k - fresh.size
        if old.size > rest:
            old = self.rng.choice(old, max(rest, 0), replace=False)
        sel = np.sort(np.concatenate([fresh, old]).astype(np.int64))
        self.handed[sel] = True
        return sel

    def init_tracks(self, frame_indices, max_points):
        idx = [int(i) for i in frame_indices]
        xy, obs = self._window(idx)
        sel = self._hand_out(obs, max_points)
        tf = [self.transforms[i] for i in idx]
        proc = np.stack([corner_to_center(tf[k].orig_to_proc(xy[k][sel], "corner")) for k in range(len(idx))])
        o = obs[:, sel]
        return TrackSet(
            tracks=torch.from_numpy(np.where(o[..., None], proc, 0.0).astype(np.float32)),
            vis=torch.from_numpy(o.astype(np.float32)),
            score=None,
            query_frames=torch.from_numpy(o.argmax(0).astype(np.int64)),
            transforms=tf,
            source="synthetic",
        ), None

    def track_new(self, frame_indices, max_points):
        idx = [int(i) for i in frame_indices]
        xy, obs = self._window(idx)
        sel = self._hand_out(obs, max_points)
        return WindowTracks(np.where(obs[:, sel, None], xy[:, sel], 0.0), obs[:, sel], np.full((sel.size, 3), 128, np.uint8))

    def track_existing(self, frame_indices, query_xy):
        from scipy.spatial import cKDTree

        idx = [int(i) for i in frame_indices]
        q = np.asarray(query_xy, np.float64).reshape(-1, 2)
        M = q.shape[0]
        xy, obs = self._window(idx)
        out_xy = np.zeros((len(idx), M, 2))
        out_valid = np.zeros((len(idx), M), bool)
        cand = np.nonzero(obs[0])[0]
        if M and cand.size:
            d, j = cKDTree(xy[0, cand]).query(q)
            hit = d < 1e-3
            tid = cand[j[hit]]
            out_xy[:, hit] = xy[:, tid]
            out_valid[:, hit] = obs[:, tid]
        out_xy[0], out_valid[0] = q, True
        return WindowTracks(out_xy, out_valid)


def make_window_source(tracker: "TrackerChoice", frames: FrameSet, cfg: ReconstructionConfig, device: torch.device,
                       observer: Optional[PipelineObserver] = None, timings: Optional[dict] = None) -> WindowTrackSource:
    """The window track source of a tracker choice: ``klt`` and ``sift`` -> :class:`KltWindowSource`
    (the frames are ordered), ``vggsfm`` -> :class:`VggsfmWindowSource` (loads the checkpoint).

    Raises:
        InputError: unknown tracker name.
        CheckpointError: the VGGSfM checkpoint cannot be loaded.
    """
    name = tracker.name
    if name in ("klt", "sift"):
        cache = max(cfg.video.init_window_size, int(1.25 * cfg.video.window_size) + 1) + 2
        return KltWindowSource(frames, cfg.track, seed=cfg.seed, cache_size=cache)
    if name == "vggsfm":
        from ..networks import VGGSfMModel

        with Stage(observer, "load model", timings=timings):
            model = VGGSfMModel.from_checkpoint(tracker.checkpoint, device=device)
        return VggsfmWindowSource(frames, cfg, model, device, seed=cfg.seed)
    raise InputError(f"unknown tracker {name!r} for the video mode; choose vggsfm, klt or sift")


# ================================================================================================
# the run
# ================================================================================================


def _pnp(camera, p2: np.ndarray, p3: np.ndarray, max_error: float, seed: int) -> Optional[np.ndarray]:
    """RANSAC PnP + refinement with fixed intrinsics; ``(3, 4)`` cam_from_world or None.

    Acceptance as the back end (COLMAP defaults): at least ``MIN_PNP_INLIERS`` inliers and an
    inlier ratio of ``MIN_PNP_INLIER_RATIO``.
    """
    import pycolmap

    from .backend import MIN_PNP_CORRESPONDENCES, MIN_PNP_INLIER_RATIO, MIN_PNP_INLIERS, POSE_MAX_POINTS
    from .colmap_build import pose_refinement_options, quiet_glog

    n = p2.shape[0]
    if n < max(MIN_PNP_CORRESPONDENCES, 4):
        return None
    if n > 2 * POSE_MAX_POINTS:
        keep = np.random.default_rng(seed).choice(n, 2 * POSE_MAX_POINTS, replace=False)
        p2, p3 = p2[keep], p3[keep]
    est = pycolmap.AbsolutePoseEstimationOptions()
    est.estimate_focal_length = False
    est.ransac.max_error = float(max_error)
    est.ransac.random_seed = int(seed)
    with quiet_glog():
        ans = pycolmap.estimate_and_refine_absolute_pose(np.ascontiguousarray(p2), np.ascontiguousarray(p3), camera, est,
                                                         pose_refinement_options(False))
    if ans is None:
        return None
    k = int(ans["num_inliers"])
    if k < MIN_PNP_INLIERS or k < MIN_PNP_INLIER_RATIO * p2.shape[0]:
        return None
    ext = np.asarray(ans["cam_from_world"].matrix(), np.float64)
    return ext if np.isfinite(ext).all() else None


def _refine_pose(camera, init: np.ndarray, p2: np.ndarray, p3: np.ndarray, max_error: float) -> Optional[np.ndarray]:
    """Pose refinement of an initial pose (e.g. an aligned camera prediction) on the correspondences
    within ``max_error`` px of it (all of them when fewer than ``MIN_PNP_INLIERS``); accepted when at
    least ``MIN_PNP_INLIERS`` correspondences reproject within ``max_error`` afterwards."""
    import pycolmap

    from ..geometry.filtering import reprojection_errors
    from .backend import MIN_PNP_INLIERS
    from .colmap_build import pose_refinement_options, quiet_glog, rigid

    if p2.shape[0] < MIN_PNP_INLIERS:
        return None
    from ..geometry.camera import from_colmap_params

    K, e = from_colmap_params(camera.model.name, camera.params)
    Kt = torch.from_numpy(K)[None]
    et = torch.from_numpy(e)[None] if e.size else None

    def inliers(ext):
        err = reprojection_errors(torch.from_numpy(p3), torch.from_numpy(p2)[None], torch.from_numpy(ext)[None], Kt, et)[0]
        return (err <= max_error).numpy()

    m = inliers(init)
    if m.sum() < MIN_PNP_INLIERS:
        m = np.ones(p2.shape[0], bool)
    with quiet_glog():
        ans = pycolmap.refine_absolute_pose(rigid(init), np.ascontiguousarray(p2), np.ascontiguousarray(p3), m, camera,
                                            pose_refinement_options(False))
    if ans is None:
        return None
    ext = np.asarray(ans["cam_from_world"].matrix(), np.float64)
    if not np.isfinite(ext).all() or inliers(ext).sum() < MIN_PNP_INLIERS:
        return None
    return ext


@dataclass
class _Pending:
    """Tracks carried to the next window because they could not be triangulated yet (too little
    baseline): their observations in registered frames, the last frame being the next anchor.

    ``xy (F, P, 2)`` original corner pixels, ``valid (F, P)``, ``colors (P, 3)``."""

    segment: int
    frames: List[int]
    xy: np.ndarray
    valid: np.ndarray
    colors: np.ndarray

    @property
    def num_tracks(self) -> int:
        """``N``, the number of tracks."""
        return int(self.xy.shape[1])

    @property
    def anchor_xy(self) -> np.ndarray:
        return self.xy[-1]

    @property
    def old_frames(self) -> List[int]:
        return self.frames[:-1]

    @property
    def old_xy(self) -> np.ndarray:
        return self.xy[:-1]

    @property
    def old_valid(self) -> np.ndarray:
        return self.valid[:-1]


@dataclass
class _Segment:
    """A connected part of the sequence: its model and registered frames."""

    index: int
    rec: Any
    camera_id: int
    registered: List[int] = field(default_factory=list)
    windows: int = 0

    def pose(self, f: int) -> np.ndarray:
        return np.asarray(self.rec.image(f + 1).cam_from_world().matrix(), np.float64)


class _VideoRun:
    """State of one sliding-window run (see the module docstring)."""

    def __init__(self, frames: FrameSet, cfg: ReconstructionConfig, source: WindowTrackSource,
                 known: Optional[KnownIntrinsics], observer: Optional[PipelineObserver], timings: Optional[dict]):
        from ..geometry.camera import num_extra_params

        self.frames = frames
        self.cfg = cfg
        self.source = source
        self.known = known
        self.observer = observer
        self.timings = timings if timings is not None else {}
        self.S = len(frames)
        self.names = list(frames.names)
        sizes = {tuple(int(v) for v in s) for s in frames.sizes}
        if len(sizes) != 1:
            raise InputError("the video mode needs frames of one size (one camera); use --mode sparse for mixed sizes", frames.source)
        self.size = next(iter(sizes))
        self.camera_type = cfg.camera.camera_type
        try:
            self.E = num_extra_params(self.camera_type)
        except ValueError as e:
            raise InputError(str(e)) from None
        self.camera_cfg = dataclasses.replace(cfg.camera, shared_camera=True)
        self.fixed_intrinsics = bool(cfg.camera.fix_intrinsics or (known is not None and known.fixed))
        px = max(self.size) / float(VGGSFM_IMG_SIZE)  # thresholds are in 1024-px-frame pixels (official)
        from .backend import POSE_MAX_ERROR

        self.thr = float(cfg.sfm.max_reproj_error) * px
        self.pose_thr = POSE_MAX_ERROR * px
        self.joint_thr = JOINT_REPROJ_ERROR * px
        self.init_size = max(3, int(cfg.video.init_window_size))
        self.window_size = max(2, int(cfg.video.window_size))
        self.joint_interval = max(1, int(cfg.video.joint_ba_interval))
        self.max_gap = MAX_GAP_WINDOWS * self.window_size
        self.max_pts = max(1, int(cfg.track.max_query_pts))
        self.min_len = max(2, int(cfg.sfm.min_valid_track_length))
        self.seed = int(cfg.seed)
        self.rng = np.random.default_rng(self.seed)
        self.segments: List[_Segment] = []
        self.seg: Optional[_Segment] = None
        self.skipped: Dict[int, str] = {}
        self.messages: List[str] = []
        self.windows: List[Dict[str, Any]] = []
        self.ext = np.tile(np.eye(4)[:3], (self.S, 1, 1))
        self.frame_err = np.full(self.S, np.nan)
        self.planned = len(plan_windows(self.S, self.init_size, self.window_size))
        self.done_windows = 0
        self.rotation_since: Optional[int] = None
        self.pending: Optional[_Pending] = None
        self.ba_log: List[Dict[str, Any]] = []
        self.ba_count: Dict[str, int] = {}
        self.intrinsics_source = "default"
        self.snapshots = _wants_snapshots(observer)

    # ------------------------------------------------------------------ reporting
    def note(self, text: str, level: str = "info") -> None:
        self.messages.append(text)
        if self.observer is not None:
            self.observer.message(text, level)

    def skip(self, frames: Sequence[int], why: str) -> None:
        for f in frames:
            if 0 <= f < self.S and f not in self.skipped:
                self.skipped[int(f)] = why

    def log_ba(self, kind: str, frames: int, info: Dict[str, Any]) -> None:
        """Keep the joint / final BA summaries (``stats["ba"]``) and count every BA."""
        self.ba_count[kind] = self.ba_count.get(kind, 0) + 1
        if kind != "window":
            self.ba_log.append({"kind": kind, "frames": int(frames), **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in info.items()}})

    def add_time(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + float(seconds)

    def span(self, a: int, b: int) -> str:
        return self.names[a] if a == b else f"{self.names[a]}-{self.names[b]}"

    # ------------------------------------------------------------------ camera
    def camera(self, seg: _Segment):
        return seg.rec.camera(seg.camera_id)

    def K_extra(self, seg: _Segment) -> Tuple[np.ndarray, np.ndarray]:
        from ..geometry.camera import from_colmap_params

        return from_colmap_params(self.camera_type, self.camera(seg).params)

    # ------------------------------------------------------------------ main loop
    def run(self) -> SfMResult:
        nxt = 0
        t_loop = time.perf_counter()
        with Stage(self.observer, "video: windows", total=self.planned) as st:
            self.stage = st
            while nxt < self.S:
                if self.seg is None:
                    nxt = self.start_segment(nxt)
                    continue
                anchor = self.seg.registered[-1]
                n = _next_window_size(self.S - nxt, self.window_size)
                new = list(range(nxt, nxt + n))
                reg = self.process_window(anchor, new)
                if reg:
                    last = max(reg)
                    self.skip([f for f in new if f < last and f not in reg], "could not be registered in its window")
                    nxt = last + 1
                    continue
                # nothing registered: probe the following frames from the anchor, one by one
                self.note(f"window {self.span(new[0], new[-1])}: no frame could be registered "
                          f"(too few valid tracks from {self.names[anchor]}); skipping it and re-seeding tracking", "warning")
                found = None
                for f in range(nxt + 1, min(self.S, anchor + self.max_gap + 1)):
                    if self.probe(anchor, f):
                        found = f
                        break
                if found is not None:
                    self.skip(range(nxt, found), "skipped: no valid tracks (gap)")
                    self.note(f"tracking re-seeded from {self.names[anchor]} at {self.names[found]} "
                              f"({found - nxt} frame(s) skipped)", "warning")
                    nxt = found
                    continue
                stop = min(self.S, anchor + self.max_gap + 1)
                stop = max(stop, nxt + 1)
                self.skip(range(nxt, stop), "skipped: no valid tracks (gap)")
                self.note(f"frames {self.span(nxt, stop - 1)}: lost tracking for more than {self.max_gap} frames; "
                          "starting a new segment", "warning")
                self.close_segment()
                nxt = stop
        self.close_segment()
        # seconds of the window loop itself (the initial windows and joint BAs have their own keys)
        inner = sum(self.timings.get(k, 0.0) for k in ("video: initial window", "video: joint BA"))
        self.timings["video: windows"] = self.timings.get("video: windows", 0.0) + time.perf_counter() - t_loop - inner
        return self.finish()

    # ------------------------------------------------------------------ segments
    def start_segment(self, start: int) -> int:
        """Initialise a segment at ``start``; returns the next frame to process."""
        from .backend import reconstruct_from_tracks

        end = min(self.S, start + self.init_size)
        idx = list(range(start, end))
        if len(idx) < 3:
            self.skip(idx, "too few frames left to initialise a segment")
            return end
        t0 = time.perf_counter()
        try:
            self.stage.advance(0, note=f"initial window {self.span(start, end - 1)}")
            try:
                ts, prior = self.source.init_tracks(idx, 2 * self.max_pts)
                fr = self.frames.subset(idx) if _images_available(self.frames, idx) else None
                known = None
                if self.known is not None:
                    known = KnownIntrinsics(self.known.intrinsics[idx], self.known.extra_params[idx], self.known.fixed, self.known.source)
                sfm = reconstruct_from_tracks(ts, fr, self.cfg.sfm, self.camera_cfg, prior=prior, known=known, observer=None, seed=self.seed)
            finally:
                self.add_time("video: initial window", time.perf_counter() - t0)
            hf, cond = _rotation_test(ts, sfm, self.cfg.sfm.fmat_thres)
            if hf >= ROTATION_H_RATIO and cond < ROTATION_H_CONDITION:
                raise ReconstructionError(
                    f"no parallax: a rotation explains {100 * hf:.0f} % of the epipolar inliers between the window's first "
                    "and last frames; the camera only rotates")
        except (ReconstructionError, InputError) as e:
            step = min(self.window_size, len(idx))
            self.skip(range(start, start + step), "initialisation failed")
            self.note(f"frames {self.span(start, end - 1)}: cannot initialise ({e}); skipping {step} frame(s)", "warning")
            self.done_windows += 1
            self.stage.advance()
            return start + step
        seg = self.seed_segment(sfm, idx)
        self.intrinsics_source = str(sfm.stats.get("intrinsics_source", self.intrinsics_source))
        reg = sorted(seg.registered)
        last = reg[-1]
        # the initial window's tracks that did not become points may still do with more baseline
        wt = WindowTracks.from_trackset(ts, ts.transforms)
        used = sfm.point_track_ids[sfm.point_track_ids >= 0].tolist()
        self.update_pending(seg, idx, sfm.valid_frame_mask.numpy(), wt.xy, wt.valid, np.full((wt.num_tracks, 3), 128, np.uint8),
                            {int(c): -1 for c in used}, last)
        self.skip([f for f in idx if f < last and f not in reg], "not registered in the initial window")
        self.windows.append({"window": len(self.windows), "kind": "initial", "segment": seg.index, "frames": [start, end - 1],
                             "anchor": None, "registered": len(reg), "new_points": int(seg.rec.num_points3D()),
                             "seconds": round(time.perf_counter() - t0, 3)})
        self.done_windows += 1
        self.stage.advance(note=f"initial window: {len(reg)}/{len(idx)} frames")
        self.emit(f"initial window {self.span(start, end - 1)}")
        return last + 1

    def seed_segment(self, sfm: SfMResult, idx: List[int]) -> _Segment:
        """Copy the initial window's model into a new segment (global image ids = frame + 1)."""
        import pycolmap

        from .colmap_build import make_camera

        src = sfm.reconstruction
        rec = pycolmap.Reconstruction()
        valid = [k for k in range(len(idx)) if bool(sfm.valid_frame_mask[k])]
        k0 = valid[0]
        K0 = sfm.intrinsics[k0].numpy()
        e0 = sfm.extra_params[k0].numpy() if self.E else None
        rec.add_camera_with_trivial_rig(make_camera(self.camera_type, K0, e0, self.size[0], self.size[1], 1))
        remap: Dict[Tuple[int, int], Tuple[int, int]] = {}
        for k in valid:
            f = idx[k]
            img = src.image(int(sfm.image_ids[k]))
            kps = []
            for j, p in enumerate(img.points2D):
                if p.has_point3D():
                    remap[(int(img.image_id), j)] = (f + 1, len(kps))
                    kps.append(p.xy)
            kp = np.asarray(kps, np.float64).reshape(-1, 2)
            new = pycolmap.Image(name=self.names[f], keypoints=kp, camera_id=1, image_id=f + 1)
            rec.add_image_with_trivial_frame(new, img.cam_from_world())
        TE = pycolmap.TrackElement
        for pid, pt in src.points3D.items():
            els = [remap.get((int(e.image_id), int(e.point2D_idx))) for e in pt.track.elements]
            els = [e for e in els if e is not None]
            if len(els) < 2:
                continue
            tr = pycolmap.Track()
            tr.add_elements([TE(a, b) for a, b in els])
            rec.add_point3D(np.asarray(pt.xyz, np.float64), tr, np.asarray(pt.color, np.uint8))
        seg = _Segment(len(self.segments), rec, 1, [idx[k] for k in valid])
        self.segments.append(seg)
        self.seg = seg
        for k in valid:
            self.ext[idx[k]] = seg.pose(idx[k])
        return seg

    def close_segment(self) -> None:
        self.seg = None
        self.pending = None

    # ------------------------------------------------------------------ one window
    def anchor_points(self, seg: _Segment, anchor: int, limit: int):
        """Points observed in the anchor: ``(point ids (M,), xy (M, 2), X (M, 3))``, at most
        ``limit`` (seeded random subset, official)."""
        img = seg.rec.image(anchor + 1)
        ids, xy = [], []
        for p in img.points2D:
            if p.has_point3D():
                ids.append(p.point3D_id)
                xy.append(p.xy)
        ids = np.asarray(ids, np.int64)
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        if ids.size > limit:
            sel = np.sort(self.rng.choice(ids.size, limit, replace=False))
            ids, xy = ids[sel], xy[sel]
        X = np.array([seg.rec.point3D(int(i)).xyz for i in ids], np.float64).reshape(-1, 3)
        return ids, xy, X

    def probe(self, anchor: int, f: int) -> bool:
        """Can frame ``f`` be registered from the anchor's points tracked directly into it?"""
        seg = self.seg
        ids, xy, X = self.anchor_points(seg, anchor, self.max_pts)
        if ids.size == 0:
            return False
        try:
            ex = self.source.track_existing([anchor, f], xy)
        except InputError:
            return False
        m = ex.valid[1]
        return _pnp(self.camera(seg), ex.xy[1][m], X[m], self.pose_thr, self.seed + f) is not None

    def prior_poses(self, seg: _Segment, new: List[int]) -> Optional[np.ndarray]:
        """Aligned predicted poses ``(len(new), 3, 4)`` of the new frames (learned path), or None."""
        if not self.source.has_camera_predictor:
            return None
        prev = seg.registered[-self.window_size:]
        if len(prev) < 2:
            return None
        pred = self.source.predict_cameras(prev + new)
        if pred is None:
            return None
        pred = torch.as_tensor(pred, dtype=torch.float64)
        R, t, s = align_camera_extrinsics(pred[: len(prev)], torch.from_numpy(np.stack([self.ext[f] for f in prev])))
        return transform_cameras(pred[len(prev):], R, t, s).numpy()

    def process_window(self, anchor: int, new: List[int]) -> List[int]:
        """Track, register, triangulate, land and bundle-adjust one window; returns the registered
        new frames (empty when none could be registered).

        Local problem: rows = the pending tracks' earlier registered frames (``old``), the anchor, the
        new frames; columns = existing points (fixed), carried pending tracks, new tracks.
        """
        from ..geometry.camera import cam_from_img
        from ..geometry.filtering import filter_points3d, reprojection_errors
        from ..geometry.triangulation import triangulate_tracks
        from .backend import TRI_HYPOTHESES, TRI_LO, TRI_LO_SECOND

        seg = self.seg
        t0 = time.perf_counter()
        ids, xy_a, X_a = self.anchor_points(seg, anchor, self.max_pts)
        if ids.size == 0:
            return []
        pend = self.pending_for(seg, anchor)
        C = 0 if pend is None else pend.num_tracks
        idx = [anchor] + new
        try:
            q = xy_a if pend is None else np.concatenate([xy_a, pend.anchor_xy], 0)
            ex = self.source.track_existing(idx, q)
            nw = self.source.track_new(idx, self.max_pts)
        except InputError as e:  # e.g. an undecodable frame: the window fails, the run goes on
            self.note(f"window {self.span(new[0], new[-1])}: tracking failed ({e})", "warning")
            return []
        prior = self.prior_poses(seg, new)
        M, N = ids.size, nw.num_tracks
        old = [] if pend is None else pend.old_frames
        O, W = len(old), len(idx)
        R = O + W
        T = C + N  # columns that may become new points: carried, then new tracks
        xy = np.zeros((R, M + T, 2))
        obs = np.zeros((R, M + T), bool)
        xy[O:, : M + C], obs[O:, : M + C] = ex.xy, ex.valid
        xy[O:, M + C :], obs[O:, M + C :] = nw.xy, nw.valid
        if C:
            xy[:O, M : M + C], obs[:O, M : M + C] = pend.old_xy, pend.old_valid
        colors = np.full((T, 3), 128, np.uint8)
        if C:
            colors[:C] = pend.colors
        if nw.colors is not None:
            colors[C:] = nw.colors
        X = np.zeros((M + T, 3))
        X[:M] = X_a
        has = np.zeros(M + T, bool)
        has[:M] = True
        ext = np.zeros((R, 3, 4))
        for k, f in enumerate(old + [anchor]):
            ext[k] = self.ext[f]
        reg = np.zeros(R, bool)
        reg[: O + 1] = True
        cam = self.camera(seg)
        K, e = self.K_extra(seg)
        Kt = torch.from_numpy(K)
        et = torch.from_numpy(e)[None] if self.E else None
        xyt = torch.from_numpy(xy)
        xn = cam_from_img(xyt, Kt.expand(R, 3, 3), None if et is None else et.expand(R, -1))
        tri_inl = np.zeros((R, T), bool)
        cols = np.arange(M, M + T)
        while True:
            added = 0
            for j in range(O + 1, R):
                if reg[j]:
                    continue
                m = obs[j] & has
                pose = _pnp(cam, xy[j][m], X[m], self.pose_thr, self.seed + idx[j - O])
                if pose is None and prior is not None:
                    pose = _refine_pose(cam, prior[j - O - 1], xy[j][m], X[m], self.pose_thr)
                if pose is not None:
                    ext[j], reg[j] = pose, True
                    added += 1
            if added == 0 or T == 0:
                break
            r = np.nonzero(reg)[0]
            min_len = 2 if r.size < 3 else min(self.min_len, r.size)
            Xn, cnt, mask = triangulate_tracks(
                torch.from_numpy(ext[r]), xn[r][:, cols], valid=torch.from_numpy(obs[r][:, cols]),
                max_ransac_iters=TRI_HYPOTHESES, lo_num=TRI_LO, lo_num_second=TRI_LO_SECOND,
                min_tri_angle=self.cfg.sfm.min_tri_angle, seed=self.seed + anchor, max_tracks_per_chunk=self.cfg.sfm.max_points_per_chunk,
            )
            k = torch.nonzero((cnt >= min_len) & torch.isfinite(Xn).all(-1)).flatten()
            has[M:] = False
            tri_inl[:] = False
            if k.numel():
                valid, detail = filter_points3d(
                    Xn[k], xyt[r][:, cols[k.numpy()]], torch.from_numpy(ext[r]), Kt.expand(r.size, 3, 3),
                    None if et is None else et.expand(r.size, -1), max_reproj_error=self.thr,
                    min_tri_angle=self.cfg.sfm.min_tri_angle, check_triangle=True, obs_mask=mask[k].T,
                    max_points_per_chunk=self.cfg.sfm.max_points_per_chunk,
                )
                good = valid & (detail.sum(0) >= min_len)
                kk = k[good].numpy()
                X[M + kk] = Xn[k[good]].numpy()
                has[M + kk] = True
                sub = np.zeros((R, kk.size), bool)
                sub[r] = detail[:, good].numpy()
                tri_inl[:, kk] = sub
            if bool(reg.all()):
                break
        if not reg[O + 1 :].any():
            return []
        # inlier observations of the existing points in the registered new frames
        rn = np.nonzero(reg[O + 1 :])[0] + O + 1
        err = reprojection_errors(torch.from_numpy(X[:M]), xyt[rn][:, :M], torch.from_numpy(ext[rn]), Kt.expand(rn.size, 3, 3),
                                  None if et is None else et.expand(rn.size, -1)).numpy()
        ex_inl = np.zeros((R, M), bool)
        ex_inl[rn] = obs[rn][:, :M] & (err <= self.thr)
        land_cols = has[M:] & (tri_inl.sum(0) >= self.min_len)
        frames_of_rows = old + idx
        kept, landed_ids = self.land(seg, frames_of_rows, O, reg, ext, xy, ids, ex_inl, tri_inl, land_cols, X[M:], colors)
        if not kept:
            return []
        self.update_pending(seg, frames_of_rows, reg, xy[:, M:], obs[:, M:], colors, landed_ids, max(kept))
        # rotation-only check: camera baseline over the median depth of the anchor's points
        Cc = camera_centers(np.stack([self.ext[f] for f in [anchor] + kept]))
        depth = apply_affine(X_a, self.ext[anchor])[:, 2]
        base = float(np.linalg.norm(Cc - Cc[0], axis=1).max())
        med = float(np.median(depth[depth > 0])) if (depth > 0).any() else float("inf")
        ratio = base / med if med > 0 else 0.0
        if ratio < ROTATION_PARALLAX:
            if self.rotation_since is None:
                self.rotation_since = new[0]
                self.note(f"frames from {self.names[new[0]]}: the camera mostly rotates (baseline / depth {ratio:.3f}); "
                          "poses rest on earlier points and few new points can be triangulated", "warning")
        elif self.rotation_since is not None:
            self.note(f"parallax back at {self.names[new[0]]} (rotation-only stretch from {self.names[self.rotation_since]})")
            self.rotation_since = None
        seg.windows += 1
        info = {"window": len(self.windows), "kind": "window", "segment": seg.index, "frames": [new[0], new[-1]], "anchor": anchor,
                "registered": len(kept), "existing_points": int(M), "carried_tracks": int(C), "new_tracks": int(N),
                "new_points": int(len(landed_ids)), "parallax": round(ratio, 4), "seconds": 0.0}
        self.windows.append(info)
        if seg.windows % self.joint_interval == 1 % self.joint_interval:
            self.joint_ba(seg)
        info["seconds"] = round(time.perf_counter() - t0, 3)
        self.done_windows += 1
        self.stage.advance(note=f"{self.span(new[0], new[-1])}: {len(kept)}/{len(new)} frames")
        self.emit(f"window {self.span(new[0], new[-1])}")
        return kept

    def land(self, seg: _Segment, frames_of_rows: List[int], O: int, reg, ext, xy, ids, ex_inl, tri_inl, land_cols, X_tri, colors):
        """Add the registered new frames (rows after ``O + 1``), their observations and the new points
        (with their observations in the earlier rows: pending tracks' frames and the anchor) to the
        model; local BA (new poses and points; everything else fixed) and filter.

        Returns:
            ``(kept new frames, {column: point id} of the new points that survived)``.
        """
        import pycolmap

        from .colmap_build import ba_options, rigid, solve_ba

        rec = seg.rec
        R = len(frames_of_rows)
        M = ids.size
        cid = seg.camera_id
        TE = pycolmap.TrackElement
        new_cols = np.nonzero(land_cols)[0]
        elements: Dict[int, List] = {int(c): [] for c in new_cols}
        frames_added = []
        for j in range(O + 1, R):
            if not reg[j]:
                continue
            f = frames_of_rows[j]
            e_cols = np.nonzero(ex_inl[j])[0]
            n_cols = new_cols[tri_inl[j, new_cols]]
            kp = np.concatenate([xy[j, e_cols], xy[j, M + n_cols]], 0).reshape(-1, 2)
            img = pycolmap.Image(name=self.names[f], keypoints=np.ascontiguousarray(kp, np.float64), camera_id=cid, image_id=f + 1)
            rec.add_image_with_trivial_frame(img, rigid(ext[j]))
            for k, c in enumerate(e_cols):
                rec.add_observation(int(ids[c]), TE(f + 1, k))
            for k, c in enumerate(n_cols):
                elements[int(c)].append(TE(f + 1, len(e_cols) + k))
            frames_added.append(f)
        # observations of the new points in frames already in the model (anchor, pending tracks' frames)
        for j in range(O + 1):
            cs = new_cols[tri_inl[j, new_cols]]
            if cs.size == 0:
                continue
            f = frames_of_rows[j]
            if not rec.exists_image(f + 1) or not rec.image(f + 1).has_pose:
                continue
            img = rec.image(f + 1)
            base = len(img.points2D)
            for k, c in enumerate(cs):
                img.points2D.append(pycolmap.Point2D(np.asarray(xy[j, M + c], np.float64)))
                elements[int(c)].append(TE(f + 1, base + k))
        new_pids: Dict[int, int] = {}
        for c in new_cols:
            els = elements[int(c)]
            if len(els) < 2:
                continue
            tr = pycolmap.Track()
            tr.add_elements(els)
            new_pids[int(c)] = rec.add_point3D(np.asarray(X_tri[c], np.float64), tr, np.asarray(colors[c], np.uint8))
        # local bundle adjustment: new poses and new points vary; the anchor pose, every other point
        # and the intrinsics are fixed
        config = pycolmap.BundleAdjustmentConfig()
        for f in frames_added:
            config.add_image(f + 1)
        anchor = frames_of_rows[O]
        config.add_image(anchor + 1)
        config.set_constant_rig_from_world_pose(rec.image(anchor + 1).frame_id)
        config.set_constant_cam_intrinsics(cid)
        new_set = set(new_pids.values())
        for iid in [f + 1 for f in frames_added] + [anchor + 1]:
            for p in rec.image(iid).points2D:
                if p.has_point3D() and int(p.point3D_id) not in new_set:
                    config.add_constant_point(int(p.point3D_id))
        for pid in new_set:
            config.add_variable_point(pid)  # their observations in the pending tracks' frames, fixed poses
        self.log_ba("window", len(frames_added), solve_ba(rec, ba_options(LOCAL_BA_ITERS, function_tolerance=1e-6, refine_intrinsics=False), config))
        # filter: reprojection, negative depth, triangulation angle; new points need min_len views
        om = pycolmap.ObservationManager(rec)
        om.filter_points3D_in_images(self.thr, self.cfg.sfm.min_tri_angle, set(f + 1 for f in frames_added) | {anchor + 1})
        for c, pid in list(new_pids.items()):
            if rec.exists_point3D(pid) and rec.point3D(pid).track.length() < self.min_len:
                rec.delete_point3D(pid)
            if not rec.exists_point3D(pid):
                del new_pids[c]
        kept = []
        for f in frames_added:
            img = rec.image(f + 1)
            if img.num_points3D < MIN_FRAME_OBSERVATIONS:
                rec.deregister_frame(img.frame_id)
                continue
            kept.append(f)
            self.ext[f] = seg.pose(f)
        seg.registered.extend(kept)
        seg.registered.sort()
        if kept:
            from ..geometry.filtering import reprojection_errors

            K, e = self.K_extra(seg)
            Kt = torch.from_numpy(K)[None]
            et = torch.from_numpy(e)[None] if self.E else None
            for f in kept:
                img = rec.image(f + 1)
                p2 = [(p.xy, p.point3D_id) for p in img.points2D if p.has_point3D()]
                P3 = torch.from_numpy(np.array([rec.point3D(int(q)).xyz for _, q in p2]))
                P2 = torch.from_numpy(np.array([x for x, _ in p2]))[None]
                self.frame_err[f] = float(reprojection_errors(P3, P2, torch.from_numpy(self.ext[f])[None], Kt, et)[0].mean())
        return kept, new_pids

    # ------------------------------------------------------------------ pending tracks
    def pending_for(self, seg: _Segment, anchor: int) -> Optional["_Pending"]:
        """The carried tracks observed in the anchor, restricted to frames still registered."""
        p = self.pending
        if p is None or p.segment != seg.index or anchor not in p.frames:
            return None
        regset = set(seg.registered)
        a = p.frames.index(anchor)
        rows = [k for k, f in enumerate(p.frames) if f != anchor and f in regset and f < anchor]
        sel = np.nonzero(p.valid[a])[0]
        if sel.size == 0:
            return None
        return _Pending(seg.index, [p.frames[k] for k in rows] + [anchor], p.xy[rows + [a]][:, sel], p.valid[rows + [a]][:, sel], p.colors[sel])

    def update_pending(self, seg: _Segment, frames_of_rows: List[int], reg, xy, obs, colors, landed: Dict[int, int], next_anchor: int) -> None:
        """Tracks of this window (carried and new) that did not become points and are seen in the next
        anchor are carried to the next window with their observations in the registered frames of the
        last ``PENDING_SPAN_WINDOWS`` windows (at most ``max_query_pts`` of them, longest first)."""
        regset = set(seg.registered)
        if next_anchor not in frames_of_rows:
            self.pending = None
            return
        lo = next_anchor - PENDING_SPAN_WINDOWS * self.window_size
        rows = [k for k, f in enumerate(frames_of_rows) if reg[k] and f in regset and f >= lo]
        a = frames_of_rows.index(next_anchor)
        cand = np.ones(xy.shape[1], bool)
        cand[list(landed)] = False
        cand &= obs[a]
        sel = np.nonzero(cand)[0]
        if sel.size > self.max_pts:
            length = obs[rows][:, sel].sum(0) + self.rng.random(sel.size)
            sel = np.sort(sel[np.argsort(-length)[: self.max_pts]])
        if sel.size == 0:
            self.pending = None
            return
        self.pending = _Pending(seg.index, [frames_of_rows[k] for k in rows], xy[rows][:, sel], obs[rows][:, sel], colors[sel])

    # ------------------------------------------------------------------ bundle adjustment
    def joint_ba(self, seg: _Segment) -> None:
        """Official ``joint_BA`` over the most recent frames (global while the model is small)."""
        import pycolmap

        from .colmap_build import ba_options, solve_ba

        t0 = time.perf_counter()
        reg = seg.registered
        span = self.joint_interval * self.window_size + self.init_size
        var = reg[-span:]
        is_global = len(var) == len(reg)
        config = pycolmap.BundleAdjustmentConfig()
        for f in var:
            config.add_image(f + 1)
        refine = is_global and not self.fixed_intrinsics and len(reg) >= 3
        if is_global:
            config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
        else:
            # earlier observations of these points enter with fixed poses (gauge and scale)
            pts = set()
            for f in var:
                for p in seg.rec.image(f + 1).points2D:
                    if p.has_point3D():
                        pts.add(int(p.point3D_id))
            for pid in pts:
                config.add_variable_point(pid)
        if not refine:
            config.set_constant_cam_intrinsics(seg.camera_id)
        opts = ba_options(JOINT_BA_ITERS, function_tolerance=1e-6, refine_intrinsics=refine, official_prepare=False)
        self.stage.advance(0, note=f"joint BA over {len(var)} frames")
        self.log_ba("joint (global)" if is_global else "joint", len(var), solve_ba(seg.rec, opts, config))
        om = pycolmap.ObservationManager(seg.rec)
        om.filter_points3D_in_images(self.joint_thr, self.cfg.sfm.min_tri_angle, set(f + 1 for f in var))
        self.add_time("video: joint BA", time.perf_counter() - t0)
        self.drop_weak_frames(seg, var)
        for f in var:
            if f in seg.registered:
                self.ext[f] = seg.pose(f)
        if self.windows:
            self.windows[-1]["joint_ba_seconds"] = round(time.perf_counter() - t0, 3)

    def drop_weak_frames(self, seg: _Segment, frames: Sequence[int]) -> None:
        weak = [f for f in frames if f in seg.registered and seg.rec.image(f + 1).num_points3D < MIN_FRAME_OBSERVATIONS]
        for f in weak:
            seg.rec.deregister_frame(seg.rec.image(f + 1).frame_id)
            seg.registered.remove(f)
            self.skip([f], "too few observations after bundle adjustment")

    def final_ba(self, seg: _Segment) -> None:
        """Global BA over the whole segment (intrinsics refined unless fixed) and the official filter
        (2 px, 1.5 deg, negative depth)."""
        import pycolmap

        from .colmap_build import ba_options, solve_ba

        config = pycolmap.BundleAdjustmentConfig()
        for f in seg.registered:
            config.add_image(f + 1)
        config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
        refine = not self.fixed_intrinsics
        if not refine:
            config.set_constant_cam_intrinsics(seg.camera_id)
        opts = ba_options(FINAL_BA_ITERS, function_tolerance=1e-6, refine_intrinsics=refine, official_prepare=False)
        self.log_ba("final", len(seg.registered), solve_ba(seg.rec, opts, config))
        om = pycolmap.ObservationManager(seg.rec)
        om.filter_all_points3D(self.joint_thr, self.cfg.sfm.min_tri_angle)
        om.filter_observations_with_negative_depth()
        self.drop_weak_frames(seg, list(seg.registered))

    # ------------------------------------------------------------------ snapshots and result
    def emit(self, label: str) -> None:
        if not self.snapshots or self.seg is None:
            return
        self.observer.reconstruction_updated(self.snapshot(self.seg, label, (self.done_windows, max(self.planned, self.done_windows))))

    def snapshot(self, seg: _Segment, label: str, progress=None) -> ReconstructionSnapshot:
        """A live-view snapshot from the cached poses and the model's points (no per-observation work
        in Python; point errors from COLMAP's ``update_point_3d_errors``)."""
        rec = seg.rec
        rec.update_point_3d_errors()
        _, xyz, rgb, perr = model_points(rec)
        reg = np.zeros(self.S, bool)
        reg[seg.registered] = True
        fobs = np.zeros(self.S, np.int64)
        for f in seg.registered:
            fobs[f] = rec.image(f + 1).num_points3D
        K, _ = self.K_extra(seg)
        return ReconstructionSnapshot(
            label=label, names=list(self.names), extrinsics=self.ext.copy(), intrinsics=np.tile(K, (self.S, 1, 1)),
            image_sizes=np.asarray(self.frames.sizes, np.int64), registered=reg, points=xyz, colors=rgb, point_errors=perr,
            frame_errors=np.where(reg, self.frame_err, np.nan), frame_observations=fobs, progress=progress,
        )

    def finish(self) -> SfMResult:
        from ..geometry.filtering import valid_frame_mask

        if not self.segments or max(len(s.registered) for s in self.segments) < 2:
            raise ReconstructionError(
                "no part of the sequence could be reconstructed: no window had enough parallax and valid tracks to "
                "initialise (the camera probably only rotates, or the frames are unusable)"
            )
        best = max(self.segments, key=lambda s: len(s.registered))
        for s in self.segments:
            if s is not best and s.registered:
                self.skip(s.registered, f"in a disconnected segment ({len(s.registered)} frames)")
                self.note(f"the sequence broke into {len(self.segments)} disconnected parts; kept the largest "
                          f"({self.span(best.registered[0], best.registered[-1])}), dropped {self.span(s.registered[0], s.registered[-1])}",
                          "warning")
            if s is not best:
                s.rec = None
        seg = best
        with Stage(self.observer, "video: final BA", timings=self.timings):
            self.final_ba(seg)
        rec = seg.rec
        rec.normalize(fixed_scale=False, extent=5.0, min_percentile=0.1, max_percentile=0.9, use_images=True)
        K, e = self.K_extra(seg)
        ext = np.tile(np.eye(4)[:3], (self.S, 1, 1))
        for f in seg.registered:
            ext[f] = seg.pose(f)
        reg = np.zeros(self.S, bool)
        reg[seg.registered] = True
        Kt = torch.from_numpy(np.tile(K, (self.S, 1, 1)))
        et = torch.from_numpy(np.tile(e, (self.S, 1))) if self.E else None
        ok = valid_frame_mask(Kt, torch.from_numpy(ext), et, torch.full((self.S,), float(max(self.size)), dtype=torch.float64)).numpy()
        bad = [f for f in seg.registered if not ok[f]]
        if bad and self.cfg.sfm.filter_invalid_frame:
            for f in bad:
                rec.deregister_frame(rec.image(f + 1).frame_id)
                seg.registered.remove(f)
            self.skip(bad, "implausible camera after bundle adjustment")
            self.note(f"deregistered {len(bad)} frame(s) with implausible cameras", "warning")
            reg[bad] = False
        for f in range(self.S):
            if reg[f]:
                self.skipped.pop(f, None)
            elif f not in self.skipped:
                self.skip([f], "not registered")
        if int(reg.sum()) < 2:
            raise ReconstructionError("fewer than 2 frames have a valid camera after bundle adjustment")
        rec.update_point_3d_errors()
        pids, X, rgb, _ = model_points(rec)
        n_obs = int(rec.compute_num_observations())
        skipped = sorted(self.skipped)
        if skipped:
            self.note(f"{len(skipped)} frame(s) skipped: " + ", ".join(self.names[f] for f in skipped[:20]) + (" ..." if len(skipped) > 20 else ""), "warning")
        stats = {
            "mode": "video",
            "num_frames": self.S,
            "num_registered": int(reg.sum()),
            "num_points": len(pids),
            "num_tracks": len(pids),
            "mean_reproj_error_px": float(rec.compute_mean_reprojection_error()) if len(pids) else float("nan"),
            "mean_track_length": float(rec.compute_mean_track_length()) if len(pids) else 0.0,
            "num_observations": n_obs,
            "messages": list(self.messages),
            "skipped_frames": [self.names[f] for f in skipped],
            "skipped_frame_indices": skipped,
            "skipped_reasons": {self.names[f]: self.skipped[f] for f in skipped},
            "windows": self.windows,
            "num_windows": len(self.windows),
            "segments": [{"frames": [s.registered[0], s.registered[-1]] if s.registered else [], "registered": len(s.registered),
                          "kept": s is best} for s in self.segments],
            "intrinsics_source": self.intrinsics_source,
            "track_source": self.source.name,
            "timings": {k: v for k, v in self.timings.items() if k.startswith("video")},
            "ba": self.ba_log,
            "ba_count": dict(self.ba_count),
        }
        S = self.S
        return SfMResult(
            reconstruction=rec,
            extrinsics=torch.from_numpy(ext),
            intrinsics=Kt.clone(),
            extra_params=et.clone() if et is not None else torch.zeros(S, 0, dtype=torch.float64),
            camera_type=self.camera_type,
            points3D=torch.from_numpy(X),
            points3D_rgb=torch.from_numpy(rgb),
            point_track_ids=torch.full((len(pids),), -1, dtype=torch.int64),
            track_inlier_mask=torch.zeros(S, 0, dtype=torch.bool),
            valid_frame_mask=torch.from_numpy(reg),
            image_ids=torch.arange(1, S + 1, dtype=torch.int64),
            stats=stats,
        )


def _rotation_test(tracks: TrackSet, sfm: SfMResult, max_error: float) -> Tuple[float, float]:
    """Is the initial window a rotation-only capture? Between the first registered frame and the last
    registered frame sharing 30 tracks with it: the fraction of fundamental-matrix inliers that a
    homography also explains (OpenCV RANSAC, ``max_error`` processed px), and the smallest condition
    number ``s1 / s3`` of ``K_f^-1 H K_f`` over focal lengths ``f`` in ``[0.2, 5] max(W, H)``
    (principal point at the image centre, original pixels; rotations self-calibrate, so the window's
    own focal estimate, unreliable exactly in this case, is not needed). A rotation gives about 1
    and 1 (``K^-1 H K`` is a rotation); a plane seen while translating gives a high fraction but a
    condition number well above 1 (``R + t n^T / d``); a 3D scene gives a low fraction.

    Returns:
        ``(homography fraction, condition number)``; ``(0, inf)`` when no pair has 30 tracks.
    """
    import cv2

    reg = np.nonzero(sfm.valid_frame_mask.numpy())[0]
    if reg.size < 2:
        return 0.0, float("inf")
    wt = WindowTracks.from_trackset(tracks, tracks.transforms)
    a = int(reg[0])
    for b in reg[::-1][:-1]:
        m = wt.valid[a] & wt.valid[int(b)]
        if m.sum() < 30:
            continue
        scale = tracks.transforms[a].scale
        p, q = wt.xy[a][m], wt.xy[int(b)][m]
        _, fm = cv2.findFundamentalMat(p, q, cv2.FM_RANSAC, float(max_error) / scale, 0.999)
        H, hm = cv2.findHomography(p, q, cv2.RANSAC, float(max_error) / scale)
        nf = 0 if fm is None else int(fm.sum())
        if H is None or hm is None or nf == 0:
            return 0.0, float("inf")
        w, h = tracks.transforms[a].orig_size
        f = np.geomspace(0.2, 5.0, 400) * max(w, h)
        K = np.zeros((f.size, 3, 3))
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = f, f, w / 2.0, h / 2.0, 1.0
        sv = np.linalg.svd(np.linalg.inv(K) @ H[None] @ K, compute_uv=False)
        return int(hm.sum()) / nf, float((sv[:, 0] / np.maximum(sv[:, 2], 1e-12)).min())
    return 0.0, float("inf")


def _wants_snapshots(observer: Optional[PipelineObserver]) -> bool:
    """True when some observer implements ``reconstruction_updated`` (snapshots cost O(points))."""
    if observer is None:
        return False
    if isinstance(observer, Observers):
        return any(_wants_snapshots(o) for o in observer.observers)
    return type(observer).reconstruction_updated is not PipelineObserver.reconstruction_updated


def _images_available(frames: FrameSet, idx: Sequence[int]) -> bool:
    return all(frames.paths[i] is not None or i in frames.arrays for i in idx)


def reconstruct_video(
    frames: FrameSet,
    cfg: ReconstructionConfig,
    tracker: Optional["TrackerChoice"],
    device: torch.device,
    known: Optional[KnownIntrinsics] = None,
    observer: Optional[PipelineObserver] = None,
    timings: Optional[dict] = None,
    *,
    source: Optional[WindowTrackSource] = None,
) -> Tuple[SfMResult, Optional[TrackSet]]:
    """Reconstruct a long ordered sequence window by window with bounded memory.

    Args:
        frames: the ordered frames (decoded lazily, one window at a time); all of one size.
        cfg: the configuration. Used: ``video`` (``init_window_size``, ``window_size``,
            ``joint_ba_interval``), ``track`` (``max_query_pts`` per window and query frame, doubled
            for the initial window; tracker settings), ``sfm`` (``max_reproj_error``,
            ``min_tri_angle``, ``min_valid_track_length``, ``filter_invalid_frame``, the initial
            window's back-end settings), ``camera`` (``camera_type``, ``fix_intrinsics``; one shared
            camera is always used), ``seed``, ``precision``.
        tracker: the track source: ``klt`` or ``sift`` (KLT windows; the frames are ordered) or
            ``vggsfm`` (learned tracker and camera predictor). Ignored when ``source`` is given.
        device: torch device of the learned tracker.
        known: user intrinsics (original pixels) for all frames; the initial window uses them.
        observer: progress (stages ``video: initial window``, ``video: windows``, ``video: joint BA``,
            ``video: final BA``), messages for skipped windows / frames and rotation-only stretches,
            and a :class:`~vggsfm_ns.progress.ReconstructionSnapshot` after each window with
            ``progress = (windows done, windows planned)``.
        timings: dict receiving seconds per stage.
        source: a :class:`WindowTrackSource` to use instead of the tracker (tests, benchmarks).

    Returns:
        ``(SfMResult, None)``. The result is in original pixels (COLMAP corner convention) with
        image names ``frames.names`` and image ids ``frame + 1``; tensors cover all S frames
        (``extrinsics`` rows of unregistered frames are identity); ``valid_frame_mask`` marks the
        registered frames; ``point_track_ids`` are -1 and ``track_inlier_mask`` is ``(S, 0)``: the
        observations live in the pycolmap model only (tracks differ per window, so no
        :class:`TrackSet` is returned). ``stats`` has the usual counts plus ``skipped_frames``
        (names), ``skipped_frame_indices``, ``skipped_reasons``, ``windows`` (one dict per window:
        frames, anchor, registered, points, parallax, seconds), ``segments`` and ``messages``.

    Raises:
        InputError: frames of different sizes, an unsupported camera model, an unknown tracker.
        ReconstructionError: no part of the sequence could be initialised (e.g. a rotation-only
            capture), or fewer than two frames remain registered.

    Source: official ``VideoRunner.run`` (``vggsfm/runners/video_runner.py``), with the robustness
    changes listed in the module docstring.
    """
    from ..threads import torch_threads

    if len(frames) < 3:
        raise InputError(f"the video mode needs at least 3 frames, got {len(frames)}", frames.source)
    if cfg.sfm.extra_pt_pixel_interval > 0 and observer is not None:
        observer.message("extra points are not supported in the video mode (official); ignoring --extra-pt-pixel-interval", "warning")
    if source is None:
        if tracker is None:
            raise InputError("reconstruct_video needs a tracker choice or a track source")
        source = make_window_source(tracker, frames, cfg, device, observer, timings)
    try:
        with torch_threads(1):
            run = _VideoRun(frames, cfg, source, known, observer, timings)
            sfm = run.run()
    finally:
        source.release()
    return sfm, None


__all__ = [
    "reconstruct_video",
    "plan_windows",
    "align_camera_extrinsics",
    "WindowTracks",
    "WindowTrackSource",
    "KltWindowSource",
    "VggsfmWindowSource",
    "SyntheticWindowSource",
    "make_window_source",
]
