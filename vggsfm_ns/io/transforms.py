"""Reading nerfstudio ``transforms.json`` files (ours, ``ns-process-data``'s, instant-ngp's).

One reader for every consumer (the ``vggsfm`` dataparser, the viewer, the pose metrics), so that a
malformed file gives the same one-line :class:`~vggsfm_ns.errors.InputError` naming the file
everywhere. The writer is :func:`vggsfm_ns.export.nerfstudio.export_nerfstudio`; the layout is in
``docs/output_format.md``. Poses in these files are OpenGL camera-to-world
(:func:`vggsfm_ns.conventions.opengl_c2w_to_opencv_w2c` converts them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np

from ..errors import InputError, short_reason


def read_json_object(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a JSON file whose top level must be an object.

    Raises:
        InputError: naming the file, when it cannot be read, is not valid JSON, or is not an object.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read JSON ({short_reason(e)})", path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON ({e.msg} at line {e.lineno})", path) from None
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object at the top level, got {type(data).__name__}", path)
    return data


def read_transforms(path: Union[str, Path]) -> Dict[str, Any]:
    """Read and check a ``transforms.json``: a non-empty ``frames`` list whose entries each have a
    ``file_path`` string and a finite ``transform_matrix`` (4x4, or 3x4 without the last row).

    Args:
        path: the ``transforms.json`` file.

    Returns:
        the parsed object, unchanged (matrices stay nested lists).

    Raises:
        InputError: naming the file and the frame, for any of the problems above.
    """
    path = Path(path)
    meta = read_json_object(path)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError("lists no frames", path)
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str) or "transform_matrix" not in fr:
            raise InputError(f"frame {i} needs file_path and transform_matrix", path)
        try:
            M = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            M = None
        if M is None or M.shape not in ((4, 4), (3, 4)) or not np.isfinite(M).all():
            raise InputError(f"frame {i} ({fr['file_path']}): transform_matrix must be a finite 4x4 matrix", path)
    return meta


__all__ = ["read_json_object", "read_transforms"]
