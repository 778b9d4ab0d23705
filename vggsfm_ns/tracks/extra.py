"""Grid tracks for extra points (official ``extra_pt_pixel_interval``), guided by the solved model.

The official runner samples a pixel grid in every frame and tracks it with the learned tracker
(coarse only) into all frames or ``extra_by_neighbor`` neighbours, then triangulates the tracks
against the fixed cameras (:func:`vggsfm_ns.sfm.extra_points.triangulate_extra_points`).

Here the grid is tracked into each frame's best neighbours with depth-guided KLT, which works for
any track source (video or unordered photos) because the cameras are already known:

1. neighbours of a frame = the registered frames that share the most inlier tracks with it;
2. each grid point gets a depth from the SfM points seen nearby in its frame (median inverse
   depth of the nearest ones), is unprojected, and projected into every neighbour: that
   prediction is refined by aligning the query patch, warped by the local affine map of the
   neighbouring predictions, with Gauss-Newton (:func:`vggsfm_ns.tracks.klt.refine_guided`) and
   kept only where the aligned patches correlate. (Translation-only LK is biased by the patch
   distortion between distant views: 0.3 px median error on rendered test scenes, against
   0.05 px for the affine alignment);
3. grid points without nearby SfM support, on a depth discontinuity (the nearby SfM depths
   disagree: no reliable prediction) or on flat image regions (nothing to measure) are skipped.

Tracks come in chunks of query frames so that memory stays bounded on long sequences.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ..config import ReconstructionConfig
from ..conventions import ImageTransform, center_to_corner, corner_to_center
from ..geometry.camera import apply_affine
from ..preprocess import resize_transforms
from ..types import FrameSet, SfMResult, TrackSet

#: Neighbours per frame when ``extra_by_neighbor`` is -1 (a triangulated extra point needs more
#: than 3 inlier views, so at least 4 frames must see it).
DEFAULT_NEIGHBOURS = 6
#: SfM points used for a grid point's depth, and how far away (in grid intervals) they may be.
DEPTH_NEIGHBOURS = 6
DEPTH_RADIUS_INTERVALS = 4.0
#: A grid point's prediction is trusted only where the nearby SfM inverse depths agree: their
#: interquartile range relative to the median must stay below this (else: depth discontinuity).
MAX_DEPTH_SPREAD = 0.03
#: Grid points on flat image regions are dropped: LK "succeeds" there without measuring anything.
#: A point needs a structure-tensor minimum eigenvalue above this fraction of the frame's 95th
#: percentile (Shi-Tomasi's cornerness, OpenCV ``cornerMinEigenVal``).
MIN_TEXTURE = 0.05
#: Upper bound on ``frames x tracks`` entries of one chunk (memory of the dense TrackSet).
MAX_CHUNK_ENTRIES = 20_000_000


def covisible_neighbours(sfm: SfMResult, num: int) -> Dict[int, List[int]]:
    """For every registered frame, the ``num`` registered frames sharing the most inlier tracks.

    Args:
        sfm: the reconstruction; uses ``track_inlier_mask (S, N)`` and ``valid_frame_mask (S,)``.
        num: neighbours per frame.

    Returns:
        ``{frame: [neighbours, most shared first]}`` (frames sharing nothing are left out).
    """
    inl = sfm.track_inlier_mask.to(torch.float32)
    valid = sfm.valid_frame_mask.bool()
    co = inl @ inl.T
    co.fill_diagonal_(0)
    co[:, ~valid] = 0
    out: Dict[int, List[int]] = {}
    for q in torch.nonzero(valid).flatten().tolist():
        order = torch.argsort(co[q], descending=True)[:num]
        out[q] = [int(j) for j in order.tolist() if co[q, j] > 0]
    return out


def grid_in_frame(transform: ImageTransform, interval: float, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Pixel grid with spacing ``interval`` (processed px), inset by half an interval, pixel-centre.

    Args:
        transform: the frame's processed-frame transform.
        interval: grid spacing in processed pixels.
        mask: optional ``(H, W)`` bool dynamic mask in *original* pixels (True = drop).

    Returns:
        ``(M, 2)`` float32 processed pixel-centre coordinates inside the image content.
    """
    x0, y0, x1, y1 = transform.content_box()
    xs = np.arange(x0 + interval / 2.0, x1 - interval / 2.0 + 1e-6, interval)
    ys = np.arange(y0 + interval / 2.0, y1 - interval / 2.0 + 1e-6, interval)
    gx, gy = np.meshgrid(xs, ys)
    pts = corner_to_center(np.stack([gx.ravel(), gy.ravel()], 1)).astype(np.float32)
    if mask is not None and len(pts):
        orig = transform.proc_to_orig(pts.astype(np.float64), "center")
        ix = np.clip(np.rint(orig[:, 0]).astype(np.int64), 0, mask.shape[1] - 1)
        iy = np.clip(np.rint(orig[:, 1]).astype(np.int64), 0, mask.shape[0] - 1)
        pts = pts[~mask[iy, ix]]
    return pts


