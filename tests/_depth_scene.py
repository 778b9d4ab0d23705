"""A synthetic scene with known geometry for the depth tests.

A room corner (a wall at Z = 6 and a floor at Y = 1.5, OpenCV world: y down) plus a small square
patch floating at Z = 3.5, seen by a few pinhole (or radial) cameras that look roughly along +Z.
Everything is exact: per-camera z-depth and colour are rendered by ray casting, the SfM points are
sampled on the visible surfaces and observed (occlusion-tested) in every camera that sees them, and
the COLMAP model is a real pycolmap reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from vggsfm_ns.types import FrameSet, SfMResult

# Axis-aligned rectangles: (axis, value, ((lo, hi) of the other two axes in increasing axis order)).
RECTS = [
    (2, 6.0, ((-6.0, 6.0), (-4.0, 1.5))),  # wall Z = 6: x, y
    (1, 1.5, ((-6.0, 6.0), (0.0, 6.0))),  # floor Y = 1.5: x, z
    (2, 3.5, ((-0.6, 0.6), (-0.6, 0.6))),  # floating patch Z = 3.5: x, y
]
SCENE_SCALE = 6.0  # depth of the wall; distances are judged against it


def surface_distance(X: np.ndarray) -> np.ndarray:
    """``(N,)`` distance from each ``(N, 3)`` point to the nearest scene rectangle."""
    best = np.full(len(X), np.inf)
    for axis, val, bounds in RECTS:
        others = [a for a in range(3) if a != axis]
        q = X.copy()
        q[:, axis] = val
        for a, (lo, hi) in zip(others, bounds):
            q[:, a] = np.clip(q[:, a], lo, hi)
        best = np.minimum(best, np.linalg.norm(X - q, axis=1))
    return best


def surface_colour(X: np.ndarray) -> np.ndarray:
    """``(N, 3)`` uint8 checkerboard texture (cells of 0.5 units, offset so that no cell border lies
    on a scene plane) of world points."""
    k = np.floor(X * 2 + 0.25).astype(np.int64).sum(1) % 2
    out = np.where(k[:, None] == 1, np.array([200, 60, 40]), np.array([30, 90, 220]))
    return out.astype(np.uint8)


def cast(C: np.ndarray, dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Ray casting: ``(N,)`` ray parameter of the first hit (inf if none) and the ``(N, 3)`` hit points."""
    t_best = np.full(len(dirs), np.inf)
    for axis, val, bounds in RECTS:
        others = [a for a in range(3) if a != axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (val - C[axis]) / dirs[:, axis]
        P = C + t[:, None] * dirs
        ok = np.isfinite(t) & (t > 1e-9)
        for a, (lo, hi) in zip(others, bounds):
            ok &= (P[:, a] >= lo) & (P[:, a] <= hi)
        t_best = np.where(ok & (t < t_best), t, t_best)
    return t_best, C + np.where(np.isfinite(t_best), t_best, 0.0)[:, None] * dirs


@dataclass
class Cam:
    K: np.ndarray  # (3, 3) corner convention
    w2c: np.ndarray  # (3, 4) OpenCV
    W: int
    H: int
    k1: float = 0.0  # SIMPLE_RADIAL distortion (0: pinhole)


def make_cams(n: int = 4, W: int = 80, H: int = 60, f: float = 70.0, k1: float = 0.0, spread: float = 1.2) -> List[Cam]:
    cams = []
    for i in range(n):
        a = (i / max(n - 1, 1) - 0.5) * 2.0
        C = np.array([a * spread, -0.3 + 0.2 * np.sin(i), -0.5 + 0.3 * np.cos(i)])
        target = np.array([0.3 * a, 0.2, 5.0])
        z = target - C
        z /= np.linalg.norm(z)
        x = np.cross(np.array([0.0, 1.0, 0.0]), z)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        R = np.stack([x, y, z])
        K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
        cams.append(Cam(K, np.hstack([R, (-R @ C)[:, None]]), W, H, k1))
    return cams


def pinhole_rays(cam: Cam) -> Tuple[np.ndarray, np.ndarray]:
    """Camera centre and ``(H*W, 3)`` world ray directions whose camera z-component is 1 (pixel centres)."""
    assert cam.k1 == 0.0
    R, t = cam.w2c[:, :3], cam.w2c[:, 3]
    C = -R.T @ t
    v, u = np.mgrid[0 : cam.H, 0 : cam.W]
    pix = np.stack([u.ravel() + 0.5, v.ravel() + 0.5, np.ones(u.size)], 1)
    dc = pix @ np.linalg.inv(cam.K).T
    return C, dc @ R


def render(cam: Cam) -> Tuple[np.ndarray, np.ndarray]:
    """``(H, W)`` float32 z-depth and ``(H, W, 3)`` uint8 image of a pinhole camera."""
    C, d = pinhole_rays(cam)
    t, P = cast(C, d)
    depth = np.where(np.isfinite(t), t, 0.0).reshape(cam.H, cam.W).astype(np.float32)
    img = surface_colour(P).reshape(cam.H, cam.W, 3)
    img[depth == 0] = 0
    return depth, img


def project(cam: Cam, X: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Corner-convention ``(N, 2)`` pixels and ``(N,)`` z-depth of world points (with SIMPLE_RADIAL k1)."""
    Xc = X @ cam.w2c[:, :3].T + cam.w2c[:, 3]
    x, y = Xc[:, 0] / Xc[:, 2], Xc[:, 1] / Xc[:, 2]
    r2 = x * x + y * y
    fac = 1 + cam.k1 * r2
    uv = np.stack([cam.K[0, 0] * x * fac + cam.K[0, 2], cam.K[1, 1] * y * fac + cam.K[1, 2]], 1)
    return uv, Xc[:, 2]


def build_sfm(cams: Sequence[Cam], points: np.ndarray, depths: Optional[Sequence[np.ndarray]] = None, names: Optional[Sequence[str]] = None) -> SfMResult:
    """A pycolmap-backed :class:`SfMResult` of ``cams`` observing ``points``.

    A point is observed in a camera when it projects inside the image and (with ``depths``) agrees
    with that camera's rendered depth at its pixel within 1 % (occlusion test).
    """
    import pycolmap

    S, P = len(cams), len(points)
    names = list(names) if names is not None else [f"frame_{i:05d}.png" for i in range(S)]
    rec = pycolmap.Reconstruction()
    obs = np.zeros((S, P), bool)
    uvs = []
    for i, cam in enumerate(cams):
        uv, z = project(cam, points)
        pix = np.floor(uv).astype(int)
        ok = (z > 0) & (pix[:, 0] >= 0) & (pix[:, 0] < cam.W) & (pix[:, 1] >= 0) & (pix[:, 1] < cam.H)
        if depths is not None:
            dz = np.zeros(P)
            dz[ok] = depths[i][pix[ok, 1], pix[ok, 0]]
            ok &= np.abs(dz - z) <= 0.01 * z
        obs[i] = ok
        uvs.append(uv)
        if cam.k1 != 0.0:
            c = pycolmap.Camera(model="SIMPLE_RADIAL", width=cam.W, height=cam.H, params=[cam.K[0, 0], cam.K[0, 2], cam.K[1, 2], cam.k1], camera_id=i + 1)
        else:
            c = pycolmap.Camera(model="PINHOLE", width=cam.W, height=cam.H, params=[cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]], camera_id=i + 1)
        rec.add_camera_with_trivial_rig(c)
        img = pycolmap.Image(name=names[i], keypoints=uv[ok], camera_id=i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(pycolmap.Rotation3d(cam.w2c[:, :3]), cam.w2c[:, 3]))
    kp_index = [np.cumsum(obs[i]) - 1 for i in range(S)]
    colours = surface_colour(points)
    keep = obs.sum(0) >= 2
    for p in np.nonzero(keep)[0]:
        tr = pycolmap.Track()
        for i in np.nonzero(obs[:, p])[0]:
            tr.add_element(int(i + 1), int(kp_index[i][p]))
        rec.add_point3D(points[p], tr, colours[p])
    ext = torch.tensor(np.stack([c.w2c for c in cams]), dtype=torch.float64)
    K = torch.tensor(np.stack([c.K for c in cams]), dtype=torch.float64)
    return SfMResult(
        reconstruction=rec,
        extrinsics=ext,
        intrinsics=K,
        extra_params=torch.tensor([[c.k1] for c in cams], dtype=torch.float64) if any(c.k1 for c in cams) else torch.zeros(S, 0, dtype=torch.float64),
        camera_type="SIMPLE_RADIAL" if any(c.k1 for c in cams) else "PINHOLE",
        points3D=torch.tensor(points[keep]),
        points3D_rgb=torch.tensor(colours[keep]),
        point_track_ids=torch.arange(int(keep.sum())),
        track_inlier_mask=torch.tensor(obs[:, keep]),
        valid_frame_mask=torch.ones(S, dtype=torch.bool),
        image_ids=torch.arange(1, S + 1),
    )


def surface_points(cams: Sequence[Cam], n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3)`` random points on the surfaces visible from the first camera."""
    rng = np.random.default_rng(seed)
    C, d = pinhole_rays(cams[0])
    t, P = cast(C, d)
    P = P[np.isfinite(t)]
    return P[rng.choice(len(P), n, replace=len(P) < n)] + 0.0


def make_depth_scene(n_cams: int = 4, n_points: int = 400, W: int = 80, H: int = 60, seed: int = 0, ordered: bool = False):
    """Cameras, rendered depth and images, the FrameSet and the SfMResult of the synthetic scene."""
    cams = make_cams(n_cams, W, H)
    rendered = [render(c) for c in cams]
    depths = [r[0] for r in rendered]
    images = [r[1] for r in rendered]
    pts = surface_points(cams, n_points, seed)
    sfm = build_sfm(cams, pts, depths)
    frames = FrameSet(
        names=[f"frame_{i:05d}.png" for i in range(n_cams)],
        sizes=np.array([[W, H]] * n_cams),
        paths=[None] * n_cams,
        arrays={i: images[i] for i in range(n_cams)},
        ordered=ordered,
    )
    return cams, depths, images, frames, sfm


class AffineInverseDepthModel:
    """A stand-in for Depth-Anything: returns ``a_i / depth + c_i`` of the true depth (0 where none).

    ``params[i] = (a, c)`` per frame in call order; ``depths`` are looked up by image identity.
    """

    def __init__(self, depths: Sequence[np.ndarray], images: Sequence[np.ndarray], params: Sequence[Tuple[float, float]]):
        self.depths = list(depths)
        self.images = list(images)
        self.params = list(params)
        self.model_id = "synthetic-affine"

    def predict(self, image: np.ndarray) -> np.ndarray:
        i = next(k for k, im in enumerate(self.images) if im is image or np.array_equal(im, image))
        a, c = self.params[i]
        d = self.depths[i]
        out = np.zeros(d.shape, np.float32)
        out[d > 0] = a / d[d > 0] + c
        return out
