"""Preliminary two-view geometry between a reference frame and every other frame.

The back end needs, for every frame ``i``, which tracks are epipolar inliers between the reference
frame and frame ``i`` (the official ``fmat_inlier_mask``), and, without a camera prior, a relative
pose for each such pair to pick and initialise the first two views.

Source: official ``vggsfm/two_view_geo/estimate_preliminary.py``
(``estimate_preliminary_cameras_poselib``, default ``use_poselib=True``, and the torch
``estimate_preliminary_cameras``: essential matrix from the fundamental one with a default K,
decomposition and cheirality vote).
"""

from __future__ import annotations

from typing import Literal, Optional, Tuple

import numpy as np
import torch

from ..geometry.camera import cam_from_img
from ..geometry.epipolar import essential_from_fundamental, estimate_fundamental
from ..geometry.triangulation import relative_pose_from_essential
from ..threads import thread_map

#: Fewest common observations for which a fundamental matrix is estimated.
MIN_MATCHES = 8
#: :func:`relative_poses` decomposes this many frames per job (worker threads). Small batches also
#: keep the four-candidate cheirality test in cache: 400 frames x 256 votes took 1.35 s in one
#: batch and 0.33 s in batches of 32 on one thread (0.23 s on two).
POSE_ROWS_PER_JOB = 32


