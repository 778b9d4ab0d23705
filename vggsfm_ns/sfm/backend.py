"""The geometric back end: 2D tracks -> cameras, 3D points and a bundle-adjusted COLMAP model.

:func:`reconstruct_from_tracks` follows the official VGGSfM v2 ``Triangulator.forward``
(``vggsfm/models/triangulator.py``, ``vggsfm/utils/triangulation.py``):

1. preliminary epipolar inliers between a reference frame (the one observing most tracks; frame 0
   for VGGSfM tracks) and every other frame (poselib LO-RANSAC, ``fmat_thres`` px);
2. initial pair: every track triangulated from (reference, frame i) with the initial cameras; the
   frame with the most inliers that are epipolar-consistent, in front of both cameras and seen under
   at least ``init_tri_angle_thres`` degrees (halved 16 -> 8 -> 4 -> 2 -> 1 until >= 100 inliers and
   >= 25 %) wins;
3. bundle adjustment of that pair (``prepare_ba_options``) and a reprojection filter;
4. the other frames: with a camera prior, pose refinement from the predicted poses
   (``init_refine_pose``); without one, incremental registration by PnP against the growing point
   cloud, each round followed by step 5 (our weight-free extension: the official pipeline always has
   the camera predictor's poses; the relative poses of step 2 then come from the fundamental
   matrices);
5. LO-RANSAC triangulation of all tracks, global BA, ``normalize(5, 0.1, 0.9)``, reprojection filter;
6. ``robust_refine`` rounds: per-frame pose refinement on inliers within 12 px, RANSAC PnP for
   frames that fail in the last round (and for unregistered frames), then step 5 again;
7. ``ba_iters`` rounds of iterative global BA with the reprojection threshold halved each round and
   the triangulation-angle check;
8. frame validity (focal in [0.1, 30] max(W, H), ``|k| <= 1``, ``|t| <= 30``), colours, and the
   final model rescaled to each frame's original resolution in COLMAP's pixel-corner convention.

Differences from the official code, each for robustness or speed:

* Camera groups: without a prior, frames of the same size (and the same known intrinsics) share
  intrinsics in bundle adjustment, like COLMAP's default camera mode; a frame leaves its group
  before the final BA when its own focal length fits its observations clearly better. With a prior
  every frame has its own camera (official). Intrinsics are refined once 3 frames are registered.
* Observations beyond 12 px are dropped before each BA (the LO-RANSAC inlier test is angular, 2 deg,
  i.e. tens of pixels), and the intermediate BAs adjust a subset of points covering every frame
  (the others are re-triangulated); the final BA uses everything.
* LO-RANSAC triangulation samples frame pairs per track among its observed frames (see
  :func:`vggsfm_ns.geometry.triangulation.triangulate_tracks`); the official shares 256 random pairs
  among all frames.
* Observations are those with ``vis > 0.05`` (and ``score > 0.5``) inside the image content; the
  official filter also counts positions of invisible track points that happen to reproject.

Everything per point is vectorised and chunked; pycolmap does bundle adjustment, pose refinement
and PnP. Torch runs single-threaded inside (:func:`vggsfm_ns.threads.torch_threads`); the
per-frame and per-chunk work (two-view RANSAC, triangulation, PnP registration, pose refinement,
filtering, point colours) runs on :func:`vggsfm_ns.threads.cpu_workers` threads, with results
independent of the thread count.
"""

from __future__ import annotations

import math
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..config import CameraConfig, SfMConfig
from ..conventions import ImageTransform, center_to_corner, corner_to_center, default_focal
from ..errors import InputError, ReconstructionError
from ..geometry.camera import apply_affine, cam_from_img, num_extra_params, undistort
from ..geometry.filtering import filter_points3d, reprojection_errors, valid_frame_mask
from ..geometry.triangulation import triangulate_by_pair, triangulate_tracks
from ..progress import PipelineObserver, ReconstructionSnapshot, Stage
from ..threads import thread_map, torch_threads
from ..types import CameraPrior, FrameSet, KnownIntrinsics, SfMResult, TrackSet
from . import colmap_build as cb

#: Fewest initial-pair inliers below which the scene is declared degenerate (no parallax).
MIN_INIT_POINTS = 20
#: Fewest 2D-3D correspondences to attempt PnP registration of a frame.
MIN_PNP_CORRESPONDENCES = 20
#: Fewest PnP inliers to accept a registration (COLMAP ``abs_pose_min_num_inliers``).
MIN_PNP_INLIERS = 15
#: Minimum PnP inlier ratio (COLMAP ``abs_pose_min_inlier_ratio``).
MIN_PNP_INLIER_RATIO = 0.25
#: Reprojection threshold (px) of pose refinement and PnP (official ``refine_pose`` max error).
POSE_MAX_ERROR = 12.0
#: Pose refinement first re-localises (RANSAC PnP on all its 2D-3D correspondences) a registered frame
#: when fewer than this share of its correspondences are within :data:`POSE_MAX_ERROR` of its pose,
#: and keeps the PnP pose if it explains a larger share. A frame registered early from a few
#: ambiguous correspondences can get a pose that is wrong yet fits them, and local refinement cannot
#: leave that minimum. Measured (``docs/benchmarks.md``, eleventh session): on ``fox`` with 5 retrieval
#: partners two frames were registered 67 and 93 degrees off from 47 and 30 correspondences; at the
#: first pose refinement 35-40 % of their correspondences fit, against at least 83 % for every
#: correctly posed frame of six scenes.
RELOCALIZE_BELOW = 0.6
#: LO-RANSAC triangulation budget per track: two-view hypotheses, then the first and second local
#: optimisation sizes. Frame pairs are drawn per track among its observed frames (the official code
#: draws 256 pairs among all frames, shared by all tracks, with LO 50 / 10; most of those pairs are
#: not seen by a given track). 16 pairs of observed frames all contain an outlier with probability
#: 0.51^16 = 2e-5 at 30 % outliers.
TRI_HYPOTHESES, TRI_LO, TRI_LO_SECOND = 16, 6, 3
#: Intermediate bundle adjustments (registration rounds, robust refinement) over more than
#: ``BA_OBS_BUDGET`` observations adjust a subset of points that gives every registered frame
#: ``BA_FRAME_QUOTA`` observations from its longest tracks; the other points are re-triangulated
#: with the adjusted cameras. The final BA uses every point. These BAs mostly move the poses and
#: the focal length (which starts at the image side and converges over tens of iterations), so
#: their cost per iteration is what counts: on dtu_scan24 (49 frames, ~16k observations) a subset
#: of ~4.5k observations takes the back end from 3.2 s to 2.1 s with the same final poses
#: (AUC@30 99.99 both); fox and kitchen 0.3-0.4 s less.
BA_OBS_BUDGET, BA_FRAME_QUOTA = 6000, 60
#: Correspondences (at most) used to refine one frame's pose.
POSE_MAX_POINTS = 600


