"""Writing aligned depth for nerfstudio (16-bit PNG) and in COLMAP's dense-array format (``.bin``).

nerfstudio reads ``depth_file_path`` images with ``cv2.imread(..., IMREAD_ANYDEPTH)`` and multiplies
them by ``depth_unit_scale_factor`` (default 1e-3) and the dataparser scale
(``nerfstudio.data.utils.data_utils.get_depth_image_from_path``; z-depth, not ray length). We store
**millimetres of scene units**: ``png = round(depth * 1000)`` as uint16, 0 = invalid, so
``png * 1e-3`` is the z-depth in the units of ``transform_matrix`` and nerfstudio's default factor
reads it unchanged (``docs/output_format.md``). Depths that do not fit (below 0.5 mm or above
65.535 scene units) are written as 0 and counted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from ..conventions import DEPTH_UNIT_SCALE_FACTOR
from ..errors import InputError, OutputError
from ..types import DepthResult, FrameSet

log = logging.getLogger(__name__)

_PNG_MAX = 65535


def depth_file_name(name: str, taken: Optional[set] = None) -> str:
    """File name of a frame's depth map: ``<stem>.png`` (``<name>.png`` if two frames share a stem).

    Args:
        name: the frame's image name (``FrameSet.names``), possibly with sub-folders.
        taken: names already used (updated in place); a clash falls back to the full name.
    """
    base = Path(name).with_suffix(".png").as_posix()
    if taken is not None:
        if base in taken:
            base = Path(name).as_posix() + ".png"
        taken.add(base)
    return base


def depth_to_png_units(depth: np.ndarray, scale: float = 1.0) -> "tuple[np.ndarray, int]":
    """Quantise z-depth to 16-bit millimetres.

    Args:
        depth: ``(H, W)`` float z-depth in scene units; ``<= 0`` or non-finite = invalid.
        scale: multiplier applied first (e.g. when the exported world is scaled).

    Returns:
        ``((H, W) uint16, n_out_of_range)``: ``round(depth * scale * 1000)``, 0 for invalid pixels
        and for valid ones that do not fit (``< 0.5`` mm or ``> 65535`` mm), which are counted.
    """
    d = np.asarray(depth, dtype=np.float64) * float(scale)
    valid = np.isfinite(d) & (d > 0)
    mm = np.zeros(d.shape, np.float64)
    mm[valid] = np.round(d[valid] / DEPTH_UNIT_SCALE_FACTOR)
    fits = valid & (mm >= 1) & (mm <= _PNG_MAX)
    out = np.where(fits, mm, 0).astype(np.uint16)
    return out, int(valid.sum() - fits.sum())


def downscale_nearest(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour downscale by an integer ``factor`` to ``(H // factor, W // factor)``.

    The output size floors like nerfstudio's ``Cameras.rescale_output_resolution`` (the size the
    ``--downscale-factor`` cameras get); each output pixel takes the input pixel under its centre.
    Depth must never be averaged across edges, hence nearest.
    """
    H, W = image.shape[:2]
    h, w = max(1, H // factor), max(1, W // factor)
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return image[rows][:, cols]


def _write_png16(path: Path, image: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image, dtype=np.uint16)):
        raise OutputError("cannot write depth PNG", path)


