"""Write a :class:`~vggsfm_ns.types.ReconstructionResult` as a nerfstudio dataset.

The layout (``docs/output_format.md``) is a superset of what ``ns-process-data images`` writes, so
nerfstudio's ``nerfstudio-data`` parser (and ``ns-train splatfacto``) read it unchanged:
``images/`` (+ ``images_2/4/8``), optional ``masks/`` and ``depths/``, ``colmap/sparse/0/*.bin``,
``transforms.json``, ``sparse_pc.ply`` and our quality report ``vggsfm_report.json``.

World frame: like nerfstudio's ``colmap_to_json`` (``keep_original_world_coordinate=False``) the
COLMAP world is mapped by :data:`APPLIED_TRANSFORM` (swap y/z, negate the new z), recorded as
``applied_transform``, so users see the same orientation as with COLMAP. Poses are OpenGL
camera-to-world (:func:`vggsfm_ns.conventions.opencv_w2c_to_opengl_c2w`).
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..conventions import APPLIED_TRANSFORM, DEPTH_UNIT_SCALE_FACTOR, opencv_w2c_to_opengl_c2w
from ..errors import ReconstructionError
from ..geometry.camera import apply_affine
from ..io.atomic import atomic_output_dir
from ..io.colmap import model_points
from ..io.images import image_info, write_downscales, write_image
from ..io.ply import write_ply
from ..progress import PipelineObserver, Stage
from ..threads import io_workers
from ..types import FrameSet, ReconstructionResult

#: COLMAP camera model -> nerfstudio ``camera_model`` (``CAMERA_MODEL_TO_TYPE`` key), as in
#: nerfstudio's ``parse_colmap_camera_params``.
_NS_MODEL = {
    "SIMPLE_PINHOLE": "OPENCV",
    "PINHOLE": "OPENCV",
    "SIMPLE_RADIAL": "OPENCV",
    "RADIAL": "OPENCV",
    "OPENCV": "OPENCV",
    "OPENCV_FISHEYE": "OPENCV_FISHEYE",
    "SIMPLE_RADIAL_FISHEYE": "OPENCV_FISHEYE",
    "RADIAL_FISHEYE": "OPENCV_FISHEYE",
}


def applied_transform_44() -> np.ndarray:
    """:data:`APPLIED_TRANSFORM` as a 4x4 homogeneous matrix."""
    return np.vstack([APPLIED_TRANSFORM, [0.0, 0.0, 0.0, 1.0]])


def camera_to_json(camera) -> Dict[str, Any]:
    """nerfstudio intrinsics of a pycolmap camera (original pixels, corner convention, as COLMAP).

    Returns:
        ``camera_model``, ``w``, ``h``, ``fl_x``, ``fl_y``, ``cx``, ``cy`` and the distortion keys
        (``k1 k2 p1 p2`` for perspective models, ``k1 k2 k3 k4`` for fisheye ones) with the same
        values nerfstudio's ``parse_colmap_camera_params`` produces.

    Raises:
        ValueError: for camera models nerfstudio cannot represent (FULL_OPENCV, FOV, ...).
    """
    model = camera.model.name if hasattr(camera.model, "name") else str(camera.model)
    if model not in _NS_MODEL:
        raise ValueError(f"camera model {model} cannot be written to transforms.json")
    p = [float(v) for v in camera.params]
    out: Dict[str, Any] = {"camera_model": _NS_MODEL[model], "w": int(camera.width), "h": int(camera.height)}
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"):
        out.update(fl_x=p[0], fl_y=p[0], cx=p[1], cy=p[2])
        extra = p[3:]
    else:
        out.update(fl_x=p[0], fl_y=p[1], cx=p[2], cy=p[3])
        extra = p[4:]
    if _NS_MODEL[model] == "OPENCV":
        k1, k2, p1, p2 = 0.0, 0.0, 0.0, 0.0
        if model in ("SIMPLE_RADIAL", "RADIAL"):
            k1 = extra[0]
            k2 = extra[1] if len(extra) > 1 else 0.0
        elif model == "OPENCV":
            k1, k2, p1, p2 = extra[:4]
        out.update(k1=k1, k2=k2, p1=p1, p2=p2)
    else:
        ks = list(extra[:4]) + [0.0] * (4 - len(extra[:4]))
        out.update(k1=ks[0], k2=ks[1], k3=ks[2], k4=ks[3])
    return out


def _fast_read(path: Path) -> np.ndarray:
    """Decode an upright 8-bit RGB file (``ImageInfo.is_plain_rgb8``) with OpenCV, faster than Pillow;
    falls back to :func:`vggsfm_ns.io.images.read_image`. Returns ``(H, W, 3)`` uint8 RGB."""
    import cv2

    from ..io.images import read_image

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return read_image(path)
    return np.ascontiguousarray(bgr[..., ::-1])


def _mask_names(names: Sequence[str]) -> List[str]:
    stems = [Path(n).stem for n in names]
    if len(set(stems)) == len(stems):
        return [s + ".png" for s in stems]
    return [n + ".png" for n in names]


def _export_images(frames: FrameSet, out: Path, num_downscales: int, observer: Optional[PipelineObserver], timings: Dict[str, float]) -> None:
    factors = [2**k for k in range(1, num_downscales + 1)]
    for d in ["images"] + [f"images_{f}" for f in factors]:
        (out / d).mkdir()

    def one(i: int) -> None:
        name = frames.names[i]
        dst = out / "images" / name
        src = frames.paths[i]
        img = None
        if src is not None and image_info(src, check_decode=False).is_plain_rgb8:
            shutil.copyfile(src, dst)
            if factors:
                img = _fast_read(src)
        else:
            img = frames.image(i)
            write_image(dst, img)
        if factors:
            if img is None:
                img = frames.image(i)
            write_downscales(img, {f: out / f"images_{f}" / name for f in factors})

    _run_parallel(one, len(frames), observer, "export images", timings)


def _export_masks(frames: FrameSet, out: Path, num_downscales: int, observer: Optional[PipelineObserver], timings: Dict[str, float]) -> List[str]:
    factors = [2**k for k in range(1, num_downscales + 1)]
    for d in ["masks"] + [f"masks_{f}" for f in factors]:
        (out / d).mkdir()
    names = _mask_names(frames.names)

    def one(i: int) -> None:
        dyn = frames.mask(i)
        w, h = (int(v) for v in frames.sizes[i])
        keep = np.full((h, w), 255, np.uint8) if dyn is None else np.where(dyn, 0, 255).astype(np.uint8)
        write_image(out / "masks" / names[i], keep)
        write_downscales(keep, {f: out / f"masks_{f}" / names[i] for f in factors}, nearest=True)

    _run_parallel(one, len(frames), observer, "export masks", timings)
    return [f"masks/{n}" for n in names]


def _run_parallel(fn, n: int, observer: Optional[PipelineObserver], stage: str, timings: Dict[str, float]) -> None:
    with Stage(observer, stage, total=n, timings=timings) as st:
        # at most 4 workers: each holds a full-resolution image and its downscales
        with ThreadPoolExecutor(max_workers=io_workers(4)) as pool:
            for fut in [pool.submit(fn, i) for i in range(n)]:
                fut.result()
                st.advance()


def _registered(result: ReconstructionResult) -> List[Tuple[int, Any]]:
    recon = result.sfm.reconstruction
    by_name = {img.name: img for img in recon.images.values()}
    unknown = set(by_name) - set(result.frames.names)
    if unknown:
        raise ValueError(f"the COLMAP model has images that are not frames of the FrameSet: {sorted(unknown)[:5]}")
    return [(i, by_name[n]) for i, n in enumerate(result.frames.names) if n in by_name and by_name[n].has_pose]


def to_saved_world(xyz: np.ndarray) -> np.ndarray:
    """Map ``(N, 3)`` COLMAP-world points into the ``transforms.json`` world (:data:`APPLIED_TRANSFORM`)."""
    return apply_affine(np.asarray(xyz, np.float64).reshape(-1, 3), APPLIED_TRANSFORM)


def export_nerfstudio(
    result: ReconstructionResult,
    output_dir: Path,
    num_downscales: int = 3,
    overwrite: bool = False,
    observer: Optional[PipelineObserver] = None,
    visuals: bool = False,
) -> Path:
    """Write ``result`` as a nerfstudio dataset folder (layout: ``docs/output_format.md``).

    Everything is written into a hidden temporary sibling and renamed to ``output_dir`` at the end
    (:func:`vggsfm_ns.io.atomic.atomic_output_dir`): an interrupted export leaves no partial dataset.

    Args:
        result: the reconstruction. ``result.sfm.reconstruction`` image names must be
            ``result.frames.names`` (unregistered frames may be missing from it).
        output_dir: dataset folder to create.
        num_downscales: write ``images_2`` ... ``images_{2^n}`` (and ``masks_*``, ``depths_*``);
            nerfstudio picks one so that the longer side is at most 1600 px.
        overwrite: replace an existing dataset at ``output_dir``.
        observer: progress (stages ``export images``, ``export masks``, ``export``).
        visuals: also write ``visuals/`` (:func:`vggsfm_ns.visuals.write_visuals`) inside the
            same atomic folder, so an interrupted run leaves neither dataset nor pictures.

    Returns:
        ``output_dir`` as an absolute path.

    Contents: ``images/`` holds every input frame under its name (the original bytes when the file
    is upright 8-bit RGB, else re-encoded upright 8-bit RGB in the same format); ``transforms.json``
    lists only registered frames with OpenGL camera-to-world poses in the saved world; intrinsics
    are top-level when all registered frames share one COLMAP camera, else per frame;
    ``sparse_pc.ply`` holds the model's points in the saved world; masks are written as
    black = ignore; depth maps come from :func:`vggsfm_ns.depth.export.save_depth_maps`.

    Raises:
        ReconstructionError: if no frame is registered.
        OutputExistsError / InputError: see :func:`vggsfm_ns.io.atomic.check_output_dir`.
        OutputError / OSError: a file cannot be written (nothing is left at ``output_dir``).
        ValueError: if the model's image names are not frame names, or a camera model cannot be
            expressed in ``transforms.json``.
    """
    from ..report import build_report, frame_statistics

    output_dir = Path(output_dir).expanduser().absolute()
    frames = result.frames
    recon = result.sfm.reconstruction
    registered = _registered(result)
    if not registered:
        raise ReconstructionError("no frame was registered; nothing to export")
    cams = {img.camera_id: camera_to_json(recon.cameras[img.camera_id]) for _, img in registered}
    ns_models = {c["camera_model"] for c in cams.values()}
    if len(ns_models) > 1:
        raise ValueError(f"transforms.json cannot mix camera models {sorted(ns_models)}")

    inputs: List[Optional[Path]] = [frames.source]
    inputs += sorted({Path(p).parent for p in frames.mask_paths if p is not None})
    timings = result.timings if result.timings is not None else {}

    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs) as tmp:
        _export_images(frames, tmp, num_downscales, observer, timings)
        mask_rel = _export_masks(frames, tmp, num_downscales, observer, timings) if frames.has_masks else None

        with Stage(observer, "export", timings=timings):
            sparse_dir = tmp / "colmap" / "sparse" / "0"
            sparse_dir.mkdir(parents=True)
            recon.write_binary(str(sparse_dir))

            depth_rel: Optional[Dict[int, str]] = None
            if result.depth is not None:
                from ..depth.export import save_depth_maps

                depth_rel = save_depth_maps(result.depth, frames, tmp, num_downscales)
                missing = [frames.names[i] for i, _ in registered if i not in depth_rel]
                if missing:
                    result.messages.append(
                        f"depth maps missing for {len(missing)} registered frame(s) (e.g. {missing[0]}); depth_file_path omitted"
                    )
                    depth_rel = None

            _, xyz, rgb, _ = model_points(recon)
            write_ply(tmp / "sparse_pc.ply", to_saved_world(xyz), rgb)
            ply_name = "sparse_pc.ply"
            if result.dense_points is not None and len(result.dense_points[0]):
                dxyz, drgb = result.dense_points
                write_ply(tmp / "dense_pc.ply", to_saved_world(np.asarray(dxyz)), np.asarray(drgb, np.uint8))
                ply_name = "dense_pc.ply"

            stats = frame_statistics(recon, frames.names)
            shared = len(cams) == 1
            meta: Dict[str, Any] = {}
            if shared:
                meta.update(next(iter(cams.values())))
            else:
                meta["camera_model"] = ns_models.pop()
            A = applied_transform_44()
            out_frames = []
            for i, img in registered:
                c2w = A @ opencv_w2c_to_opengl_c2w(img.cam_from_world().matrix())
                fr: Dict[str, Any] = {
                    "file_path": f"images/{frames.names[i]}",
                    "transform_matrix": c2w.tolist(),
                    "colmap_im_id": int(img.image_id),
                }
                if not shared:
                    fr.update({k: v for k, v in cams[img.camera_id].items() if k != "camera_model"})
                if mask_rel is not None:
                    fr["mask_path"] = mask_rel[i]
                if depth_rel is not None:
                    fr["depth_file_path"] = depth_rel[i]
                fr["vggsfm_reliable"] = bool(stats[i]["reliable"])
                out_frames.append(fr)
            meta["frames"] = out_frames
            meta["applied_transform"] = APPLIED_TRANSFORM.tolist()
            meta["ply_file_path"] = ply_name
            if depth_rel is not None:
                meta["vggsfm_depth_unit_scale_factor"] = DEPTH_UNIT_SCALE_FACTOR
            with open(tmp / "transforms.json", "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=4)

        report = build_report(result, stats)
        with open(tmp / "vggsfm_report.json", "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        if visuals:
            from ..visuals import write_visuals

            write_visuals(result, tmp, observer=observer)
    return output_dir
