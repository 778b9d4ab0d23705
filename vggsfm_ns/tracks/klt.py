"""KLT tracks for ordered frames (video): pyramidal Lucas-Kanade with a forward-backward check.

Weight-free replacement of the learned VGGSfM tracker for videos, with the same contract
(:class:`vggsfm_ns.types.TrackSet`) and the same structure as the official ``predict_tracks`` /
``comple_nonvis_frames`` (spec §3.4, §4.3 item 4):

1. Query frames spread over the sequence (:func:`vggsfm_ns.query.frames.select_query_frames`),
   more of them for long sequences (KLT tracks do not live as long as learned ones).
2. Shi-Tomasi query points in each query frame (:func:`vggsfm_ns.query.points.detect_query_points`,
   method ``gftt`` unless the config names another weight-free method), none in dynamic masks.
3. Every query point is tracked from its query frame forwards to the end of the sequence and
   backwards to its start, frame to frame, with OpenCV's ``calcOpticalFlowPyrLK``. All query
   frames share one forward and one backward sweep (run on two threads), so each pair of
   neighbouring frames is processed once per direction.
4. Each step is checked by tracking back (forward-backward error below ``fb_threshold`` px) and
   by the correlation of the patches before and after it; a point that fails, leaves the frame or
   lands in a dynamic mask is invisible from then on in that direction.
5. Each position is re-aligned directly against the query frame (``anchor_refine``, on by
   default): the query patch, warped by the local affine map of the neighbouring tracks, is
   aligned by Gauss-Newton. This removes the drift of frame-to-frame chaining (0.23 px -> 0.02 px
   after 15 frames of rotation and zoom in the tests), and a track whose patch no longer resembles
   its query patch at all is lost.
6. Frames that see fewer than ``min_visible`` tracks become extra query frames (official
   ``comple_nonvis_frames``), with a final trial that adds grid points.

All coordinates are pixel-centre ``(x, y)`` in the processed frame
(:func:`vggsfm_ns.preprocess.resize_transforms` with ``cfg.max_image_size``, no padding).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import TrackConfig
from ..conventions import ImageTransform
from ..errors import InputError
from ..progress import PipelineObserver, Stage
from ..threads import cpu_workers, thread_map
from ..types import FrameSet, TrackSet

#: LK window (pixels of each pyramid level), pyramid depth and stopping criteria.
LK_WIN = 21
LK_LEVELS = 4
LK_ITERS = 30
LK_EPS = 0.01
#: Maximum forward-backward error (processed pixels) of a step.
FB_THRESHOLD = 1.0
#: A step is rejected when the patches before and after it correlate less than this (ZNCC over
#: ``(2 * STEP_PATCH_RADIUS + 1)^2`` pixels): catches LK converging on a look-alike after a cut or
#: a blurred frame, which the forward-backward check passes.
STEP_MIN_ZNCC = 0.8
STEP_PATCH_RADIUS = 5
#: Points closer than this to the frame border (processed pixels) are dropped: their LK window
#: would leave the image and bias the estimate.
BORDER = float(LK_WIN // 2)
#: One query frame per this many frames at least (KLT tracks die; see :func:`num_query_frames`).
FRAMES_PER_QUERY = 20
#: Anchor refinement: accept the re-aligned position only if it moved less than this (px).
ANCHOR_MAX_SHIFT = 2.0
#: Anchor refinement: neighbours (same query frame) that define a track's local affine map, and
#: the largest distance (query-frame px) at which they count.
ANCHOR_NEIGHBOURS = 8
ANCHOR_RADIUS = 60.0
#: Anchor refinement: patch radius (px), Gauss-Newton iterations, minimum patch correlation.
ANCHOR_RADIUS_PATCH = 7
ANCHOR_ITERS = 5
ANCHOR_MIN_ZNCC = 0.8
#: Anchor refinement: a track whose aligned query patch correlates less than this is lost.
ANCHOR_LOST_ZNCC = 0.6
#: Query-point methods KLT can use without weights; others in ``cfg.query_method`` are ignored.
WEIGHT_FREE_METHODS = ("gftt", "sift", "grid")


def num_query_frames(num_frames: int, cfg: TrackConfig) -> int:
    """Number of KLT query frames: ``max(cfg.query_frame_num, ceil(S / FRAMES_PER_QUERY))``.

    The official 3 query frames suffice for a learned tracker that sees every frame; KLT tracks
    are chained frame to frame and fade out, so long sequences get one query frame per
    :data:`FRAMES_PER_QUERY` frames. The complement pass adds more where still needed.
    """
    return int(min(num_frames, max(cfg.query_frame_num, math.ceil(num_frames / FRAMES_PER_QUERY))))


def _klt_query_method(cfg: TrackConfig) -> str:
    methods = [m for m in cfg.query_method.split("+") if m in WEIGHT_FREE_METHODS]
    return "+".join(methods) if methods else "gftt"


class _GrayFrames:
    """Processed grey frames, decoded on first use and kept (uint8, ~0.6 MB per 1024 px frame)."""

    def __init__(self, frames: FrameSet, transforms: Sequence[ImageTransform], images: Optional[Mapping[int, np.ndarray]] = None):
        self.frames = frames
        self.transforms = transforms
        self.cache: Dict[int, np.ndarray] = dict(images or {})
        self.mask_cache: Dict[int, Optional[np.ndarray]] = {}

    def gray(self, i: int) -> np.ndarray:
        g = self.cache.get(i)
        if g is None:
            from ..query.points import processed_gray

            g = processed_gray(self.frames, self.transforms, i)
            self.cache[i] = g
        return g

    def mask(self, i: int) -> Optional[np.ndarray]:
        """``(H, W)`` bool dynamic mask in the processed frame (True = drop), or None."""
        if i not in self.mask_cache:
            m = None
            if self.frames.mask_paths[i] is not None:
                from ..preprocess import load_processed_masks

                m = load_processed_masks(self.frames, self.transforms, [i])[0].numpy()
            self.mask_cache[i] = m
        return self.mask_cache[i]


def _lk(img0: np.ndarray, img1: np.ndarray, pts: np.ndarray, init: Optional[np.ndarray] = None, levels: int = LK_LEVELS) -> Tuple[np.ndarray, np.ndarray]:
    """Track ``pts (M, 2)`` from grey image 0 to grey image 1; returns positions ``(M, 2)`` and status ``(M,)``.

    (OpenCV's Python binding cannot take prebuilt pyramids, so each call builds its own.)
    """
    import cv2

    if pts.shape[0] == 0:
        return pts.copy(), np.zeros(0, bool)
    p0 = np.ascontiguousarray(pts.reshape(-1, 1, 2), dtype=np.float32)
    flags = 0
    p1 = None
    if init is not None:
        p1 = np.ascontiguousarray(init.reshape(-1, 1, 2), dtype=np.float32)
        flags = cv2.OPTFLOW_USE_INITIAL_FLOW
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, LK_ITERS, LK_EPS)
    out, st, _ = cv2.calcOpticalFlowPyrLK(
        img0, img1, p0, p1, winSize=(LK_WIN, LK_WIN), maxLevel=levels - 1, criteria=criteria, flags=flags
    )
    return out.reshape(-1, 2), st.reshape(-1).astype(bool)


def _patch_zncc(img0: np.ndarray, img1: np.ndarray, x0: np.ndarray, x1: np.ndarray, radius: int = STEP_PATCH_RADIUS) -> np.ndarray:
    """Zero-normalised cross-correlation ``(M,)`` of the ``(2r+1)^2`` patches at ``x0`` in ``img0``
    and ``x1`` in ``img1`` (bilinear, pixel-centre). Two flat patches (grey-level standard
    deviation below 1) count as correlated (1), one flat and one textured as uncorrelated (0)."""
    import cv2

    o = np.arange(-radius, radius + 1, dtype=np.float32)
    oy, ox = np.meshgrid(o, o, indexing="ij")
    ox, oy = ox.reshape(-1), oy.reshape(-1)
    a = cv2.remap(img0, x0[:, :1].astype(np.float32) + ox, x0[:, 1:].astype(np.float32) + oy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    b = cv2.remap(img1, x1[:, :1].astype(np.float32) + ox, x1[:, 1:].astype(np.float32) + oy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    va, vb = (a * a).sum(1), (b * b).sum(1)
    n = a.shape[1]
    flat_a, flat_b = va < n, vb < n
    z = (a * b).sum(1) / np.sqrt(np.maximum(va * vb, 1e-12))
    return np.where(flat_a & flat_b, 1.0, np.where(flat_a | flat_b, 0.0, z))


def _inside(xy: np.ndarray, width: int, height: int, border: float = BORDER) -> np.ndarray:
    return (xy[:, 0] >= border) & (xy[:, 0] <= width - 1 - border) & (xy[:, 1] >= border) & (xy[:, 1] <= height - 1 - border)


def _sweep(
    frames: _GrayFrames,
    order: Sequence[int],
    seeds: Dict[int, Tuple[np.ndarray, np.ndarray]],
    query_xy: np.ndarray,
    query_frame_of: np.ndarray,
    tracks: np.ndarray,
    vis: np.ndarray,
    fb_threshold: float,
    anchor_refine: bool,
    on_step: Optional[Callable[[], None]] = None,
) -> None:
    """Track seeds along ``order`` (frame indices, one direction), writing ``tracks``/``vis`` in place.

    ``tracks``/``vis`` are indexed by the position of a frame in the caller's frame list (``order``
    holds such positions); ``seeds[pos] = (track_ids, xy)`` start at frame position ``pos``.
    """
    if not seeds:
        return
    seed_pos = {p: k for k, p in enumerate(order)}
    first = min(seed_pos[p] for p in seeds)
    last_seed = max(seed_pos[p] for p in seeds)
    ids = np.zeros(0, np.int64)
    xy = np.zeros((0, 2), np.float32)
    anchor_imgs: Dict[int, np.ndarray] = {}
    for k in range(first, len(order)):
        t = order[k]
        if t in seeds:
            sid, sxy = seeds[t]
            ids = np.concatenate([ids, sid])
            xy = np.concatenate([xy, sxy.astype(np.float32)])
        if on_step is not None:
            on_step()
        if k + 1 >= len(order) or (ids.size == 0 and k >= last_seed):
            break
        if ids.size == 0:
            continue
        nxt = order[k + 1]
        gray_cur = frames.gray(t)
        gray_next = frames.gray(nxt)
        H, W = gray_next.shape
        p1, st1 = _lk(gray_cur, gray_next, xy)
        p0b, st2 = _lk(gray_next, gray_cur, p1)
        fb = np.linalg.norm(p0b - xy, axis=1)
        ok = st1 & st2 & (fb < fb_threshold) & _inside(p1, W, H) & np.isfinite(p1).all(1)
        if ok.any():
            ok[ok] = _patch_zncc(gray_cur, gray_next, xy[ok], p1[ok]) >= STEP_MIN_ZNCC
        mask = frames.mask(nxt)
        if mask is not None and ok.any():
            ix = np.clip(np.rint(p1[:, 0]).astype(np.int64), 0, W - 1)
            iy = np.clip(np.rint(p1[:, 1]).astype(np.int64), 0, H - 1)
            ok &= ~mask[iy, ix]
        ids, xy = ids[ok], p1[ok]
        if anchor_refine and ids.size:
            xy, alive = _refine_to_anchor(frames, anchor_imgs, gray_next, ids, xy, query_xy, query_frame_of, W, H)
            ids, xy = ids[alive], xy[alive]
        tracks[nxt, ids] = xy
        vis[nxt, ids] = 1.0
        if anchor_imgs:  # forget query frames whose tracks all ended
            live = set(np.unique(query_frame_of[ids]).tolist())
            for q in [q for q in anchor_imgs if q not in live]:
                del anchor_imgs[q]


def _refine_to_anchor(frames, anchor_imgs, gray_t, ids, xy, query_xy, query_frame_of, W, H) -> Tuple[np.ndarray, np.ndarray]:
    """Re-align chained positions directly against each track's query frame (removes drift).

    Frame-to-frame LK estimates a pure translation per step; the small rotation / scale /
    foreshortening between neighbouring frames biases each step by a few hundredths of a pixel and
    the bias adds up along the chain. Here each position is re-estimated against the track's
    *query-frame* patch, warped by the local affine map that the neighbouring tracks (same query
    frame, k nearest in the query frame) describe: Gauss-Newton on translation plus gain and
    bias (:func:`_align_affine_patches`). The refined position is kept only if it converged,
    moved less than :data:`ANCHOR_MAX_SHIFT` px and the patches agree (ZNCC); otherwise the
    chained position stays. A track whose best aligned patch no longer resembles its query patch
    at all (ZNCC below :data:`ANCHOR_LOST_ZNCC`) has slid onto another surface, typically along
    the edge of an occluder where the forward-backward check cannot see it, and is lost.

    Returns:
        positions ``(M, 2)`` float32 and ``alive (M,)`` bool.
    """
    from scipy.spatial import cKDTree

    out = xy.copy()
    alive = np.ones(len(ids), bool)
    qf = query_frame_of[ids]
    img_t = _float_image(gray_t)
    for q in np.unique(qf):
        sel = np.nonzero(qf == q)[0]
        if sel.size < ANCHOR_NEIGHBOURS + 1:
            continue
        img_q = anchor_imgs.get(int(q))
        if img_q is None:
            img_q = _float_image(frames.gray(int(q)))
            anchor_imgs[int(q)] = img_q
        xq = query_xy[ids[sel]].astype(np.float64)
        xt = xy[sel].astype(np.float64)
        dist, nn = cKDTree(xq).query(xq, k=ANCHOR_NEIGHBOURS + 1)
        A, ok_aff = _local_affines(xq, xt, nn[:, 1:], dist[:, 1:])
        # where the neighbourhood gives no affine map (e.g. at an occlusion boundary), the median
        # map of the group still serves the "lost" test below, but not the refinement
        A[~ok_aff] = np.median(A[ok_aff], axis=0) if ok_aff.any() else np.eye(2)
        ref, good, zncc = _align_affine_patches(img_q, img_t, xq, xt, A)
        good &= ok_aff & (np.linalg.norm(ref - xt, axis=1) < ANCHOR_MAX_SHIFT) & _inside(ref, W, H)
        out[sel[good]] = ref[good].astype(np.float32)
        alive[sel[zncc < ANCHOR_LOST_ZNCC]] = False
    return out, alive


def _float_image(gray: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float32: lightly smoothed intensity in [0, 1] and its x / y derivatives (per px),
    interleaved so that one bilinear ``remap`` samples all three."""
    import cv2

    img = cv2.GaussianBlur(gray.astype(np.float32) / 255.0, (0, 0), 0.7)
    gx = cv2.Scharr(img, cv2.CV_32F, 1, 0, scale=1.0 / 32.0)
    gy = cv2.Scharr(img, cv2.CV_32F, 0, 1, scale=1.0 / 32.0)
    return np.ascontiguousarray(np.stack([img, gx, gy], -1))


