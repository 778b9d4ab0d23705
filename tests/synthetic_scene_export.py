"""A synthetic reconstruction and its output folder, written exactly as ``docs/output_format.md`` says.

Used by the dataparser, viewer and visuals tests until real exports are available. Ground truth is
known: cameras on a ring around random points, every observation is the exact projection (OpenCV
model, pixel-corner convention), depth PNGs are a z-buffer of the points.

Layout written by :func:`make_scene`::

    root/images/frame_0000k.png      coloured points (3x3 px) on a grey gradient
    root/masks/frame_0000k.png       255 keep, 0 in the top-left 12x12 block
    root/depths/frame_0000k.png      uint16 z-depth in mm of scene units, 0 = no point
    root/colmap/sparse/0/*.bin       pycolmap model (corner convention)
    root/transforms.json             OpenGL c2w in the applied world + our keys
    root/sparse_pc.ply               binary little-endian, float xyz + uchar rgb, applied world
    root/vggsfm_report.json          per-frame quality flags
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from vggsfm_ns.conventions import corner_to_center, opencv_w2c_to_opengl_c2w, resize_transform

#: colmap_to_json's world change (y/z swap, z negated), as written into ``applied_transform``.
APPLIED = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]])


@dataclass
class SyntheticScene:
    root: Path
    names: List[str]  # all frames (registered or not)
    registered: np.ndarray  # (S,) bool
    reliable: np.ndarray  # (S,) bool
    K: np.ndarray  # (S, 3, 3) corner convention
    dist: np.ndarray  # (S, 4) k1 k2 p1 p2
    w2c: np.ndarray  # (S, 3, 4) OpenCV, COLMAP world
    points: np.ndarray  # (P, 3) COLMAP world
    colors: np.ndarray  # (P, 3) uint8
    obs: List[Dict[str, np.ndarray]]  # per frame: "idx" (n,), "xy" (n, 2) corner px, "z" (n,)
    size: tuple  # (W, H)
    recon: object = None
    in_model: np.ndarray = None  # (P',) indices of the points that are in the COLMAP model / ply
    depth_png: Dict[str, np.ndarray] = field(default_factory=dict)


def project(w2c: np.ndarray, K: np.ndarray, dist: np.ndarray, X: np.ndarray):
    """OpenCV model projection. Returns (xy corner px (N, 2), z (N,))."""
    Xc = X @ w2c[:3, :3].T + w2c[:3, 3]
    z = Xc[:, 2]
    x, y = Xc[:, 0] / z, Xc[:, 1] / z
    k1, k2, p1, p2 = dist
    r2 = x * x + y * y
    rad = 1 + k1 * r2 + k2 * r2 * r2
    xd = x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    u = K[0, 0] * xd + K[0, 2]
    v = K[1, 1] * yd + K[1, 2]
    return np.stack([u, v], -1), z


def _look_at_w2c(center: np.ndarray, target: np.ndarray, down: np.ndarray) -> np.ndarray:
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(down, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world
    return np.concatenate([R, (-R @ center)[:, None]], 1)


def make_scene(
    root: Path,
    num_frames: int = 6,
    width: int = 96,
    height: int = 72,
    num_points: int = 400,
    per_frame_intrinsics: bool = False,
    distortion: bool = False,
    unreliable: Sequence[int] = (3,),
    unregistered: Sequence[int] = (),
    masks: bool = True,
    depth: bool = True,
    point_color: Optional[tuple] = None,
    seed: int = 0,
) -> SyntheticScene:
    import pycolmap
    from plyfile import PlyData, PlyElement

    rng = np.random.default_rng(seed)
    root = Path(root)
    for d in ("images", "masks", "depths", "colmap/sparse/0"):
        if d == "masks" and not masks or d == "depths" and not depth:
            continue
        (root / d).mkdir(parents=True, exist_ok=True)
    S, W, H = num_frames, width, height
    names = [f"frame_{i + 1:05d}.png" for i in range(S)]
    registered = np.ones(S, bool)
    registered[list(unregistered)] = False
    reliable = registered.copy()
    reliable[list(unreliable)] = False

    points = rng.uniform(-1.0, 1.0, (num_points, 3))
    if point_color is None:
        colors = rng.integers(30, 255, (num_points, 3)).astype(np.uint8)
    else:
        colors = np.tile(np.asarray(point_color, np.uint8), (num_points, 1))

    K = np.zeros((S, 3, 3))
    dist = np.zeros((S, 4))
    w2c = np.zeros((S, 3, 4))
    for i in range(S):
        f = 80.0 + (3.0 * i if per_frame_intrinsics else 0.0)
        cx = W / 2 + (0.7 * i if per_frame_intrinsics else 0.0)
        cy = H / 2 - (0.4 * i if per_frame_intrinsics else 0.0)
        K[i] = [[f, 0, cx], [0, f * (1.0 + (0.01 if per_frame_intrinsics else 0.0)), cy], [0, 0, 1]]
        if distortion:
            dist[i] = [-0.05 + 0.01 * (i if per_frame_intrinsics else 0), 0.01, 0.001, -0.0015]
        a = 2 * np.pi * i / S + 0.3
        center = np.array([4.2 * np.sin(a), -0.6 + 0.2 * np.cos(3 * a), -4.2 * np.cos(a)])
        w2c[i] = _look_at_w2c(center, rng.normal(0, 0.05, 3), np.array([0.0, 1.0, 0.0]))

    yy, xx = np.mgrid[0:H, 0:W]
    bg = (90 + 60 * xx / W + 30 * yy / H).astype(np.uint8)
    obs: List[Dict[str, np.ndarray]] = []
    depth_png: Dict[str, np.ndarray] = {}
    for i in range(S):
        xy, z = project(w2c[i], K[i], dist[i], points)
        inside = (z > 0) & (xy[:, 0] >= 2) & (xy[:, 0] < W - 2) & (xy[:, 1] >= 2) & (xy[:, 1] < H - 2)
        idx = np.nonzero(inside)[0]
        obs.append({"idx": idx, "xy": xy[idx], "z": z[idx]})
        img = np.stack([bg, bg, bg], -1).copy()
        zbuf = np.full((H, W), np.inf)
        for j in idx[np.argsort(-z[idx])]:  # far to near: near points overwrite
            c, r = int(np.floor(xy[j, 0])), int(np.floor(xy[j, 1]))
            img[r - 1 : r + 2, c - 1 : c + 2] = colors[j]
            zbuf[r - 1 : r + 2, c - 1 : c + 2] = z[j]
        Image.fromarray(img).save(root / "images" / names[i])
        if masks:
            m = np.full((H, W), 255, np.uint8)
            m[:12, :12] = 0
            Image.fromarray(m).save(root / "masks" / names[i])
        if depth:
            d = np.where(np.isfinite(zbuf), np.round(zbuf * 1000.0), 0).astype(np.uint16)
            depth_png[names[i]] = d
            Image.fromarray(d).save(root / "depths" / names[i])

    # COLMAP model (registered frames only).
    rec = pycolmap.Reconstruction()
    shared = not per_frame_intrinsics
    for i in range(S):
        if shared and i > 0:
            break
        cam = pycolmap.Camera(
            model="OPENCV",
            width=W,
            height=H,
            params=[K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2], *dist[i]],
            camera_id=i + 1,
        )
        rec.add_camera_with_trivial_rig(cam)
    point_tracks: Dict[int, List[tuple]] = {}
    for i in range(S):
        if not registered[i]:
            continue
        o = obs[i]
        p2d = pycolmap.Point2DList([pycolmap.Point2D(o["xy"][k]) for k in range(len(o["idx"]))])
        im = pycolmap.Image(name=names[i], points2D=p2d, camera_id=1 if shared else i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(im, pycolmap.Rigid3d(w2c[i]))
        for k, j in enumerate(o["idx"]):
            point_tracks.setdefault(int(j), []).append((i + 1, k))
    pid_of = {}
    for j, els in sorted(point_tracks.items()):
        if len(els) < 2:
            continue
        track = pycolmap.Track([pycolmap.TrackElement(a, b) for a, b in els])
        pid = rec.add_point3D(points[j], track, colors[j])
        pid_of[j] = pid
        for a, b in els:
            rec.image(a).set_point3D_for_point2D(b, pid)
    rec.update_point_3d_errors()
    rec.write_binary(str(root / "colmap/sparse/0"))

    # transforms.json (registered frames), points in the applied world.
    A4 = np.vstack([APPLIED, [0, 0, 0, 1]])
    c2w = opencv_w2c_to_opengl_c2w(w2c)
    frames = []
    for i in range(S):
        if not registered[i]:
            continue
        stem = Path(names[i]).stem
        fr = {"file_path": f"images/{names[i]}", "transform_matrix": (A4 @ c2w[i]).tolist(), "colmap_im_id": i + 1}
        if not shared:
            fr.update(_cam_keys(K[i], dist[i], W, H))
        if masks:
            fr["mask_path"] = f"masks/{stem}.png"
        if depth:
            fr["depth_file_path"] = f"depths/{stem}.png"
        fr["vggsfm_reliable"] = bool(reliable[i])
        frames.append(fr)
    meta = {"camera_model": "OPENCV"}
    if shared:
        meta.update(_cam_keys(K[0], dist[0], W, H))
    meta["frames"] = frames
    meta["applied_transform"] = APPLIED.tolist()
    meta["ply_file_path"] = "sparse_pc.ply"
    if depth:
        meta["vggsfm_depth_unit_scale_factor"] = 1e-3
    (root / "transforms.json").write_text(json.dumps(meta, indent=2))

    in_model = np.array(sorted(pid_of))
    xyz_applied = points[in_model] @ APPLIED[:, :3].T + APPLIED[:, 3]
    v = np.empty(len(in_model), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = xyz_applied.T.astype(np.float32)
    v["red"], v["green"], v["blue"] = colors[in_model].T
    PlyData([PlyElement.describe(v, "vertex")], text=False, byte_order="<").write(str(root / "sparse_pc.ply"))

    report = {
        "version": 1,
        "summary": {
            "frames_in": S,
            "frames_registered": int(registered.sum()),
            "points": len(in_model),
            "mean_reproj_error_px": 0.0,
            "mean_track_length": float(np.mean([len(v) for v in point_tracks.values()])),
            "seconds": {"frames": 0.1},
        },
        "frames": [
            {
                "name": names[i],
                "registered": bool(registered[i]),
                "reliable": bool(reliable[i]),
                "num_observations": int(len(obs[i]["idx"])) if registered[i] else 0,
                "mean_reproj_error_px": (3.5 if not reliable[i] else 0.2) if registered[i] else None,
                "image_id": i + 1 if registered[i] else None,
            }
            for i in range(S)
        ],
        "config": {},
    }
    (root / "vggsfm_report.json").write_text(json.dumps(report, indent=2))
    return SyntheticScene(root, names, registered, reliable, K, dist, w2c, points, colors, obs, (W, H), rec, in_model, depth_png)


def _cam_keys(K, d, W, H):
    return {
        "fl_x": float(K[0, 0]),
        "fl_y": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "w": int(W),
        "h": int(H),
        "k1": float(d[0]),
        "k2": float(d[1]),
        "p1": float(d[2]),
        "p2": float(d[3]),
    }


def make_result(scene: SyntheticScene, track_max_size: int = 64):
    """A :class:`vggsfm_ns.types.ReconstructionResult` matching ``scene`` (tracks in a processed frame
    that is the original image resized to ``track_max_size`` on the longer side)."""
    from vggsfm_ns.types import FrameSet, ReconstructionResult, SfMResult, TrackSet

    S, P = len(scene.names), scene.points.shape[0]
    W, H = scene.size
    frames = FrameSet(
        names=list(scene.names),
        sizes=np.tile([W, H], (S, 1)),
        paths=[scene.root / "images" / n for n in scene.names],
        ordered=True,
        source=scene.root,
    )
    tf = [resize_transform(W, H, track_max_size) for _ in range(S)]
    tracks = np.zeros((S, P, 2), np.float32)
    vis = np.zeros((S, P), np.float32)
    for i in range(S):
        xy, _ = project(scene.w2c[i], scene.K[i], scene.dist[i], scene.points)
        tracks[i] = tf[i].orig_to_proc(corner_to_center(xy), "center")
        vis[i, scene.obs[i]["idx"]] = 1.0
    ts = TrackSet(
        tracks=torch.from_numpy(tracks),
        vis=torch.from_numpy(vis),
        score=None,
        query_frames=torch.zeros(P, dtype=torch.int64),
        transforms=tf,
        source="synthetic",
    )
    rec = scene.recon
    reg = torch.from_numpy(scene.registered.copy())
    sfm = SfMResult(
        reconstruction=rec,
        extrinsics=torch.from_numpy(scene.w2c.copy()),
        intrinsics=torch.from_numpy(scene.K.copy()),
        extra_params=torch.from_numpy(scene.dist.copy()),
        camera_type="OPENCV",
        points3D=torch.from_numpy(scene.points[scene.in_model].copy()),
        points3D_rgb=torch.from_numpy(scene.colors[scene.in_model].copy()),
        point_track_ids=torch.from_numpy(scene.in_model.astype(np.int64)),
        track_inlier_mask=torch.from_numpy(vis > 0) & reg[:, None],
        valid_frame_mask=reg,
        image_ids=torch.arange(1, S + 1),
    )
    return ReconstructionResult(frames=frames, tracks=ts, sfm=sfm)