def save_depth_maps(
    depth: DepthResult,
    frames: FrameSet,
    output_dir: Union[str, Path],
    num_downscales: int = 0,
    scale: float = 1.0,
    colmap_dir: Optional[str] = "colmap/depths",
    observer=None,
    stats: Optional[dict] = None,
) -> Dict[int, str]:
    """Write every frame of ``depth`` as a 16-bit millimetre PNG (+ downscaled copies, + COLMAP .bin).

    Layout (``docs/output_format.md``): ``depths/<stem>.png`` and ``depths_2/``, ``depths_4/`` ...
    (``2**k`` for ``k = 1..num_downscales``, nearest-neighbour, floor size); with ``colmap_dir``
    also ``<colmap_dir>/<stem>.bin`` (float32 z-depth in scene units, :func:`write_colmap_depth`,
    what the official VGGSfM writes). Rejected frames are written too (all zero = invalid) so that
    every registered frame has a ``depth_file_path`` (nerfstudio requires all or none).

    Args:
        depth: aligned depth (``FrameDepth.load_depth()`` of each frame).
        frames: the frames (names, sizes).
        output_dir: dataset folder; paths are created below it.
        num_downscales: number of downscaled copies (nerfstudio ``--downscale-factor`` 2, 4, ...).
        scale: multiplier from SfM units to ``transform_matrix`` units (1 unless the exporter
            rescales the world).
        colmap_dir: folder (relative to ``output_dir``) for the COLMAP ``.bin`` maps; None: skip.
        observer: optional :class:`~vggsfm_ns.progress.PipelineObserver` for the out-of-range warning.
        stats: optional dict filled with ``depth_png_pixels_written`` (valid pixels stored) and
            ``depth_png_pixels_out_of_range`` (valid depths written as 0 because they do not fit).

    Returns:
        ``{frame index: path relative to output_dir}`` of each full-resolution PNG, e.g.
        ``{0: "depths/frame_00001.png"}`` (what ``depth_file_path`` in ``transforms.json`` holds).

    Raises:
        InputError: a depth map has no data or the wrong size.
        OutputError: a file cannot be written.
    """
    out_dir = Path(output_dir)
    taken: set = set()
    paths: Dict[int, str] = {}
    n_out = n_written = 0
    for fd in depth.frames:
        s = int(fd.frame)
        d = fd.load_depth()
        W, H = (int(v) for v in frames.sizes[s])
        if d is None:
            raise InputError(f"depth of frame {frames.names[s]} has no data (neither in memory nor on disk)")
        if d.shape != (H, W):
            raise InputError(f"depth of frame {frames.names[s]} is {d.shape[1]}x{d.shape[0]}, its image is {W}x{H}")
        name = depth_file_name(frames.names[s], taken)
        png, bad = depth_to_png_units(d, scale)
        n_out += bad
        n_written += int((png > 0).sum())
        rel = f"depths/{name}"
        _write_png16(out_dir / rel, png)
        for k in range(1, int(num_downscales) + 1):
            _write_png16(out_dir / f"depths_{2 ** k}" / name, downscale_nearest(png, 2**k))
        if colmap_dir:
            dm = np.where(np.isfinite(d) & (d > 0), d * float(scale), 0.0).astype(np.float32)
            write_colmap_depth(out_dir / colmap_dir / Path(name).with_suffix(".bin"), dm)
        paths[s] = rel
    if n_out:
        msg = (
            f"depth: {n_out} pixels outside the 16-bit millimetre range (0.5 mm .. 65.535 scene units) "
            f"were written as invalid (0)"
        )
        if observer is not None:
            observer.message(msg, "warning")
        else:
            log.warning(msg)
    if stats is not None:
        stats["depth_png_pixels_written"] = n_written
        stats["depth_png_pixels_out_of_range"] = n_out
    return paths


def write_colmap_depth(path: Union[str, Path], depth: np.ndarray) -> None:
    """Write a COLMAP dense array (``mvs::Mat<float>::Write``), as the official ``write_array``.

    Format: the ASCII header ``"<width>&<height>&<channels>&"`` then little-endian float32 values,
    x fastest, then y, then channel (column-major storage of a ``W x H x C`` matrix; for a single
    channel this is the row-major bytes of the ``(H, W)`` map).

    Args:
        path: output file (parents are created).
        depth: ``(H, W)`` or ``(H, W, C)`` array; converted to float32.
    """
    a = np.asarray(depth, dtype=np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"COLMAP dense array must be (H, W) or (H, W, C), got {a.shape}")
    H, W, C = a.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(f"{W}&{H}&{C}&".encode("ascii"))
        f.write(np.ascontiguousarray(a.transpose(2, 0, 1)).astype("<f4", copy=False).tobytes())


def read_colmap_depth(path: Union[str, Path]) -> np.ndarray:
    """Read a COLMAP dense array written by :func:`write_colmap_depth` / COLMAP / official VGGSfM.

    Returns:
        ``(H, W)`` float32 for one channel, else ``(H, W, C)``.

    Raises:
        InputError: naming the file, if the header is malformed or the data size disagrees with it.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read COLMAP depth map ({e.strerror})", path) from None
    pos, fields = 0, []
    for _ in range(3):
        j = raw.find(b"&", pos)
        if j < 0 or j - pos > 20:
            raise InputError("not a COLMAP dense array (header 'width&height&channels&' missing)", path)
        fields.append(raw[pos:j])
        pos = j + 1
    try:
        W, H, C = (int(x.decode("ascii")) for x in fields)
    except (UnicodeDecodeError, ValueError):
        raise InputError("not a COLMAP dense array (bad header)", path) from None
    data = np.frombuffer(raw, dtype="<f4", offset=pos)
    if W <= 0 or H <= 0 or C <= 0 or data.size != W * H * C:
        raise InputError(f"COLMAP dense array holds {data.size} values, header says {W}x{H}x{C}", path)
    a = data.reshape(C, H, W).transpose(1, 2, 0).astype(np.float32)
    return a[:, :, 0] if C == 1 else a


__all__ = [
    "save_depth_maps",
    "write_colmap_depth",
    "read_colmap_depth",
    "depth_file_name",
    "depth_to_png_units",
    "downscale_nearest",
    "DEPTH_UNIT_SCALE_FACTOR",
]
