"""Camera models, lens distortion and projection (torch, broadcast shapes).

Supported COLMAP models and how they map to ``(K, extra_params)``:

==================  ==================================  ============================
model               COLMAP params                       extra_params
==================  ==================================  ============================
``SIMPLE_PINHOLE``  f, cx, cy                           ``[]``
``PINHOLE``         fx, fy, cx, cy                      ``[]``
``SIMPLE_RADIAL``   f, cx, cy, k                        ``[k]``
``RADIAL``          f, cx, cy, k1, k2                   ``[k1, k2]``
``OPENCV``          fx, fy, cx, cy, k1, k2, p1, p2      ``[k1, k2, p1, p2]``
==================  ==================================  ============================

Distortion acts on normalised image coordinates ``(u, v) = (x / z, y / z)`` exactly as COLMAP's
``RadialCameraModel`` / ``OpenCVCameraModel``: ``r2 = u^2 + v^2``, ``radial = k1 r2 + k2 r2^2``,
``du = u radial + 2 p1 u v + p2 (r2 + 2 u^2)``, ``dv = v radial + 2 p2 u v + p1 (r2 + 2 v^2)``.

Source: official ``vggsfm/utils/distortion.py`` (``apply_distortion``, ``iterative_undistortion``)
and ``triangulation_helpers.py`` (``cam_from_img``, ``img_from_cam``, ``project_3D_points``).
The official undistortion takes damped steps (its Jacobian has an extra identity) and stops at about
1e-5; :func:`undistort` runs a true Newton iteration with the analytic Jacobian and converges to
machine precision.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch

from ..conventions import ArrayLike

#: Number of distortion parameters of each supported COLMAP camera model.
EXTRA_PARAMS: Dict[str, int] = {
    "SIMPLE_PINHOLE": 0,
    "PINHOLE": 0,
    "SIMPLE_RADIAL": 1,
    "RADIAL": 2,
    "OPENCV": 4,
}

#: Models with one focal length (fx = fy).
SINGLE_FOCAL = ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")


def num_extra_params(camera_type: str) -> int:
    """Distortion parameter count of a COLMAP model name.

    Raises:
        ValueError: for an unsupported model.
    """
    if camera_type not in EXTRA_PARAMS:
        raise ValueError(f"unsupported camera model {camera_type!r}; choose one of {sorted(EXTRA_PARAMS)}")
    return EXTRA_PARAMS[camera_type]


def _opencv4(extra: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``[..., K]`` (K in 1, 2, 4) into k1, k2, p1, p2 ``[..., 1]`` (missing ones are 0)."""
    K = extra.shape[-1]
    if K not in (1, 2, 4):
        raise ValueError(f"expected 1, 2 or 4 distortion parameters, got {K}")
    zero = torch.zeros_like(extra[..., :1])
    k1 = extra[..., 0:1]
    k2 = extra[..., 1:2] if K >= 2 else zero
    p1 = extra[..., 2:3] if K == 4 else zero
    p2 = extra[..., 3:4] if K == 4 else zero
    return k1, k2, p1, p2


def distort(uv: torch.Tensor, extra: Optional[torch.Tensor]) -> torch.Tensor:
    """Apply lens distortion to normalised coordinates.

    Args:
        uv: ``[..., N, 2]`` undistorted normalised coordinates.
        extra: ``[..., K]`` distortion parameters (K = 1 SIMPLE_RADIAL, 2 RADIAL, 4 OPENCV), broadcast
            against the leading dims of ``uv``; ``None`` or ``K = 0`` means no distortion.

    Returns:
        ``[..., N, 2]`` distorted normalised coordinates (same dtype).

    Source: official ``apply_distortion`` (COLMAP's formulas).
    """
    if extra is None or extra.shape[-1] == 0:
        return uv
    k1, k2, p1, p2 = _opencv4(extra)
    u, v = uv[..., 0], uv[..., 1]
    u2, v2, uv_ = u * u, v * v, u * v
    r2 = u2 + v2
    radial = k1 * r2 + k2 * r2 * r2
    du = u * radial + 2 * p1 * uv_ + p2 * (r2 + 2 * u2)
    dv = v * radial + 2 * p2 * uv_ + p1 * (r2 + 2 * v2)
    return torch.stack([u + du, v + dv], dim=-1)


