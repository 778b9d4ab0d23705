"""Open a finished output folder in the viewer: ``view_dataset("scene/")``.

Reads what ``ns-process-data vggsfm`` wrote (``docs/output_format.md``): the COLMAP model (poses,
intrinsics, points with their reprojection errors), ``transforms.json`` (frame list, reliability
flags, ``applied_transform``), ``vggsfm_report.json`` (per-frame quality, unregistered frames) and the
seed ply. Plain nerfstudio folders (``transforms.json`` + ply, no COLMAP model) and bare COLMAP
model folders work too.

World: when ``transforms.json`` exists everything is shown in its world (the COLMAP model is mapped
by ``applied_transform``), so the dense seed cloud (``dense_pc.ply``) overlays the sparse points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..conventions import LEGACY_APPLIED_TRANSFORM, opengl_c2w_to_opencv_w2c
from ..errors import InputError
from ..geometry.camera import apply_affine, transform_cameras
from ..io.colmap import read_model
from ..io.ply import read_ply
from ..io.transforms import read_json_object, read_transforms
from ..progress import ReconstructionSnapshot, empty_frame_arrays, snapshot_from_reconstruction


@dataclass
class LoadedDataset:
    """A finished reconstruction read back from disk.

    Attributes:
        snapshot: cameras (OpenCV ``cam_from_world``, original-pixel intrinsics) and points in the
            display world; unregistered frames (from the report) have ``registered = False``.
        reliable: ``(S,)`` bool per-frame quality flags.
        image_paths: per frame, the image file used for the thumbnail (smallest downscaled copy), or None.
        extra_points: additional clouds by name, e.g. ``"dense points"``: ``(xyz, rgb)``.
        report: ``vggsfm_report.json`` or None.
        world: ``"transforms"`` (transforms.json world) or ``"colmap"``.
    """

    snapshot: ReconstructionSnapshot
    reliable: np.ndarray
    image_paths: List[Optional[Path]]
    extra_points: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    report: Optional[Dict[str, Any]] = None
    world: str = "transforms"

    def thumbnail(self, i: int) -> Optional[np.ndarray]:
        """Frame ``i``'s image (``(H, W, 3)`` uint8) or None."""
        p = self.image_paths[i]
        if p is None or not p.is_file():
            return None
        from ..io.images import read_image

        return read_image(p)


def _smallest_copy(data_dir: Path, rel: Path) -> Path:
    """The most downscaled ``images_N/<name>`` copy of ``data_dir/rel`` that exists, else itself."""
    for n in (8, 4, 2):
        p = data_dir / f"images_{n}" / rel.name
        if p.is_file():
            return p
    return data_dir / rel


def _transform_snapshot(snap: ReconstructionSnapshot, A: np.ndarray) -> ReconstructionSnapshot:
    """Map a snapshot by the rigid world change ``X' = A[:, :3] X + A[:, 3]`` (``A`` 3x4, rotation part orthonormal)."""
    A = np.asarray(A, np.float64).reshape(3, 4)
    pts = apply_affine(np.asarray(snap.points, np.float64).reshape(-1, 3), A)
    return ReconstructionSnapshot(
        snap.label,
        list(snap.names),
        transform_cameras(snap.extrinsics, A[:, :3], A[:, 3]),
        snap.intrinsics,
        snap.image_sizes,
        snap.registered,
        pts,
        snap.colors,
        snap.point_errors,
        snap.frame_errors,
        snap.frame_observations,
        snap.progress,
    )


def _intrinsics_of(frame: Dict[str, Any], meta: Dict[str, Any]) -> Tuple[np.ndarray, Tuple[int, int]]:
    def get(k):
        if k in frame:
            return float(frame[k])
        if k in meta:
            return float(meta[k])
        raise KeyError(k)

    K = np.array([[get("fl_x"), 0.0, get("cx")], [0.0, get("fl_y"), get("cy")], [0.0, 0.0, 1.0]])
    return K, (int(get("w")), int(get("h")))


