"""COLMAP models through pycolmap: reading a model folder with a clear error, its 3D points as
arrays, and the reprojection errors of one image's observations.

Coordinates stay in the COLMAP world (OpenCV cameras, pixel-corner image coordinates); mapping into
nerfstudio's saved world is :data:`vggsfm_ns.conventions.APPLIED_TRANSFORM`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import numpy as np

from ..errors import InputError


def read_model(model_dir: Union[str, Path]):
    """Read a COLMAP model folder (``cameras``, ``images``, ``points3D`` as ``.bin`` or ``.txt``).

    Returns:
        ``pycolmap.Reconstruction``.

    Raises:
        InputError: naming the folder, when pycolmap cannot read it (pycolmap's own message).
    """
    import pycolmap

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError("COLMAP model folder not found", model_dir)
    try:
        return pycolmap.Reconstruction(str(model_dir))
    except Exception as e:  # pycolmap raises RuntimeError/ValueError with C++ text
        raise InputError(f"cannot read COLMAP model ({e})", model_dir) from None


def model_points(recon) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 3D points of a ``pycolmap.Reconstruction``, sorted by point id.

    Returns:
        ``(ids int64 (P,), xyz float64 (P, 3) COLMAP world, rgb uint8 (P, 3), error float64 (P,))``;
        ``error`` is COLMAP's stored mean reprojection error in pixels (call
        ``recon.update_point_3d_errors()`` first if the model changed since it was computed).
    """
    pts = recon.points3D
    ids = np.array(sorted(pts.keys()), dtype=np.int64)
    xyz = np.array([pts[int(k)].xyz for k in ids], np.float64).reshape(-1, 3)
    rgb = np.array([pts[int(k)].color for k in ids], np.uint8).reshape(-1, 3)
    err = np.array([pts[int(k)].error for k in ids], np.float64)
    return ids, xyz, rgb, err


def image_reprojections(recon, image, check_cheirality: bool = False) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The observations of one posed image and the projections of their 3D points.

    Args:
        recon: ``pycolmap.Reconstruction``.
        image: one of its ``pycolmap.Image`` (must have a pose).
        check_cheirality: points behind the camera get NaN projections and errors (pycolmap's
            ``img_from_cam`` check); False projects them through the centre anyway.

    Returns:
        ``(obs (n, 2), proj (n, 2), err (n,))`` float64: the image's 2D points that have a 3D point,
        those points projected by the image's camera (distortion included), and
        ``err = |proj - obs|``, all in the model's pixels (COLMAP's corner convention). ``n`` may
        be 0.

    Source: what COLMAP's ``Reconstruction.compute_mean_reprojection_error`` averages, per image.
    """
    from ..geometry.camera import apply_affine

    pairs = [(p.xy, p.point3D_id) for p in image.points2D if p.has_point3D() and recon.exists_point3D(p.point3D_id)]
    if not pairs:
        z = np.zeros((0, 2))
        return z, z.copy(), np.zeros(0)
    obs = np.array([p[0] for p in pairs], np.float64).reshape(-1, 2)
    xyz = np.array([recon.point3D(p[1]).xyz for p in pairs], np.float64).reshape(-1, 3)
    cam = apply_affine(xyz, image.cam_from_world().matrix())
    proj = np.asarray(recon.cameras[image.camera_id].img_from_cam(cam, check_cheirality=check_cheirality), np.float64).reshape(-1, 2)
    return obs, proj, np.linalg.norm(proj - obs, axis=1)


__all__ = ["read_model", "model_points", "image_reprojections"]
