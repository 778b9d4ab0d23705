"""SIFT tracks for unordered images: features, matches, two-view verification, multi-view tracks.

Weight-free replacement of the learned VGGSfM tracker for image collections, with the same
contract (:class:`vggsfm_ns.types.TrackSet`) and the same query-frame structure as the official
``predict_tracks`` / ``comple_nonvis_frames`` (spec §3.4, §4.3 item 4):

1. **Features**: SIFT on every processed frame (:func:`vggsfm_ns.query.points.extract_sift`,
   OpenCV, RootSIFT descriptors, at most ``max_features``), none inside dynamic masks. Frames
   smaller than ``cfg.sift_small_frame`` are enlarged for detection only. The detector samples
   ``cfg.sift_octave_layers`` scales per octave; with fewer than :data:`FULL_OCTAVE_LAYERS`, steps
   1-4 run again with that many when the verified pairs (step 4) do not join every frame.
2. **Pairs**: all pairs for small sets; otherwise every frame is matched with its
   ``cfg.sift_partners`` most similar frames, similarity being the number of mutual-nearest-neighbour
   matches among the :data:`RETRIEVAL_FEATURES` coarsest features of each frame (a cheap
   retrieval), plus the maximum spanning tree of that similarity so the pair graph is connected.
3. **Matching** (:func:`_match_descriptors`): mutual nearest neighbours with Lowe's ratio test,
   blocked matrix products and reductions (bfloat16 products where the CPU has AVX512-BF16/AMX).
4. **Verification**: fundamental-matrix LO-RANSAC per pair (poselib); pairs with fewer than
   ``min_inliers`` inliers are dropped; weakly matched pairs are re-matched inside the epipolar
   band (guided matching).
5. **Tracks**: verified matches, most distinctive first, are joined by a union-find that never
   puts two keypoints of one frame into a track (:func:`_conflict_free_components`). As in
   VGGSfM, each track is anchored at a keypoint of a *query frame*: the frames are ranked like the
   official DINO ranking ranks them (the best connected frame, then farthest-point sampling on the
   match graph), and every track through a query frame is anchored there (at most
   ``max_query_pts`` per query frame, longest first, spread over the image).
6. **Complement**: frames that see fewer than ``min_visible`` tracks become query frames in turn
   (official ``comple_nonvis_frames``), claiming the tracks not taken yet.
7. **Checks** (:func:`_to_arrays`): observations that disagree with the two-view geometry of
   their frame and the anchor frame, or with most verified pairs inside their track, are dropped.

All coordinates are pixel-centre ``(x, y)`` in the processed frame
(:func:`vggsfm_ns.preprocess.resize_transforms` with ``cfg.max_image_size``, no padding).
Frames and pairs are processed in parallel on :func:`vggsfm_ns.threads.cpu_workers` threads, each
matrix product and reduction on one torch thread (:func:`vggsfm_ns.threads.thread_map`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import TrackConfig
from ..errors import InputError
from ..geometry.epipolar import ransac_iterations
from ..progress import PipelineObserver, Stage
from ..threads import thread_map
from ..types import FrameSet, TrackSet

#: SIFT features per frame (strongest first).
MAX_FEATURES = 4096
#: SIFT DoG contrast threshold (OpenCV units; COLMAP's default ``peak_threshold`` is 0.02 / 3).
CONTRAST_THRESHOLD = 0.01
#: SIFT base blur (OpenCV ``sigma``).
SIFT_SIGMA = 1.6
#: Lowe's ratio test on RootSIFT L2 distances (COLMAP's default ``max_ratio``).
RATIO = 0.8
#: Largest RootSIFT L2 distance of a match (COLMAP's default ``max_distance``).
MAX_DISTANCE = 0.7
#: Epipolar (Sampson) threshold of the two-view RANSAC and the track checks, in processed pixels
#: per 1024 px of the longer side (at least 1 px): 1.5 px at 1024, 1 px at 683 and below.
FMAT_THRESHOLD = 1.5
#: Fewest inliers for a verified pair (COLMAP's default ``min_num_inliers`` is 15; 20 rejects
#: most false pairs between repeated structures).
MIN_INLIERS = 20
#: Most 7-point samples of a pair's fundamental-matrix RANSAC (COLMAP's default ``max_num_trials``).
MAX_RANSAC_ITERATIONS = 10000
#: Factor on the RANSAC bound of a pair for ``min_inliers`` inliers (COLMAP's
#: ``dyn_num_trials_multiplier``): a minimal sample of noisy inliers does not always give a model
#: that classifies every inlier as one.
RANSAC_BOUND_MULTIPLIER = 3.0
#: Pairs whose verified matches are fewer than this fraction of their features are re-matched
#: inside the epipolar band (guided matching); well-matched pairs gain little from it.
GUIDED_BELOW = 0.1
#: Guided matching: rows whose epipolar-line gradient ``|(F x1)_12|^2`` is below this fraction of
#: the median are compared with every column (their band is wide).
NARROW_BAND = 0.05
#: Guided matching: blocks of rows compared at once (padded to the widest of them).
BAND_GROUP = 8
#: Coarse features per frame used to rank partners.
RETRIEVAL_FEATURES = 256
#: Shortest track (frames), capped at the number of frames.
MIN_TRACK_LENGTH = 3
#: SIFT scales per octave of the full pass (Lowe's and COLMAP's choice); a cheaper first pass
#: (``cfg.sift_octave_layers`` below this) falls back to it when its pair graph is not connected.
FULL_OCTAVE_LAYERS = 3


@dataclass
class _Features:
    xy: List[np.ndarray] = field(default_factory=list)  # (n_i, 2) float32, pixel centre
    scale: List[np.ndarray] = field(default_factory=list)
    desc: List[torch.Tensor] = field(default_factory=list)  # (n_i, 128) float32, unit norm
    sizes: List[Tuple[int, int]] = field(default_factory=list)  # processed (W, H)

    @property
    def counts(self) -> np.ndarray:
        return np.array([len(x) for x in self.xy], np.int64)


def _use_bf16() -> bool:
    """bfloat16 matrix products are fast (and accurate enough for candidates) with AVX512-BF16 / AMX."""
    if os.environ.get("VGGSFM_NS_NO_BF16"):
        return False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # pragma: no cover - private torch API changed
            pass
    return False


def _extract_all(frames: FrameSet, transforms, max_features: int, stage: Stage, small_frame: int, octave_layers: int = FULL_OCTAVE_LAYERS) -> _Features:
    import cv2

    from ..preprocess import load_processed_masks
    from ..query.points import extract_sift, processed_gray

    def one(i: int):
        gray = processed_gray(frames, transforms, i)
        upscale = min(2.0, small_frame / max(gray.shape)) if max(gray.shape) < small_frame else 1.0
        xy, scale, desc = extract_sift(
            gray, max_features=max_features, backend="opencv", contrast_threshold=CONTRAST_THRESHOLD, upscale=upscale,
            sigma=SIFT_SIGMA, octave_layers=octave_layers,
        )
        if frames.mask_paths[i] is not None and len(xy):
            m = load_processed_masks(frames, transforms, [i])[0].numpy()
            ix = np.clip(np.rint(xy[:, 0]).astype(np.int64), 0, m.shape[1] - 1)
            iy = np.clip(np.rint(xy[:, 1]).astype(np.int64), 0, m.shape[0] - 1)
            keep = ~m[iy, ix]
            xy, scale, desc = xy[keep], scale[keep], desc[keep]
        return xy, scale, desc, (gray.shape[1], gray.shape[0])

    feats = _Features()
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for xy, scale, desc, size in thread_map(one, range(len(frames))):
            feats.xy.append(xy)
            feats.scale.append(scale)
            feats.desc.append(torch.from_numpy(desc))
            feats.sizes.append(size)
            stage.advance()
    finally:
        cv2.setNumThreads(cv_threads)
    return feats


def _match_descriptors(
    d1: torch.Tensor,
    d2: torch.Tensor,
    ratio: float,
    max_dist: float,
    bf16: bool,
    band: Optional[Tuple[np.ndarray, torch.Tensor, torch.Tensor, float]] = None,
    block: int = 256,
    group: int = 64,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours of unit RootSIFT descriptors passing the ratio and distance tests.

    Args:
        d1: ``(n1, 128)`` float32 unit descriptors; d2: ``(n2, 128)``.
        ratio: Lowe's ratio on L2 distances (``d = sqrt(2 - 2 s)``, ``s`` the cosine similarity).
        max_dist: largest L2 distance of a match.
        bf16: compute the similarities in bfloat16 (the best one is recomputed in float32).
        band: ``(F, x1 (n1, 2), x2 (n2, 2), threshold)``: only pairs within ``threshold`` px
            (Sampson) of the epipolar geometry ``x2^T F x1 = 0`` are candidates (guided matching).
        block, group: rows per block and columns per group of the blocked reductions.

    Returns:
        ``(m, 2)`` int64 index pairs ``(i1, i2)`` and ``(m,)`` float32 distance ratios
        (best / second best; 0 without a second candidate).

    The similarity matrix is produced ``block`` rows at a time and reduced while it is in cache:
    column maxima (for the mutual check) accumulate across blocks; row best / second best come
    from a two-level reduction over groups of ``group`` columns (``torch.max`` with indices over
    long rows is several times slower on CPU than ``amax``).
    """
    n1, n2 = d1.shape[0], d2.shape[0]
    if n1 == 0 or n2 == 0:
        return torch.zeros((0, 2), dtype=torch.int64), torch.zeros(0)
    if band is not None:
        F, x1, x2, thr = band
        return _match_in_band(d1, d2, ratio, max_dist, F, x1, x2, thr)
    pad = (-n2) % group
    ng = (n2 + pad) // group
    A = d1.to(torch.bfloat16) if bf16 else d1
    B = d2.to(torch.bfloat16) if bf16 else d2
    B = torch.cat([B, torch.zeros((pad, B.shape[1]), dtype=B.dtype)]).T.contiguous() if pad else B.T.contiguous()
    best = torch.empty(n1, dtype=torch.int64)
    v1 = torch.empty(n1)
    v2 = torch.empty(n1)
    colmax = torch.full((n2 + pad,), -2.0)
    for r0 in range(0, n1, block):
        r1 = min(n1, r0 + block)
        b = r1 - r0
        sim = (A[r0:r1] @ B).float()
        if pad:
            sim[:, n2:] = -2.0
        torch.maximum(colmax, sim.amax(0), out=colmax)
        s3 = sim.view(b, ng, group)
        gmax = s3.amax(2)
        _, gi = gmax.max(1)
        rows = torch.arange(b)
        grp = s3[rows, gi]
        wv, wi = grp.max(1)
        best[r0:r1] = gi * group + wi
        v1[r0:r1] = wv
        grp[rows, wi] = -2.0
        gmax[rows, gi] = grp.amax(1)
        v2[r0:r1] = gmax.amax(1)
    mutual = (colmax[best] <= v1) & (v1 > -1.5)
    if bf16:
        v1 = (d1 * d2[best]).sum(1)
    return _ratio_test(best, v1, v2, mutual, ratio, max_dist)


