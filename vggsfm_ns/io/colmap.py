"""COLMAP models through pycolmap: reading a model folder with a clear error, and its 3D points as arrays.

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


__all__ = ["read_model", "model_points"]
