"""Camera pose encodings of the VGGSfM camera predictor, and their conversion to pixel cameras.

The camera predictor outputs, per frame, ``absT_quaR_OneFL`` = ``[T (3), quaternion (4, real part
first, not necessarily unit), normalised focal (1)]`` in the **PyTorch3D** convention (row-vector
rotation ``X_cam = X_world R + T``, camera axes +X left, +Y up, +Z forward). This module converts it
to OpenCV ``cam_from_world`` extrinsics relative to frame 0 and to pixel intrinsics.

All functions are written to reproduce the official float32 arithmetic (PyTorch3D rotation
formulas, the same ``bmm`` products), so the golden vectors match to rounding or exactly.

Sources: official ``vggsfm/models/utils.py`` (``pose_encoding_to_camera``,
``camera_to_pose_encoding``, ``get_EFP``), ``vggsfm/utils/metric.py``
(``closed_form_inverse_OpenCV``), ``minipytorch3d/rotation_conversions.py``.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "se3_inverse",
    "pose_encoding_to_camera",
    "camera_to_pose_encoding",
    "cameras_to_pixel",
    "POSE_ENCODING_DIMS",
]

#: Length of each supported pose encoding.
POSE_ENCODING_DIMS = {"absT_quaR_OneFL": 8, "absT_quaR_logFL": 9}


def quaternion_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    """Quaternions (real part first, any norm) -> rotation matrices.

    Args:
        quaternions: ``[..., 4]`` ``(w, x, y, z)``; the norm is divided out (``2 / |q|^2`` scaling).

    Returns:
        ``[..., 3, 3]`` column-vector rotation matrices (PyTorch3D formula).
    """
    r, i, j, k = torch.unbind(quaternions, -1)
    two_s = 2.0 / (quaternions * quaternions).sum(-1)
    m = torch.stack(
        (
            1 - two_s * (j * j + k * k),
            two_s * (i * j - k * r),
            two_s * (i * k + j * r),
            two_s * (i * j + k * r),
            1 - two_s * (i * i + k * k),
            two_s * (j * k - i * r),
            two_s * (i * k - j * r),
            two_s * (j * k + i * r),
            1 - two_s * (i * i + j * j),
        ),
        -1,
    )
    return m.reshape(quaternions.shape[:-1] + (3, 3))


def _sqrt_positive_part(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    pos = x > 0
    out[pos] = torch.sqrt(x[pos])
    return out


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices -> unit quaternions ``(w, x, y, z)`` with ``w >= 0``.

    Uses the best-conditioned of the four candidate formulas (PyTorch3D algorithm).

    Args:
        matrix: ``[..., 3, 3]``.

    Returns:
        ``[..., 4]``.

    Raises:
        ValueError: if the last two dimensions are not 3 x 3.
    """
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"expected [..., 3, 3] rotation matrices, got {tuple(matrix.shape)}")
    batch = matrix.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(matrix.reshape(batch + (9,)), dim=-1)
    q_abs = _sqrt_positive_part(
        torch.stack(
            [1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22],
            dim=-1,
        )
    )
    cand = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    floor = torch.tensor(0.1).to(dtype=q_abs.dtype, device=q_abs.device)
    cand = cand / (2.0 * q_abs[..., None].max(floor))
    best = F.one_hot(q_abs.argmax(dim=-1), num_classes=4) > 0.5
    out = cand[best, :].reshape(batch + (4,))
    return torch.where(out[..., 0:1] < 0, -out, out)


