"""A synthetic reconstruction for export tests: cameras on a ring around random points, exact
observations, small random images on disk. Built with pycolmap so it is a real COLMAP model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from vggsfm_ns.config import preset
from vggsfm_ns.types import FrameSet, ReconstructionResult, SfMResult


def look_at_w2c(center: np.ndarray, target: np.ndarray = np.zeros(3), up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """OpenCV world-to-camera (3, 4) of a camera at ``center`` looking at ``target``."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return np.hstack([R, (-R @ center)[:, None]])


def make_scene(
    root: Path,
    n_frames: int = 6,
    sizes: Optional[Sequence[Tuple[int, int]]] = None,
    camera_model: str = "SIMPLE_RADIAL",
    shared: bool = True,
    n_points: int = 150,
    seed: int = 0,
    unregistered: Sequence[int] = (),
    image_ext: str = ".png",
    noise_px: float = 0.0,
) -> ReconstructionResult:
    """Write ``n_frames`` random images under ``root/input`` and return a matching result.

    Frames in ``unregistered`` are left out of the COLMAP model. With ``shared`` all frames use
    camera 1 (all ``sizes`` must then be equal).
    """
    import pycolmap

    rng = np.random.default_rng(seed)
    sizes = list(sizes) if sizes is not None else [(64, 48)] * n_frames
    inp = Path(root) / "input"
    inp.mkdir(parents=True, exist_ok=True)
    names, paths = [], []
    for i, (w, h) in enumerate(sizes):
        name = f"img_{i:03d}{image_ext}"
        p = inp / name
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        names.append(name)
        paths.append(p)
    frames = FrameSet(names=names, sizes=np.array(sizes), paths=paths, source=inp)

    rec = pycolmap.Reconstruction()
    cams = []
    for i, (w, h) in enumerate(sizes):
        if shared and i > 0:
            cams.append(cams[0])
            continue
        f = 1.1 * max(w, h) * (1.0 + 0.05 * i)
        params = {
            "SIMPLE_PINHOLE": [f, w / 2, h / 2],
            "PINHOLE": [f, 0.97 * f, w / 2 + 1.5, h / 2 - 1.0],
            "SIMPLE_RADIAL": [f, w / 2, h / 2, 0.03],
            "OPENCV": [f, 0.98 * f, w / 2 + 0.5, h / 2 - 0.5, 0.02, -0.01, 0.001, -0.002],
        }[camera_model]
        cam = pycolmap.Camera(model=camera_model, width=w, height=h, params=params, camera_id=len(cams) + 1 if not shared else 1)
        rec.add_camera_with_trivial_rig(cam)
        cams.append(cam)

    pts = rng.uniform(-1.0, 1.0, (n_points, 3))
    cols = rng.integers(0, 256, (n_points, 3), dtype=np.uint8)
    S = len(sizes)
    ext = np.zeros((S, 3, 4))
    K = np.zeros((S, 3, 3))
    obs_xy = {}
    for i in range(S):
        a = 2 * np.pi * i / S
        center = np.array([4.0 * np.cos(a), 4.0 * np.sin(a), 1.0 + 0.2 * np.sin(3 * a)])
        ext[i] = look_at_w2c(center)
        cam = cams[i]
        K[i] = cam.calibration_matrix()
        cam_pts = pts @ ext[i][:, :3].T + ext[i][:, 3]
        xy = np.asarray(cam.img_from_cam(cam_pts, check_cheirality=False)).reshape(-1, 2)
        w, h = sizes[i]
        ok = (cam_pts[:, 2] > 0) & (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        obs_xy[i] = (np.nonzero(ok)[0], xy[ok] + rng.normal(0, noise_px, xy[ok].shape))

    registered = [i for i in range(S) if i not in set(unregistered)]
    point2d_idx = {}
    for i in registered:
        idx, xy = obs_xy[i]
        img = pycolmap.Image(name=names[i], keypoints=xy.astype(np.float64), camera_id=cams[i].camera_id, image_id=i + 1)
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(pycolmap.Rotation3d(ext[i][:, :3]), ext[i][:, 3]))
        for k, p in enumerate(idx):
            point2d_idx.setdefault(int(p), []).append((i + 1, k))
    kept = []
    for p, elems in sorted(point2d_idx.items()):
        if len(elems) < 2:
            continue
        track = pycolmap.Track()
        for image_id, k in elems:
            track.add_element(image_id, k)
        rec.add_point3D(pts[p], track, cols[p])
        kept.append(p)
    rec.update_point_3d_errors()

    valid = np.array([i in registered for i in range(S)])
    sfm = SfMResult(
        reconstruction=rec,
        extrinsics=torch.from_numpy(ext),
        intrinsics=torch.from_numpy(K),
        extra_params=torch.zeros(S, 0, dtype=torch.float64),
        camera_type=camera_model,
        points3D=torch.from_numpy(pts[kept]),
        points3D_rgb=torch.from_numpy(cols[kept]),
        point_track_ids=torch.tensor(kept, dtype=torch.int64),
        track_inlier_mask=torch.zeros(S, n_points, dtype=torch.bool),
        valid_frame_mask=torch.from_numpy(valid),
        image_ids=torch.arange(1, S + 1, dtype=torch.int64),
    )
    return ReconstructionResult(
        frames=frames,
        tracks=None,
        sfm=sfm,
        timings={"tracks": 1.5, "sfm": 2.25},
        messages=["synthetic scene"],
        config=preset("default"),
    )