def _to_proc_K(K: torch.Tensor, t: ImageTransform) -> torch.Tensor:
    """Original-pixel (corner) K -> processed-pixel (corner) K."""
    out = K.clone().to(torch.float64)
    out[0, 0] *= t.scale
    out[1, 1] *= t.scale
    out[0, 1] *= t.scale
    out[0, 2] = (K[0, 2] + t.pad[0]) * t.scale
    out[1, 2] = (K[1, 2] + t.pad[1]) * t.scale
    return out


def _to_orig_K(K: torch.Tensor, t: ImageTransform) -> torch.Tensor:
    """Processed-pixel (corner) K -> original-pixel (corner) K."""
    out = K.clone().to(torch.float64)
    out[0, 0] /= t.scale
    out[1, 1] /= t.scale
    out[0, 1] /= t.scale
    out[0, 2] = K[0, 2] / t.scale - t.pad[0]
    out[1, 2] = K[1, 2] / t.scale - t.pad[1]
    return out


def find_initial_pair(geo_vis: torch.Tensor, cheirality: torch.Tensor, angles: torch.Tensor, init_tri_angle_thres: float,
                      denominator: int, min_inliers: int = 100, min_ratio: float = 0.25) -> Tuple[int, torch.Tensor, float]:
    """Choose the partner of the reference frame for initialisation.

    Args:
        geo_vis: ``[S-1, N]`` epipolar inliers that are observed in both frames.
        cheirality: ``[S-1, N]`` in front of both cameras.
        angles: ``[S-1, N]`` triangulation angles (degrees).
        init_tri_angle_thres: first angle threshold; halved (integer division, as the official code)
            up to 4 times while the best frame has fewer than ``min_inliers`` inliers or less than
            ``min_ratio`` of ``denominator``.
        denominator: tracks observed in the reference frame (the official code divides by all N,
            which equals it for VGGSfM tracks that cover every frame).

    Returns:
        ``(row, inliers [N] of that row, threshold used)``.

    Source: official ``find_best_initial_pair``.
    """
    thr = float(init_tri_angle_thres)
    for _ in range(5):
        inl = geo_vis & cheirality & (angles >= thr)
        counts = inl.sum(-1)
        best = int(counts.argmax())
        n = int(counts[best])
        if n >= min_inliers and n / max(denominator, 1) >= min_ratio:
            break
        if thr < 2:
            break
        thr = float(thr // 2)
    return best, inl[best], thr


def _timed(key: str):
    """Accumulate the wall time of a ``_Model`` method in ``self.seconds[key]``."""

    def deco(fn):
        def wrapper(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        return wrapper

    return deco


class _Model:
    """Mutable state of the reconstruction in processed-frame pixels (pixel-corner convention).

    Frames of one camera *group* share intrinsics during bundle adjustment (one pycolmap camera per
    group); a frame's own intrinsics are refined by pose refinement / PnP only in a one-frame group.
    """

    def __init__(self, xy, obs, transforms, camera_type, K, extra, groups, fixed, sfm_cfg: SfMConfig, seed: int):
        self.xy = xy
        self.obs = obs
        self.transforms = transforms
        self.S, self.N = obs.shape
        self.camera_type = camera_type
        self.E = num_extra_params(camera_type)
        self.K = K
        self.extra = extra
        self.groups = groups
        self.shared_output = False
        self.fixed = fixed
        self.cfg = sfm_cfg
        self.seed = seed
        self.sizes = np.array([t.size for t in transforms], np.int64)
        self.max_side = torch.tensor([max(t.orig_size) * t.scale for t in transforms], dtype=torch.float64)
        self.ext = torch.eye(3, 4, dtype=torch.float64).repeat(self.S, 1, 1)
        self.registered = torch.zeros(self.S, dtype=torch.bool)
        self.X = torch.zeros(self.N, 3, dtype=torch.float64)
        self.has_point = torch.zeros(self.N, dtype=torch.bool)
        self.inl = torch.zeros(self.S, self.N, dtype=torch.bool)
        self.ba_log: List[Dict] = []
        self.min_len_cap: Optional[int] = None
        self.seconds: Dict[str, float] = {}

    # ---------------------------------------------------------------- helpers
    def extra_or_none(self, idx=None):
        if self.E == 0:
            return None
        return self.extra if idx is None else self.extra[idx]

    def normalized(self, idx=None, cols=None) -> torch.Tensor:
        """Undistorted normalised coordinates of frames ``idx`` (all) and tracks ``cols`` (all):
        ``[s, n, 2]``. Only observed entries go through the iterative undistortion; the others
        (never used) get the pinhole value."""
        idx = slice(None) if idx is None else idx
        xy, obs = self.xy[idx], self.obs[idx]
        if cols is not None:
            xy, obs = xy[:, cols], obs[:, cols]
        K = self.K[idx]
        out = cam_from_img(xy, K)
        if self.E:
            f, n = torch.nonzero(obs, as_tuple=True)
            if f.numel():
                # one row per observation, with its frame's distortion
                out[f, n] = undistort(out[f, n][:, None, :], self.extra[idx][f])[:, 0]
        return out

    def reg_list(self) -> List[int]:
        return [int(i) for i in torch.nonzero(self.registered).flatten()]

    def min_len(self) -> int:
        n = max(2, min(self.cfg.min_valid_track_length, len(self.reg_list())))
        return n if self.min_len_cap is None else min(n, self.min_len_cap)

    def group_size(self, i: int) -> int:
        return int((self.groups == self.groups[i]).sum())

    def sync_groups(self) -> None:
        """Copy each group's intrinsics from a registered member (if any) to all its members."""
        for g in torch.unique(self.groups).tolist():
            members = torch.nonzero(self.groups == g).flatten()
            reg = members[self.registered[members]]
            src = int(reg[0]) if reg.numel() else int(members[0])
            self.K[members] = self.K[src].clone()
            if self.E:
                self.extra[members] = self.extra[src].clone()

    # ---------------------------------------------------------------- triangulation
    @_timed('triangulate')
    def triangulate(self, max_ransac_iters: int, keep_existing: bool = False) -> None:
        reg = self.reg_list()
        if len(reg) < 2:
            return
        valid = self.obs[reg]
        if keep_existing:
            # tracks that keep their point need no new hypothesis (the filter that follows
            # recomputes their inliers from the kept point)
            valid = valid & ~self.has_point[None]
        X, cnt, m = triangulate_tracks(
            self.ext[reg],
            self.normalized(reg),
            valid=valid,
            max_ransac_iters=min(max_ransac_iters, TRI_HYPOTHESES),
            lo_num=TRI_LO,
            lo_num_second=TRI_LO_SECOND,
            seed=self.seed,
            max_tracks_per_chunk=self.cfg.max_points_per_chunk,
        )
        inl = torch.zeros_like(self.inl)
        inl[reg] = m.T
        ok = (cnt >= self.min_len()) & torch.isfinite(X).all(-1)
        if keep_existing:
            X = torch.where(self.has_point[:, None], self.X, X)
            ok = ok | self.has_point
        self.X = X
        self.has_point = ok
        self.inl = inl & ok[None]

    # ---------------------------------------------------------------- bundle adjustment
    def ba_subset(self, budget: int, quota: int) -> torch.Tensor:
        """Points for an intermediate BA: all of them up to ``budget`` observations, else every
        registered frame gets ``quota`` observations from its longest tracks (ties broken by a
        seeded random key). ``[N]`` bool."""
        obs = self.inl & self.has_point[None]
        length = obs.sum(0)
        if int(length.sum()) <= budget:
            return self.has_point.clone()
        gen = torch.Generator().manual_seed(self.seed)
        key = length.to(torch.float64) + torch.rand(self.N, generator=gen, dtype=torch.float64)
        key = torch.where(self.has_point, key, torch.full_like(key, -1.0))
        sel = torch.zeros(self.N, dtype=torch.bool)
        for i in self.reg_list():
            have = int((obs[i] & sel).sum())
            if have >= quota:
                continue
            cand = obs[i] & ~sel
            k = min(quota - have, int(cand.sum()))
            if k <= 0:
                continue
            top = torch.where(cand, key, torch.full_like(key, -1.0)).topk(k).indices
            sel[top] = True
        return sel

    def camera_ids(self) -> np.ndarray:
        return (self.groups + 1).numpy()

    @_timed('bundle_adjust')
    def bundle_adjust(self, options, normalize: bool = True, budget: Optional[int] = None) -> None:
        reg = self.reg_list()
        if len(reg) < 2 or not self.has_point.any():
            return
        use = self.has_point if budget is None else self.ba_subset(budget, BA_FRAME_QUOTA)
        extra_np = None if self.E == 0 else self.extra.numpy()
        built = cb.build_reconstruction(
            self.camera_type, self.ext.numpy(), self.K.numpy(), extra_np, self.sizes, self.X.numpy(), self.xy.numpy(),
            (self.inl & use[None]).numpy(), reg, camera_ids=self.camera_ids(),
        )
        if (built.point_ids >= 0).sum() == 0:
            return
        # two views do not constrain the focal length (and are degenerate for converging cameras):
        # intrinsics are refined once three frames are registered
        saved = (options.refine_focal_length, options.refine_extra_params)
        if len(reg) < 3 or self.fixed:
            options.refine_focal_length = options.refine_extra_params = False
        try:
            info = cb.bundle_adjust(built, options)
        finally:
            options.refine_focal_length, options.refine_extra_params = saved
        sim = cb.normalize(built) if normalize else None
        ext, K, extra, X = cb.read_back(built, self.camera_type, self.ext.numpy(), self.K.numpy(), extra_np, self.X.numpy())
        ext, K, X = torch.from_numpy(ext), torch.from_numpy(K), torch.from_numpy(X)
        extra = self.extra if extra is None else torch.from_numpy(extra)
        bad = K[:, 0, 0] <= 0  # official: revert cameras whose focal length went negative
        K[bad] = self.K[bad]
        if self.E:
            extra[bad] = self.extra[bad]
        if not normalize:
            ext[bad] = self.ext[bad]
        if sim is not None:
            # frames outside this BA (unregistered) move with the world
            out = torch.ones(self.S, dtype=torch.bool)
            out[reg] = False
            if out.any():
                simt = torch.from_numpy(sim)
                s_ = simt[:, :3].norm(dim=0).mean()
                Rs = simt[:, :3] / s_
                ext[out, :, :3] = ext[out, :, :3] @ Rs.T
                ext[out, :, 3] = s_ * ext[out, :, 3] - (ext[out, :, :3] @ simt[:, 3][:, None])[..., 0]
        self.ext, self.K, self.extra = ext, K, extra
        in_model = torch.from_numpy(built.point_ids >= 0)
        rest = self.has_point & ~in_model
        if sim is not None and rest.any():
            simt = torch.from_numpy(sim)
            X[rest] = apply_affine(X[rest], simt)
        self.X = X
        self.sync_groups()
        if budget is not None and rest.any():
            self.retriangulate(rest)
        else:
            self.has_point = self.has_point & in_model
        self.inl = self.inl & self.has_point[None]
        info["frames"] = len(reg)
        info["points"] = int(in_model.sum())
        self.ba_log.append(info)

    @_timed('retriangulate')
    def retriangulate(self, which: torch.Tensor) -> None:
        """Linear multi-view triangulation of tracks ``which`` from their current inliers."""
        from ..geometry.triangulation import triangulate_tracks_linear

        idx = torch.nonzero(which).flatten()
        if idx.numel() == 0:
            return
        m = self.inl[:, idx] & self.registered[:, None]
        Xn = triangulate_tracks_linear(self.ext, self.normalized(cols=idx), m)
        ok = torch.isfinite(Xn).all(-1) & (m.sum(0) >= 2)
        self.X[idx] = torch.where(ok[:, None], Xn, self.X[idx])
        self.has_point[idx] = ok

    # ---------------------------------------------------------------- filtering
    @_timed('filter')
    def filter(self, max_error: float, check_triangle: bool) -> None:
        reg = self.reg_list()
        idx = torch.nonzero(self.has_point).flatten()
        if len(reg) < 2 or idx.numel() == 0:
            return
        valid, detail = filter_points3d(
            self.X[idx], self.xy[reg][:, idx], self.ext[reg], self.K[reg], self.extra_or_none(reg),
            max_reproj_error=max_error, min_tri_angle=self.cfg.min_tri_angle, check_triangle=check_triangle,
            obs_mask=self.obs[reg][:, idx], max_points_per_chunk=self.cfg.max_points_per_chunk,
        )
        ok = valid & (detail.sum(0) >= self.min_len())
        inl = torch.zeros_like(self.inl)
        sub = torch.zeros(self.S, idx.numel(), dtype=torch.bool)
        sub[reg] = detail & ok[None]
        inl[:, idx] = sub
        has = torch.zeros_like(self.has_point)
        has[idx] = ok
        self.has_point = has
        self.inl = inl

    def triangulate_and_ba(self, max_error: float, options, budget: Optional[int] = None) -> None:
        """Official ``triangulate_tracks_and_BA``: LO-RANSAC, global BA + normalise, filter.

        Observations beyond ``max_error`` px are dropped before the BA as well: the LO-RANSAC
        inlier test is angular (2 deg, tens of pixels), and the official BA with a trivial loss
        would otherwise be pulled by them (and converge slowly: on dtu_scan24 a pre-filter at
        12 px instead of 4 px costs 30 % more BA time for slightly worse poses).
        """
        self.triangulate(max_ransac_iters=256)
        self.filter(max_error, check_triangle=False)
        self.bundle_adjust(options, budget=budget)
        self.filter(max_error, check_triangle=False)

    # ---------------------------------------------------------------- poses
    def _camera(self, i: int):
        return cb.make_camera(self.camera_type, self.K[i].numpy(), None if self.E == 0 else self.extra[i].numpy(),
                              self.sizes[i][0], self.sizes[i][1], i + 1)

    def _set_camera(self, i: int, cam) -> None:
        from ..geometry.camera import from_colmap_params

        K, e = from_colmap_params(self.camera_type, cam.params)
        self.K[i] = torch.from_numpy(K)
        if self.E:
            self.extra[i] = torch.from_numpy(e)

    def _frame_ok(self, i: int, ext: np.ndarray, K: np.ndarray, extra: Optional[np.ndarray], max_t: float = 30.0) -> bool:
        e = None if extra is None else torch.from_numpy(np.asarray(extra, np.float64))[None]
        return bool(valid_frame_mask(torch.from_numpy(K)[None], torch.from_numpy(ext)[None], e, self.max_side[i:i + 1], max_abs_translation=max_t)[0])

    def refine_frame(self, i: int, inlier: np.ndarray, points2d: np.ndarray, points3d: np.ndarray, max_t: float = 30.0) -> bool:
        """Pose refinement of frame ``i`` from its current pose (and its intrinsics when it is alone
        in its camera group and they are not fixed); True if accepted."""
        import pycolmap

        cam = self._camera(i)
        o = self._refinement_options(i)
        with cb.quiet_glog():
            ans = pycolmap.refine_absolute_pose(cb.rigid(self.ext[i].numpy()), points2d, points3d, inlier, cam, o)
        if ans is None:
            return False
        return self._accept_pose(i, ans["cam_from_world"].matrix(), cam, max_t)

    def _refinement_options(self, i: int):
        """Pose refinement options for frame ``i``: its intrinsics are refined only when it is alone
        in its camera group and they are not fixed."""
        own = self.group_size(i) == 1 and not self.fixed
        return cb.pose_refinement_options(own, own and self.E > 0)

    def _accept_pose(self, i: int, ext: np.ndarray, cam, max_t: float) -> bool:
        """Store ``ext`` (cam_from_world ``(3, 4)``) and the camera ``cam`` for frame ``i`` if they
        pass :func:`valid_frame_mask`; True if stored."""
        from ..geometry.camera import from_colmap_params

        K, e = from_colmap_params(self.camera_type, cam.params)
        if not self._frame_ok(i, ext, K, e if self.E else None, max_t):
            return False
        self.ext[i] = torch.from_numpy(ext)
        self._set_camera(i, cam)
        return True

    def pnp_frame(self, i: int, points2d: np.ndarray, points3d: np.ndarray, max_t: float = 30.0,
                  min_corr: int = MIN_PNP_CORRESPONDENCES, min_inliers: int = MIN_PNP_INLIERS,
                  min_inlier_ratio: float = MIN_PNP_INLIER_RATIO) -> Optional[int]:
        """RANSAC PnP (+ refinement) of frame ``i``; returns the inlier count if accepted (at least
        ``min_inliers`` inliers, ``min_inlier_ratio`` of the correspondences used, a plausible
        camera). The focal length is estimated only for a frame alone in its camera group (COLMAP
        estimates it for cameras without a prior focal)."""
        import pycolmap

        if points2d.shape[0] < max(min_corr, 4):
            return None
        if points2d.shape[0] > 2 * POSE_MAX_POINTS:
            keep = np.random.default_rng(self.seed + i).choice(points2d.shape[0], 2 * POSE_MAX_POINTS, replace=False)
            points2d, points3d = points2d[keep], points3d[keep]
        own = self.group_size(i) == 1 and not self.fixed
        cam = self._camera(i)
        est = pycolmap.AbsolutePoseEstimationOptions()
        est.estimate_focal_length = own
        est.ransac.max_error = POSE_MAX_ERROR
        est.ransac.random_seed = int(self.seed) + i
        with cb.quiet_glog():
            ans = pycolmap.estimate_and_refine_absolute_pose(points2d, points3d, cam, est, self._refinement_options(i))
        if ans is None:
            return None
        n = int(ans["num_inliers"])
        if n < min_inliers or n < min_inlier_ratio * points2d.shape[0]:
            return None
        return n if self._accept_pose(i, ans["cam_from_world"].matrix(), cam, max_t) else None

    def correspondences(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        m = self.obs[i] & self.has_point
        return self.xy[i][m].numpy(), self.X[m].numpy()

    @_timed('pose_refinement')
    def refine_poses(self, force: bool, min_inliers: int = 100) -> int:
        """Official ``refine_pose``: refine every registered frame on its inliers within 12 px; with
        ``force``, frames that fail get RANSAC PnP. Unregistered frames get PnP (relaxed thresholds
        with ``force``). Before that, a registered frame whose pose explains fewer than
        :data:`RELOCALIZE_BELOW` of its correspondences is re-localised by RANSAC PnP (ours; the
        official pipeline has no incremental registration to recover from). Returns the number of
        frames changed."""
        idx = torch.nonzero(self.has_point).flatten()
        if idx.numel() == 0:
            return 0
        X = self.X[idx]
        err = reprojection_errors(X, self.xy[:, idx], self.ext, self.K, self.extra_or_none())
        inl = (self.obs[:, idx] & (err <= POSE_MAX_ERROR)).numpy()
        X_np = X.numpy()
        obs = self.obs[:, idx].numpy()
        was_registered = self.registered.numpy().copy()

        def one(i: int) -> Tuple[int, bool]:
            """Frame ``i`` alone (writes only its own pose and camera): ``(changed, newly registered)``."""
            p2 = self.xy[i, idx].numpy()
            n_obs, n_inl = int(obs[i].sum()), int(inl[i].sum())
            if was_registered[i] and n_obs >= MIN_PNP_CORRESPONDENCES and n_inl < RELOCALIZE_BELOW * n_obs:
                # a pose that explains few of the frame's correspondences: try RANSAC PnP from scratch
                m = obs[i]
                if self.pnp_frame(i, p2[m], X_np[m], min_inlier_ratio=n_inl / n_obs + 1e-9) is not None:
                    return 1, False
            if was_registered[i] and n_inl > min_inliers:
                m = inl[i]
                if m.sum() > POSE_MAX_POINTS:
                    m = np.zeros_like(m)
                    rng = np.random.default_rng(self.seed + i)
                    m[rng.choice(np.nonzero(inl[i])[0], POSE_MAX_POINTS, replace=False)] = True
                if self.refine_frame(i, m, p2, X_np):
                    return 1, False
            if force or not was_registered[i]:
                m = obs[i]
                relaxed = force and not was_registered[i]
                n = self.pnp_frame(i, p2[m], X_np[m], min_corr=8 if relaxed else MIN_PNP_CORRESPONDENCES,
                                   min_inliers=8 if relaxed else MIN_PNP_INLIERS)
                if n is not None:
                    return 1, not was_registered[i]
            return 0, False

        # the frames are independent here (each job reads the points and writes only its own frame),
        # so they run in parallel with the same result as in sequence
        changed = 0
        for i, (c, new) in enumerate(thread_map(one, range(self.S))):
            changed += c
            if new:
                self.registered[i] = True
        self.sync_groups()
        return changed

    @_timed('pose_refinement')
    def split_groups(self, min_obs: int = 30, gain: float = 0.9) -> List[int]:
        """Give a frame its own intrinsics when they fit its observations clearly better.

        For each registered frame of a multi-frame camera group, its pose is refined on its inlier
        observations once with the group's intrinsics and once with its own focal length (and
        distortion); if the second RMS reprojection error is below ``gain`` times the first (one
        more parameter explains much more than noise), the frame leaves the group. Returns the
        frames that left their group.
        """
        import pycolmap
        from ..geometry.camera import from_colmap_params

        if self.fixed:
            return []
        idx = torch.nonzero(self.has_point).flatten()

        def fit(i: int):
            """Both refinements of frame ``i`` (reads only its own pose and camera): ``(rms, fits)``."""
            m = self.inl[i, idx].numpy()
            if m.sum() < min_obs:
                return [], []
            sel = np.nonzero(m)[0]
            if sel.size > POSE_MAX_POINTS:
                sel = np.random.default_rng(self.seed + i).choice(sel, POSE_MAX_POINTS, replace=False)
            p2 = self.xy[i, idx[sel]].numpy()
            p3 = self.X[idx[sel]].numpy()
            mask = np.ones(sel.size, bool)
            rms, fits = [], []
            for own in (False, True):
                cam = self._camera(i)
                o = cb.pose_refinement_options(own, own and self.E > 0)
                with cb.quiet_glog():
                    ans = pycolmap.refine_absolute_pose(cb.rigid(self.ext[i].numpy()), p2, p3, mask, cam, o)
                if ans is None:
                    break
                ext = ans["cam_from_world"].matrix()
                K, e = from_colmap_params(self.camera_type, cam.params)
                Kt = torch.from_numpy(K)[None]
                et = torch.from_numpy(e)[None] if self.E else None
                err = reprojection_errors(torch.from_numpy(p3), torch.from_numpy(p2)[None], torch.from_numpy(ext)[None], Kt, et)
                rms.append(float(err.square().mean().sqrt()))
                fits.append((ext, cam))
            return rms, fits

        # the fits are independent (a split changes only the splitting frame's pose and camera), so
        # they run in parallel, all of them before any split; the splits are then applied in frame
        # order, each frame's group size checked at that point, exactly as in a sequential loop
        todo = [i for i in self.reg_list() if self.group_size(i) >= 2]
        results = list(thread_map(fit, todo))
        split = []
        for i, (rms, fits) in zip(todo, results):
            if self.group_size(i) < 2:
                continue
            if len(rms) == 2 and rms[1] < gain * rms[0]:
                ext, cam = fits[1]
                if self._frame_ok(i, ext, *from_colmap_params(self.camera_type, cam.params)[:1], None):
                    self.groups[i] = int(self.groups.max()) + 1
                    self.ext[i] = torch.from_numpy(ext)
                    self._set_camera(i, cam)
                    split.append(i)
        return split

    @_timed('registration_pnp')
    def register_new_frames(self) -> List[int]:
        """PnP-register unregistered frames with enough 2D-3D correspondences (most first).

        The attempts are independent (the points do not change here, a frame in a multi-frame camera
        group keeps the group's intrinsics, a frame alone in its group estimates only its own), so
        they run on the worker threads; the result is the same as one after the other.
        """
        cand = []
        for i in range(self.S):
            if self.registered[i]:
                continue
            n = int((self.obs[i] & self.has_point).sum())
            if n >= MIN_PNP_CORRESPONDENCES:
                cand.append((n, i))
        order = [i for _, i in sorted(cand, reverse=True)]

        def one(i: int) -> bool:
            p2, p3 = self.correspondences(i)
            return self.pnp_frame(i, p2, p3, max_t=math.inf) is not None

        new = [i for i, ok in zip(order, thread_map(one, order)) if ok]
        self.registered[new] = True
        self.sync_groups()
        return new

    # ---------------------------------------------------------------- reporting
    def snapshot(self, label: str, names: List[str], progress=None) -> ReconstructionSnapshot:
        S = self.S
        K_orig = torch.stack([_to_orig_K(self.K[i], self.transforms[i]) for i in range(S)])
        idx = torch.nonzero(self.has_point).flatten()
        X = self.X[idx]
        if idx.numel():
            err = reprojection_errors(X, self.xy[:, idx], self.ext, self.K, self.extra_or_none(), behind=float("nan"))
            scale = torch.tensor([t.scale for t in self.transforms], dtype=torch.float64)[:, None]
            err = err / scale
            m = self.inl[:, idx]
            e0 = torch.where(m, err, torch.zeros_like(err))
            perr = (e0.sum(0) / m.sum(0).clamp_min(1)).numpy()
            fobs = m.sum(1)
            ferr = torch.where(fobs > 0, e0.sum(1) / fobs.clamp_min(1), torch.full((S,), float("nan"), dtype=torch.float64)).numpy()
        else:
            perr = np.zeros(0)
            fobs = torch.zeros(S, dtype=torch.int64)
            ferr = np.full(S, np.nan)
        ferr = np.where(self.registered.numpy(), ferr, np.nan)
        return ReconstructionSnapshot(
            label=label,
            names=list(names),
            extrinsics=self.ext.numpy().copy(),
            intrinsics=K_orig.numpy(),
            image_sizes=np.array([t.orig_size for t in self.transforms], np.int64),
            registered=self.registered.numpy().copy(),
            points=X.numpy().copy(),
            colors=np.full((X.shape[0], 3), 200, np.uint8),
            point_errors=perr,
            frame_errors=ferr,
            frame_observations=fobs.numpy().astype(np.int64),
            progress=progress,
        )


def _initial_intrinsics(transforms: List[ImageTransform], camera_cfg: CameraConfig, prior: Optional[CameraPrior],
                        known: Optional[KnownIntrinsics], E: int) -> Tuple[torch.Tensor, torch.Tensor, bool, str]:
    """``(K [S, 3, 3], extra [S, E], fixed, source)`` in processed pixels, corner convention."""
    S = len(transforms)
    K = torch.zeros(S, 3, 3, dtype=torch.float64)
    extra = torch.zeros(S, E, dtype=torch.float64)
    boxes = [t.content_box() for t in transforms]
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        K[i, 0, 2] = (x0 + x1) / 2
        K[i, 1, 2] = (y0 + y1) / 2
        K[i, 2, 2] = 1.0
    if known is not None:
        if known.intrinsics.shape[0] != S:
            raise InputError(f"known intrinsics cover {known.intrinsics.shape[0]} frames, the tracks {S}")
        for i, t in enumerate(transforms):
            K[i] = _to_proc_K(known.intrinsics[i].to(torch.float64), t)
        ke = known.extra_params.to(torch.float64).reshape(S, -1)
        n = min(E, ke.shape[1])
        extra[:, :n] = ke[:, :n]
        return K, extra, bool(known.fixed or camera_cfg.fix_intrinsics), known.source
    if prior is not None:
        Kp = prior.intrinsics.to(torch.float64)
        if Kp.shape[0] != S:
            raise InputError(f"camera prior covers {Kp.shape[0]} frames, the tracks {S}")
        for i, t in enumerate(transforms):
            side = max(t.orig_size) * t.scale
            f = torch.clamp(Kp[i, 0, 0], 0.1 * side, 30 * side)
            fy = torch.clamp(Kp[i, 1, 1], 0.1 * side, 30 * side)
            K[i, 0, 0], K[i, 1, 1] = f, fy
        source = "prior"
    else:
        for i, t in enumerate(transforms):
            K[i, 0, 0] = K[i, 1, 1] = default_focal(*t.orig_size) * t.scale
        source = "default"
    if camera_cfg.camera_type in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        f = (K[:, 0, 0] + K[:, 1, 1]) / 2
        K[:, 0, 0] = K[:, 1, 1] = f
    if camera_cfg.shared_camera:
        K[:, 0, 0] = K[:, 0, 0].mean()
        K[:, 1, 1] = K[:, 1, 1].mean()
    return K, extra, False, source


def _camera_groups(transforms: List[ImageTransform], camera_cfg: CameraConfig, prior: Optional[CameraPrior],
                   K: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """``[S]`` camera group of each frame; a group shares intrinsics in bundle adjustment.

    * ``shared_camera``: one group;
    * with a camera prior: one group per frame (official per-frame cameras);
    * otherwise frames with the same size (and the same known intrinsics, e.g. the same EXIF focal)
      share a group, like COLMAP's default camera mode; per-frame focal lengths are barely
      observable from tracks alone (focal length and depth trade off in narrow views).
    """
    S = len(transforms)
    if camera_cfg.shared_camera:
        return torch.zeros(S, dtype=torch.int64)
    if prior is not None:
        return torch.arange(S, dtype=torch.int64)
    keys = {}
    out = torch.zeros(S, dtype=torch.int64)
    for i, t in enumerate(transforms):
        key = (tuple(t.orig_size), tuple(t.size), t.scale, tuple(t.pad), tuple(np.round(K[i].numpy().ravel(), 9)), tuple(np.round(extra[i].numpy(), 12)))
        out[i] = keys.setdefault(key, len(keys))
    return out


def _sample_colors(frames: FrameSet, valid: torch.Tensor, xy_orig: torch.Tensor, inl: torch.Tensor, point_idx: torch.Tensor) -> np.ndarray:
    """Mean bilinear colour of each point over its inlier observations (original images).

    Frames are decoded and sampled on :func:`vggsfm_ns.threads.cpu_workers` threads and summed in
    frame order (the same result as in sequence); only the four neighbours of each observation are
    converted to float.
    """
    P = point_idx.numel()
    acc = np.zeros((P, 3))
    cnt = np.zeros(P)
    inl_np = inl[:, point_idx].numpy()
    xy_np = xy_orig[:, point_idx].numpy()

    def one(i: int) -> Tuple[np.ndarray, np.ndarray]:
        m = inl_np[i]
        img = np.asarray(frames.image(i))
        if img.ndim == 2:
            img = img[..., None].repeat(3, -1)
        img = img[..., :3]
        H, W = img.shape[:2]
        p = corner_to_center(xy_np[i][m])
        x = np.clip(p[:, 0], 0, W - 1)
        y = np.clip(p[:, 1], 0, H - 1)
        x0 = np.floor(x).astype(int)
        y0 = np.floor(y).astype(int)
        x1 = np.minimum(x0 + 1, W - 1)
        y1 = np.minimum(y0 + 1, H - 1)
        ax = (x - x0)[:, None]
        ay = (y - y0)[:, None]

        def px(yy, xx):
            return img[yy, xx].astype(np.float64)

        return m, px(y0, x0) * (1 - ax) * (1 - ay) + px(y0, x1) * ax * (1 - ay) + px(y1, x0) * (1 - ax) * ay + px(y1, x1) * ax * ay

    todo = [i for i in torch.nonzero(valid).flatten().tolist() if inl_np[i].any()]
    for m, c in thread_map(one, todo):
        acc[m] += c
        cnt[m] += 1
    col = acc / np.maximum(cnt, 1)[:, None]
    col[cnt == 0] = 128
    return np.clip(np.round(col), 0, 255).astype(np.uint8)


def reconstruct_from_tracks(
    tracks: TrackSet,
    frames: Optional[FrameSet],
    sfm_cfg: SfMConfig,
    camera_cfg: CameraConfig,
    prior: Optional[CameraPrior] = None,
    known: Optional[KnownIntrinsics] = None,
    observer: Optional[PipelineObserver] = None,
    seed: int = 0,
) -> SfMResult:
    """Triangulate and bundle-adjust 2D tracks into cameras, points and a COLMAP model.

    Args:
        tracks: ``[S, N]`` tracks in each frame's processed pixels (pixel-centre), with
            ``transforms`` back to the original images. Observations count when ``vis > 0.05`` and
            ``score > 0.5`` (if scores exist) and they lie inside the frame's real content.
        frames: the frames (names, sizes, images for the point colours), or None (names
            ``frame_00000``..., grey points).
        sfm_cfg: thresholds and rounds (official ``Triangulator`` defaults).
        camera_cfg: camera model, shared camera, fixed intrinsics.
        prior: cameras predicted by the camera predictor (processed pixels); None for the
            weight-free path (relative poses from the fundamental matrices, PnP registration).
        known: user intrinsics in original pixels (EXIF / file); they replace the prior's or the
            default focal ``max(W, H)`` and are held fixed when ``known.fixed`` or
            ``camera_cfg.fix_intrinsics``.
        observer: receives stages and a :class:`~vggsfm_ns.progress.ReconstructionSnapshot` after the
            initial BA, each registration round and each BA round.
        seed: seed of every RANSAC.

    Returns:
        :class:`~vggsfm_ns.types.SfMResult` in each frame's original resolution (COLMAP pixel-corner
        convention), image names from ``frames``; ``stats`` holds the mean reprojection error (px),
        counts, the initial pair, seconds per step and notes.

    Raises:
        InputError: fewer than 2 frames, frames and tracks disagree, ``shared_camera`` with frames of
            different sizes, an unsupported camera model.
        ReconstructionError: no frame pair with enough parallax (e.g. pure rotation), or fewer than
            two frames could be registered.

    Source: official ``Triangulator.forward`` and ``VGGSfMRunner.sparse_reconstruct`` (rescaling:
    ``rename_colmap_recons_and_rescale_camera``, here exact: focal, principal point and every 2D
    observation are mapped with the frame's :class:`~vggsfm_ns.conventions.ImageTransform`).
    """
    with torch_threads(1):
        return _reconstruct(tracks, frames, sfm_cfg, camera_cfg, prior, known, observer, seed)


def _reconstruct(tracks, frames, sfm_cfg, camera_cfg, prior, known, observer, seed) -> SfMResult:
    t_start = time.perf_counter()
    timings: Dict[str, float] = {}
    notes: List[str] = []
    S, N = tracks.num_frames, tracks.num_tracks
    if S < 2:
        raise InputError(f"the geometric back end needs at least 2 frames, got {S}")
    if frames is not None and len(frames) != S:
        raise InputError(f"{len(frames)} frames but tracks over {S} frames")
    try:
        E = num_extra_params(camera_cfg.camera_type)
    except ValueError as e:
        raise InputError(str(e)) from None
    names = list(frames.names) if frames is not None else [f"frame_{i:05d}" for i in range(S)]
    transforms = list(tracks.transforms)
    if camera_cfg.shared_camera and len({(tuple(t.orig_size), tuple(t.size), t.scale, tuple(t.pad)) for t in transforms}) > 1:
        raise InputError("--shared-camera needs all frames to have the same size, but they differ")
    if frames is not None:
        for i, t in enumerate(transforms):
            if tuple(int(v) for v in frames.sizes[i]) != tuple(int(v) for v in t.orig_size):
                raise InputError(f"frame {names[i]} is {tuple(frames.sizes[i])} but its track transform expects {t.orig_size}")
    obs_ob = observer or PipelineObserver()

    # ---------------------------------------------------------------- inputs in processed pixels
    xy = center_to_corner(tracks.tracks.detach().to(torch.float64).cpu())
    obs = tracks.valid_mask().cpu() & torch.isfinite(xy).all(-1)
    boxes = torch.tensor([t.content_box() for t in transforms], dtype=torch.float64)
    obs &= (xy[..., 0] >= boxes[:, None, 0]) & (xy[..., 0] <= boxes[:, None, 2]) & (xy[..., 1] >= boxes[:, None, 1]) & (xy[..., 1] <= boxes[:, None, 3])
    xy = torch.where(obs[..., None], xy, torch.zeros_like(xy))
    if int((obs.sum(0) >= 2).sum()) < MIN_INIT_POINTS:
        raise ReconstructionError(f"only {int((obs.sum(0) >= 2).sum())} tracks are observed in 2 or more frames; cannot reconstruct")

    K, extra, fixed, k_source = _initial_intrinsics(transforms, camera_cfg, prior, known, E)
    groups = _camera_groups(transforms, camera_cfg, prior, K, extra)
    model = _Model(xy, obs, transforms, camera_cfg.camera_type, K, extra, groups, fixed, sfm_cfg, seed)
    model.shared_output = bool(camera_cfg.shared_camera)

    # ---------------------------------------------------------------- preliminary two-view geometry
    ref = int(obs.sum(1).argmax())
    t0 = time.perf_counter()
    from .preliminary import fundamental_inliers, relative_poses

    with Stage(observer, "geometry: two-view", total=None):
        F, finl = fundamental_inliers(xy, obs, ref, max_error=sfm_cfg.fmat_thres, seed=seed)
    geo = finl & obs
    timings["two_view"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- initial pair
    t0 = time.perf_counter()
    if prior is not None:
        pair_ext = prior.extrinsics.to(torch.float64).cpu().clone()
    else:
        pair_ext, _ = relative_poses(F, model.K, xy, geo, ref, model.extra_or_none())
    xn = model.normalized()
    pts_pair, cheir, ang = triangulate_by_pair(pair_ext, xn, ref, valid=geo, max_pairs_per_chunk=sfm_cfg.max_points_per_chunk)
    others = [i for i in range(S) if i != ref]
    geo_o = geo[others] & obs[ref][None]
    row, init_inl, thr = find_initial_pair(geo_o, cheir, ang, sfm_cfg.init_tri_angle_thres, int(obs[ref].sum()))
    n_init = int(init_inl.sum())
    if n_init < MIN_INIT_POINTS:
        raise ReconstructionError(
            f"no frame pair has enough parallax to initialise (best pair: {n_init} points seen under >= {thr:g} deg); "
            "the camera probably only rotates, or the frames share too few tracks"
        )
    j = others[row]
    timings["initial_pair"] = time.perf_counter() - t0
    notes.append(f"initial pair: {names[ref]} and {names[j]} ({n_init} points, triangulation angle >= {thr:g} deg)")

    if prior is not None:
        model.ext = pair_ext.clone()
    else:
        model.ext[ref] = torch.eye(3, 4, dtype=torch.float64)
        model.ext[j] = pair_ext[j]
    model.registered[[ref, j]] = True
    model.X = pts_pair[row].clone()
    model.has_point = init_inl.clone()
    model.inl = torch.zeros(S, N, dtype=torch.bool)
    model.inl[ref] = init_inl
    model.inl[j] = init_inl
    t0 = time.perf_counter()
    with Stage(observer, "geometry: initial BA"):
        model.bundle_adjust(cb.ba_options(50), normalize=False)
        model.filter(sfm_cfg.init_max_reproj_error, check_triangle=False)
    if int(model.has_point.sum()) < MIN_INIT_POINTS:
        raise ReconstructionError(f"the initial pair (frames {ref}, {j}) kept only {int(model.has_point.sum())} points after bundle adjustment")
    timings["initial_ba"] = time.perf_counter() - t0
    if observer is not None:
        observer.reconstruction_updated(model.snapshot("initial pair", names))

    # ---------------------------------------------------------------- the other frames
    t0 = time.perf_counter()
    rounds = 0
    light = cb.ba_options(30, function_tolerance=1e-5)
    if prior is not None:
        # official init_refine_pose: refine predicted poses on epipolar inliers of the initial points
        idx = torch.nonzero(model.has_point).flatten()
        X_np = model.X[idx].numpy()
        with Stage(observer, "geometry: refine poses", total=S):
            for i in range(S):
                if i not in (ref, j):
                    m = geo[i, idx].numpy() & obs[i, idx].numpy()
                    if m.sum() > 50:
                        model.refine_frame(i, m, xy[i, idx].numpy(), X_np, max_t=math.inf)
                obs_ob.stage_advanced("geometry: refine poses")
        model.registered[:] = True
    else:
        model.min_len_cap = 2  # keep two-view points while the model grows
        with Stage(observer, "geometry: register", total=S) as st:
            st.advance(2)
            while not bool(model.registered.all()):
                new = model.register_new_frames()
                if not new:
                    break
                rounds += 1
                st.advance(len(new))
                model.triangulate_and_ba(sfm_cfg.max_reproj_error, light, budget=BA_OBS_BUDGET)
                if observer is not None:
                    observer.reconstruction_updated(model.snapshot(f"registered {int(model.registered.sum())}/{S}", names, (int(model.registered.sum()), S)))
        model.min_len_cap = None
        notes.append(
            f"incremental registration: {rounds} round{'s' if rounds != 1 else ''}, "
            f"{int(model.registered.sum())}/{S} frames registered before the final refinement"
        )
    registered_by_rounds = prior is None and rounds > 0
    timings["register"] = time.perf_counter() - t0
    if int(model.registered.sum()) < 2:
        raise ReconstructionError("fewer than 2 frames could be registered")

    # ---------------------------------------------------------------- global rounds
    t0 = time.perf_counter()
    global_opts = cb.ba_options(50, function_tolerance=1e-6)
    with Stage(observer, "geometry: bundle adjustment", total=1 + max(sfm_cfg.robust_refine, 0) + max(sfm_cfg.ba_iters, 0)) as st:
        # the weight-free registration ends with exactly this step over all registered frames
        if prior is not None or not registered_by_rounds:
            model.triangulate_and_ba(sfm_cfg.max_reproj_error, global_opts, budget=BA_OBS_BUDGET)
            if observer is not None:
                observer.reconstruction_updated(model.snapshot("global BA", names))
        st.advance()
        for r in range(max(sfm_cfg.robust_refine, 0)):
            model.refine_poses(force=(r == sfm_cfg.robust_refine - 1))
            model.triangulate_and_ba(sfm_cfg.max_reproj_error, global_opts, budget=BA_OBS_BUDGET)
            st.advance()
            if observer is not None:
                observer.reconstruction_updated(model.snapshot(f"robust refine {r + 1}", names))
        split = model.split_groups()
        if split:
            notes.append(f"{len(split)} frame(s) fit their own focal length clearly better and got their own camera: "
                         + ", ".join(names[i] for i in split[:10]) + (" ..." if len(split) > 10 else ""))
        thr_it = float(sfm_cfg.max_reproj_error)
        final_opts = cb.ba_options(100, function_tolerance=1e-7, official_prepare=False)
        for it in range(max(sfm_cfg.ba_iters, 0)):
            # official iterative_global_BA: re-triangulate, keep solved points, filter with the angle check
            model.triangulate(max_ransac_iters=128, keep_existing=True)
            model.filter(thr_it, check_triangle=True)
            model.bundle_adjust(final_opts)
            model.filter(thr_it, check_triangle=True)
            thr_it = max(float(thr_it // 2), 1.0)
            st.advance()
            if observer is not None:
                observer.reconstruction_updated(model.snapshot(f"iterative BA {it + 1}", names))
    timings["global_ba"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- validity and output
    t0 = time.perf_counter()
    valid = model.registered & valid_frame_mask(model.K, model.ext, model.extra_or_none(), model.max_side)
    if sfm_cfg.filter_invalid_frame:
        dropped = model.registered & ~valid
        if dropped.any():
            notes.append(f"deregistered {int(dropped.sum())} frame(s) with implausible cameras: " + ", ".join(names[i] for i in torch.nonzero(dropped).flatten().tolist()))
        model.registered = valid.clone()
        model.inl &= valid[:, None]
        model.has_point &= model.inl.sum(0) >= 2
        model.inl &= model.has_point[None]
    else:
        valid = model.registered.clone()
    if int(valid.sum()) < 2:
        raise ReconstructionError("fewer than 2 frames have a valid camera after bundle adjustment")
    if int(valid.sum()) == 2:
        notes.append("two-view reconstruction: the intrinsics keep their initial values (a focal length is not observable from two views)")
    result = _finalize(model, names, frames, tracks, valid, timings, notes)
    timings["output"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    result.stats["timings"] = dict(timings)
    result.stats["step_seconds"] = dict(model.seconds)
    result.stats["intrinsics_source"] = k_source
    result.stats["ba"] = model.ba_log
    return result


def _finalize(model: _Model, names: List[str], frames: Optional[FrameSet], tracks: TrackSet, valid: torch.Tensor,
              timings: Dict[str, float], notes: List[str]) -> SfMResult:
    """Rescale to original pixels, colour the points and build the final pycolmap model."""
    S, N = model.S, model.N
    transforms = model.transforms
    K_orig = torch.stack([_to_orig_K(model.K[i], transforms[i]) for i in range(S)])
    xy_orig = torch.stack([transforms[i].proc_to_orig(model.xy[i], "corner") for i in range(S)])
    point_idx = torch.nonzero(model.has_point).flatten()
    inl = model.inl & valid[:, None] & model.has_point[None]
    if frames is not None:
        rgb = _sample_colors(frames, valid, xy_orig, inl, point_idx)
    else:
        rgb = np.full((point_idx.numel(), 3), 128, np.uint8)
    sizes = np.array([t.orig_size for t in transforms], np.int64)
    full_rgb = np.zeros((N, 3), np.uint8)
    full_rgb[point_idx.numpy()] = rgb
    extra_np = None if model.E == 0 else model.extra.numpy()
    built = cb.build_reconstruction(
        model.camera_type, model.ext.numpy(), K_orig.numpy(), extra_np, sizes, model.X.numpy(), xy_orig.numpy(), inl.numpy(),
        torch.nonzero(valid).flatten().tolist(), camera_ids=np.ones(S, np.int64) if bool((model.groups == 0).all()) and model.shared_output else None, names=names, colors=full_rgb,
    )
    rec = built.reconstruction
    rec.update_point_3d_errors()
    kept = torch.from_numpy(built.point_ids >= 0)
    final_idx = torch.nonzero(kept).flatten()
    inl = inl & kept[None]
    X = model.X[final_idx]
    mean_err = float(rec.compute_mean_reprojection_error()) if rec.num_points3D() else float("nan")
    track_len = inl[:, final_idx].sum(0).to(torch.float64)
    stats = {
        "num_frames": S,
        "num_registered": int(valid.sum()),
        "num_points": int(final_idx.numel()),
        "num_tracks": N,
        "mean_reproj_error_px": mean_err,
        "mean_track_length": float(track_len.mean()) if track_len.numel() else 0.0,
        "num_observations": int(inl.sum()),
        "messages": notes,
    }
    ext = model.ext.clone()
    return SfMResult(
        reconstruction=rec,
        extrinsics=ext,
        intrinsics=K_orig,
        extra_params=model.extra.clone() if model.E else torch.zeros(S, 0, dtype=torch.float64),
        camera_type=model.camera_type,
        points3D=X.clone(),
        points3D_rgb=torch.from_numpy(full_rgb[final_idx.numpy()]),
        point_track_ids=final_idx.to(torch.int64),
        track_inlier_mask=inl,
        valid_frame_mask=valid.clone(),
        image_ids=torch.arange(1, S + 1, dtype=torch.int64),
        stats=stats,
    )