def textured(gray: np.ndarray, pts: np.ndarray, rel: float = MIN_TEXTURE) -> np.ndarray:
    """``(M,)`` bool: the grey image has enough texture around each pixel-centre point to track it."""
    import cv2

    if len(pts) == 0:
        return np.zeros(0, bool)
    ev = cv2.cornerMinEigenVal(gray, blockSize=7, ksize=3)
    ix = np.clip(np.rint(pts[:, 0]).astype(np.int64), 0, gray.shape[1] - 1)
    iy = np.clip(np.rint(pts[:, 1]).astype(np.int64), 0, gray.shape[0] - 1)
    return ev[iy, ix] > rel * max(float(np.percentile(ev, 95)), 1e-12)


def _project(sfm: SfMResult, j: int, X: np.ndarray):
    """World points ``(M, 3)`` -> original-pixel corner coordinates ``(M, 2)`` in frame ``j`` and depth ``(M,)``."""
    E = sfm.extrinsics[j].numpy().astype(np.float64)
    K = sfm.intrinsics[j].numpy().astype(np.float64)
    xc = apply_affine(X, E)
    z = xc[:, 2]
    uv = (xc[:, :2] / np.where(np.abs(z) < 1e-12, 1e-12, z)[:, None]) @ K[:2, :2].T + K[:2, 2]
    return uv, z


def _guess_points(sfm: SfMResult, q: int, grid_orig: np.ndarray, radius: float) -> np.ndarray:
    """3D guesses ``(M, 3)`` for grid points of frame ``q`` (NaN where no SfM point is near)."""
    from scipy.spatial import cKDTree

    out = np.full((grid_orig.shape[0], 3), np.nan)
    ids = sfm.point_track_ids
    seen = ids >= 0
    if seen.any():
        seen_q = torch.zeros_like(seen)
        seen_q[seen] = sfm.track_inlier_mask[q, ids[seen]]
        seen = seen_q
    Xs = sfm.points3D[seen].numpy().astype(np.float64)
    if Xs.shape[0] < DEPTH_NEIGHBOURS or grid_orig.shape[0] == 0:
        return out
    uv, z = _project(sfm, q, Xs)
    front = z > 0
    uv, z = uv[front], z[front]
    if z.size < DEPTH_NEIGHBOURS:
        return out
    dist, nn = cKDTree(uv).query(grid_orig, k=DEPTH_NEIGHBOURS)
    near = 1.0 / z[nn]
    inv = np.median(near, axis=1)
    q25, q75 = np.percentile(near, [25, 75], axis=1)
    ok = (dist[:, 0] < radius) & (inv > 0) & ((q75 - q25) < MAX_DEPTH_SPREAD * np.abs(inv))
    E = sfm.extrinsics[q].numpy().astype(np.float64)
    K = sfm.intrinsics[q].numpy().astype(np.float64)
    rays = np.concatenate([(grid_orig - K[:2, 2]) / np.diag(K)[:2], np.ones((grid_orig.shape[0], 1))], 1)
    xc = rays / np.where(ok, inv, 1.0)[:, None]
    Xw = (xc - E[:, 3]) @ E[:, :3]
    out[ok] = Xw[ok]
    return out


