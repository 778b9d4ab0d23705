"""Align relative monocular inverse depth to the metric-free but consistent SfM depth.

Depth-Anything-V2 predicts disparity up to an unknown scale and shift per image. The SfM points
observed in a frame give its true z-depth at a few hundred pixels. As the official
``align_dense_depth_maps`` (spec §4.8) we fit, in the space the network predicts,

    1 / z  ~=  scale * disparity + shift

with RANSAC (scikit-learn ``RANSACRegressor(LinearRegression(), min_samples=2,
residual_threshold=median(1/z) / 30)``), then ``depth = 1 / (scale * disparity + shift)``.

Differences from the official code (all deliberate, see the function docstrings):

* residuals are absolute (``loss="absolute_error"``, sklearn's default). The official passes
  ``loss="squared_error"``, which compares the *squared* residual with ``median / 30`` and so makes
  the threshold depend on the arbitrary scale of the SfM world;
* RANSAC is seeded per frame (``random_state``) so results are reproducible;
* frames whose fit has too few inliers, too small an inlier ratio or a non-positive scale are
  rejected (all-zero depth) instead of raising;
* predicted depth farther than ``max_depth_factor`` times the farthest inlier SfM depth of the frame
  is marked invalid (an inverse depth extrapolated towards 0 is meaningless);
* for ordered frames (video) the per-frame parameters are refined jointly over the sequence with a
  random-walk prior between neighbouring frames (:func:`smooth_alignment_over_time`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..conventions import corner_to_center
from ..errors import short_reason
from ..types import FrameSet, SfMResult

#: Sparse depths are clipped to this range before inversion (official ``disparity_min/max``).
DEPTH_MIN, DEPTH_MAX = 1e-4, 1e4
#: RANSAC inlier threshold = median(target inverse depth) / THRESHOLD_RATIO (official ``thres_ratio``).
THRESHOLD_RATIO = 30.0
#: A frame needs at least this many RANSAC inliers to be accepted.
MIN_INLIERS = 10
#: ... and at least this fraction of its sparse depths as inliers.
MIN_INLIER_RATIO = 0.1
#: RANSAC trial cap (official ``max_trials``); sklearn stops much earlier once confident.
MAX_TRIALS = 20000
#: Default standard deviation of the relative change of the predicted inverse depth between two
#: consecutive frames in :func:`smooth_alignment_over_time` (0.5 %).
TEMPORAL_SIGMA = 0.005
#: Predicted depth beyond this multiple of the farthest inlier SfM depth is marked invalid.
MAX_DEPTH_FACTOR = 10.0


@dataclass
class SparseDepth:
    """SfM depths of one frame.

    Attributes:
        frame: frame index into the FrameSet / SfMResult.
        uv: ``(N, 2)`` float64 projection of each observed 3D point in *original* pixels, COLMAP
            pixel-corner convention (through the frame's camera model, distortion included).
        z: ``(N,)`` float64 z-depth in the camera (OpenCV axes), world units of the reconstruction.
        point_ids: ``(N,)`` int64 pycolmap ``point3D_id`` of each sample.
    """

    frame: int
    uv: np.ndarray
    z: np.ndarray
    point_ids: np.ndarray

    def pixels(self) -> np.ndarray:
        """``(N, 2)`` int64 ``(column, row)`` pixel index of each sample (see :func:`uv_to_pixel`)."""
        return uv_to_pixel(self.uv)


def uv_to_pixel(uv: np.ndarray) -> np.ndarray:
    """Pixel index ``(column, row)`` containing each corner-convention point.

    Args:
        uv: ``[..., 2]`` float pixel coordinates, COLMAP corner convention (pixel ``(0, 0)`` spans
            ``[0, 1) x [0, 1)``).

    Returns:
        ``[..., 2]`` int64 index of the nearest pixel centre (``floor(uv)``; a point exactly on a
        pixel border goes to the right/lower pixel). Nearest-neighbour sampling as the official
        ``align_dense_depth_maps``, which rounds the COLMAP coordinates without the half-pixel shift.
    """
    return np.floor(corner_to_center(np.asarray(uv, dtype=np.float64)) + 0.5).astype(np.int64)


def _camera_for_frame(sfm: SfMResult, s: int):
    rec = sfm.reconstruction
    image = rec.image(int(sfm.image_ids[s])) if hasattr(rec, "image") else rec.images[int(sfm.image_ids[s])]
    return rec.cameras[image.camera_id], image


def frame_camera(sfm: SfMResult, s: int):
    """The pycolmap camera of frame ``s`` (original pixels, corner convention, with distortion)."""
    return _camera_for_frame(sfm, s)[0]


def registered_frames(sfm: SfMResult) -> List[int]:
    """Indices of the frames registered in ``sfm`` (``valid_frame_mask``), ascending."""
    return [int(i) for i in np.nonzero(np.asarray(sfm.valid_frame_mask, dtype=bool))[0]]


def sparse_depth_from_sfm(sfm: SfMResult, frames: Optional[FrameSet] = None) -> Dict[int, SparseDepth]:
    """SfM depth of every registered frame: its inlier 3D points projected into it.

    For each registered frame, every 3D point observed in it (a ``points2D`` entry of its pycolmap
    image linked to a 3D point, i.e. an inlier observation of the final model) is transformed with
    the frame's OpenCV ``cam_from_world`` (``sfm.extrinsics``) and projected with its pycolmap camera
    (original pixels, corner convention). Samples behind the camera, outside the image or, when
    ``frames`` has masks, on dynamic pixels are dropped.

    Args:
        sfm: the reconstruction (its pycolmap model, ``extrinsics``, ``image_ids``,
            ``valid_frame_mask``).
        frames: optional; used only for dynamic-object masks.

    Returns:
        ``{frame index: SparseDepth}`` for every registered frame (possibly with 0 samples).

    Source: official ``extract_sparse_depth_and_point_from_reconstruction`` (which also projects
    the 3D point rather than using the observed 2D keypoint).
    """
    rec = sfm.reconstruction
    ids_all = np.array(sorted(rec.points3D.keys()), dtype=np.int64)
    xyz_all = np.array([rec.points3D[int(k)].xyz for k in ids_all], dtype=np.float64).reshape(-1, 3)
    ext = np.asarray(sfm.extrinsics, dtype=np.float64)
    out: Dict[int, SparseDepth] = {}
    for s in registered_frames(sfm):
        cam, image = _camera_for_frame(sfm, s)
        obs = [p.point3D_id for p in image.points2D if p.has_point3D()]
        ids = np.unique(np.asarray(obs, dtype=np.int64))
        pos = np.searchsorted(ids_all, ids)
        ok = (pos < len(ids_all)) & (ids_all[np.minimum(pos, len(ids_all) - 1)] == ids) if len(ids_all) else np.zeros(len(ids), bool)
        ids, pos = ids[ok], pos[ok]
        X = xyz_all[pos]
        Xc = X @ ext[s, :3, :3].T + ext[s, :3, 3]
        z = Xc[:, 2]
        front = z > 0
        ids, Xc, z = ids[front], Xc[front], z[front]
        uv = np.asarray(cam.img_from_cam(Xc), dtype=np.float64).reshape(-1, 2) if len(Xc) else np.zeros((0, 2))
        W, H = int(cam.width), int(cam.height)
        pix = uv_to_pixel(uv)
        keep = np.isfinite(uv).all(1) & (pix[:, 0] >= 0) & (pix[:, 0] < W) & (pix[:, 1] >= 0) & (pix[:, 1] < H)
        if frames is not None and keep.any():
            m = frames.mask(s)
            if m is not None:
                pk = pix[keep]
                dyn = np.zeros(len(pix), bool)
                dyn[np.nonzero(keep)[0]] = m[pk[:, 1], pk[:, 0]]
                keep &= ~dyn
        out[s] = SparseDepth(s, uv[keep], z[keep], ids[keep])
    return out


@dataclass
class AlignmentFit:
    """Scale and shift mapping predicted disparity to inverse SfM depth for one frame.

    Attributes:
        scale, shift: ``1 / z ~= scale * disparity + shift`` (inverse world units).
        inlier_mask: ``(N,)`` bool over the valid samples (``disparity > 0``, finite ``z > 0``).
        disparity, target: ``(N,)`` float64 the valid samples: predicted disparity and ``1 / z``.
        threshold: inverse-depth inlier threshold (``median(target) / 30``).
        inlier_ratio: inliers / valid samples (0 when there are none).
        residual: median of ``|z_fit - z| / z`` over the inliers (NaN when there are none).
        accepted: the frame has enough inliers and a positive scale.
        reason: why it was rejected ("" when accepted).
    """

    scale: float
    shift: float
    inlier_mask: np.ndarray
    disparity: np.ndarray
    target: np.ndarray
    threshold: float
    inlier_ratio: float
    residual: float
    accepted: bool
    reason: str = ""

    @property
    def num_samples(self) -> int:
        """Sparse depth samples the fit saw."""
        return int(self.target.shape[0])

    @property
    def num_inliers(self) -> int:
        """Samples the RANSAC fit kept."""
        return int(self.inlier_mask.sum())


def _stats(scale: float, shift: float, d: np.ndarray, y: np.ndarray, thr: float) -> Tuple[np.ndarray, float, float]:
    pred = scale * d + shift
    inl = np.abs(pred - y) <= thr
    n = len(y)
    ratio = float(inl.sum()) / n if n else 0.0
    if inl.any():
        pi = pred[inl]
        zf = np.where(pi > 0, 1.0 / np.maximum(pi, 1e-300), np.inf)
        z = 1.0 / y[inl]
        residual = float(np.median(np.abs(zf - z) / z))
    else:
        residual = float("nan")
    return inl, ratio, residual


def fit_inverse_depth(
    disparity: np.ndarray,
    z: np.ndarray,
    seed: int = 0,
    min_inliers: int = MIN_INLIERS,
    min_inlier_ratio: float = MIN_INLIER_RATIO,
    threshold_ratio: float = THRESHOLD_RATIO,
    max_trials: int = MAX_TRIALS,
) -> AlignmentFit:
    """Robust affine fit of predicted disparity to SfM inverse depth (one frame).

    Args:
        disparity: ``(N,)`` predicted disparity sampled at the SfM points (nearest pixel).
        z: ``(N,)`` SfM z-depth of the same points (world units); clipped to ``[1e-4, 1e4]``.
        seed: RANSAC ``random_state`` (the official leaves it unseeded).
        min_inliers, min_inlier_ratio: acceptance thresholds.
        threshold_ratio: inlier threshold = ``median(1 / z) / threshold_ratio`` (official 30).
        max_trials: RANSAC trial cap (official 20000; sklearn stops early at 99 % confidence).

    Returns:
        :class:`AlignmentFit`. Samples with ``disparity <= 0`` (no prediction, masked) or a
        non-finite / non-positive ``z`` are ignored. A rejected fit has ``accepted=False`` and a
        ``reason``; it never raises for bad data.

    Source: official ``align_dense_depth_maps`` (``RANSACRegressor(LinearRegression(),
    min_samples=2, residual_threshold=median/30, max_trials=20000)``), with absolute residuals
    (``loss="absolute_error"``): the official ``loss="squared_error"`` compares squared residuals with
    that threshold, which ties the tolerance to the arbitrary scale of the SfM world.
    """
    from sklearn.linear_model import LinearRegression, RANSACRegressor

    d = np.asarray(disparity, dtype=np.float64).reshape(-1)
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    valid = np.isfinite(d) & (d > 0) & np.isfinite(z) & (z > 0)
    d = d[valid]
    y = 1.0 / np.clip(z[valid], DEPTH_MIN, DEPTH_MAX)
    n = len(y)
    empty = np.zeros(n, bool)

    def reject(reason: str, scale: float = 0.0, shift: float = 0.0, thr: float = 0.0) -> AlignmentFit:
        inl, ratio, res = _stats(scale, shift, d, y, thr) if scale > 0 else (empty, 0.0, float("nan"))
        return AlignmentFit(scale, shift, inl, d, y, thr, ratio, res, False, reason)

    if n < max(2, min_inliers):
        return reject(f"{n} usable SfM depths (< {max(2, min_inliers)})")
    thr = float(np.median(y) / threshold_ratio)
    if not thr > 0:
        return reject("degenerate SfM depths")
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return reject("constant predicted disparity at the SfM points")
    ransac = RANSACRegressor(
        LinearRegression(),
        min_samples=2,
        residual_threshold=thr,
        max_trials=int(max_trials),
        random_state=int(seed) % (2**32),
    )
    try:
        ransac.fit(d[:, None], y)
    except ValueError as e:  # no consensus set
        return reject(f"RANSAC found no consensus ({short_reason(e, 80)})", thr=thr)
    scale = float(ransac.estimator_.coef_[0])
    shift = float(ransac.estimator_.intercept_)
    if not scale > 0:
        return reject(f"non-positive scale {scale:.3g}", thr=thr)
    inl, ratio, res = _stats(scale, shift, d, y, thr)
    ok = int(inl.sum()) >= min_inliers and ratio >= min_inlier_ratio
    reason = "" if ok else f"{int(inl.sum())} inliers of {n} (ratio {ratio:.2f})"
    return AlignmentFit(scale, shift, inl, d, y, thr, ratio, res, ok, reason)


def smooth_alignment_over_time(
    fits: Sequence[AlignmentFit],
    times: Sequence[float],
    sigma: float = TEMPORAL_SIGMA,
    iterations: int = 4,
    huber: float = 3.0,
) -> List[AlignmentFit]:
    """Temporally consistent scale/shift for ordered frames (video): a joint fit over the sequence.

    Each accepted frame ``k`` keeps its own ``(s_k, b_k)``, estimated from its RANSAC inliers, but
    all frames are solved together with a Gaussian random-walk prior between consecutive accepted
    frames. In one linear least-squares problem (exact, sparse, ``2K`` unknowns):

    * data: ``sum_i ((s_k d_i + b_k - y_i) / (m_k * sigma_data))^2`` over the inliers of frame ``k``
      (``y = 1 / z``; ``m_k`` = median target of the frame; ``sigma_data`` = pooled robust
      (1.4826 MAD) relative residual of the per-frame fits);
    * prior: ``sum_{q in {d10, d90}} (((s_k - s_l) q + (b_k - b_l)) / m)^2 / (gap * sigma^2)`` for
      consecutive accepted frames ``k, l`` ``gap`` frames apart, ``q`` the 10th and 90th percentile
      of their disparities, ``m`` their mean median target. The prior therefore bounds the
      *relative change of the predicted inverse depth* over the disparity range actually seen,
      independent of the network's output scale.

    A frame with many consistent SfM depths is pinned by its data (a genuine change of the
    network's output scale is followed); a frame with few or noisy ones leans on its neighbours (a
    Rauch-Tung-Striebel smoother of the parameters, in effect). The solve is iterated
    (``iterations`` times): after each, the inlier sets are recomputed with the new parameters and
    every link gets a Huber weight (``min(1, huber / r)``, ``r`` its change in prior standard
    deviations), so that a real jump is not smeared over its neighbours.

    Args:
        fits: per-frame results of :func:`fit_inverse_depth`, in any order.
        times: frame index (or time stamp) of each fit; only accepted fits take part.
        sigma: standard deviation of the relative inverse-depth change per frame step (default 0.5 %).
        iterations: solves, each followed by re-selecting inliers and re-weighting links.
        huber: Huber threshold of the links, in prior standard deviations.

    Returns:
        New :class:`AlignmentFit` objects (same order; rejected ones returned unchanged) with the
        smoothed scale/shift, inlier mask, ratio and residual. Fewer than two accepted fits: the
        input is returned unchanged.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    fits = list(fits)
    times = np.asarray(times, dtype=np.float64)
    if len(times) != len(fits):
        raise ValueError(f"{len(fits)} fits but {len(times)} times")
    idx = [i for i in np.argsort(times, kind="stable") if fits[i].accepted and fits[i].num_inliers >= 2]
    if len(idx) < 2 or sigma <= 0:
        return fits
    K = len(idx)
    med = np.array([float(np.median(fits[i].target)) for i in idx])
    rel = np.concatenate(
        [(fits[i].scale * fits[i].disparity[fits[i].inlier_mask] + fits[i].shift - fits[i].target[fits[i].inlier_mask]) / med[k] for k, i in enumerate(idx)]
    )
    sigma_data = max(1.4826 * float(np.median(np.abs(rel))), 1e-6)
    params = np.array([[fits[i].scale, fits[i].shift] for i in idx], dtype=np.float64)
    masks = [fits[i].inlier_mask.copy() for i in idx]
    q = []
    for i in idx:
        dd = fits[i].disparity[fits[i].inlier_mask]
        q.append(np.percentile(dd, [10.0, 90.0]))
    q = np.asarray(q)
    link_q = [(0.5 * (q[k, 0] + q[k + 1, 0]), 0.5 * (q[k, 1] + q[k + 1, 1])) for k in range(K - 1)]
    link_weight = np.ones(max(K - 1, 0))

    for _ in range(max(1, iterations)):
        rows, cols, vals = [], [], []
        rhs = np.zeros(2 * K)

        def add_block(a: int, b: int, M: np.ndarray) -> None:
            for r in range(2):
                for c in range(2):
                    rows.append(a + r)
                    cols.append(b + c)
                    vals.append(M[r, c])

        for k, i in enumerate(idx):
            d = fits[i].disparity[masks[k]]
            y = fits[i].target[masks[k]]
            w = 1.0 / (med[k] * sigma_data) ** 2
            A = np.stack([d, np.ones_like(d)], 1)
            add_block(2 * k, 2 * k, w * A.T @ A)
            rhs[2 * k : 2 * k + 2] += w * A.T @ y
        for k in range(K - 1):
            gap = max(float(times[idx[k + 1]] - times[idx[k]]), 1.0)
            m = 0.5 * (med[k] + med[k + 1])
            w = link_weight[k] / (m * m * gap * sigma * sigma)
            M = np.zeros((2, 2))
            for qq in link_q[k]:
                v = np.array([qq, 1.0])
                M += w * np.outer(v, v)
            add_block(2 * k, 2 * k, M)
            add_block(2 * k + 2, 2 * k + 2, M)
            add_block(2 * k, 2 * k + 2, -M)
            add_block(2 * k + 2, 2 * k, -M)
        N = sp.csc_matrix((vals, (rows, cols)), shape=(2 * K, 2 * K))
        sol = spsolve(N, rhs)
        if not np.all(np.isfinite(sol)):
            return fits
        params = sol.reshape(K, 2)
        # Huber weights of the links: a change far beyond the random walk (a real jump of the
        # network's output scale) is penalised linearly, not quadratically
        for k in range(K - 1):
            gap = max(float(times[idx[k + 1]] - times[idx[k]]), 1.0)
            m = 0.5 * (med[k] + med[k + 1])
            ds, db = params[k + 1] - params[k]
            r = np.sqrt(np.mean([((ds * qq + db) / m) ** 2 for qq in link_q[k]])) / (np.sqrt(gap) * sigma)
            link_weight[k] = 1.0 if r <= huber else huber / r
        new_masks = []
        for k, i in enumerate(idx):
            inl, _, _ = _stats(params[k, 0], params[k, 1], fits[i].disparity, fits[i].target, fits[i].threshold)
            new_masks.append(inl if inl.sum() >= 2 else masks[k])
        masks = new_masks

    out = list(fits)
    for k, i in enumerate(idx):
        f = fits[i]
        s, b = float(params[k, 0]), float(params[k, 1])
        if not s > 0:  # keep the per-frame fit rather than a broken one
            continue
        inl, ratio, res = _stats(s, b, f.disparity, f.target, f.threshold)
        out[i] = replace(f, scale=s, shift=b, inlier_mask=inl, inlier_ratio=ratio, residual=res)
    return out


def apply_alignment(
    disparity: np.ndarray,
    scale: float,
    shift: float,
    max_depth: Optional[float] = None,
) -> np.ndarray:
    """Aligned z-depth from predicted disparity: ``depth = 1 / (scale * disparity + shift)``.

    Args:
        disparity: ``(H, W)`` float predicted disparity; ``<= 0`` means no prediction.
        scale, shift: the fit (:class:`AlignmentFit`).
        max_depth: depths beyond it are set to 0 (invalid); None: no cap besides the official one.

    Returns:
        ``(H, W)`` float32 z-depth in world units; 0 where the disparity is ``<= 0``, the aligned
        disparity is ``<= 0`` or above ``1e4`` (official limits), or the depth exceeds ``max_depth``.
    """
    disp = np.asarray(disparity, dtype=np.float32)
    a = disp * np.float32(scale) + np.float32(shift)
    ok = (disp > 0) & (a > 0) & (a <= 1.0 / DEPTH_MIN)
    if max_depth is not None:
        ok &= a >= np.float32(1.0 / max_depth)
    out = np.zeros(disp.shape, np.float32)
    np.divide(np.float32(1.0), a, out=out, where=ok)
    return out


def max_depth_for(fit: AlignmentFit, factor: float = MAX_DEPTH_FACTOR) -> Optional[float]:
    """``factor`` times the farthest inlier SfM depth of a fit (the cap used by :func:`apply_alignment`)."""
    if fit.num_inliers == 0 or factor is None or factor <= 0:
        return None
    return float(factor / np.min(fit.target[fit.inlier_mask]))


__all__ = [
    "SparseDepth",
    "AlignmentFit",
    "uv_to_pixel",
    "frame_camera",
    "registered_frames",
    "sparse_depth_from_sfm",
    "fit_inverse_depth",
    "smooth_alignment_over_time",
    "apply_alignment",
    "max_depth_for",
    "THRESHOLD_RATIO",
    "MIN_INLIERS",
    "MIN_INLIER_RATIO",
    "TEMPORAL_SIGMA",
    "MAX_DEPTH_FACTOR",
]
