"""A dense splat seed from aligned depth: unproject, keep multi-view-consistent points, voxel-downsample.

splatfacto initialises one Gaussian per seed point (``ply_file_path``). The SfM points are sparse
(a few thousand); the aligned Depth-Anything-V2 maps give hundreds of thousands of surface points.
:func:`dense_seed_points` turns them into a seed that stays on the surfaces:

1. **Sampling**: pixels on a regular grid per accepted frame, with a stride chosen so that all
   frames together give about ``oversample * target`` candidates.
2. **Confidence**: a pixel is dropped when its depth is invalid (0), when the relative depth range
   in a small window around it exceeds ``edge_tol`` (depth discontinuities, where monocular depth
   produces "flying pixels" between foreground and background), or when ``FrameDepth.confidence``
   exists and is below 0.5.
3. **Unprojection** through the frame's pycolmap camera (distortion included; pixel centres in the
   COLMAP corner convention) and the OpenCV ``cam_from_world`` of :class:`~vggsfm_ns.types.SfMResult`
   into the SfM world.
4. **Consistency**: each point is projected into the ``neighbours`` accepted frames that share the
   most SfM points with its frame; it is kept when at least ``min_agree`` of them have a depth
   within ``rel_tol`` (relative) of the point's depth in that view.
5. **Voxel downsampling**: the voxel size is found by bisection so that the number of occupied
   voxels is at most ``target`` (and close to it); each voxel yields the mean position and colour of
   its points.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Tuple

import numpy as np

from ..conventions import center_to_corner
from ..types import DepthResult, FrameDepth, FrameSet, SfMResult
from .align import frame_camera, sparse_depth_from_sfm, uv_to_pixel

#: Default relative depth tolerance of the multi-view consistency check.
REL_TOL = 0.03
#: Default relative depth range in the edge window above which a pixel is a discontinuity.
EDGE_TOL = 0.05


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class _DepthCache:
    """Small LRU of depth maps (they may live on disk)."""

    def __init__(self, by_frame: Dict[int, FrameDepth], capacity: int):
        self.by_frame = by_frame
        self.capacity = max(2, capacity)
        self._maps: "OrderedDict[int, np.ndarray]" = OrderedDict()

    def get(self, s: int) -> np.ndarray:
        if s in self._maps:
            self._maps.move_to_end(s)
            return self._maps[s]
        d = self.by_frame[s].load_depth()
        self._maps[s] = d
        if len(self._maps) > self.capacity:
            self._maps.popitem(last=False)
        return d


def edge_mask(depth: np.ndarray, radius: int = 1, tol: float = EDGE_TOL) -> np.ndarray:
    """Pixels near depth discontinuities or invalid depth.

    Args:
        depth: ``(H, W)`` float z-depth, 0 = invalid.
        radius: half-size of the square window (pixels).
        tol: threshold on ``(max - min) / min`` of the depth in the window.

    Returns:
        ``(H, W)`` bool, True where the window holds an invalid pixel or its relative depth range
        exceeds ``tol``.
    """
    from scipy.ndimage import maximum_filter, minimum_filter

    size = 2 * int(radius) + 1
    d = np.asarray(depth, dtype=np.float32)
    lo = minimum_filter(d, size=size, mode="nearest")
    hi = maximum_filter(d, size=size, mode="nearest")
    bad = lo <= 0
    rng = np.zeros_like(d)
    np.divide(hi - lo, lo, out=rng, where=~bad)
    return bad | (rng > tol)


def _neighbours(frames_ok: List[int], sfm: SfMResult, k: int) -> Dict[int, List[int]]:
    """Up to ``k`` other accepted frames per frame, most shared SfM points first, then nearest centre."""
    sparse = sparse_depth_from_sfm(sfm)
    ids = {s: set(sparse[s].point_ids.tolist()) if s in sparse else set() for s in frames_ok}
    ext = _np(sfm.extrinsics).astype(np.float64)
    centres = {s: -ext[s, :3, :3].T @ ext[s, :3, 3] for s in frames_ok}
    out: Dict[int, List[int]] = {}
    for s in frames_ok:
        others = [t for t in frames_ok if t != s]
        others.sort(key=lambda t: (-len(ids[s] & ids[t]), float(np.linalg.norm(centres[s] - centres[t]))))
        out[s] = others[:k]
    return out


def voxel_downsample(xyz: np.ndarray, rgb: np.ndarray, voxel: float) -> Tuple[np.ndarray, np.ndarray]:
    """Mean position and colour of the points in each occupied voxel of side ``voxel``.

    Args:
        xyz: ``(N, 3)`` float64 points; rgb: ``(N, 3)`` uint8 colours.
        voxel: voxel side in world units (> 0).

    Returns:
        ``((M, 3) float64, (M, 3) uint8)``, one point per occupied voxel.
    """
    inv = _voxel_inverse(xyz, voxel)
    m = int(inv.max()) + 1 if len(inv) else 0
    cnt = np.bincount(inv, minlength=m).astype(np.float64)
    pos = np.stack([np.bincount(inv, weights=xyz[:, c], minlength=m) for c in range(3)], 1) / cnt[:, None]
    col = np.stack([np.bincount(inv, weights=rgb[:, c].astype(np.float64), minlength=m) for c in range(3)], 1) / cnt[:, None]
    return pos, np.clip(np.round(col), 0, 255).astype(np.uint8)


def _voxel_inverse(xyz: np.ndarray, voxel: float) -> np.ndarray:
    keys = np.floor((xyz - xyz.min(0)) / voxel).astype(np.int64)
    span = keys.max(0) + 1
    if float(span[0]) * float(span[1]) * float(span[2]) < 2**62:
        flat = (keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]
        _, inv = np.unique(flat, return_inverse=True)
    else:
        _, inv = np.unique(keys, axis=0, return_inverse=True)
    return inv.reshape(-1)


def _count_voxels(xyz: np.ndarray, voxel: float) -> int:
    inv = _voxel_inverse(xyz, voxel)
    return int(inv.max()) + 1 if len(inv) else 0


def voxel_size_for_target(xyz: np.ndarray, target: int, iterations: int = 30) -> float:
    """Smallest voxel side (bisection in log space) with at most ``target`` occupied voxels.

    Returns:
        The voxel side in world units; ``0.0`` when ``len(xyz) <= target`` (no downsampling needed).
    """
    if len(xyz) <= target:
        return 0.0
    ext = float(np.linalg.norm(xyz.max(0) - xyz.min(0)))
    hi = max(ext, 1e-12)
    lo = hi * 1e-7
    for _ in range(iterations):
        mid = float(np.sqrt(lo * hi))
        n = _count_voxels(xyz, mid)
        if n > target:
            lo = mid
        else:
            hi = mid
            if n >= 0.97 * target:
                break
        if hi / lo < 1.001:
            break
    return hi


def dense_seed_points(
    frames: FrameSet,
    sfm: SfMResult,
    depth: DepthResult,
    target: int = 500_000,
    neighbours: int = 6,
    min_agree: int = 1,
    rel_tol: float = REL_TOL,
    edge_tol: float = EDGE_TOL,
    oversample: float = 4.0,
    chunk: int = 1_000_000,
) -> Tuple[np.ndarray, np.ndarray]:
    """Dense, multi-view-consistent seed points from aligned depth (see the module docstring).

    Args:
        frames: the frames (colours are read from the original images).
        sfm: cameras (pycolmap model for intrinsics/distortion, ``extrinsics`` for poses).
        depth: aligned depth (:func:`~vggsfm_ns.depth.estimate.estimate_depth`); rejected frames are
            not used.
        target: maximum number of output points (official-free choice: splatfacto handles 0.5 M).
        neighbours: frames each point is checked against.
        min_agree: how many of them must agree (>= 1; a point seen consistently by one other view).
        rel_tol: relative depth tolerance of the agreement (3 %).
        edge_tol: relative depth range above which a pixel counts as a discontinuity (5 %); the window
            radius scales with the image size (``max(1, round(max(H, W) / 500))`` pixels).
        oversample: candidates before filtering, as a multiple of ``target``.
        chunk: points per projection batch (memory bound).

    Returns:
        ``((M, 3) float64, (M, 3) uint8)``, ``M <= target``: world points (the SfM world of
        ``sfm.extrinsics``, OpenCV convention) and RGB colours. Empty ``(0, 3)`` arrays when fewer
        than two frames are accepted (consistency needs a second view) or nothing survives.
    """
    by_frame = {int(fd.frame): fd for fd in depth.frames if fd.accepted}
    ok = sorted(by_frame)
    empty = (np.zeros((0, 3), np.float64), np.zeros((0, 3), np.uint8))
    if len(ok) < 2 or target <= 0:
        return empty
    ext = _np(sfm.extrinsics).astype(np.float64)
    cams = {s: frame_camera(sfm, s) for s in ok}
    nbrs = _neighbours(ok, sfm, neighbours)
    cache = _DepthCache(by_frame, capacity=2 * neighbours + 2)

    total_px = float(sum(int(frames.sizes[s, 0]) * int(frames.sizes[s, 1]) for s in ok))
    stride = max(1, int(np.floor(np.sqrt(total_px / max(oversample * target, 1.0)))))

    pts: List[np.ndarray] = []
    cols: List[np.ndarray] = []
    for s in ok:
        D = cache.get(s)
        H, W = D.shape
        radius = max(1, int(round(max(H, W) / 500)))
        good = ~edge_mask(D, radius, edge_tol)
        conf = by_frame[s].confidence
        if conf is not None:
            good &= np.asarray(conf) >= 0.5
        rows = np.arange(stride // 2, H, stride)
        cols_ = np.arange(stride // 2, W, stride)
        rr, cc = np.meshgrid(rows, cols_, indexing="ij")
        rr, cc = rr.reshape(-1), cc.reshape(-1)
        keep = good[rr, cc]
        rr, cc = rr[keep], cc[keep]
        if len(rr) == 0:
            continue
        image = frames.image(s)
        R, t = ext[s, :3, :3], ext[s, :3, 3]
        for a in range(0, len(rr), chunk):
            r, c = rr[a : a + chunk], cc[a : a + chunk]
            z = D[r, c].astype(np.float64)
            uv = center_to_corner(np.stack([c, r], 1).astype(np.float64))
            xy = np.asarray(cams[s].cam_from_img(uv), dtype=np.float64).reshape(-1, 2)
            fin = np.isfinite(xy).all(1)
            Xc = np.concatenate([xy * z[:, None], z[:, None]], 1)
            Xw = (Xc - t) @ R  # R^T (Xc - t), row vectors
            agree = np.zeros(len(z), np.int64)
            for j in nbrs[s]:
                Dj = cache.get(j)
                Hj, Wj = Dj.shape
                Xj = Xw @ ext[j, :3, :3].T + ext[j, :3, 3]
                zj = Xj[:, 2]
                front = fin & (zj > 0)
                idx = np.nonzero(front)[0]
                if len(idx) == 0:
                    continue
                uvj = np.asarray(cams[j].img_from_cam(Xj[idx]), dtype=np.float64).reshape(-1, 2)
                pj = uv_to_pixel(np.nan_to_num(uvj, nan=-1.0))
                inside = np.isfinite(uvj).all(1) & (pj[:, 0] >= 0) & (pj[:, 0] < Wj) & (pj[:, 1] >= 0) & (pj[:, 1] < Hj)
                idx, pj = idx[inside], pj[inside]
                dj = Dj[pj[:, 1], pj[:, 0]].astype(np.float64)
                hit = (dj > 0) & (np.abs(dj - zj[idx]) <= rel_tol * zj[idx])
                agree[idx[hit]] += 1
            sel = fin & (agree >= max(1, int(min_agree)))
            if sel.any():
                pts.append(Xw[sel])
                cols.append(image[r[sel], c[sel]].astype(np.uint8))
        del image

    if not pts:
        return empty
    xyz = np.concatenate(pts, 0)
    rgb = np.concatenate(cols, 0)
    voxel = voxel_size_for_target(xyz, int(target))
    if voxel > 0:
        xyz, rgb = voxel_downsample(xyz, rgb, voxel)
        if len(xyz) > target:  # bisection tolerance; never exceed the target
            keep = np.random.default_rng(0).choice(len(xyz), int(target), replace=False)
            xyz, rgb = xyz[np.sort(keep)], rgb[np.sort(keep)]
    return xyz.astype(np.float64), rgb.astype(np.uint8)


__all__ = ["dense_seed_points", "voxel_downsample", "voxel_size_for_target", "edge_mask", "REL_TOL", "EDGE_TOL"]
