"""pycolmap glue: tensors <-> ``pycolmap.Reconstruction``, bundle adjustment, pose refinement, PnP.

pycolmap 4.x API: every camera gets a trivial rig (``add_camera_with_trivial_rig``), every image a
trivial frame (``add_image_with_trivial_frame``), poses are ``Image.cam_from_world()`` (a method).
Image ids are ``frame index + 1``; camera ids are ``frame index + 1`` (or 1 for a shared camera).

Source: official ``vggsfm/utils/tensor_to_pycolmap.py`` (``batch_matrix_to_pycolmap``,
``pycolmap_to_batch_matrix``), ``prepare_ba_options`` and the pycolmap calls of
``vggsfm/utils/triangulation.py`` (``init_BA``, ``global_BA``, ``refine_pose``).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from ..geometry.camera import colmap_params, from_colmap_params

#: Points with a coordinate beyond this are not handed to COLMAP (official ``max_points3D_val``).
MAX_POINT_COORD = 3000.0


_glog_lock = threading.Lock()
_glog_state = {"depth": 0, "saved": 0}


@contextlib.contextmanager
def quiet_glog() -> Iterator[None]:
    """Silence COLMAP's glog INFO lines (``=== Global bundle adjustment ===``) inside the block.

    Safe with blocks on several threads at once: the first block to enter saves the level, the
    last to leave restores it.
    """
    import pycolmap

    with _glog_lock:
        if _glog_state["depth"] == 0:
            _glog_state["saved"] = pycolmap.logging.minloglevel
            pycolmap.logging.minloglevel = max(_glog_state["saved"], 2)
        _glog_state["depth"] += 1
    try:
        yield
    finally:
        with _glog_lock:
            _glog_state["depth"] -= 1
            if _glog_state["depth"] == 0:
                pycolmap.logging.minloglevel = _glog_state["saved"]


def make_camera(camera_type: str, K: np.ndarray, extra: Optional[np.ndarray], width: int, height: int, camera_id: int):
    """A ``pycolmap.Camera`` of ``camera_type`` from ``K (3, 3)`` and ``extra (E,)``."""
    import pycolmap

    return pycolmap.Camera(
        model=camera_type,
        width=int(width),
        height=int(height),
        params=colmap_params(camera_type, K, extra),
        camera_id=int(camera_id),
    )


def rigid(ext: np.ndarray):
    """``pycolmap.Rigid3d`` of a ``(3, 4)`` cam_from_world (rotation re-orthonormalised)."""
    import pycolmap

    R = np.asarray(ext[:3, :3], np.float64)
    U, _, Vt = np.linalg.svd(R)
    R = U @ Vt
    if np.linalg.det(R) < 0:
        R = U @ np.diag([1.0, 1.0, -1.0]) @ Vt
    return pycolmap.Rigid3d(pycolmap.Rotation3d(R), np.asarray(ext[:3, 3], np.float64))


@dataclass
class BuiltModel:
    """A reconstruction built from tensors and the map back to them.

    Attributes:
        reconstruction: the ``pycolmap.Reconstruction``.
        frames: frame indices that were added as images (image id = frame + 1).
        point_ids: ``(P,)`` int64 point3D id of each input point, -1 where it was not added.
        camera_ids: ``(S,)`` camera id of each frame (0 for frames not added).
    """

    reconstruction: object
    frames: List[int]
    point_ids: np.ndarray
    camera_ids: np.ndarray


def build_reconstruction(
    camera_type: str,
    extrinsics: np.ndarray,
    K: np.ndarray,
    extra: Optional[np.ndarray],
    sizes: np.ndarray,
    points: np.ndarray,
    points2d: np.ndarray,
    obs: np.ndarray,
    frames: Sequence[int],
    camera_ids: Optional[np.ndarray] = None,
    names: Optional[Sequence[str]] = None,
    colors: Optional[np.ndarray] = None,
    min_track_length: int = 2,
) -> BuiltModel:
    """Build a ``pycolmap.Reconstruction`` from arrays.

    Args:
        camera_type: COLMAP model of every camera.
        extrinsics: ``(S, 3, 4)`` cam_from_world; K: ``(S, 3, 3)``; extra: ``(S, E)`` or None.
        sizes: ``(S, 2)`` camera ``(width, height)``.
        points: ``(P, 3)`` world points (non-finite or ``|x| >= MAX_POINT_COORD`` are skipped).
        points2d: ``(S, P, 2)`` observations in the cameras' pixels (COLMAP's corner convention).
        obs: ``(S, P)`` bool, observations to add.
        frames: frame indices to add (registered, with their pose).
        camera_ids: ``(S,)`` camera id of each frame; frames with the same id share one camera
            (the intrinsics of the first added frame). Default: ``frame + 1`` (one camera each).
        names: image names (default ``frame_00000``...).
        colors: ``(P, 3)`` uint8 point colours.
        min_track_length: points with fewer observations in ``frames`` are skipped.

    Returns:
        :class:`BuiltModel`.
    """
    import pycolmap

    S = extrinsics.shape[0]
    P = points.shape[0]
    frames = [int(f) for f in frames]
    rec = pycolmap.Reconstruction()
    cam_ids = np.arange(1, S + 1, dtype=np.int64) if camera_ids is None else np.asarray(camera_ids, np.int64).copy()
    ex = None if extra is None or extra.shape[-1] == 0 else extra
    added = set()
    for i in frames:
        cid = int(cam_ids[i])
        if cid in added:
            continue
        rec.add_camera_with_trivial_rig(make_camera(camera_type, K[i], None if ex is None else ex[i], sizes[i][0], sizes[i][1], cid))
        added.add(cid)
    ok_pt = np.isfinite(points).all(-1) & (np.abs(points) < MAX_POINT_COORD).all(-1)
    fmask = np.zeros(S, bool)
    fmask[frames] = True
    o = obs & fmask[:, None] & ok_pt[None]
    keep = o.sum(0) >= min_track_length
    o = o & keep[None]
    # point2D index of each kept observation inside its image, in track order
    idx2d = np.cumsum(o, axis=1) - 1
    for i in frames:
        name = names[i] if names is not None else f"frame_{i:05d}"
        kp = np.ascontiguousarray(points2d[i][o[i]], dtype=np.float64).reshape(-1, 2)
        img = pycolmap.Image(name=name, keypoints=kp, camera_id=int(cam_ids[i]), image_id=i + 1)
        rec.add_image_with_trivial_frame(img, rigid(extrinsics[i]))
    point_ids = np.full(P, -1, np.int64)
    cols = np.zeros((P, 3), np.uint8) if colors is None else np.asarray(colors, np.uint8)
    Track, TrackElement = pycolmap.Track, pycolmap.TrackElement
    frames_arr = np.asarray(frames)
    oT = o[frames_arr].T  # (P, F)
    idxT = idx2d[frames_arr].T
    for p in np.nonzero(keep)[0]:
        sel = np.nonzero(oT[p])[0]
        tr = Track()
        tr.add_elements([TrackElement(int(frames_arr[k]) + 1, int(idxT[p, k])) for k in sel])
        point_ids[p] = rec.add_point3D(points[p].astype(np.float64), tr, cols[p])
    out_ids = np.zeros(S, np.int64)
    out_ids[frames_arr] = cam_ids[frames_arr]
    return BuiltModel(rec, frames, point_ids, out_ids)


def read_back(built: BuiltModel, camera_type: str, extrinsics: np.ndarray, K: np.ndarray, extra: Optional[np.ndarray], points: np.ndarray):
    """Copy poses, intrinsics and points of ``built`` into (copies of) the arrays.

    Args:
        built: the model made by :func:`build_reconstruction` (image id = frame index + 1).
        camera_type: COLMAP model name of the cameras (``SIMPLE_PINHOLE``, ``SIMPLE_RADIAL``, ...).
        extrinsics: ``(S, 3, 4)`` float64 OpenCV ``cam_from_world``.
        K: ``(S, 3, 3)`` float64 intrinsics in processed pixels, corner convention (COLMAP's).
        extra: ``(S, E)`` float64 distortion parameters, or None.
        points: ``(P, 3)`` float64 world points, row ``p`` <-> ``built.point_ids[p]``.

    Returns:
        ``(extrinsics, K, extra, points)`` with the model's values; frames / points not in the model
        keep their input values. The inputs are not modified.

    Source: the read-back half of the official ``iterative_global_BA`` (``pycolmap_to_batch_matrix``).
    """
    rec = built.reconstruction
    ext = extrinsics.copy()
    K = K.copy()
    extra = None if extra is None else extra.copy()
    for i in built.frames:
        img = rec.image(i + 1)
        ext[i] = img.cam_from_world().matrix()
        Ki, ei = from_colmap_params(camera_type, rec.camera(int(built.camera_ids[i])).params)
        K[i] = Ki
        if extra is not None and extra.shape[-1] > 0:
            extra[i] = ei
    pts = points.copy()
    ids = built.point_ids
    for p in np.nonzero(ids >= 0)[0]:
        pts[p] = rec.point3D(int(ids[p])).xyz
    return ext, K, extra, pts


def pose_refinement_options(refine_focal: bool, refine_extra: bool = False):
    """Quiet ``pycolmap.AbsolutePoseRefinementOptions`` (pose always refined; the focal length and
    the extra (distortion) parameters only when asked).

    Source: official ``refine_pose`` options (``vggsfm/utils/triangulation_helpers.py``).
    """
    import pycolmap

    o = pycolmap.AbsolutePoseRefinementOptions()
    o.refine_focal_length = bool(refine_focal)
    o.refine_extra_params = bool(refine_extra)
    o.print_summary = False
    return o


def ba_options(max_iterations: int = 50, function_tolerance: float = 0.0, refine_intrinsics: bool = True, refine_extra: bool = True, official_prepare: bool = True):
    """``pycolmap.BundleAdjustmentOptions`` as the official ``prepare_ba_options``.

    Args:
        max_iterations: Ceres iterations (official 50; pycolmap default 100 for the final BA).
        function_tolerance: relative cost change to stop at (COLMAP's default 0 never stops early;
            we use 1e-6 for the intermediate rounds, which changes the result far below the noise).
        refine_intrinsics: refine focal lengths (False for fixed, known intrinsics).
        refine_extra: refine distortion parameters.
        official_prepare: multiply the solver tolerances by 10 (``prepare_ba_options``).

    Ceres uses :func:`vggsfm_ns.threads.cpu_workers` threads (pycolmap's default is every logical
    core), on problems from pycolmap's ``min_num_residuals_for_cpu_multi_threading`` up.
    """
    import pycolmap

    from ..threads import cpu_workers

    o = pycolmap.BundleAdjustmentOptions()
    o.print_summary = False
    o.refine_focal_length = bool(refine_intrinsics)
    o.refine_principal_point = False
    o.refine_extra_params = bool(refine_intrinsics and refine_extra)
    so = o.ceres.solver_options
    if official_prepare:
        so.function_tolerance *= 10
        so.gradient_tolerance *= 10
        so.parameter_tolerance *= 10
        so.max_linear_solver_iterations = 200
    so.function_tolerance = max(so.function_tolerance, float(function_tolerance))
    so.max_num_iterations = int(max_iterations)
    so.num_threads = cpu_workers()
    return o


def bundle_adjust(built: BuiltModel, options) -> Dict:
    """Run bundle adjustment on all images of ``built``, in place (gauge: the first two camera poses).

    Args:
        built: the model (:func:`build_reconstruction`); poses, intrinsics (as ``options`` allow)
            and every point are adjusted, in the model's own units (pixels for residuals).
        options: ``pycolmap.BundleAdjustmentOptions`` (:func:`ba_options`).

    Returns:
        :func:`solve_ba`'s summary.

    Source: official ``iterative_global_BA`` -> ``pycolmap.bundle_adjustment``; the two-camera
    gauge replaces COLMAP's default of fixing the first pose and the scale through a point.
    """
    import pycolmap

    rec = built.reconstruction
    cfg = pycolmap.BundleAdjustmentConfig()
    for i in built.frames:
        cfg.add_image(i + 1)
    if len(built.frames) >= 2:
        cfg.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    return solve_ba(rec, options, cfg)


#: Bundle adjustments over more than ``ITERATIVE_MIN_IMAGES`` images whose points are seen in
#: ``ITERATIVE_MIN_TRACK_LENGTH`` images or more on average use Ceres' iterative Schur solver
#: instead of the direct sparse one (pycolmap's choice up to 1000 images): long tracks make the
#: reduced camera system nearly dense, and forming it costs the sum of squared track lengths.
#: Final BA, 400 frames: synthetic orbit (227 views per point) 64.5 s -> 19.2 s, synthetic forward
#: walk (150) 200 s -> 35 s, same cost to 0.05 %; a real 300-frame video (KLT, ~23 views per
#: point) is faster with the direct solver (10.3 s vs 12.8 s) and keeps it.
ITERATIVE_MIN_IMAGES, ITERATIVE_MIN_TRACK_LENGTH = 100, 50


def solve_ba(rec, options, config) -> Dict:
    """Run ``pycolmap``'s bundle adjuster on ``rec`` (in place), quietly.

    Args:
        rec: ``pycolmap.Reconstruction`` to adjust.
        options: ``pycolmap.BundleAdjustmentOptions``.
        config: ``pycolmap.BundleAdjustmentConfig`` (which images, which parameters are constant).

    The linear solver is pycolmap's automatic choice, except for long tracks over many images
    (see :data:`ITERATIVE_MIN_TRACK_LENGTH`), which get the iterative Schur solver. ``options`` is
    left as it was given.

    Returns:
        ``{"seconds", "observations", "iterations", "initial_cost", "final_cost", "usable",
        "linear_solver"}`` from the Ceres summary (``observations``: residual blocks;
        ``linear_solver``: e.g. ``"DENSE_SCHUR"``, ``"SPARSE_SCHUR"``, ``"ITERATIVE_SCHUR"``).
    """
    import time

    import pycolmap

    n_img = len(config.images)
    n_pts = rec.num_points3D()
    ceres = options.ceres
    saved = ceres.max_num_images_direct_sparse_cpu_solver
    if n_img > ITERATIVE_MIN_IMAGES and n_pts and rec.compute_num_observations() >= ITERATIVE_MIN_TRACK_LENGTH * n_pts:
        ceres.max_num_images_direct_sparse_cpu_solver = min(saved, n_img - 1)
    t0 = time.perf_counter()
    try:
        with quiet_glog():
            summary = pycolmap.create_default_bundle_adjuster(options, config, rec).solve()
    finally:
        ceres.max_num_images_direct_sparse_cpu_solver = saved
    cs = summary.ceres_summary
    return {
        "seconds": time.perf_counter() - t0,
        "observations": int(cs.num_residual_blocks),
        "iterations": int(cs.num_successful_steps + cs.num_unsuccessful_steps),
        "initial_cost": float(cs.initial_cost),
        "final_cost": float(cs.final_cost),
        "usable": bool(summary.is_solution_usable()) if callable(getattr(summary, "is_solution_usable", None)) else True,
        "linear_solver": getattr(cs.linear_solver_type_used, "name", str(cs.linear_solver_type_used)),
    }


def normalize(built: BuiltModel, extent: float = 5.0, p0: float = 0.1, p1: float = 0.9) -> np.ndarray:
    """Recentre and rescale the scene so the camera centres span ``extent`` (official
    ``reconstruction.normalize(5.0, 0.1, 0.9, True)`` after every BA).

    Returns:
        ``(3, 4)`` new_from_old similarity ``[s R | t]`` that was applied.
    """
    sim = built.reconstruction.normalize(fixed_scale=False, extent=float(extent), min_percentile=float(p0), max_percentile=float(p1), use_images=True)
    return np.asarray(sim.matrix(), np.float64)