def extra_point_tracks(
    frames: FrameSet,
    sfm: SfMResult,
    cfg: ReconstructionConfig,
    transforms: Optional[Sequence[ImageTransform]] = None,
    observer=None,
) -> Iterator[TrackSet]:
    """Depth-guided KLT grid tracks of every registered frame into its covisible neighbours.

    Args:
        frames: the frames of the reconstruction.
        sfm: the solved model (cameras are used to predict where grid points land).
        cfg: uses ``sfm.extra_pt_pixel_interval`` (grid spacing, processed pixels),
            ``sfm.extra_by_neighbor`` (neighbours per frame; -1 = :data:`DEFAULT_NEIGHBOURS`) and
            ``track.max_image_size`` (processed frames, as the weight-free trackers).
        transforms: processed-frame transforms (default: resize to ``track.max_image_size``).
        observer: progress (one step per query frame).

    Yields:
        :class:`TrackSet` chunks over all S frames (``source="extra"``, ``score`` None): each track
        is visible in its query frame and in the neighbours where guided KLT succeeded; tracks seen
        in fewer than 4 frames are dropped (they could not become extra points).
    """
    from ..progress import Stage
    from ..query.points import processed_gray
    from .klt import refine_guided

    S = len(frames)
    interval = float(cfg.sfm.extra_pt_pixel_interval)
    if interval <= 0:
        return
    transforms = list(transforms) if transforms is not None else resize_transforms(frames, cfg.track.max_image_size)
    num_nb = cfg.sfm.extra_by_neighbor if cfg.sfm.extra_by_neighbor > 0 else DEFAULT_NEIGHBOURS
    neighbours = covisible_neighbours(sfm, num_nb)
    queries = [q for q in sorted(neighbours) if len(neighbours[q]) >= 3]
    gray: Dict[int, np.ndarray] = {}

    def g(i: int) -> np.ndarray:
        if i not in gray:
            gray[i] = processed_gray(frames, transforms, i)
        return gray[i]

    pending: List[tuple] = []
    entries = 0
    with Stage(observer, "extra points (tracks)", total=len(queries)) as stage:
        for q in queries:
            pts = grid_in_frame(transforms[q], interval, frames.mask(q))
            pts = pts[textured(g(q), pts)]
            grid_orig = center_to_corner(transforms[q].proc_to_orig(pts.astype(np.float64), "center"))
            X = _guess_points(sfm, q, grid_orig, DEPTH_RADIUS_INTERVALS * interval / transforms[q].scale)
            keep = np.isfinite(X).all(1)
            pts, X = pts[keep], X[keep]
            obs = {q: (np.arange(len(pts)), pts)}
            for j in neighbours[q]:
                uv, z = _project(sfm, j, X)
                init = corner_to_center(transforms[j].orig_to_proc(uv, "corner")).astype(np.float32)
                W, H = transforms[j].size
                cand = np.nonzero((z > 0) & (init[:, 0] >= 0) & (init[:, 1] >= 0) & (init[:, 0] <= W - 1) & (init[:, 1] <= H - 1))[0]
                if cand.size == 0:
                    continue
                xy, ok = refine_guided(g(q), g(j), pts[cand], init[cand])
                obs[j] = (cand[ok], xy[ok])
            count = np.zeros(len(pts), np.int64)
            for ids, _ in obs.values():
                count[ids] += 1
            good = count >= 4
            if good.any():
                remap = -np.ones(len(pts), np.int64)
                remap[good] = np.arange(int(good.sum()))
                pending.append((q, remap, obs, int(good.sum())))
                entries += S * int(good.sum())
            stage.advance()
            if entries >= MAX_CHUNK_ENTRIES:
                yield _chunk(pending, S, transforms)
                pending, entries = [], 0
    if pending:
        yield _chunk(pending, S, transforms)


def _chunk(pending, S: int, transforms) -> TrackSet:
    M = sum(p[3] for p in pending)
    tracks = torch.zeros(S, M, 2)
    vis = torch.zeros(S, M)
    qf = torch.zeros(M, dtype=torch.int64)
    start = 0
    for q, remap, obs, n in pending:
        for j, (ids, xy) in obs.items():
            sel = remap[ids] >= 0
            cols = torch.from_numpy(remap[ids][sel] + start)
            tracks[j, cols] = torch.from_numpy(np.asarray(xy)[sel]).float()
            vis[j, cols] = 1.0
        qf[start : start + n] = q
        start += n
    return TrackSet(tracks=tracks, vis=vis, score=None, query_frames=qf, transforms=list(transforms), source="extra")