def _ratio_test(best, v1, v2, mutual, ratio, max_dist) -> Tuple[torch.Tensor, torch.Tensor]:
    """Index pairs and distance ratios of the rows passing the mutual, distance and ratio tests.

    ``best (n1,)`` column of each row's best similarity ``v1``, ``v2`` the second best (``< -1.5``:
    none), ``mutual (n1,)`` bool.
    """
    dist1 = torch.sqrt(torch.clamp(2.0 - 2.0 * v1, min=0.0))
    dist2 = torch.sqrt(torch.clamp(2.0 - 2.0 * v2, min=0.0))
    r = dist1 / dist2.clamp(min=1e-12)
    ok = mutual & (dist1 < max_dist) & ((r < ratio) | (v2 < -1.5))
    idx = torch.nonzero(ok)[:, 0]
    return torch.stack([idx, best[idx]], 1), torch.where(v2[idx] < -1.5, torch.zeros_like(r[idx]), r[idx]).float()


def _match_in_band(
    d1: torch.Tensor,
    d2: torch.Tensor,
    ratio: float,
    max_dist: float,
    F: np.ndarray,
    x1: torch.Tensor,
    x2: torch.Tensor,
    thr: float,
    block: int = 64,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`_match_descriptors` restricted to the epipolar band (guided matching), without the
    dense ``(n1, n2)`` band test.

    Same result as masking the full similarity matrix with the Sampson test
    ``(x2^T F x1)^2 <= thr^2 (|(F x1)_12|^2 + |(F^T x2)_12|^2)``, but only similarities of pairs
    that can be inside the band are computed:

    1. the rows' epipolar lines in image 2, ``l_i = F x1_i`` scaled to unit normal, belong to the
       pencil through the epipole; rows are sorted by their angle in that pencil (for an epipole
       at infinity: by offset), so a block of consecutive rows (split where the pencil has a gap)
       holds nearly the same lines;
    2. for a block with centre line ``c`` and smallest
       ``|(F x1_i)_12|^2 = m``, column ``j`` (``h_j = (x2_j, 1)``) is outside the band of every row
       when ``|c . h_j| - D_n |x2_j| - D_c > thr sqrt(1 + |(F^T x2_j)_12|^2 / m)``, with ``D_n`` and
       ``D_c`` the largest differences of the block's unit normals and offsets (px) from ``c``'s
       (Cauchy-Schwarz), a test of all blocks against all columns in one ``(blocks, 3) x (3, n2)``
       product;
    3. each block's candidate columns get exact float32 similarities and the exact band test.

    Coordinates are centred first (Sampson distances do not change under translations), which
    keeps ``|h_j|`` and so the bound small. Rows whose line is undefined (``x1`` at the epipole)
    and rows whose ``|(F x1_i)_12|^2`` is below :data:`NARROW_BAND` times the median (``x1`` near the
    epipole: a wide band) are compared with every column.

    Returns ``(m, 2)`` int64 index pairs and ``(m,)`` float32 distance ratios, as
    :func:`_match_descriptors`.
    """
    n1, n2 = d1.shape[0], d2.shape[0]
    x1d = x1.to(torch.float64)
    x2d = x2.to(torch.float64)
    c1 = x1d.mean(0)
    c2 = x2d.mean(0)
    T1 = torch.eye(3, dtype=torch.float64)
    T1[:2, 2] = c1
    T2 = torch.eye(3, dtype=torch.float64)
    T2[:2, 2] = c2
    Fc = T2.T @ torch.from_numpy(np.asarray(F, np.float64)) @ T1  # F in centred coordinates
    h1 = torch.cat([x1d - c1, torch.ones(n1, 1, dtype=torch.float64)], 1)
    h2 = torch.cat([x2d - c2, torch.ones(n2, 1, dtype=torch.float64)], 1)
    l2 = h1 @ Fc.T  # (n1, 3) epipolar lines of x1 in image 2
    l1 = h2 @ Fc  # (n2, 3) epipolar lines of x2 in image 1
    den1 = l2[:, 0] ** 2 + l2[:, 1] ** 2
    den2 = l1[:, 0] ** 2 + l1[:, 1] ** 2
    thr2 = float(thr) ** 2
    h2t = h2.T.contiguous()

    # rows near the epipole of image 1 have wide bands (their line barely constrains x2): all columns
    has_line = den1 > NARROW_BAND * float(den1.median()) if n1 else den1 > 0
    lines = l2 / den1.clamp_min(1e-300).sqrt()[:, None]
    # order the rows along the pencil of lines through the epipole, in coordinates scaled to about
    # [-1, 1] so that lines far apart in the image are far apart in the pencil
    sc = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) * float(h2[:, :2].abs().max().clamp_min(1.0))
    sc[2] = 1.0
    U = torch.linalg.svd(sc[:, None] * Fc)[0]  # its first two columns span the scaled lines
    scaled = l2 * sc
    theta = torch.atan2(scaled @ U[:, 1], scaled @ U[:, 0])
    flip = theta < 0
    theta = torch.where(flip, theta + math.pi, theta)
    lines = torch.where(flip[:, None], -lines, lines)
    best = torch.zeros(n1, dtype=torch.int64)
    v1 = torch.full((n1,), -2.0)
    v2 = torch.full((n1,), -2.0)
    colmax = torch.full((n2 + 1,), -2.0)  # the last entry collects padding
    d2p = torch.cat([d2, torch.zeros(1, d2.shape[1], dtype=d2.dtype)])
    h2p = torch.cat([h2, torch.zeros(1, 3, dtype=torch.float64)])
    den2p = torch.cat([den2, torch.zeros(1, dtype=torch.float64)])

    def compare(idx: torch.Tensor, valid: torch.Tensor, cols: torch.Tensor, cvalid: torch.Tensor) -> None:
        """Rows ``idx (nb, b)`` against their block's columns ``cols (nb, c)`` (padding: ``valid``,
        ``cvalid`` False; padded columns point at index ``n2``)."""
        e = torch.bmm(l2[idx], h2p[cols].transpose(1, 2))
        outside = e * e > thr2 * (den1[idx][..., None] + den2p[cols][:, None, :])
        outside |= ~(valid[..., None] & cvalid[:, None, :])
        sim = torch.bmm(d1[idx], d2p[cols].transpose(1, 2))
        sim.masked_fill_(outside, -2.0)
        colmax.scatter_reduce_(0, cols.flatten(), sim.amax(1).flatten(), reduce="amax")
        wv, wi = sim.max(2)
        sim.scatter_(2, wi[..., None], -2.0)
        second = sim.amax(2)
        rows = idx[valid]
        best[rows] = torch.gather(cols, 1, wi)[valid]
        v1[rows] = wv[valid]
        v2[rows] = second[valid]

    good = torch.nonzero(has_line).flatten()
    if good.numel():
        th, order = torch.sort(theta[good])
        order = good[order]
        # blocks of at most `block` consecutive rows, never across a gap in the pencil (no lines
        # between two groups of rows: putting them in one block would widen its band)
        n = order.numel()
        seg = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.int64), (th.diff() > 20.0 * math.pi / n).long()]), 0)
        seg_start = torch.zeros(int(seg[-1]) + 1, dtype=torch.int64).scatter_reduce_(0, seg, torch.arange(n), "amin", include_self=False)
        key = seg * (n + 1) + (torch.arange(n) - seg_start[seg]) // block
        blk = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.int64), (key.diff() != 0).long()]), 0)
        nb = int(blk[-1]) + 1
        pos = torch.arange(n) - torch.zeros(nb, dtype=torch.int64).scatter_reduce_(0, blk, torch.arange(n), "amin", include_self=False)[blk]
        idx = torch.zeros(nb, block, dtype=torch.int64)
        valid = torch.zeros(nb, block, dtype=torch.bool)
        idx[blk, pos] = order
        valid[blk, pos] = True
        centre = lines[idx[torch.arange(nb), valid.sum(1) // 2]]  # (nb, 3)
        diff = lines[idx] - centre[:, None]  # (nb, block, 3)
        zero = torch.zeros((), dtype=torch.float64)
        spread_n = torch.where(valid, diff[..., :2].norm(dim=2), zero).amax(1)  # unit normals
        spread_c = torch.where(valid, diff[..., 2].abs(), zero).amax(1)  # offsets (px)
        dmin = torch.where(valid, den1[idx], torch.full((), math.inf, dtype=torch.float64)).amin(1)
        lhs = (centre @ h2t).abs() - spread_n[:, None] * h2[:, :2].norm(dim=1)[None] - spread_c[:, None]
        rhs = float(thr) * (1.0 + den2[None] / dmin[:, None]).sqrt()
        cand = lhs <= rhs * (1.0 + 1e-9) + 1e-9  # (nb, n2): may be inside the band of a row of the block
        counts = cand.sum(1)
        nrows = valid.sum(1)
        # blocks with similar candidate counts together, so that little is padded
        by_count = torch.argsort(counts * (block + 1) + nrows)
        for g in range(0, nb, BAND_GROUP):
            sel = by_count[g : g + BAND_GROUP]
            width = int(counts[sel].max())
            if width == 0:
                continue
            height = int(nrows[sel].max())
            cols = torch.argsort((~cand[sel]).to(torch.int8), dim=1, stable=True)[:, :width]  # candidates first
            cvalid = torch.arange(width)[None] < counts[sel][:, None]
            compare(idx[sel, :height], valid[sel, :height], torch.where(cvalid, cols, n2), cvalid)
    rest = torch.nonzero(~has_line).flatten()
    if rest.numel():
        compare(rest[None], torch.ones(1, rest.numel(), dtype=torch.bool), torch.arange(n2)[None], torch.ones(1, n2, dtype=torch.bool))
    colmax = colmax[:n2]
    best.clamp_(max=n2 - 1)  # rows without candidates (v1 = -2, never mutual)
    mutual = (colmax[best] <= v1) & (v1 > -1.5)
    return _ratio_test(best, v1, v2, mutual, ratio, max_dist)


def _retrieval_scores(feats: _Features, num: int, bf16: bool) -> np.ndarray:
    """``(S, S)`` number of mutual ratio-test matches among each frame's ``num`` coarsest features.

    A cheap image-similarity for choosing which pairs to match fully: coarse-scale SIFT features
    are the most repeatable, and a few hundred of them rank partners well.
    """
    S = len(feats.xy)
    subs, valid = [], []
    for scale, desc in zip(feats.scale, feats.desc):
        order = np.argsort(-scale, kind="stable")[:num]
        sub = desc[torch.from_numpy(order)].reshape(-1, 128)
        ok = torch.ones(num, dtype=torch.bool)
        if sub.shape[0] < num:  # pad with zero vectors (similarity 0, never a match)
            ok[sub.shape[0] :] = False
            sub = torch.cat([sub, torch.zeros((num - sub.shape[0], 128))])
        subs.append(sub)
        valid.append(ok)
    D = torch.stack(subs)  # (S, M, 128)
    V = torch.stack(valid)  # (S, M)
    flat = D.reshape(S * num, 128)
    flat_mm = flat.to(torch.bfloat16) if bf16 else flat
    scores = np.zeros((S, S), np.float64)

    def one(i: int) -> None:
        sim = (flat_mm[i * num : (i + 1) * num] @ flat_mm.T).float().reshape(num, S, num)  # (M_i, S, M_j)
        v1, best = sim.max(2)  # (M_i, S)
        colmax = sim.amax(0)  # (S, M_j)
        mutual = v1 >= torch.gather(colmax, 1, best.T).T
        sim.scatter_(2, best[..., None], -2.0)
        v2 = sim.amax(2).float()
        d1 = torch.sqrt(torch.clamp(2.0 - 2.0 * v1.float(), min=0.0))
        d2 = torch.sqrt(torch.clamp(2.0 - 2.0 * v2, min=0.0))
        ok = mutual & (d1 < RATIO * d2) & (d1 < MAX_DISTANCE) & V[i][:, None] & torch.gather(V, 1, best.T).T
        scores[i] = ok.sum(0).numpy()

    for _ in thread_map(one, range(S)):
        pass
    scores = np.minimum(scores, scores.T)
    np.fill_diagonal(scores, 0)
    return scores


def _select_pairs(feats: _Features, num_neighbors: int, bf16: bool) -> List[Tuple[int, int]]:
    """Frame pairs ``(i, j)``, ``i < j``, to match: all of them, or retrieval neighbours + a spanning tree."""
    S = len(feats.xy)
    if S - 1 <= num_neighbors:
        return [(i, j) for i in range(S) for j in range(i + 1, S)]
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    scores = _retrieval_scores(feats, RETRIEVAL_FEATURES, bf16)
    pairs = set()
    for i in range(S):
        order = np.argsort(-scores[i], kind="stable")
        for j in order[:num_neighbors]:
            if j != i:
                pairs.add((min(i, int(j)), max(i, int(j))))
    # connect the graph: maximum spanning tree of the similarity (ties / zeros get a tiny weight)
    w = scores.max() + 1.0 - scores
    np.fill_diagonal(w, 0)
    tree = minimum_spanning_tree(csr_matrix(np.triu(w, 1))).tocoo()
    for i, j in zip(tree.row, tree.col):
        pairs.add((min(int(i), int(j)), max(int(i), int(j))))
    return sorted(pairs)


def _match_and_verify(
    feats: _Features,
    pairs: Sequence[Tuple[int, int]],
    bf16: bool,
    threshold: float,
    min_inliers: int,
    seed: int,
    stage: Stage,
    guided: bool = True,
) -> Tuple[Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray]], Dict[Tuple[int, int], np.ndarray]]:
    """Match, verify and re-match every pair; one job per pair (:func:`~vggsfm_ns.threads.thread_map`).

    1. Mutual nearest neighbours with the ratio test (:func:`_match_descriptors`).
    2. Fundamental-matrix LO-RANSAC (poselib, Sampson threshold ``threshold`` px); the pair is
       dropped with fewer than ``min_inliers`` inliers. The search stops after
       :data:`RANSAC_BOUND_MULTIPLIER` times
       :func:`~vggsfm_ns.geometry.epipolar.ransac_iterations` samples for ``min_inliers`` inliers
       among the matches (at most :data:`MAX_RANSAC_ITERATIONS`): by then a model good
       enough to keep the pair would have been found with the RANSAC success probability, so a
       pair of few, mostly wrong matches is not searched 10,000 times.
    3. Guided matching (COLMAP's ``guided_matching``) for pairs with few inliers (below
       :data:`GUIDED_BELOW` of the features): the mutual / ratio test is run again among the
       candidates inside the epipolar band of that F, which recovers matches that repeated texture
       hid from the unconstrained ratio test (4x more tracks on the ``kitchen`` scene).

    Returns ``{(i, j): ((m, 2) int64 keypoint index pairs, (m,) ratio-test values)}`` and
    ``{(i, j): F}`` (``x_j^T F x_i = 0``) for the verified pairs.
    """
    import poselib

    xys = [torch.from_numpy(x) for x in feats.xy]
    ransac = {"max_epipolar_error": float(threshold), "min_iterations": 50, "success_prob": 0.9999, "seed": int(seed)}
    sample = 7  # poselib's minimal sample of a fundamental matrix

    def one(pair):
        i, j = pair
        m, r = _match_descriptors(feats.desc[i], feats.desc[j], RATIO, MAX_DISTANCE, bf16)
        m, r = m.numpy(), r.numpy()
        if len(m) < max(min_inliers, sample):
            return pair, None, None
        # only a model with >= min_inliers inliers keeps the pair: stop searching once one that good
        # would have been found with the success probability
        bound = RANSAC_BOUND_MULTIPLIER * ransac_iterations(min_inliers, len(m), sample, ransac["success_prob"])
        opts = dict(ransac, max_iterations=max(ransac["min_iterations"], math.ceil(min(bound, MAX_RANSAC_ITERATIONS))))
        F, info = poselib.estimate_fundamental(
            feats.xy[i][m[:, 0]].astype(np.float64), feats.xy[j][m[:, 1]].astype(np.float64), opts, {}
        )
        inl = np.asarray(info["inliers"], bool)
        if inl.sum() < min_inliers:
            return pair, None, None
        if not guided or inl.sum() >= GUIDED_BELOW * min(len(feats.xy[i]), len(feats.xy[j])):
            return pair, (m[inl], r[inl]), F
        g, gr = _match_descriptors(feats.desc[i], feats.desc[j], RATIO, MAX_DISTANCE, bf16, band=(F, xys[i], xys[j], threshold))
        if len(g) < inl.sum():  # guided matching never loses verified matches
            return pair, (m[inl], r[inl]), F
        return pair, (g.numpy(), gr.numpy()), F

    verified: Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray]] = {}
    fmats: Dict[Tuple[int, int], np.ndarray] = {}
    for n, (pair, m, F) in enumerate(thread_map(one, pairs)):
        if m is not None:
            verified[pair] = m
            fmats[pair] = F
        if n % 16 == 15:
            stage.advance(16)
    stage.advance(len(pairs) % 16)
    return verified, fmats


def _sampson(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Sampson distance (px) of correspondences ``x1 (n, 2)`` -> ``x2 (n, 2)`` under ``x2^T F x1 = 0``."""
    h1 = np.c_[x1, np.ones(len(x1))]
    h2 = np.c_[x2, np.ones(len(x2))]
    Fx1 = h1 @ F.T
    Ftx2 = h2 @ F
    num = np.einsum("ij,ij->i", h2, Fx1) ** 2
    den = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-30))


