"""Point clouds as binary PLY (``float x y z``, ``uchar red green blue``) via plyfile.

This is the layout nerfstudio's ``sparse_pc.ply`` uses (its ``colmap_to_json`` writes the same
properties in ASCII); open3d, which nerfstudio's dataparser uses to read it, reads both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np


def write_ply(path: Path, xyz: np.ndarray, rgb: Optional[np.ndarray] = None) -> Path:
    """Write a binary little-endian PLY point cloud.

    Args:
        path: output file.
        xyz: ``(N, 3)`` points (any float dtype; stored as float32).
        rgb: ``(N, 3)`` uint8 colours; grey (128) when None.

    Returns:
        ``path``.

    Raises:
        ValueError: if the shapes disagree.
    """
    from plyfile import PlyData, PlyElement

    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if rgb is None:
        rgb = np.full((len(xyz), 3), 128, np.uint8)
    rgb = np.asarray(rgb).reshape(-1, 3)
    if len(rgb) != len(xyz):
        raise ValueError(f"write_ply: {len(xyz)} points but {len(rgb)} colours")
    vertex = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    vertex["red"], vertex["green"], vertex["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    path = Path(path)
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(path))
    return path


def read_ply(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Read a PLY point cloud (binary or ASCII, plyfile).

    Args:
        path: a PLY file with a ``vertex`` element holding ``x y z`` and optionally ``red green
            blue`` (uchar 0-255, or float in [0, 1]).

    Returns:
        ``(xyz (N, 3) float32, rgb (N, 3) uint8)``; colours are grey (128) when the file has none.
        Float colours in [0, 1] are scaled to 0..255.

    Raises:
        InputError: naming the file, when it is missing, not a PLY, or has no ``vertex`` element
            with ``x y z``.
    """
    from plyfile import PlyData, PlyParseError

    from ..errors import InputError, short_reason

    path = Path(path)
    if not path.is_file():
        raise InputError("ply file not found", path)
    try:
        v = PlyData.read(str(path))["vertex"].data
        xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    except (PlyParseError, KeyError, ValueError, OSError, IndexError, TypeError) as e:
        raise InputError(f"cannot read point cloud ({type(e).__name__}: {short_reason(e)})", path) from None
    names = v.dtype.names or ()
    if all(c in names for c in ("red", "green", "blue")):
        rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1)
        if rgb.dtype.kind == "f":
            rgb = np.clip(rgb * 255.0 + 0.5, 0, 255)
        rgb = rgb.astype(np.uint8)
    else:
        rgb = np.full((len(xyz), 3), 128, np.uint8)
    return xyz, rgb