def se3_inverse(se3: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of rigid transforms: ``[M, 4, 4]`` (only the top 3 rows are read) ->
    ``[M, 4, 4]`` with ``R^T`` and ``-R^T t`` (official ``closed_form_inverse_OpenCV``)."""
    R = se3[:, :3, :3]
    t = se3[:, :3, 3:]
    Rt = R.transpose(1, 2)
    out = torch.eye(4, 4)[None].repeat(len(se3), 1, 1).to(R.dtype).to(R.device)
    out[:, :3, :3] = Rt
    out[:, :3, 3:] = -Rt.bmm(t)
    return out


def pose_encoding_to_camera(
    pose_encoding: torch.Tensor,
    pose_encoding_type: str = "absT_quaR_OneFL",
    to_opencv: bool = True,
    log_focal_length_bias: float = 1.8,
    min_focal_length: float = 0.1,
    max_focal_length: float = 30.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode pose encodings into rotations, translations and normalised focal lengths.

    Args:
        pose_encoding: ``[..., C]`` (C = 8 for ``absT_quaR_OneFL``, 9 for ``absT_quaR_logFL``);
            all leading dimensions are flattened into one camera batch ``M``.
        pose_encoding_type: ``"absT_quaR_OneFL"`` (VGGSfM v2: focal = value, clamped) or
            ``"absT_quaR_logFL"`` (two focals ``exp(v + log_focal_length_bias)``, clamped).
        to_opencv: convert from PyTorch3D to OpenCV ``cam_from_world`` (negate the first two
            columns of R and entries of T, transpose R) **and** express every camera relative to
            the first one (``E_i <- E_i E_0^-1``, so camera 0 becomes the identity). False returns
            the raw PyTorch3D R and T.
        log_focal_length_bias, min_focal_length, max_focal_length: official constants.

    Returns:
        ``(R [M, 3, 3], T [M, 3], focal [M, 1] (OneFL) or [M, 2] (logFL))``. The focal length is
        normalised: pixel focal = ``focal * min(W, H) / 2`` (see :func:`cameras_to_pixel`).

    Raises:
        ValueError: for an unknown ``pose_encoding_type`` or a wrong last dimension.

    Source: official ``pose_encoding_to_camera`` (``models/utils.py``).
    """
    if pose_encoding_type not in POSE_ENCODING_DIMS:
        raise ValueError(f"unknown pose encoding {pose_encoding_type!r}")
    if pose_encoding.shape[-1] != POSE_ENCODING_DIMS[pose_encoding_type]:
        raise ValueError(f"{pose_encoding_type} needs {POSE_ENCODING_DIMS[pose_encoding_type]} values, got {pose_encoding.shape[-1]}")
    pe = pose_encoding.reshape(-1, pose_encoding.shape[-1])
    T = pe[:, :3]
    R = quaternion_to_matrix(pe[:, 3:7])
    if pose_encoding_type == "absT_quaR_logFL":
        focal = (pe[:, 7:9] + log_focal_length_bias).exp()
    else:
        focal = pe[:, 7:8]
    focal = torch.clamp(focal, min=min_focal_length, max=max_focal_length)
    if to_opencv:
        R = R.clone()
        T = T.clone()
        R[:, :, :2] *= -1
        T[:, :2] *= -1
        R = R.permute(0, 2, 1)
        E = torch.eye(4, 4).to(R.dtype).to(R.device)[None].repeat(len(R), 1, 1)
        E[:, :3, :3] = R
        E[:, :3, 3] = T
        rel = se3_inverse(E[0:1]).expand(len(E), -1, -1)
        E = torch.bmm(E, rel)
        R = E[:, :3, :3].clone()
        T = E[:, :3, 3].clone()
    return R, T, focal


def camera_to_pose_encoding(
    R: torch.Tensor,
    T: torch.Tensor,
    focal: torch.Tensor,
    pose_encoding_type: str = "absT_quaR_OneFL",
    log_focal_length_bias: float = 1.8,
    min_focal_length: float = 0.1,
    max_focal_length: float = 30.0,
) -> torch.Tensor:
    """Inverse of :func:`pose_encoding_to_camera` with ``to_opencv=False`` (PyTorch3D cameras).

    Args:
        R: ``[M, 3, 3]`` PyTorch3D rotations.
        T: ``[M, 3]``.
        focal: ``[M]``, ``[M, 1]`` or ``[M, 2]`` normalised focal lengths (a single value is used
            for both axes, as ``PerspectiveCameras`` does).
        pose_encoding_type: ``"absT_quaR_OneFL"`` or ``"absT_quaR_logFL"``.

    Returns:
        ``[M, 8]`` or ``[M, 9]``; the quaternion is unit-norm with a non-negative real part.

    Raises:
        ValueError: for an unknown ``pose_encoding_type``.

    Source: official ``camera_to_pose_encoding``.
    """
    if pose_encoding_type not in POSE_ENCODING_DIMS:
        raise ValueError(f"unknown pose encoding {pose_encoding_type!r}")
    if focal.ndim == 1:
        focal = focal[:, None]
    focal = focal.expand(-1, 2)
    quat = matrix_to_quaternion(R)
    clamped = torch.clamp(focal, min=min_focal_length, max=max_focal_length)
    if pose_encoding_type == "absT_quaR_logFL":
        fl = torch.log(clamped) - log_focal_length_bias
    else:
        fl = clamped[..., 0:1]
    return torch.cat([T, quat, fl], dim=-1)


def cameras_to_pixel(
    R: torch.Tensor,
    T: torch.Tensor,
    focal: torch.Tensor,
    image_size: Union[Sequence[float], torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalised cameras -> pixel extrinsics and intrinsics (official ``get_EFP``).

    Args:
        R: ``[..., 3, 3]`` OpenCV rotations.
        T: ``[..., 3]``.
        focal: ``[..., 1]`` or ``[..., 2]`` normalised focal lengths.
        image_size: ``(W, H)`` in pixels.

    Returns:
        ``(extrinsics [..., 3, 4], intrinsics [..., 3, 3])``, dtype of ``R``. Pixel focal =
        mean(focal) ``* min(W, H) / 2``, clamped to ``[0.2, 5] * min(W, H)``; principal point
        ``(W / 2, H / 2)``, the official value (in the pixel-centre convention the geometric image
        centre is ``((W - 1) / 2, (H - 1) / 2)``; callers that want it shift by -0.5).

    Source: official ``get_EFP`` (``models/utils.py``) with ``default_focal=False``.
    """
    size = torch.as_tensor(image_size, dtype=focal.dtype, device=focal.device)
    scale = size.min()
    f = focal * scale / 2
    if f.shape[-1] == 1:
        f = f.expand(*f.shape[:-1], 2)
    pp = (size / 2).expand_as(f)  # the official principal-point offset is 0
    f = f.mean(dim=-1, keepdim=True).expand(*f.shape[:-1], 2)
    f = f.clamp(0.2 * scale, 5 * scale)
    extrinsics = torch.cat([R, T[..., None]], dim=-1)
    K = torch.zeros(f.shape[:-1] + (3, 3), dtype=f.dtype, device=f.device)
    K[..., 0, 0] = f[..., 0]
    K[..., 1, 1] = f[..., 1]
    K[..., 0, 2] = pp[..., 0]
    K[..., 1, 2] = pp[..., 1]
    K[..., 2, 2] = 1.0
    return extrinsics, K