def _conflict_free_components(num_nodes: int, edges: np.ndarray, frame_of: np.ndarray) -> np.ndarray:
    """Union-find over ``edges`` (in the given priority order) that never joins two sets sharing a frame.

    A set of keypoints is a track hypothesis; joining two sets that both hold a keypoint of the
    same frame would make a track see two points in one image, the signature of a wrong match
    somewhere in the chain. Such an edge is skipped, so one wrong match cannot glue unrelated
    tracks together (plain connected components can merge thousands of keypoints).

    Args:
        num_nodes: number of keypoints (all frames).
        edges: ``(E, 2)`` int64 node pairs, best first.
        frame_of: ``(num_nodes,)`` frame of each node.

    Returns:
        ``(num_nodes,)`` int64 component label: the smallest node id of the component.

    Components of the plain match graph that hold at most one keypoint per frame are taken as
    they are (scipy); the ordered union-find runs only over the edges of the other components,
    which gives the same sets as running it over all edges.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    labels = np.arange(num_nodes, dtype=np.int64)
    if num_nodes == 0 or len(edges) == 0:
        return labels
    # Plain components first: a component holding at most one keypoint per frame never meets a
    # conflicting edge, so the union-find below only has to run inside the others.
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(num_nodes, num_nodes))
    _, comp = connected_components(graph, directed=False)
    size = np.bincount(comp)
    F = int(frame_of.max()) + 1
    span = np.bincount(np.unique(comp * F + frame_of) // F, minlength=len(size))  # frames per component
    clean = size == span
    # label = smallest node of the component (the union-find roots below are relabelled the same way)
    _, first = np.unique(comp, return_index=True)
    labels = np.where(clean[comp], first[comp], labels)

    hard = ~clean[comp[edges[:, 0]]]
    if hard.any():
        sub = edges[hard]
        nodes = np.unique(sub)
        local = np.searchsorted(nodes, sub)
        parent = list(range(len(nodes)))
        frames = [1 << int(f) for f in frame_of[nodes].tolist()]

        def find(a: int) -> int:
            root = a
            while parent[root] != root:
                root = parent[root]
            while parent[a] != root:
                parent[a], a = root, parent[a]
            return root

        for a, b in local.tolist():
            ra, rb = find(a), find(b)
            if ra == rb or frames[ra] & frames[rb]:
                continue
            parent[rb] = ra
            frames[ra] |= frames[rb]
        roots = np.array([find(a) for a in range(len(nodes))], np.int64)
        _, smallest, inverse = np.unique(roots, return_index=True, return_inverse=True)
        labels[nodes] = nodes[smallest[inverse]]
    return labels


class _TrackBuilder:
    """Conflict-free union-find components of the verified match graph, as query-anchored tracks."""

    def __init__(self, feats: _Features, verified: Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray]]):
        from scipy.sparse import coo_matrix

        counts = feats.counts
        self.S = len(counts)
        self.offset = np.concatenate([[0], np.cumsum(counts)])
        self.total = n = int(self.offset[-1])
        self.frame_of = np.repeat(np.arange(self.S), counts)
        self.kp_of = np.arange(n) - self.offset[self.frame_of]
        edges, prio = [], []
        for (i, j), (m, r) in verified.items():
            if len(m):
                edges.append(np.stack([m[:, 0] + self.offset[i], m[:, 1] + self.offset[j]], 1))
                prio.append(r)
        e = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
        pr = np.concatenate(prio) if prio else np.zeros(0)
        e = e[np.argsort(pr, kind="stable")]  # most distinctive matches first
        labels = _conflict_free_components(n, e, self.frame_of)
        e = e[labels[e[:, 0]] == labels[e[:, 1]]]  # edges inside a track
        self.edges = e
        adj = coo_matrix((np.ones(len(e), np.int8), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
        self.adj = (adj + adj.T).tocsr()
        self.degree = np.diff(self.adj.indptr)
        _, self.comp = np.unique(labels, return_inverse=True)
        self.comp_len = np.bincount(self.comp, weights=(self.degree > 0).astype(np.float64)).astype(np.int64) if n else np.zeros(0, np.int64)
        self.claimed = np.zeros(len(self.comp_len), bool)

    def anchor_candidates(self, q: int, min_len: int) -> Tuple[np.ndarray, np.ndarray]:
        """Best keypoint (global node id) of frame ``q`` in each unclaimed component through ``q``.

        Returns ``(nodes, component lengths)``; one node per component (highest degree).
        """
        nodes = np.arange(self.offset[q], self.offset[q + 1])
        nodes = nodes[self.degree[nodes] > 0]
        comps = self.comp[nodes]
        keep = (~self.claimed[comps]) & (self.comp_len[comps] >= min_len)
        nodes, comps = nodes[keep], comps[keep]
        if nodes.size == 0:
            return nodes, nodes
        order = np.lexsort((-self.degree[nodes], comps))
        nodes, comps = nodes[order], comps[order]
        first = np.ones(len(comps), bool)
        first[1:] = comps[1:] != comps[:-1]
        return nodes[first], self.comp_len[comps[first]]

    def build(self, anchors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Observations of tracks anchored at ``anchors`` (global node ids, distinct components).

        Returns ``obs (S, N)`` int64 node id per frame (-1 = not observed) and ``direct (S, N)``
        bool (observation matched directly to the anchor).
        """
        N = len(anchors)
        obs = np.full((self.S, N), -1, np.int64)
        direct = np.zeros((self.S, N), bool)
        if N == 0:
            return obs, direct
        comp_to_track = np.full(len(self.comp_len), -1, np.int64)
        comp_to_track[self.comp[anchors]] = np.arange(N)
        self.claimed[self.comp[anchors]] = True
        members = np.nonzero(comp_to_track[self.comp] >= 0)[0]
        track = comp_to_track[self.comp[members]]
        frame = self.frame_of[members]
        # neighbours of each anchor: direct matches
        is_direct = np.zeros(self.total, bool)
        for a in anchors:
            is_direct[self.adj.indices[self.adj.indptr[a] : self.adj.indptr[a + 1]]] = True
        # per (track, frame): direct first, then highest degree
        order = np.lexsort((-self.degree[members], ~is_direct[members], frame, track))
        members, track, frame = members[order], track[order], frame[order]
        first = np.ones(len(members), bool)
        first[1:] = (track[1:] != track[:-1]) | (frame[1:] != frame[:-1])
        obs[frame[first], track[first]] = members[first]
        direct[frame[first], track[first]] = is_direct[members[first]]
        obs[self.frame_of[anchors], np.arange(N)] = anchors
        direct[self.frame_of[anchors], np.arange(N)] = True
        return obs, direct


