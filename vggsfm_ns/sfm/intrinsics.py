"""Known camera intrinsics: EXIF focal lengths or a calibration file, per frame.

Sources (``CameraConfig.intrinsics``):

* ``"file"`` (or ``"auto"`` with ``intrinsics_file`` set): ``intrinsics_file`` is

  - a JSON file with nerfstudio keys ``fl_x fl_y cx cy`` (optional ``k1 k2 p1 p2``, ``w h``; without
    ``cx cy`` the principal point is the image centre),
    either at the top level (shared by all frames), in a ``frames`` list whose entries carry a
    ``file_path`` (nerfstudio ``transforms.json``; per-frame values override the top level), or as
    a mapping from image file name to such a dict;
  - a COLMAP ``cameras.txt`` / ``cameras.bin`` (a single camera is shared by all frames; several
    cameras need the ``images.txt``/``images.bin`` next to it to know which frame uses which).

  Intrinsics given for another image size (``w h`` in the JSON, the camera size in COLMAP) are
  rescaled when the aspect ratio matches.
* ``"exif"`` (or ``"auto"`` when every frame has one): ``FrameSet.exif_focal_px`` with the principal
  point at the image centre.
* ``"predict"``, or ``"auto"`` without either: None (the camera predictor or the default focal).

All values are in original pixels, COLMAP pixel-corner convention (nerfstudio's ``cx cy`` use the
same convention).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..config import CameraConfig
from ..errors import InputError
from ..io.transforms import read_json_object
from ..geometry.camera import SINGLE_FOCAL, num_extra_params
from ..types import FrameSet, KnownIntrinsics

#: COLMAP model id -> (name, number of parameters). Only the perspective models we can map.
COLMAP_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
_NAME_TO_ID = {v[0]: k for k, v in COLMAP_MODELS.items()}
#: Relative fx / fy difference above which a single-focal model cannot represent the camera.
MAX_ASPECT_DIFF = 0.05
#: Distortion magnitude below which a coefficient the chosen model lacks is silently dropped.
DROP_DISTORTION_TOL = 1e-3

# A camera in a neutral form: (w or None, h or None, fx, fy, cx, cy, k1, k2, p1, p2)
_Cam = Tuple[Optional[float], Optional[float], float, float, Optional[float], Optional[float], float, float, float, float]


def _colmap_to_cam(model: str, w: float, h: float, p: List[float], path: Path) -> _Cam:
    if model == "SIMPLE_PINHOLE":
        f, cx, cy = p[:3]
        return (w, h, f, f, cx, cy, 0.0, 0.0, 0.0, 0.0)
    if model == "PINHOLE":
        fx, fy, cx, cy = p[:4]
        return (w, h, fx, fy, cx, cy, 0.0, 0.0, 0.0, 0.0)
    if model == "SIMPLE_RADIAL":
        f, cx, cy, k = p[:4]
        return (w, h, f, f, cx, cy, k, 0.0, 0.0, 0.0)
    if model == "RADIAL":
        f, cx, cy, k1, k2 = p[:5]
        return (w, h, f, f, cx, cy, k1, k2, 0.0, 0.0)
    if model == "OPENCV":
        fx, fy, cx, cy, k1, k2, p1, p2 = p[:8]
        return (w, h, fx, fy, cx, cy, k1, k2, p1, p2)
    raise InputError(f"COLMAP camera model {model} is not supported (use a pinhole, radial or OPENCV camera)", path)


def read_colmap_cameras(path: Path) -> Dict[int, _Cam]:
    """Cameras of a COLMAP ``cameras.txt`` / ``cameras.bin`` keyed by camera id.

    Raises:
        InputError: unreadable or malformed file, unsupported model.
    """
    path = Path(path)
    cams: Dict[int, _Cam] = {}
    try:
        if path.suffix == ".bin":
            data = path.read_bytes()
            (n,) = struct.unpack_from("<Q", data, 0)
            off = 8
            for _ in range(n):
                cid, mid, w, h = struct.unpack_from("<iiQQ", data, off)
                off += 24
                if mid not in COLMAP_MODELS:
                    raise InputError(f"unknown COLMAP camera model id {mid}", path)
                name, k = COLMAP_MODELS[mid]
                params = list(struct.unpack_from(f"<{k}d", data, off))
                off += 8 * k
                cams[cid] = _colmap_to_cam(name, float(w), float(h), params, path)
            if off != len(data):
                raise InputError(f"malformed COLMAP cameras.bin ({len(data) - off} trailing bytes)", path)
        else:
            for ln, line in enumerate(path.read_text().splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split()
                if len(parts) < 5:
                    raise InputError(f"line {ln}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]'", path)
                name = parts[1]
                if name not in _NAME_TO_ID:
                    raise InputError(f"line {ln}: unknown COLMAP camera model {name}", path)
                k = COLMAP_MODELS[_NAME_TO_ID[name]][1]
                params = [float(v) for v in parts[4:]]
                if len(params) != k:
                    raise InputError(f"line {ln}: {name} needs {k} parameters, got {len(params)}", path)
                cams[int(parts[0])] = _colmap_to_cam(name, float(parts[2]), float(parts[3]), params, path)
    except InputError:
        raise
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read COLMAP cameras ({e})", path) from None
    if not cams:
        raise InputError("no camera in the COLMAP cameras file", path)
    return cams


def _colmap_image_cameras(folder: Path) -> Optional[Dict[str, int]]:
    """Image name -> camera id from ``images.txt`` / ``images.bin`` next to the cameras file.

    Returns None when the folder has neither file.

    Raises:
        InputError: naming the file, when it cannot be read or is malformed.
    """
    txt, binf = folder / "images.txt", folder / "images.bin"
    path = txt if txt.is_file() else binf if binf.is_file() else None
    if path is None:
        return None
    out: Dict[str, int] = {}
    try:
        if path is txt:
            # two lines per image (the second, its 2D points, may be empty)
            lines = [ln for ln in txt.read_text().splitlines() if not ln.startswith("#")]
            while lines and not lines[0].strip():
                lines.pop(0)
            for ln in lines[0::2]:
                parts = ln.split()
                if len(parts) >= 10:
                    out[Path(parts[9]).name] = int(parts[8])
        else:
            data = binf.read_bytes()
            (n,) = struct.unpack_from("<Q", data, 0)
            off = 8
            for _ in range(n):
                off += 4 + 8 * 7
                (cid,) = struct.unpack_from("<i", data, off)
                off += 4
                end = data.index(b"\0", off)
                name = data[off:end].decode("utf-8")
                off = end + 1
                (npts,) = struct.unpack_from("<Q", data, off)
                off += 8 + npts * 24
                out[Path(name).name] = cid
            if off != len(data):
                raise InputError(f"malformed COLMAP images.bin ({len(data) - off} bytes left over)", path)
    except InputError:
        raise
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read COLMAP images file ({type(e).__name__}: {e})", path) from None
    return out


def _num(d: dict, key: str, path: Path, where: str, default=None) -> Optional[float]:
    if key not in d:
        return default
    try:
        v = float(d[key])
    except (TypeError, ValueError):
        raise InputError(f"{where}: '{key}' must be a number, got {d[key]!r}", path) from None
    if not np.isfinite(v):
        raise InputError(f"{where}: '{key}' is not finite", path)
    return v


def _json_cam(d: dict, base: Optional[_Cam], path: Path, where: str) -> Optional[_Cam]:
    """A camera from nerfstudio keys in ``d``, missing keys taken from ``base``."""
    keys = ("w", "h", "fl_x", "fl_y", "cx", "cy", "k1", "k2", "p1", "p2")
    if base is None and not any(k in d for k in ("fl_x", "fl_y")):
        return None
    b = base or (None, None, None, None, None, None, 0.0, 0.0, 0.0, 0.0)
    vals = [_num(d, k, path, where, b[i]) for i, k in enumerate(keys)]
    if vals[2] is None and vals[3] is None:
        raise InputError(f"{where}: needs 'fl_x' (and optionally 'fl_y')", path)
    if vals[2] is None:
        vals[2] = vals[3]
    if vals[3] is None:
        vals[3] = vals[2]
    if vals[2] <= 0 or vals[3] <= 0:
        raise InputError(f"{where}: focal lengths must be positive", path)
    # a missing principal point stays None: known_intrinsics puts it at each image's centre
    return tuple(vals)  # type: ignore[return-value]


def _read_json(path: Path, names: List[str]) -> List[Optional[_Cam]]:
    meta = read_json_object(path)
    top = _json_cam(meta, None, path, "top level")
    per: Dict[str, _Cam] = {}
    if "frames" in meta:
        if not isinstance(meta["frames"], list):
            raise InputError("'frames' must be a list", path)
        for k, fr in enumerate(meta["frames"]):
            if not isinstance(fr, dict) or "file_path" not in fr:
                raise InputError(f"frames[{k}] needs a 'file_path'", path)
            cam = _json_cam(fr, top, path, f"frames[{k}]")
            if cam is not None:
                per[Path(str(fr["file_path"])).name] = cam
    else:
        for key, val in meta.items():
            if isinstance(val, dict):
                cam = _json_cam(val, top, path, f"entry {key!r}")
                if cam is not None:
                    per[Path(key).name] = cam
    out = []
    for n in names:
        cam = per.get(Path(n).name, per.get(Path(n).stem, top))
        out.append(cam)
    if all(c is None for c in out):
        raise InputError("no intrinsics found (expected 'fl_x fl_y cx cy' at the top level, per frame, or per file name)", path)
    return out


def _read_colmap(path: Path, names: List[str]) -> List[Optional[_Cam]]:
    cams = read_colmap_cameras(path)
    if len(cams) == 1:
        cam = next(iter(cams.values()))
        return [cam] * len(names)
    mapping = _colmap_image_cameras(Path(path).parent)
    if mapping is None:
        raise InputError(f"{len(cams)} cameras but no images.txt/images.bin next to the file to tell which frame uses which", path)
    out = []
    for n in names:
        cid = mapping.get(Path(n).name)
        if cid is not None and cid not in cams:
            raise InputError(f"image {n} uses camera {cid}, which is not in the file", path)
        out.append(cams.get(cid) if cid is not None else None)
    return out


def _fit_to_size(cam: _Cam, w: int, h: int, path: Optional[Path], name: str) -> _Cam:
    """Rescale a camera given for another image size (same aspect ratio) to ``w x h`` (a missing
    principal point stays missing)."""
    cw, ch = cam[0], cam[1]
    if cw is None or ch is None or (int(round(cw)) == w and int(round(ch)) == h):
        return cam
    sx, sy = w / cw, h / ch
    if abs(sx / sy - 1.0) > 0.01:
        raise InputError(f"intrinsics for {int(cw)}x{int(ch)} do not fit image {name} ({w}x{h}): different aspect ratio", path)
    cx = None if cam[4] is None else cam[4] * sx
    cy = None if cam[5] is None else cam[5] * sy
    return (float(w), float(h), cam[2] * sx, cam[3] * sy, cx, cy, *cam[6:])


def _to_model(cam: _Cam, camera_type: str, path: Optional[Path], name: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(K (3, 3), extra (E,))`` of ``camera_type`` from a neutral camera."""
    _, _, fx, fy, cx, cy, k1, k2, p1, p2 = cam
    if camera_type in SINGLE_FOCAL:
        if abs(fx / fy - 1.0) > MAX_ASPECT_DIFF:
            raise InputError(f"{name}: fl_x {fx:g} and fl_y {fy:g} differ; use --camera-type PINHOLE or OPENCV", path)
        fx = fy = (fx + fy) / 2.0
    dist = {"k1": k1, "k2": k2, "p1": p1, "p2": p2}
    keep = {"SIMPLE_PINHOLE": (), "PINHOLE": (), "SIMPLE_RADIAL": ("k1",), "RADIAL": ("k1", "k2"), "OPENCV": ("k1", "k2", "p1", "p2")}[camera_type]
    dropped = [k for k, v in dist.items() if k not in keep and abs(v) > DROP_DISTORTION_TOL]
    if dropped:
        raise InputError(f"{name}: distortion {', '.join(dropped)} cannot be represented by {camera_type}; use --camera-type OPENCV", path)
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return K, np.array([dist[k] for k in keep], np.float64)


