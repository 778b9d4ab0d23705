"""Pose accuracy metrics and similarity alignment (numpy, float64).

The relative-pose metric is the one of PoseDiffusion / VGGSfM (official ``vggsfm/utils/metric.py``):
for every unordered pair of frames (i, j), the relative rotation error and the angle between the
relative translation directions (sign-agnostic by default), both in degrees;
``err = max(rot_err, trans_err)``; ``AUC@T`` is the mean over integer thresholds 1..T of the
percentage of pairs with ``err < threshold``. Unregistered frames count as 180-degree errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from .geometry.camera import camera_centers, transform_cameras


def _as_44(ext: np.ndarray) -> np.ndarray:
    ext = np.asarray(ext, dtype=np.float64)
    out = np.zeros(ext.shape[:-2] + (4, 4))
    out[..., :3, :4] = ext[..., :3, :4]
    out[..., 3, 3] = 1.0
    return out


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Geodesic angle of rotation matrices ``[..., 3, 3]`` in degrees, ``[...]``."""
    tr = np.trace(R, axis1=-2, axis2=-1)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def relative_pose_errors(
    pred_w2c: np.ndarray,
    gt_w2c: np.ndarray,
    valid: Optional[np.ndarray] = None,
    sign_agnostic: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """Pairwise relative rotation and translation-direction errors.

    Args:
        pred_w2c: ``(S, 3 or 4, 4)`` predicted OpenCV world-to-camera matrices.
        gt_w2c: ``(S, 3 or 4, 4)`` reference world-to-camera matrices (same frame order).
        valid: ``(S,)`` bool; pairs touching an invalid predicted frame get 180 degrees.
        sign_agnostic: translation error is ``arccos(|cos|)`` (the reference metric) when True.

    Returns:
        ``(rot_err, trans_err)``, each ``(S*(S-1)/2,)`` float64 degrees, pairs in ``i < j`` order.

    Raises:
        ValueError: if the shapes disagree or fewer than 2 frames are given.
    """
    P, G = _as_44(pred_w2c), _as_44(gt_w2c)
    if P.shape != G.shape or P.shape[0] < 2:
        raise ValueError(f"need matching (S>=2, 4, 4) poses, got {P.shape} and {G.shape}")
    S = P.shape[0]
    i, j = np.triu_indices(S, k=1)
    rel_p = P[j] @ np.linalg.inv(P[i])
    rel_g = G[j] @ np.linalg.inv(G[i])
    rot_err = rotation_angle_deg(np.swapaxes(rel_p[:, :3, :3], -1, -2) @ rel_g[:, :3, :3])
    tp, tg = rel_p[:, :3, 3], rel_g[:, :3, 3]
    cos = np.sum(tp * tg, -1) / np.maximum(np.linalg.norm(tp, axis=-1) * np.linalg.norm(tg, axis=-1), 1e-15)
    cos = np.clip(np.abs(cos) if sign_agnostic else cos, -1.0, 1.0)
    trans_err = np.degrees(np.arccos(cos))
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        bad = ~(valid[i] & valid[j])
        rot_err = np.where(bad, 180.0, rot_err)
        trans_err = np.where(bad, 180.0, trans_err)
    return rot_err, trans_err


def auc(errors: np.ndarray, max_threshold: int = 30) -> float:
    """Area under the accuracy curve in percent: mean over thresholds 1..T of ``%(err < t)``."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        return 0.0
    return float(np.mean([(errors < t).mean() * 100.0 for t in range(1, max_threshold + 1)]))


@dataclass
class PoseMetrics:
    """Summary of :func:`pose_metrics` (percentages in [0, 100], angles in degrees)."""

    rra: Dict[int, float]
    rta: Dict[int, float]
    auc: Dict[int, float]
    num_pairs: int

    def as_dict(self) -> Dict[str, float]:
        """Flat ``{"RRA@5": ..., "RTA@5": ..., "AUC@30": ..., "pairs": ...}``."""
        out = {f"RRA@{t}": v for t, v in self.rra.items()}
        out.update({f"RTA@{t}": v for t, v in self.rta.items()})
        out.update({f"AUC@{t}": v for t, v in self.auc.items()})
        out["pairs"] = float(self.num_pairs)
        return out


def pose_metrics(
    pred_w2c: np.ndarray,
    gt_w2c: np.ndarray,
    valid: Optional[np.ndarray] = None,
    thresholds: Tuple[int, ...] = (5, 15, 30),
    auc_thresholds: Tuple[int, ...] = (3, 5, 10, 30),
) -> PoseMetrics:
    """RRA@t, RTA@t (% of pairs under t degrees) and AUC@T of predicted vs reference poses.

    Args:
        pred_w2c, gt_w2c: ``(S, 3 or 4, 4)`` OpenCV world-to-camera; see :func:`relative_pose_errors`.
        valid: ``(S,)`` bool, frames with a prediction; pairs touching an invalid frame count as
            failures (error 180 degrees).
        thresholds: degrees for RRA / RTA; auc_thresholds: degrees for AUC.

    Returns:
        :class:`PoseMetrics` with percentages (0-100) over all ``S (S - 1) / 2`` pairs.

    Source: VGGSfM paper, section 4.1 (pairwise relative rotation / translation-direction errors,
    AUC of ``max(RRE, RTE)``), as in the official ``camera_to_rel_deg`` and ``calculate_auc_np``.
    """
    rot, trans = relative_pose_errors(pred_w2c, gt_w2c, valid)
    err = np.maximum(rot, trans)
    return PoseMetrics(
        rra={t: float((rot < t).mean() * 100) for t in thresholds},
        rta={t: float((trans < t).mean() * 100) for t in thresholds},
        auc={t: auc(err, t) for t in auc_thresholds},
        num_pairs=int(err.size),
    )


def umeyama_sim3(src: np.ndarray, dst: np.ndarray, weights: Optional[np.ndarray] = None) -> Tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``(s, R, t)`` minimising ``sum w ||dst - (s R src + t)||^2`` (Umeyama 1991).

    Args:
        src, dst: ``(N, 3)`` corresponding points, N >= 3 not collinear.
        weights: optional ``(N,)`` non-negative weights.

    Returns:
        ``(scale, R (3, 3), t (3,))`` float64, with ``det(R) = +1``.

    Raises:
        ValueError: for fewer than 3 points or degenerate input.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or src.shape[0] < 3:
        raise ValueError(f"need (N>=3, 3) point pairs, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    U, D, Vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        sign[2, 2] = -1.0
    R = U @ sign @ Vt
    var_s = float(w @ np.sum(xs * xs, 1))
    if var_s <= 0:
        raise ValueError("degenerate source points (zero variance)")
    scale = float(np.trace(np.diag(D) @ sign) / var_s)
    t = mu_d - scale * R @ mu_s
    return scale, R, t


def align_poses_sim3(pred_w2c: np.ndarray, gt_w2c: np.ndarray, valid: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Tuple[float, np.ndarray, np.ndarray]]:
    """Align predicted cameras to the reference with the similarity of their centres.

    Returns:
        ``(aligned_w2c (S, 3, 4), (s, R, t))`` where ``x_gt = s R x_pred + t``.
    """
    valid = np.ones(len(pred_w2c), bool) if valid is None else np.asarray(valid, bool)
    cp, cg = camera_centers(pred_w2c), camera_centers(gt_w2c)
    s, R, t = umeyama_sim3(cp[valid], cg[valid])
    return transform_cameras(pred_w2c, R, t, s), (s, R, t)


def absolute_trajectory_error(pred_w2c: np.ndarray, gt_w2c: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
    """RMSE of camera centres after Sim(3) alignment, in the reference's units."""
    valid = np.ones(len(pred_w2c), bool) if valid is None else np.asarray(valid, bool)
    aligned, _ = align_poses_sim3(pred_w2c, gt_w2c, valid)
    d = camera_centers(aligned)[valid] - camera_centers(gt_w2c)[valid]
    return float(np.sqrt(np.mean(np.sum(d * d, 1))))


def load_reference_poses(path) -> Dict[str, np.ndarray]:
    """Reference OpenCV world-to-camera poses ``(3, 4)`` float64 keyed by image file stem.

    Accepts a nerfstudio/instant-ngp ``transforms.json`` (OpenGL camera-to-world), a folder that
    holds one, or a COLMAP model folder (``images.bin``/``images.txt``, read with pycolmap).

    Raises:
        InputError: naming the path, when it holds no supported file, or the file is malformed
            (:func:`vggsfm_ns.io.transforms.read_transforms`) or not a readable COLMAP model.
    """
    from pathlib import Path

    from .conventions import opengl_c2w_to_opencv_w2c
    from .errors import InputError
    from .io.transforms import read_transforms

    p = Path(path)
    if p.is_dir() and (p / "transforms.json").is_file():
        p = p / "transforms.json"
    if p.is_file() and p.suffix == ".json":
        meta = read_transforms(p)
        return {
            Path(fr["file_path"]).stem: opengl_c2w_to_opencv_w2c(np.asarray(fr["transform_matrix"], np.float64))
            for fr in meta["frames"]
        }
    if p.is_dir() and ((p / "images.bin").is_file() or (p / "images.txt").is_file()):
        from .io.colmap import read_model

        rec = read_model(p)
        return {Path(im.name).stem: im.cam_from_world().matrix() for im in rec.images.values() if im.has_pose}
    raise InputError("no transforms.json or COLMAP model (images.bin / images.txt) found", p)


def evaluate_poses(pred: Dict[str, np.ndarray], reference: Dict[str, np.ndarray]) -> PoseMetrics:
    """:func:`pose_metrics` over the reference's frames; frames missing from ``pred`` count as failures.

    Args:
        pred: predicted OpenCV world-to-camera ``(3, 4)`` keyed by file stem (registered frames only).
        reference: reference poses keyed by file stem (e.g. from :func:`load_reference_poses`).
    """
    names = sorted(reference)
    gt = np.stack([reference[n] for n in names])
    valid = np.array([n in pred for n in names])
    pr = np.stack([pred[n] if n in pred else np.eye(4)[:3] for n in names])
    return pose_metrics(pr, gt, valid)