def _largest_component(verified: Dict[Tuple[int, int], object], S: int) -> int:
    """Frames in the largest connected component of the verified pair graph (1 with no pairs)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not verified:
        return min(S, 1)
    e = np.array(list(verified.keys()), np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(S, S))
    _, label = connected_components(graph, directed=False)
    return int(np.bincount(label).max())


def _rank_query_frames(verified: Dict[Tuple[int, int], np.ndarray], S: int, num: int) -> List[int]:
    """Most connected frame first, then farthest-point sampling on ``1 / (1 + inliers)`` distances."""
    from ..query.frames import farthest_point_sampling

    W = np.zeros((S, S))
    for (i, j), (m, _) in verified.items():
        W[i, j] = W[j, i] = len(m)
    dist = torch.from_numpy(1.0 / (1.0 + W))
    start = int(np.argmax(W.sum(1)))
    return farthest_point_sampling(dist, num, start)


def track_sift(
    frames: FrameSet,
    cfg: TrackConfig,
    observer: Optional[PipelineObserver] = None,
    *,
    max_features: int = MAX_FEATURES,
    fmat_threshold: Optional[float] = None,
    min_inliers: int = MIN_INLIERS,
    guided_matching: bool = True,
    seed: int = 0,
    query_frames: Optional[Sequence[int]] = None,
) -> TrackSet:
    """SIFT tracks over any set of frames, VGGSfM style (query-frame anchored).

    Args:
        frames: the frames (any order).
        cfg: track settings. Used: ``max_image_size`` (processed size), ``query_frame_num``,
            ``query_frame_ranking`` (``midpoint`` / ``interval`` are honoured; ``dino`` is
            replaced by the match-graph ranking, see module doc), ``max_query_pts`` (tracks per
            query frame), ``complement_nonvisible``, ``min_visible``, ``sift_small_frame``,
            ``sift_partners`` and ``sift_octave_layers``.
        observer: progress reporting (stages ``"SIFT features"``, one step per frame, and
            ``"SIFT matching"``, one step per frame pair; ``"SIFT features (3 layers)"`` and
            ``"SIFT matching (3 layers)"`` again when a pass with fewer layers per octave leaves
            the verified pair graph disconnected, announced by a message).
        max_features: SIFT features per frame.
        fmat_threshold: epipolar (Sampson) threshold of the two-view RANSAC and of the track
            checks, processed px; default ``max(1, FMAT_THRESHOLD * long_side / 1024)``.
        min_inliers: fewest verified matches for a pair to count.
        guided_matching: re-match each verified pair inside the epipolar band of its F.
        seed: RANSAC seed.
        query_frames: explicit first query frames (overrides the ranking).

    Returns:
        :class:`TrackSet` (``source="sift"``, ``score`` None, ``vis`` 0/1) with the transforms of
        :func:`vggsfm_ns.preprocess.resize_transforms`. Every track has at least
        ``min(3, S)`` observations; invisible entries hold the anchor position (meaningless).

    Source: our design; the query-frame / complement structure follows the official
    ``predict_tracks`` + ``comple_nonvis_frames`` (spec §3.4, §4.3 item 4).

    Raises:
        InputError: with fewer than 2 frames, fewer than 1 partner per frame or fewer than 1 layer
            per octave.
    """
    from ..preprocess import resize_transforms
    from ..query.frames import select_query_frames

    S = len(frames)
    if S < 2:
        raise InputError(f"SIFT tracks need at least 2 frames, got {S}")
    partners = int(cfg.sift_partners)
    if partners < 1:
        raise InputError(f"SIFT tracks need at least 1 partner per frame, got {partners} (sift_partners)")
    layers = int(cfg.sift_octave_layers)
    if layers < 1:
        raise InputError(f"SIFT needs at least 1 layer per octave, got {layers} (sift_octave_layers)")
    transforms = resize_transforms(frames, cfg.max_image_size)
    if fmat_threshold is None:
        long_side = max(max(t.size) for t in transforms)
        fmat_threshold = max(1.0, FMAT_THRESHOLD * long_side / 1024.0)
    bf16 = _use_bf16()

    def features_and_matches(octave_layers: int, label: str):
        with Stage(observer, "SIFT features" + label, total=S) as stage:
            feats = _extract_all(frames, transforms, max_features, stage, cfg.sift_small_frame, octave_layers)
            pairs = _select_pairs(feats, partners, bf16)  # retrieval: the bar is full meanwhile
        with Stage(observer, "SIFT matching" + label, total=len(pairs)) as stage:
            verified, fmats = _match_and_verify(feats, pairs, bf16, fmat_threshold, min_inliers, seed, stage, guided_matching)
        return feats, verified, fmats

    feats, verified, fmats = features_and_matches(layers, "")
    if layers < FULL_OCTAVE_LAYERS:
        joined = _largest_component(verified, S)
        if joined < S:
            if observer is not None:
                observer.message(
                    f"SIFT with {layers} layer(s) per octave: verified pairs join only {joined} of {S} frames; "
                    f"extracting and matching again with {FULL_OCTAVE_LAYERS}"
                )
            feats, verified, fmats = features_and_matches(FULL_OCTAVE_LAYERS, f" ({FULL_OCTAVE_LAYERS} layers)")
    builder = _TrackBuilder(feats, verified)
    min_len = min(MIN_TRACK_LENGTH, S)

    if query_frames is not None:
        first = [int(q) for q in query_frames]
        if any(q < 0 or q >= S for q in first):
            raise InputError(f"SIFT: query frames {first} out of range for {S} frames")
    elif cfg.query_frame_ranking in ("midpoint", "interval"):
        first = [int(v) for v in select_query_frames(S, cfg.query_frame_num, cfg.query_frame_ranking).tolist()]
    else:
        first = _rank_query_frames(verified, S, cfg.query_frame_num)

    obs_parts: List[np.ndarray] = []
    direct_parts: List[np.ndarray] = []
    qf_parts: List[np.ndarray] = []
    visible = np.zeros(S, np.int64)

    def claim(q: int) -> None:
        nodes, lengths = builder.anchor_candidates(q, min_len)
        if nodes.size == 0:
            return
        if nodes.size > cfg.max_query_pts:
            W, H = feats.sizes[q]
            keep = _spread_longest(feats.xy[q][builder.kp_of[nodes]], lengths, W, H, cfg.max_query_pts)
            nodes = nodes[keep]
        obs, direct = builder.build(nodes)
        obs_parts.append(obs)
        direct_parts.append(direct)
        qf_parts.append(np.full(len(nodes), q, np.int64))
        visible[:] += (obs >= 0).sum(1)

    used = []
    for q in dict.fromkeys(first):
        claim(q)
        used.append(q)
    if cfg.complement_nonvisible:
        while True:
            deficient = [f for f in np.argsort(visible, kind="stable") if visible[f] < cfg.min_visible and f not in used]
            if not deficient:
                break
            q = int(deficient[0])
            used.append(q)
            claim(q)

    if obs_parts:
        obs = np.concatenate(obs_parts, 1)
        direct = np.concatenate(direct_parts, 1)
        qf = np.concatenate(qf_parts)
    else:
        obs = np.full((S, 0), -1, np.int64)
        direct = np.zeros((S, 0), bool)
        qf = np.zeros(0, np.int64)
    tracks, vis = _to_arrays(feats, builder, obs, direct, qf, fmats, fmat_threshold, seed)
    keep = vis.sum(0) >= min_len
    tracks, vis, qf = tracks[:, keep], vis[:, keep], qf[keep]
    return TrackSet(
        tracks=torch.from_numpy(tracks),
        vis=torch.from_numpy(vis),
        score=None,
        query_frames=torch.from_numpy(qf),
        transforms=list(transforms),
        source="sift",
    )


def _spread_longest(xy: np.ndarray, lengths: np.ndarray, W: int, H: int, num: int, cells: int = 8) -> np.ndarray:
    """Indices of ``num`` anchors: longest tracks first, taken round-robin over a grid of cells."""
    cx = np.clip((xy[:, 0] * cells / max(W, 1)).astype(np.int64), 0, cells - 1)
    cy = np.clip((xy[:, 1] * cells / max(H, 1)).astype(np.int64), 0, cells - 1)
    cell = cy * cells + cx
    order = np.lexsort((-lengths, cell))  # by cell, longest first within a cell
    sc = cell[order]
    first = np.ones(len(sc), bool)
    first[1:] = sc[1:] != sc[:-1]
    idx = np.arange(len(sc))
    start = np.maximum.accumulate(np.where(first, idx, 0))
    rank = np.empty(len(sc), np.int64)
    rank[order] = idx - start
    pick = np.lexsort((-lengths, rank))[:num]
    return np.sort(pick)


def _to_arrays(feats, builder, obs, direct, qf, fmats, threshold, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``tracks (S, N, 2)`` float32 and ``vis (S, N)`` float32 from node ids, keeping only
    observations consistent with two-view geometry.

    1. Pairwise vote: an observation in frame ``f`` is dropped when it violates (Sampson distance
       above ``threshold``) the verified fundamental matrix between ``f`` and the anchor frame, or
       the majority of the verified pairs it shares with the track's other observations.
    2. Anchor geometry: for every (anchor frame, frame) with at least :data:`MIN_INLIERS`
       observations left, a fundamental matrix is fitted (LO-RANSAC) to all of them, direct and
       chained, and its outliers are dropped. Where there are fewer, an observation that was not
       matched directly to its anchor needs the support of at least two verified pairs.
    """
    import poselib

    S, N = obs.shape
    all_xy = np.concatenate(feats.xy).astype(np.float32) if builder.total else np.zeros((0, 2), np.float32)
    seen = obs >= 0
    tracks = np.zeros((S, N, 2), np.float32)
    tracks[seen] = all_xy[obs[seen]]
    cols_all = np.arange(N)
    anchor_xy = tracks[qf, cols_all] if N else np.zeros((0, 2), np.float32)
    agree = np.zeros((S, N), np.int32)
    checked = np.zeros((S, N), np.int32)
    anchor_bad = np.zeros((S, N), bool)
    for (i, j), F in fmats.items():
        cols = np.nonzero(seen[i] & seen[j])[0]
        if cols.size == 0:
            continue
        d = _sampson(F, tracks[i, cols].astype(np.float64), tracks[j, cols].astype(np.float64))
        good = d <= threshold
        for f, other in ((i, j), (j, i)):
            agree[f, cols] += good
            checked[f, cols] += 1
            anchor_bad[f, cols[(qf[cols] == other) & ~good]] = True
    keep = seen & ~anchor_bad & (2 * agree >= checked)
    keep[qf, cols_all] = seen[qf, cols_all]
    ransac = {"max_epipolar_error": float(threshold), "max_iterations": 5000, "min_iterations": 50, "success_prob": 0.999, "seed": int(seed)}
    jobs = []
    for q in np.unique(qf):
        tq = np.nonzero(qf == q)[0]
        for f in range(S):
            if f == q:
                continue
            c = tq[keep[f, tq]]
            if c.size >= MIN_INLIERS:
                jobs.append((f, c))
            elif c.size:
                weak = ~direct[f, c] & (agree[f, c] < 2)
                keep[f, c[weak]] = False

    def fit(job):
        f, c = job
        _, info = poselib.estimate_fundamental(anchor_xy[c].astype(np.float64), tracks[f, c].astype(np.float64), ransac, {})
        return f, c, np.asarray(info["inliers"], bool)

    for f, c, inl in thread_map(fit, jobs):
        keep[f, c[~inl]] = False
    vis = keep.astype(np.float32)
    fill = ~keep
    tracks[fill] = np.broadcast_to(anchor_xy[None], (S, N, 2))[fill]
    return tracks, vis