def known_intrinsics(frames: FrameSet, camera_cfg: CameraConfig) -> Optional[KnownIntrinsics]:
    """Intrinsics the user supplied (file or EXIF), in original pixels, or None.

    Args:
        frames: the input frames (names, sizes, EXIF focal lengths).
        camera_cfg: ``intrinsics`` source, ``intrinsics_file``, ``camera_type``, ``fix_intrinsics``.

    Returns:
        :class:`~vggsfm_ns.types.KnownIntrinsics` with ``(S, 3, 3)`` K (pixel-corner) and
        ``(S, E)`` distortion of ``camera_type``, ``fixed = camera_cfg.fix_intrinsics``; None when
        no source applies.

    Raises:
        InputError: missing, unreadable or malformed file; frames the file does not cover; EXIF
            asked for but missing; values the camera model cannot represent.
    """
    S = len(frames)
    src = camera_cfg.intrinsics
    if src not in ("auto", "predict", "exif", "file"):
        raise InputError(f"unknown intrinsics source {src!r}; choose auto, predict, exif or file")
    try:
        E = num_extra_params(camera_cfg.camera_type)
    except ValueError as e:
        raise InputError(str(e)) from None
    path = Path(camera_cfg.intrinsics_file) if camera_cfg.intrinsics_file is not None else None
    if src == "predict":
        return None
    if src == "file" or (src == "auto" and path is not None):
        if path is None:
            raise InputError("--intrinsics file needs --intrinsics-file")
        if not path.is_file():
            raise InputError("intrinsics file not found", path)
        if path.suffix.lower() == ".json":
            cams = _read_json(path, frames.names)
        elif path.name in ("cameras.txt", "cameras.bin") or path.suffix in (".txt", ".bin"):
            cams = _read_colmap(path, frames.names)
        else:
            raise InputError("unsupported intrinsics file (expected .json, cameras.txt or cameras.bin)", path)
        missing = [frames.names[i] for i, c in enumerate(cams) if c is None]
        if missing:
            raise InputError(f"no intrinsics for {len(missing)} frame(s), e.g. {missing[0]}", path)
        K = np.zeros((S, 3, 3))
        extra = np.zeros((S, E))
        for i, cam in enumerate(cams):
            w, h = (int(v) for v in frames.sizes[i])
            cam = _fit_to_size(cam, w, h, path, frames.names[i])
            if cam[4] is None or cam[5] is None:  # principal point not given: the image centre
                cam = (*cam[:4], w / 2.0 if cam[4] is None else cam[4], h / 2.0 if cam[5] is None else cam[5], *cam[6:])
            K[i], extra[i] = _to_model(cam, camera_cfg.camera_type, path, frames.names[i])
        return KnownIntrinsics(torch.from_numpy(K), torch.from_numpy(extra), fixed=bool(camera_cfg.fix_intrinsics), source="file")
    exif = list(frames.exif_focal_px)
    have = [f is not None and np.isfinite(f) and f > 0 for f in exif]
    if src == "exif" and not all(have):
        missing = [frames.names[i] for i, h in enumerate(have) if not h]
        raise InputError(f"--intrinsics exif: {len(missing)} frame(s) have no EXIF focal length, e.g. {missing[0]}")
    if not all(have) or S == 0:
        return None
    K = np.zeros((S, 3, 3))
    for i in range(S):
        w, h = (float(v) for v in frames.sizes[i])
        f = float(exif[i])
        K[i] = [[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]]
    return KnownIntrinsics(torch.from_numpy(K), torch.zeros(S, E, dtype=torch.float64), fixed=bool(camera_cfg.fix_intrinsics), source="exif")