def _local_affines(xq: np.ndarray, xt: np.ndarray, nn: np.ndarray, dist: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Least-squares 2x2 maps ``A`` with ``xt_j - xt_i ~ A (xq_j - xq_i)`` over each point's neighbours.

    Returns ``A (M, 2, 2)`` and ``ok (M,)``: neighbours within :data:`ANCHOR_RADIUS` px, a
    well-conditioned fit, and a median residual under ``max(1 px, 5 % of the neighbour distance)``
    (no depth discontinuity in the neighbourhood; the map only has to be right over one patch).
    """
    dq = xq[nn] - xq[:, None]  # (M, K, 2)
    dt = xt[nn] - xt[:, None]
    G = np.einsum("mki,mkj->mij", dq, dq)
    B = np.einsum("mki,mkj->mij", dq, dt)
    det = G[:, 0, 0] * G[:, 1, 1] - G[:, 0, 1] ** 2
    ok = (dist.max(1) < ANCHOR_RADIUS) & (det > 1e-6 * np.maximum(np.einsum("mii->m", G), 1e-12) ** 2)
    Gi = np.zeros_like(G)
    safe = np.where(ok, det, 1.0)
    Gi[:, 0, 0], Gi[:, 1, 1] = G[:, 1, 1] / safe, G[:, 0, 0] / safe
    Gi[:, 0, 1] = Gi[:, 1, 0] = -G[:, 0, 1] / safe
    At = Gi @ B  # A^T
    res = np.linalg.norm(np.einsum("mki,mij->mkj", dq, At) - dt, axis=2)
    ok &= np.median(res, axis=1) < np.maximum(1.0, 0.05 * np.median(dist, axis=1))
    return np.swapaxes(At, 1, 2), ok


def _remap(img: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img (H, W)`` at pixel-centre coordinates ``px, py (M, P)`` (border replicated)."""
    import cv2

    return cv2.remap(img, px, py, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _align_affine_patches(img_q, img_t, xq, xt, A) -> Tuple[np.ndarray, np.ndarray]:
    """Gauss-Newton alignment of affine-warped query patches in frame ``t``.

    Minimises ``sum_o w(o) [I_t(x + A o) - a T(o) - b]^2`` over the translation ``x`` and the
    photometric gain ``a`` / bias ``b``, where ``T(o) = I_q(x_q + o)`` on a ``(2R+1)^2`` grid of
    offsets (``R`` = :data:`ANCHOR_RADIUS_PATCH`) with Gaussian weights ``w``.

    Args:
        img_q, img_t: ``(H, W, 3)`` image and x / y derivatives of the query frame and frame ``t``
            (:func:`_float_image`).
        xq: ``(M, 2)`` query points; xt: ``(M, 2)`` initial positions in frame ``t``;
        A: ``(M, 2, 2)`` local affine maps (query offsets -> frame-``t`` offsets).

    Returns:
        Refined ``x (M, 2)`` float64, ``good (M,)`` (converged: last step < 0.02 px, sane gain,
        zero-normalised cross-correlation of the final patches above :data:`ANCHOR_MIN_ZNCC`) and
        that correlation ``(M,)``.
    """
    R = ANCHOR_RADIUS_PATCH
    o = np.arange(-R, R + 1, dtype=np.float32)
    oy, ox = np.meshgrid(o, o, indexing="ij")
    ox, oy = ox.reshape(-1), oy.reshape(-1)  # (P,)
    w = np.exp(-(ox**2 + oy**2) / (2.0 * (0.6 * R) ** 2)).astype(np.float32)
    sw = float(w.sum())
    xq = xq.astype(np.float32)
    T = _remap(img_q[..., 0], xq[:, :1] + ox[None], xq[:, 1:] + oy[None])  # (M, P)
    A = A.astype(np.float32)
    wx = A[:, 0, :1] * ox[None] + A[:, 0, 1:] * oy[None]  # (M, P) warped offsets
    wy = A[:, 1, :1] * ox[None] + A[:, 1, 1:] * oy[None]
    x = xt.astype(np.float32).copy()
    M = x.shape[0]
    gain = np.ones(M, np.float32)
    bias = np.zeros(M, np.float32)
    step = np.full(M, np.inf, np.float32)
    Tw = T * w
    sT, sTT = Tw.sum(1), (Tw * T).sum(1)
    Hm = np.empty((M, 4, 4), np.float64)
    for _ in range(ANCHOR_ITERS):
        px = x[:, :1] + wx
        py = x[:, 1:] + wy
        sampled = _remap(img_t, px, py)  # (M, P, 3)
        I, gx, gy = sampled[..., 0], sampled[..., 1], sampled[..., 2]
        r = I - gain[:, None] * T - bias[:, None]
        gxw, gyw = gx * w, gy * w
        Hm[:, 0, 0] = (gxw * gx).sum(1)
        Hm[:, 0, 1] = Hm[:, 1, 0] = (gxw * gy).sum(1)
        Hm[:, 1, 1] = (gyw * gy).sum(1)
        Hm[:, 0, 2] = Hm[:, 2, 0] = -(gxw * T).sum(1)
        Hm[:, 1, 2] = Hm[:, 2, 1] = -(gyw * T).sum(1)
        Hm[:, 0, 3] = Hm[:, 3, 0] = -gxw.sum(1)
        Hm[:, 1, 3] = Hm[:, 3, 1] = -gyw.sum(1)
        Hm[:, 2, 2] = sTT
        Hm[:, 2, 3] = Hm[:, 3, 2] = sT
        Hm[:, 3, 3] = sw
        g = np.stack([(gxw * r).sum(1), (gyw * r).sum(1), -(Tw * r).sum(1), -(w * r).sum(1)], 1)
        Hm[:, range(4), range(4)] += 1e-9
        delta = -np.linalg.solve(Hm, g[..., None])[..., 0].astype(np.float32)
        delta[:, :2] = np.clip(delta[:, :2], -1.0, 1.0)
        x += delta[:, :2]
        gain += delta[:, 2]
        bias += delta[:, 3]
        step = np.linalg.norm(delta[:, :2], axis=1)
    I = _remap(img_t[..., 0], x[:, :1] + wx, x[:, 1:] + wy)
    a = I - (I * w).sum(1, keepdims=True) / sw
    b = T - sT[:, None] / sw
    zncc = (a * b * w).sum(1) / np.sqrt((a * a * w).sum(1) * (b * b * w).sum(1) + 1e-12)
    good = (step < 0.02) & (gain > 0.5) & (gain < 2.0) & (zncc > ANCHOR_MIN_ZNCC) & np.isfinite(x).all(1)
    return x.astype(np.float64), good, np.nan_to_num(zncc, nan=-1.0)


def _fill_invisible(tracks: np.ndarray, vis: np.ndarray, query_pos: np.ndarray) -> None:
    """Give invisible entries the last visible position on the query side (meaningless, but finite)."""
    S, N = vis.shape
    if N == 0:
        return
    t = np.arange(S)[:, None]
    seen = vis > 0
    fwd = np.where(seen, t, -1)
    fwd = np.maximum.accumulate(fwd, axis=0)
    bwd = np.where(seen, t, S)
    bwd = np.minimum.accumulate(bwd[::-1], axis=0)[::-1]
    src = np.where(t >= query_pos[None, :], fwd, bwd)
    src = np.where((src < 0) | (src >= S), query_pos[None, :], src)
    cols = np.broadcast_to(np.arange(N)[None, :], (S, N))
    tracks[:] = tracks[src, cols]


class _KltState:
    """Tracks accumulated over query rounds for one frame list."""

    def __init__(self, num_frames: int):
        self.S = num_frames
        self.tracks: List[np.ndarray] = []
        self.vis: List[np.ndarray] = []
        self.qpos: List[np.ndarray] = []

    def add(self, tracks: np.ndarray, vis: np.ndarray, qpos: np.ndarray) -> None:
        self.tracks.append(tracks)
        self.vis.append(vis)
        self.qpos.append(qpos)

    def visible_counts(self) -> np.ndarray:
        if not self.vis:
            return np.zeros(self.S, np.int64)
        return sum((v > 0.05).sum(1) for v in self.vis)

    def arrays(self):
        if not self.tracks:
            return np.zeros((self.S, 0, 2), np.float32), np.zeros((self.S, 0), np.float32), np.zeros(0, np.int64)
        return np.concatenate(self.tracks, 1), np.concatenate(self.vis, 1), np.concatenate(self.qpos)


def _track_seeds(
    frames: _GrayFrames,
    frame_list: Sequence[int],
    seeds: Dict[int, np.ndarray],
    fb_threshold: float,
    anchor_refine: bool,
    on_step: Optional[Callable[[], None]] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Track ``seeds[pos] = (M, 2)`` query points of frame-list position ``pos`` through ``frame_list``.

    Returns ``tracks (S', N, 2)``, ``vis (S', N)``, ``query_pos (N,)`` over the positions of
    ``frame_list`` (``S' = len(frame_list)``).
    """
    S = len(frame_list)
    parts = [(p, np.asarray(xy, np.float32).reshape(-1, 2)) for p, xy in sorted(seeds.items()) if len(xy)]
    N = sum(len(xy) for _, xy in parts)
    tracks = np.zeros((S, N, 2), np.float32)
    vis = np.zeros((S, N), np.float32)
    query_pos = np.zeros(N, np.int64)
    query_xy = np.zeros((N, 2), np.float32)
    seed_ids: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
    start = 0
    for p, xy in parts:
        ids = np.arange(start, start + len(xy))
        tracks[p, ids] = xy
        vis[p, ids] = 1.0
        query_pos[ids] = p
        query_xy[ids] = xy
        seed_ids[p] = (ids, xy)
        start += len(xy)

    class _Positional:
        """View of the grey frames by position in ``frame_list``."""

        def gray(self, pos):
            return frames.gray(frame_list[pos])

        def mask(self, pos):
            return frames.mask(frame_list[pos])

    view = _Positional()
    # the two sweeps write disjoint entries (after / before each track's query frame): run them on
    # two threads when there are two workers (OpenCV and numpy release the GIL)
    orders = [list(range(S)), list(range(S - 1, -1, -1))]
    args = (seed_ids, query_xy, query_pos, tracks, vis, fb_threshold, anchor_refine, on_step)
    for _ in thread_map(lambda order: _sweep(view, order, *args), orders, min(2, cpu_workers())):
        pass
    _fill_invisible(tracks, vis, query_pos)
    return tracks, vis, query_pos


def _detect(frames: _GrayFrames, frame: int, method: str, max_points: int, seed: int) -> np.ndarray:
    from ..query.points import detect_query_points

    gray = torch.from_numpy(frames.gray(frame)).float() / 255.0
    img = gray[None].expand(3, -1, -1)
    mask = frames.mask(frame)
    pts = detect_query_points(img, method, max_points, invalid_mask=None if mask is None else torch.from_numpy(mask), seed=seed)
    H, W = img.shape[-2:]
    pts = pts.numpy()
    return pts[_inside(pts, W, H)]


def track_points_klt(
    frames: FrameSet,
    transforms: Sequence[ImageTransform],
    query_frame: int,
    query_xy: torch.Tensor,
    frame_indices: Sequence[int],
    *,
    fb_threshold: float = FB_THRESHOLD,
    anchor_refine: bool = True,
    images: Optional[Mapping[int, np.ndarray]] = None,
) -> TrackSet:
    """Track given points of one frame through a list of frames with KLT.

    Used for extra points (``sfm.extra_points``) and by the sliding-window video mode.

    Args:
        frames: the frame set.
        transforms: one :class:`ImageTransform` per frame of ``frames`` (processed frames).
        query_frame: index (into ``frames``) of the frame ``query_xy`` lie in; must be in
            ``frame_indices``.
        query_xy: ``(N, 2)`` float pixel-centre ``(x, y)`` in the query frame's processed frame.
        frame_indices: frames to track through (indices into ``frames``), in temporal order;
            tracking runs from the query frame forwards and backwards along this list.
        fb_threshold: forward-backward threshold in processed pixels.
        anchor_refine: re-align each position against the query frame (affine-warped query
            patch, see :func:`_refine_to_anchor`).
        images: optional preloaded ``(H, W)`` uint8 grey processed frames keyed by frame index.

    Returns:
        :class:`TrackSet` over ``S' = len(frame_indices)`` frames (in that order): ``tracks
        (S', N, 2)``, ``vis (S', N)`` (1 = tracked, 0 = lost), ``score`` None, ``query_frames``
        = the position of ``query_frame`` in ``frame_indices`` for every track, ``transforms`` of
        those frames, ``source="klt"``. The query frame row holds ``query_xy`` with vis 1
        (points outside the frame get vis 0).

    Raises:
        InputError: if ``query_frame`` is not in ``frame_indices`` or an index is out of range.
        ValueError: if ``query_xy`` is not ``(N, 2)``.
    """
    idx = [int(i) for i in frame_indices]
    if any(i < 0 or i >= len(frames) for i in idx):
        raise InputError(f"KLT: frame indices out of range for {len(frames)} frames")
    if int(query_frame) not in idx:
        raise InputError(f"KLT: query frame {query_frame} is not among the frames to track through")
    if len(transforms) != len(frames):
        raise ValueError(f"{len(transforms)} transforms for {len(frames)} frames")
    q = torch.as_tensor(query_xy, dtype=torch.float32).detach().cpu()
    if q.ndim != 2 or q.shape[1] != 2:
        raise ValueError(f"query_xy must be (N, 2), got {tuple(q.shape)}")
    gf = _GrayFrames(frames, transforms, images)
    pos = idx.index(int(query_frame))
    tracks, vis, qpos = _track_seeds(gf, idx, {pos: q.numpy()}, fb_threshold, anchor_refine)
    W, H = transforms[int(query_frame)].size
    inside = (q[:, 0] >= -0.5) & (q[:, 0] <= W - 0.5) & (q[:, 1] >= -0.5) & (q[:, 1] <= H - 0.5)
    vis_t = torch.from_numpy(vis)
    vis_t[:, ~inside] = 0.0
    return TrackSet(
        tracks=torch.from_numpy(tracks),
        vis=vis_t,
        score=None,
        query_frames=torch.from_numpy(qpos),
        transforms=[transforms[i] for i in idx],
        source="klt",
    )


def track_klt(
    frames: FrameSet,
    cfg: TrackConfig,
    observer: Optional[PipelineObserver] = None,
    query_frames: Optional[Sequence[int]] = None,
    *,
    seed: int = 0,
    fb_threshold: float = FB_THRESHOLD,
    anchor_refine: bool = True,
) -> TrackSet:
    """KLT tracks over an ordered frame set (video), VGGSfM style.

    Args:
        frames: ordered frames (``frames.ordered`` is not required, but KLT assumes small motion
            between neighbouring frames).
        cfg: track settings. Used: ``max_image_size`` (processed size), ``query_frame_num``
            (minimum number of query frames, see :func:`num_query_frames`),
            ``query_frame_ranking`` (``midpoint`` or ``interval``; ``dino`` needs the network and
            falls back to ``interval``), ``query_method`` (its weight-free detectors ``gftt``,
            ``sift``, ``grid``; default ``gftt``), ``max_query_pts`` (points per query frame),
            ``complement_nonvisible`` and ``min_visible`` (complement pass).
        observer: progress reporting (stage ``"tracks (KLT)"``).
        query_frames: explicit query frames (indices into ``frames``); overrides the ranking.
        seed: seed of the query-point subsets.
        fb_threshold: forward-backward threshold of a step, processed pixels.
        anchor_refine: re-align positions against the query frame to remove drift.

    Returns:
        :class:`TrackSet` (``source="klt"``, ``score`` None) over all frames, transforms from
        :func:`vggsfm_ns.preprocess.resize_transforms` with ``cfg.max_image_size``. ``vis`` is
        1 where the point was tracked and passed every check on the way from its query frame,
        else 0. Invisible entries hold the last visible position (meaningless).

    Source: official ``predict_tracks`` + ``comple_nonvis_frames`` (spec §3.4, §4.3 item 4) with
    KLT in place of the learned tracker.

    Raises:
        InputError: for an empty frame set or query frames out of range.
    """
    from ..preprocess import resize_transforms
    from ..query.frames import select_query_frames

    S = len(frames)
    if S == 0:
        raise InputError("KLT: no frames to track")
    transforms = resize_transforms(frames, cfg.max_image_size)
    gf = _GrayFrames(frames, transforms)
    method = _klt_query_method(cfg)
    if query_frames is None:
        ranking = cfg.query_frame_ranking if cfg.query_frame_ranking in ("midpoint", "interval") else "interval"
        qf = [int(v) for v in select_query_frames(S, num_query_frames(S, cfg), ranking).tolist()]
    else:
        qf = [int(v) for v in query_frames]
        if any(q < 0 or q >= S for q in qf):
            raise InputError(f"KLT: query frames {qf} out of range for {S} frames")
    qf = list(dict.fromkeys(qf))
    state = _KltState(S)
    all_frames = list(range(S))
    with Stage(observer, "tracks (KLT)", total=None) as stage:

        def run(query_list: Sequence[int], meth: str, max_pts: int) -> None:
            seeds = {q: _detect(gf, q, meth, max_pts, seed + q) for q in query_list}
            tr, vi, qp = _track_seeds(gf, all_frames, seeds, fb_threshold, anchor_refine, on_step=stage.advance)
            state.add(tr, vi, qp)

        run(qf, method, cfg.max_query_pts)
        used = set(qf)
        if cfg.complement_nonvisible and S > 1:
            final_done = False
            for _ in range(S):
                counts = state.visible_counts()
                deficient = np.nonzero(counts < cfg.min_visible)[0]
                if deficient.size == 0:
                    break
                new = [int(f) for f in _run_centres(deficient) if int(f) not in used]
                if not new:
                    new = [int(f) for f in deficient if int(f) not in used]
                if new:
                    used.update(new)
                    stage.advance(0, note=f"complementing {len(new)} frames")
                    run(new, method, cfg.max_query_pts)
                    continue
                if final_done:
                    break
                # final trial (official: other detectors, half the points) on every deficient frame
                final_done = True
                run([int(f) for f in deficient], "gftt+grid", max(1, cfg.max_query_pts // 2))
                break
    tracks, vis, qpos = state.arrays()
    return TrackSet(
        tracks=torch.from_numpy(np.ascontiguousarray(tracks)),
        vis=torch.from_numpy(np.ascontiguousarray(vis)),
        score=None,
        query_frames=torch.from_numpy(qpos.astype(np.int64)),
        transforms=list(transforms),
        source="klt",
    )


def _run_centres(frames_sorted: np.ndarray) -> List[int]:
    """Middle frame of each run of consecutive frame indices (``[3,4,5,9] -> [4, 9]``)."""
    if frames_sorted.size == 0:
        return []
    breaks = np.nonzero(np.diff(frames_sorted) != 1)[0]
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [frames_sorted.size - 1]])
    return [int(frames_sorted[(s + e) // 2]) for s, e in zip(starts, ends)]



def refine_guided(
    gray_q: np.ndarray,
    gray_t: np.ndarray,
    xq: np.ndarray,
    xt: np.ndarray,
    neighbours: int = ANCHOR_NEIGHBOURS,
) -> Tuple[np.ndarray, np.ndarray]:
    """Refine predicted correspondences by aligning affine-warped query patches (wide baselines).

    Used when positions in frame ``t`` are already predicted to within a pixel or so (e.g. from
    known cameras and depth): each query patch is warped by the local affine map that the
    neighbouring predictions describe (:func:`_local_affines`) and aligned by Gauss-Newton on
    translation, gain and bias (:func:`_align_affine_patches`). Translation-only LK is biased by
    the patch distortion between distant views; this is not.

    Args:
        gray_q, gray_t: ``(H, W)`` uint8 grey query frame and target frame (processed frames).
        xq: ``(M, 2)`` pixel-centre points in the query frame.
        xt: ``(M, 2)`` predicted positions in the target frame.
        neighbours: predictions that define each point's local affine map.

    Returns:
        ``(xy (M, 2) float32, ok (M,) bool)``: refined positions; ``ok`` where the alignment
        converged, stayed within :data:`ANCHOR_MAX_SHIFT` px of the prediction, the neighbourhood
        gave an affine map and the aligned patches correlate (ZNCC above :data:`ANCHOR_MIN_ZNCC`).
    """
    from scipy.spatial import cKDTree

    xq = np.asarray(xq, np.float64).reshape(-1, 2)
    xt = np.asarray(xt, np.float64).reshape(-1, 2)
    M = xq.shape[0]
    if M <= neighbours:
        return xt.astype(np.float32), np.zeros(M, bool)
    dist, nn = cKDTree(xq).query(xq, k=neighbours + 1)
    A, ok_aff = _local_affines(xq, xt, nn[:, 1:], dist[:, 1:])
    A[~ok_aff] = np.eye(2)
    ref, good, _ = _align_affine_patches(_float_image(gray_q), _float_image(gray_t), xq, xt, A)
    H, W = gray_t.shape
    good &= ok_aff & (np.linalg.norm(ref - xt, axis=1) < ANCHOR_MAX_SHIFT) & _inside(ref, W, H)
    return ref.astype(np.float32), good