def fundamental_inliers(
    xy: torch.Tensor,
    obs: torch.Tensor,
    ref: int,
    max_error: float = 4.0,
    method: Literal["poselib", "torch"] = "poselib",
    min_iterations: int = 100,
    max_iterations: int = 20000,
    seed: int = 0,
    max_fit_points: int = 2000,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fundamental matrices and inlier masks between frame ``ref`` and every frame.

    Args:
        xy: ``[S, N, 2]`` track pixels (any convention, one per frame).
        obs: ``[S, N]`` bool, observed track points (official: ``vis >= 0.05``).
        ref: the reference frame.
        max_error: epipolar threshold in px (official ``fmat_thres`` = 4).
        method: ``"poselib"`` (``poselib.estimate_fundamental``, LO-RANSAC with non-linear
            refinement; official default) or ``"torch"`` (our batched 7-point/8-point LO-RANSAC,
            :func:`vggsfm_ns.geometry.epipolar.estimate_fundamental`).
        min_iterations, max_iterations: RANSAC bounds for poselib. The official run uses
            ``min_iterations=1000``; 100 with poselib's adaptive stopping (success probability
            0.9999) finds the same model on tracks and is 3-4x faster.
        seed: RANSAC seed.
        max_fit_points: pairs with more common tracks estimate F on a random subset of this size
            (poselib's non-linear refinement costs time per point); every common track is then
            classified by its Sampson error under that F.

    The poselib estimations run on :func:`vggsfm_ns.threads.cpu_workers` threads (one job per
    frame; the result does not depend on the thread count).

    Returns:
        ``(F [S, 3, 3] float64, inliers [S, N] bool)`` with ``x_i^T F_i x_ref = 0``. Row ``ref``
        holds the identity-free zero matrix and ``inliers[ref] = obs[ref]``; pairs with fewer than
        ``MIN_MATCHES`` common observations get ``F = 0`` and no inliers.
    """
    S, N, _ = xy.shape
    F = torch.zeros(S, 3, 3, dtype=torch.float64)
    inl = torch.zeros(S, N, dtype=torch.bool)
    inl[ref] = obs[ref]
    others = [i for i in range(S) if i != ref]
    xy64 = xy.detach().to(torch.float64).cpu()
    obs = obs.cpu()
    if method == "torch":
        common = obs[others] & obs[ref][None]
        ok = common.sum(-1) >= MIN_MATCHES
        idx = [o for o, k in zip(others, ok.tolist()) if k]
        if idx:
            p1 = xy64[ref][None].expand(len(idx), N, 2).contiguous()
            p2 = xy64[idx]
            Fi, _, mi, _ = estimate_fundamental(p1, p2, max_ransac_iters=4096, max_error=max_error, lo_num=300, valid_mask=common[ok], seed=seed)
            F[idx] = Fi
            inl[idx] = mi & common[ok]
        return F, inl
    import poselib

    from ..geometry.epipolar import sampson_distance

    xr = xy64[ref].numpy()
    rng = np.random.default_rng(seed)
    jobs = []  # (frame, common tracks, tracks to fit on); subsets drawn in frame order
    for i in others:
        common = np.nonzero((obs[ref] & obs[i]).numpy())[0]
        if common.size < MIN_MATCHES:
            continue
        fit = common if common.size <= max_fit_points else np.sort(rng.choice(common, max_fit_points, replace=False))
        jobs.append((i, common, fit))

    def one(job) -> Tuple[int, torch.Tensor, np.ndarray]:
        i, common, fit = job
        opts = {
            "max_epipolar_error": float(max_error),
            "max_iterations": int(max_iterations),
            "min_iterations": int(min_iterations),
            "real_focal_check": True,
            "progressive_sampling": False,
            "seed": int(seed) + i,
        }
        Fi, info = poselib.estimate_fundamental(xr[fit], xy64[i].numpy()[fit], opts, {})
        Fi = torch.from_numpy(np.asarray(Fi, np.float64))
        m = np.zeros(N, bool)
        if fit.size == common.size:
            m[common] = np.asarray(info["inliers"], bool)
        else:
            # the model from a subset; inliers of every common track by the same (Sampson) test
            d = sampson_distance(xy64[ref][common], xy64[i][common], Fi)
            m[common] = (d <= max_error**2).numpy()
        return i, Fi, m

    # one independent RANSAC per frame: on the worker threads, same result as in sequence
    for i, Fi, m in thread_map(one, jobs):
        F[i] = Fi
        inl[i] = torch.from_numpy(m)
    return F, inl


def relative_poses(F: torch.Tensor, K: torch.Tensor, xy: torch.Tensor, inliers: torch.Tensor, ref: int,
                   extra: Optional[torch.Tensor] = None, max_vote: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """Relative pose of every frame with respect to ``ref`` from the fundamental matrices.

    ``E_i = K_i^T F_i K_ref`` is decomposed and the candidate with the most inliers in front of both
    cameras is kept (official torch path: ``essential_from_fundamental``,
    ``decompose_essential_matrix``, ``remove_cheirality``). With a wrong focal length ``E`` is not
    exactly essential; the decomposition still gives the nearest rotation, which is all the initial
    pair search and the first bundle adjustment need.

    Args:
        F: ``[S, 3, 3]`` from :func:`fundamental_inliers`.
        K: ``[S, 3, 3]`` intrinsics in the pixels of ``xy``.
        xy: ``[S, N, 2]`` pixels; inliers: ``[S, N]`` bool.
        ref: the reference frame.
        extra: ``[S, E]`` distortion parameters or None.
        max_vote: inliers (at most) per pair that vote in the cheirality test.

    Frames are decomposed in jobs of :data:`POSE_ROWS_PER_JOB` on the worker threads
    (:func:`vggsfm_ns.threads.thread_map`); the result does not depend on the thread count.

    Returns:
        ``(extrinsics [S, 3, 4] float64, support [S] int64)``: ``[R | t]`` of frame ``i`` in the
        reference camera's frame (unit baseline; the reference row is ``[I | 0]``) and the number of
        inliers in front of both cameras.
    """
    S, N, _ = xy.shape
    K = K.to(torch.float64)
    ext = torch.eye(3, 4, dtype=torch.float64).repeat(S, 1, 1)
    support = torch.zeros(S, dtype=torch.int64)
    rows = torch.nonzero((F.abs().sum((-1, -2)) > 0) & (inliers.sum(-1) >= 5)).flatten()
    rows = rows[rows != ref]
    if rows.numel() == 0:
        return ext, support
    xn = cam_from_img(xy.to(torch.float64), K, None if extra is None else extra.to(torch.float64))
    E = essential_from_fundamental(F[rows], K[ref][None].expand(rows.numel(), 3, 3), K[rows])
    # the cheirality vote needs a few hundred inliers per pair, not all of them
    m = int(min(int(inliers[rows].sum(-1).max()), max_vote))
    gen = torch.Generator().manual_seed(0)
    keys = torch.rand(rows.numel(), N, generator=gen, dtype=torch.float64) + inliers[rows].to(torch.float64)
    sel = keys.topk(m, dim=1).indices  # inliers first, random among them
    x_ref = xn[ref][sel]
    x_i = torch.gather(xn[rows], 1, sel[..., None].expand(rows.numel(), m, 2))
    vote = torch.gather(inliers[rows], 1, sel)

    def run(a: int) -> None:
        b = min(a + POSE_ROWS_PER_JOB, rows.numel())
        R, t, count = relative_pose_from_essential(E[a:b], x_ref[a:b], x_i[a:b], vote[a:b])
        ext[rows[a:b]] = torch.cat([R, t[..., None]], -1)  # disjoint rows per job
        support[rows[a:b]] = count

    for _ in thread_map(run, range(0, rows.numel(), POSE_ROWS_PER_JOB)):
        pass
    return ext, support