def distortion_jacobian(uv: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """Analytic Jacobian of :func:`distort` with respect to ``uv``.

    Args:
        uv: ``[..., N, 2]`` normalised coordinates.
        extra: ``[..., K]`` distortion parameters (K in 1, 2, 4).

    Returns:
        ``[..., N, 2, 2]``: ``J[..., i, j] = d distorted_i / d uv_j``.
    """
    k1, k2, p1, p2 = _opencv4(extra)
    u, v = uv[..., 0], uv[..., 1]
    r2 = u * u + v * v
    radial = k1 * r2 + k2 * r2 * r2
    g = 2 * (k1 + 2 * k2 * r2)  # d radial / d(u or v), divided by the coordinate
    j00 = 1 + radial + u * u * g + 2 * p1 * v + 6 * p2 * u
    j01 = u * v * g + 2 * p1 * u + 2 * p2 * v
    j10 = u * v * g + 2 * p2 * v + 2 * p1 * u
    j11 = 1 + radial + v * v * g + 2 * p2 * u + 6 * p1 * v
    return torch.stack([torch.stack([j00, j01], -1), torch.stack([j10, j11], -1)], -2)


def undistort(
    uv_distorted: torch.Tensor,
    extra: Optional[torch.Tensor],
    max_iterations: int = 100,
    tol: float = 1e-24,
) -> torch.Tensor:
    """Invert :func:`distort` by Newton's method (batched, analytic Jacobian).

    Args:
        uv_distorted: ``[..., N, 2]`` distorted normalised coordinates.
        extra: ``[..., K]`` distortion parameters, or None / K = 0 (returns the input).
        max_iterations: iteration cap (the official default, 100).
        tol: stop when the largest squared step is below this.

    Returns:
        ``[..., N, 2]`` undistorted normalised coordinates with ``distort(result) == uv_distorted``
        to rounding wherever the distortion is invertible.

    Source: official ``iterative_undistortion`` (same fixed point; the official damped step
    converges only to ~1e-5).
    """
    if extra is None or extra.shape[-1] == 0:
        return uv_distorted
    target = uv_distorted
    x = uv_distorted.clone()
    for _ in range(max_iterations):
        r = distort(x, extra) - target
        J = distortion_jacobian(x, extra)
        det = J[..., 0, 0] * J[..., 1, 1] - J[..., 0, 1] * J[..., 1, 0]
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        sx = (J[..., 1, 1] * r[..., 0] - J[..., 0, 1] * r[..., 1]) / det
        sy = (-J[..., 1, 0] * r[..., 0] + J[..., 0, 0] * r[..., 1]) / det
        step = torch.stack([sx, sy], -1)
        x = x - step
        if not torch.isfinite(step).all() or float((step * step).sum(-1).max()) < tol:
            break
    return x


def cam_from_img(points: torch.Tensor, K: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pixels to undistorted normalised camera coordinates.

    Args:
        points: ``[..., N, 2]`` pixels.
        K: ``[..., 3, 3]`` intrinsics (fx, fy, cx, cy are used; no skew), same pixel convention.
        extra: ``[..., K]`` distortion parameters or None.

    Returns:
        ``[..., N, 2]`` normalised coordinates ``(x / z, y / z)`` of the viewing rays.

    Source: official ``cam_from_img``.
    """
    pp = torch.stack([K[..., 0, 2], K[..., 1, 2]], -1)[..., None, :]
    f = torch.stack([K[..., 0, 0], K[..., 1, 1]], -1)[..., None, :]
    return undistort((points - pp) / f, extra)


def img_from_cam(points_cam: torch.Tensor, K: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Camera-frame 3D points to pixels.

    Args:
        points_cam: ``[..., N, 3]`` points in camera coordinates (OpenCV axes).
        K: ``[..., 3, 3]`` intrinsics (the full matrix is applied, skew included).
        extra: ``[..., K]`` distortion parameters or None.

    Returns:
        ``[..., N, 2]`` pixels. Points with ``z = 0`` give NaN, replaced by 0 as in the official
        ``img_from_cam``; points behind the camera are projected through the centre anyway (check
        depth separately).
    """
    uv = points_cam[..., :2] / points_cam[..., 2:3]
    uv = distort(uv, extra)
    px = uv[..., 0:1] * K[..., None, 0, 0:1] + uv[..., 1:2] * K[..., None, 0, 1:2] + K[..., None, 0, 2:3]
    py = uv[..., 0:1] * K[..., None, 1, 0:1] + uv[..., 1:2] * K[..., None, 1, 1:2] + K[..., None, 1, 2:3]
    return torch.nan_to_num(torch.cat([px, py], -1), nan=0.0)


def transform_points(points: torch.Tensor, extrinsics: torch.Tensor) -> torch.Tensor:
    """World points into every camera: ``[..., P, 3]`` and ``[..., S, 3, 4]`` -> ``[..., S, P, 3]``."""
    R = extrinsics[..., :3, :3]
    t = extrinsics[..., :3, 3]
    return torch.einsum("...sij,...pj->...spi", R, points) + t[..., :, None, :]


def project_points(
    points: torch.Tensor,
    extrinsics: torch.Tensor,
    K: torch.Tensor,
    extra: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Project world points into every camera.

    Args:
        points: ``[..., P, 3]`` world points.
        extrinsics: ``[..., S, 3, 4]`` OpenCV ``cam_from_world``.
        K: ``[..., S, 3, 3]`` intrinsics.
        extra: ``[..., S, K]`` distortion parameters or None.

    Returns:
        ``(pixels [..., S, P, 2], depth [..., S, P])``; depth is the camera-frame z.

    Source: official ``project_3D_points`` (``return_points_cam=True``).
    """
    pc = transform_points(points, extrinsics)
    return img_from_cam(pc, K, extra), pc[..., 2]


def camera_centers(extrinsics: ArrayLike) -> ArrayLike:
    """Camera centres ``-R^T t`` (world units) of OpenCV ``cam_from_world`` ``[..., 3 or 4, 4]``.

    Args:
        extrinsics: a torch tensor (any float dtype and device) or a numpy array / nested list.

    Returns:
        ``[..., 3]``: a tensor of the input's dtype for a tensor, else a float64 numpy array.
    """
    if isinstance(extrinsics, torch.Tensor):
        R = extrinsics[..., :3, :3]
        t = extrinsics[..., :3, 3]
        return -(R.transpose(-1, -2) @ t[..., None])[..., 0]
    E = np.asarray(extrinsics, dtype=np.float64)
    return -np.einsum("...ji,...j->...i", E[..., :3, :3], E[..., :3, 3])


def transform_cameras(extrinsics: ArrayLike, R: ArrayLike, t: ArrayLike, s: float = 1.0) -> ArrayLike:
    """Re-express OpenCV ``cam_from_world`` cameras in the world ``X' = s R X + t``.

    ``[R_c | t_c]`` becomes ``[R_c R^T | s t_c - R_c R^T t]``: same images, same rotation matrices
    kept orthonormal, translations in the new world's units.

    Args:
        extrinsics: ``[..., 3 or 4, 4]`` world-to-camera, torch or numpy.
        R: ``(3, 3)`` rotation; t: ``(3,)`` translation; s: scale (> 0) of the similarity.

    Returns:
        ``[..., 3, 4]``: float64 tensor for a tensor input, else a float64 numpy array.

    Source: official ``vggsfm/utils/align.py: apply_transformation``.
    """
    if isinstance(extrinsics, torch.Tensor):
        E = extrinsics.to(torch.float64)
        R = torch.as_tensor(R, dtype=torch.float64, device=E.device)
        t = torch.as_tensor(t, dtype=torch.float64, device=E.device)
        s = torch.as_tensor(s, dtype=torch.float64, device=E.device)
        Rn = E[..., :3, :3] @ R.T
        tn = s * E[..., :3, 3] - (Rn @ t[:, None])[..., 0]
        return torch.cat([Rn, tn[..., None]], -1)
    E = np.asarray(extrinsics, dtype=np.float64)
    R, t = np.asarray(R, dtype=np.float64), np.asarray(t, dtype=np.float64)
    Rn = E[..., :3, :3] @ R.T
    tn = s * E[..., :3, 3] - (Rn @ t[:, None])[..., 0]
    return np.concatenate([Rn, tn[..., None]], -1)


def apply_affine(points: ArrayLike, A: ArrayLike) -> ArrayLike:
    """``X' = A[:3, :3] X + A[:3, 3]`` for points ``[..., 3]`` and one ``(3 or 4, 4)`` matrix ``A``.

    One map for every 3x4 change of frame applied to points: a ``cam_from_world`` matrix (world to
    OpenCV camera coordinates), a similarity between two worlds, or
    :data:`vggsfm_ns.conventions.APPLIED_TRANSFORM` (COLMAP world to the ``transforms.json`` world).

    Args:
        points: ``[..., 3]`` torch tensor or numpy array (or nested list).
        A: ``(3, 4)`` or ``(4, 4)``; the last row of a 4x4 is ignored (affine, not projective).

    Returns:
        ``[..., 3]``: for a tensor, a tensor of the points' dtype and device; else a float64 numpy
        array. Units are those of ``A``'s translation.

    Raises:
        ValueError: when ``points`` does not end in 3 or ``A`` is not 3x4 / 4x4.
    """
    shape = tuple(A.shape) if hasattr(A, "shape") else np.shape(A)
    if shape not in ((3, 4), (4, 4)):
        raise ValueError(f"apply_affine needs a 3x4 or 4x4 matrix, got shape {shape}")
    if isinstance(points, torch.Tensor):
        if points.shape[-1] != 3:
            raise ValueError(f"apply_affine needs points [..., 3], got {tuple(points.shape)}")
        A = torch.as_tensor(A, dtype=points.dtype, device=points.device)
        return points @ A[:3, :3].T + A[:3, 3]
    P = np.asarray(points, dtype=np.float64)
    if P.shape[-1] != 3:
        raise ValueError(f"apply_affine needs points [..., 3], got {P.shape}")
    A = np.asarray(A, dtype=np.float64)
    return P @ A[:3, :3].T + A[:3, 3]


def intrinsics_matrix(fx: torch.Tensor, fy: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """Build ``[..., 3, 3]`` K from broadcastable ``[...]`` focal lengths and principal point."""
    fx, fy, cx, cy = torch.broadcast_tensors(fx, fy, cx, cy)
    K = torch.zeros(fx.shape + (3, 3), dtype=fx.dtype, device=fx.device)
    K[..., 0, 0] = fx
    K[..., 1, 1] = fy
    K[..., 0, 2] = cx
    K[..., 1, 2] = cy
    K[..., 2, 2] = 1.0
    return K


def colmap_params(camera_type: str, K: np.ndarray, extra: Optional[np.ndarray]) -> np.ndarray:
    """COLMAP parameter vector of one camera from ``K (3, 3)`` and ``extra (E,)``.

    Single-focal models take the mean of fx and fy.

    Raises:
        ValueError: unsupported model or wrong number of distortion parameters.
    """
    n = num_extra_params(camera_type)
    extra = np.zeros(0) if extra is None else np.asarray(extra, np.float64).reshape(-1)
    if extra.size != n:
        raise ValueError(f"{camera_type} needs {n} distortion parameters, got {extra.size}")
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    if camera_type in SINGLE_FOCAL:
        return np.array([(fx + fy) / 2.0, cx, cy, *extra], np.float64)
    return np.array([fx, fy, cx, cy, *extra], np.float64)


def from_colmap_params(camera_type: str, params: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`colmap_params`: ``params`` -> ``(K (3, 3), extra (E,))`` float64."""
    p = np.asarray(params, np.float64).reshape(-1)
    n = num_extra_params(camera_type)
    if camera_type in SINGLE_FOCAL:
        f, cx, cy = p[:3]
        fx = fy = f
        extra = p[3 : 3 + n]
    else:
        fx, fy, cx, cy = p[:4]
        extra = p[4 : 4 + n]
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return K, extra.copy()