def load_dataset(path: Union[str, Path]) -> LoadedDataset:
    """Read an output folder (or ``transforms.json``, or a COLMAP model folder) for the viewer.

    Raises:
        InputError: the path holds neither ``transforms.json`` nor a COLMAP model, or a file in it
            cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("path not found", path)
    data_dir = path.parent if path.is_file() else path
    json_path = path if path.suffix == ".json" else data_dir / "transforms.json"
    meta = read_transforms(json_path) if json_path.is_file() else None
    if any((path / f"cameras.{ext}").is_file() for ext in ("bin", "txt")) and path.is_dir():
        colmap_dir: Optional[Path] = path
    else:
        colmap_dir = data_dir / "colmap" / "sparse" / "0"
        colmap_dir = colmap_dir if colmap_dir.is_dir() else None
    if meta is None and colmap_dir is None:
        raise InputError("no transforms.json and no COLMAP model (colmap/sparse/0) here", path)
    report = None
    if (data_dir / "vggsfm_report.json").is_file():
        report = read_json_object(data_dir / "vggsfm_report.json")
    rep_list = (report or {}).get("frames")
    rep_frames = {str(f.get("name")): f for f in (rep_list if isinstance(rep_list, list) else []) if isinstance(f, dict)}

    meta_frames: Dict[str, Dict[str, Any]] = {}
    if meta is not None:
        for fr in meta["frames"]:
            meta_frames[Path(fr["file_path"]).name] = fr
    if rep_frames:
        names = list(rep_frames)
        names += [n for n in sorted(meta_frames) if n not in rep_frames]
    else:
        names = sorted(meta_frames)
    label = f"{data_dir.name}: finished reconstruction"

    if colmap_dir is not None:
        recon = read_model(colmap_dir)
        if not names:
            names = sorted(img.name for img in recon.images.values())
        snap = snapshot_from_reconstruction(recon, names, label)
        world = "colmap"
        if meta is not None:
            A = np.asarray(meta.get("applied_transform", LEGACY_APPLIED_TRANSFORM), np.float64)
            snap = _transform_snapshot(snap, A)
            world = "transforms"
    else:
        snap = _snapshot_from_transforms(meta, meta_frames, names, rep_frames, data_dir, json_path, label)
        world = "transforms"

    # Reliability: our flags where present, else measured from the model.
    from .scene import frame_reliability

    measured = frame_reliability(snap) if colmap_dir is not None else np.asarray(snap.registered, bool)
    reliable = measured.copy()
    for i, n in enumerate(names):
        if n in meta_frames and "vggsfm_reliable" in meta_frames[n]:
            reliable[i] = bool(meta_frames[n]["vggsfm_reliable"])
        elif n in rep_frames and "reliable" in rep_frames[n]:
            reliable[i] = bool(rep_frames[n]["reliable"])
    reliable &= np.asarray(snap.registered, bool)

    image_paths: List[Optional[Path]] = []
    for n in names:
        rel = Path(meta_frames[n]["file_path"]) if n in meta_frames else Path("images") / n
        p = _smallest_copy(data_dir, rel)
        image_paths.append(p if p.is_file() else None)

    extra: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    if meta is not None and world == "transforms":
        dense = data_dir / "dense_pc.ply"
        if dense.is_file():
            extra["dense points"] = read_ply(dense)
    return LoadedDataset(snap, reliable, image_paths, extra, report, world)


def _snapshot_from_transforms(meta, meta_frames, names, rep_frames, data_dir: Path, json_path: Path, label: str) -> ReconstructionSnapshot:
    ext, K, sizes, reg, ferr, fobs = empty_frame_arrays(len(names))
    for i, n in enumerate(names):
        rep = rep_frames.get(n, {})
        if isinstance(rep.get("mean_reproj_error_px"), (int, float)):
            ferr[i] = float(rep["mean_reproj_error_px"])
        fobs[i] = int(rep.get("num_observations") or 0)
        fr = meta_frames.get(n)
        if fr is None:
            continue
        try:
            K[i], sizes[i] = _intrinsics_of(fr, meta)
        except KeyError as e:
            raise InputError(f"frame {n}: intrinsics key {e} missing", json_path) from None
        ext[i] = opengl_c2w_to_opencv_w2c(np.asarray(fr["transform_matrix"], np.float64))
        reg[i] = True
    ply = data_dir / str(meta.get("ply_file_path", "sparse_pc.ply"))
    if ply.is_file():
        xyz, rgb = read_ply(ply)
    else:
        xyz, rgb = np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    return ReconstructionSnapshot(label, list(names), ext, K, sizes, reg, np.asarray(xyz, np.float64), rgb, np.full(len(xyz), np.nan), ferr, fobs)


def view_dataset(path: Union[str, Path], host: str = "127.0.0.1", port: int = 7007, block: bool = True, **kwargs):
    """Show a finished output folder in the browser (same view as the live viewer).

    Args:
        path: the dataset folder, its ``transforms.json``, or a COLMAP model folder.
        host: interface to bind (localhost by default).
        port: preferred port (the next free one is used when taken).
        block: wait until Ctrl-C, then stop the server; with False the running
            :class:`~vggsfm_ns.viewer.live.LiveViewer` is returned at once (call ``.stop()``).
        **kwargs: passed to :class:`~vggsfm_ns.viewer.live.LiveViewer`.

    Returns:
        The :class:`~vggsfm_ns.viewer.live.LiveViewer` showing the dataset.

    Raises:
        InputError: see :func:`load_dataset`.
    """
    from .live import LiveViewer

    data = load_dataset(path)
    kwargs.setdefault("title", f"VGGSfM: {Path(path).resolve().name}")
    viewer = LiveViewer(host=host, port=port, **kwargs)
    viewer.set_thumbnails(data.thumbnail)
    viewer.scene.update(data.snapshot, data.reliable)
    for name, (xyz, rgb) in data.extra_points.items():
        viewer.scene.add_extra_points(name, xyz, rgb, visible=False)
    if data.report is not None:
        s = data.report.get("summary", {})
        parts = [f"{s.get('frames_registered', '?')}/{s.get('frames_in', '?')} frames registered"]
        if isinstance(s.get("mean_reproj_error_px"), (int, float)):
            parts.append(f"mean error {s['mean_reproj_error_px']:.2f} px")
        if s.get("tracker"):
            parts.append(f"tracker {s['tracker']}")
        viewer.message("report: " + ", ".join(parts))
    viewer.close()
    if block:
        viewer.wait()
    return viewer


__all__ = ["view_dataset", "load_dataset", "LoadedDataset"]
