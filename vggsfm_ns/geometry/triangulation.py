"""Triangulation (torch, batched): multi-view ray least squares, 2-view DLT, angles, LO-RANSAC.

All functions take OpenCV ``cam_from_world`` extrinsics ``[..., 3, 4]`` and *normalised* image
coordinates (``K^-1`` applied, undistorted; see :func:`vggsfm_ns.geometry.camera.cam_from_img`).

Source: official ``vggsfm/utils/triangulation_helpers.py`` (``triangulate_multi_view_point_batched``,
``calculate_triangulation_angle*``, ``calculate_normalized_angular_error_batched``,
``local_refinement_tri``), ``vggsfm/utils/triangulation.py`` (``triangulate_by_pair``,
``triangulate_tracks``) and ``vggsfm/two_view_geo/utils.py`` (``triangulate_point_batch``,
``check_cheirality_batch``); COLMAP ``geometry/triangulation.cc`` for the angle definition.

Implementation notes (same results, less work):

* The ray-distance system ``A = sum_v m_v^2 (P_v - n n^T P_v)^T (P_v - n n^T P_v)`` equals
  ``sum_v m_v^2 (P_v^T P_v - w_v w_v^T)`` with ``w_v = P_v^T n_v`` (``I - n n^T`` is a projector), so
  for many candidate view subsets of the same track it is two matrix products.
* Its smallest eigenvector is found by inverse iteration with the 4x4 adjugate (closed form,
  elementwise); the rare cases where that does not converge fall back to ``torch.linalg.eigh``.
* Angular errors use ``cos = (R^T n) . X + n . t`` over ``|n| |X - C|`` (rotations are orthonormal),
  again matrix products instead of ``[N, H, S, 3]`` temporaries.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import List, Optional, Tuple

import torch

from ..threads import JOBS_PER_WORKER, device_workers, job_ranges, min_job_items, parallel_workers, thread_map
from .camera import camera_centers
from .chunking import chunk_size
from .epipolar import residual_indicator

#: Single-core seconds per unit of work of the batched triangulations (measured on a 2-core AMD
#: EPYC VM on the fox scene's back end, ``docs/benchmarks.md``, tenth session). They decide how many
#: worker threads a call uses (:func:`vggsfm_ns.threads.parallel_workers`): per track pair in
#: :func:`triangulate_by_pair`, per observation in :func:`triangulate_tracks_linear`, and per
#: observation and hypothesis in :func:`triangulate_tracks`.
SECONDS_PER_PAIR, SECONDS_PER_OBSERVATION, SECONDS_PER_HYPOTHESIS_VIEW = 1.5e-6, 6e-7, 2e-7

# --------------------------------------------------------------------------------------------------
# symmetric 4x4 smallest eigenvector


def _adjugate4_components(a):
    """Adjugate of a 4x4 matrix given as ``a[i][j]`` tensors (any equal shapes); returns ``b[i][j]``.

    Expansion by 2x2 complementary minors (Laplace): 12 minors, then 3 products per entry.
    """
    s0 = a[0][0] * a[1][1] - a[1][0] * a[0][1]
    s1 = a[0][0] * a[1][2] - a[1][0] * a[0][2]
    s2 = a[0][0] * a[1][3] - a[1][0] * a[0][3]
    s3 = a[0][1] * a[1][2] - a[1][1] * a[0][2]
    s4 = a[0][1] * a[1][3] - a[1][1] * a[0][3]
    s5 = a[0][2] * a[1][3] - a[1][2] * a[0][3]
    c5 = a[2][2] * a[3][3] - a[3][2] * a[2][3]
    c4 = a[2][1] * a[3][3] - a[3][1] * a[2][3]
    c3 = a[2][1] * a[3][2] - a[3][1] * a[2][2]
    c2 = a[2][0] * a[3][3] - a[3][0] * a[2][3]
    c1 = a[2][0] * a[3][2] - a[3][0] * a[2][2]
    c0 = a[2][0] * a[3][1] - a[3][0] * a[2][1]
    return [
        [a[1][1] * c5 - a[1][2] * c4 + a[1][3] * c3, -a[0][1] * c5 + a[0][2] * c4 - a[0][3] * c3,
         a[3][1] * s5 - a[3][2] * s4 + a[3][3] * s3, -a[2][1] * s5 + a[2][2] * s4 - a[2][3] * s3],
        [-a[1][0] * c5 + a[1][2] * c2 - a[1][3] * c1, a[0][0] * c5 - a[0][2] * c2 + a[0][3] * c1,
         -a[3][0] * s5 + a[3][2] * s2 - a[3][3] * s1, a[2][0] * s5 - a[2][2] * s2 + a[2][3] * s1],
        [a[1][0] * c4 - a[1][1] * c2 + a[1][3] * c0, -a[0][0] * c4 + a[0][1] * c2 - a[0][3] * c0,
         a[3][0] * s4 - a[3][1] * s2 + a[3][3] * s0, -a[2][0] * s4 + a[2][1] * s2 - a[2][3] * s0],
        [-a[1][0] * c3 + a[1][1] * c1 - a[1][2] * c0, a[0][0] * c3 - a[0][1] * c1 + a[0][2] * c0,
         -a[3][0] * s3 + a[3][1] * s1 - a[3][2] * s0, a[2][0] * s3 - a[2][1] * s1 + a[2][2] * s0],
    ]


def adjugate4(M: torch.Tensor) -> torch.Tensor:
    """Adjugate (``det(M) M^-1``) of ``[..., 4, 4]`` matrices by 2x2 complementary minors."""
    comp = M.reshape(-1, 16).T.contiguous()
    b = _adjugate4_components([[comp[4 * i + j] for j in range(4)] for i in range(4)])
    return torch.stack([torch.stack(r, -1) for r in b], -2).reshape(M.shape)


def smallest_eigenvector(A: torch.Tensor, iterations: int = 4, tol: Optional[float] = None) -> torch.Tensor:
    """Unit eigenvector of the smallest eigenvalue of symmetric PSD ``[..., 4, 4]`` matrices.

    Inverse iteration with the adjugate (``adj(A) = det(A) A^-1``; its dominant column is already
    one inverse-iteration step), run on component-major contiguous vectors so that every operation
    is one fast elementwise kernel. It converges at the rate ``lambda_1 / lambda_2``, i.e. at once
    for well-posed triangulations; entries whose last step still moved by more than ``tol`` are
    recomputed with ``torch.linalg.eigh``. The sign is arbitrary.

    Args:
        A: ``[..., 4, 4]`` symmetric positive semi-definite.
        iterations: inverse-iteration steps after the adjugate's dominant column.
        tol: convergence threshold on the last step (default: 1e-10 for float64, 1e-5 else).
    """
    if tol is None:
        tol = 1e-10 if A.dtype == torch.float64 else 1e-5
    shape = A.shape[:-2]
    M = A.reshape(-1, 16)
    if M.shape[0] == 0:
        return A.new_zeros(shape + (4,))
    scale = (M[:, 0] + M[:, 5] + M[:, 10] + M[:, 15]).abs().clamp_min(1e-300)
    comp = (M / scale[:, None]).T.contiguous()  # [16, n]
    b = _adjugate4_components([[comp[4 * i + j] for j in range(4)] for i in range(4)])
    col_norm = torch.stack([b[0][j] * b[0][j] + b[1][j] * b[1][j] + b[2][j] * b[2][j] + b[3][j] * b[3][j] for j in range(4)])
    col = col_norm.argmax(0)  # [n]
    adj = torch.stack([torch.stack(r) for r in b])  # [4, 4, n]
    x = torch.gather(adj, 1, col[None, None].expand(4, 1, -1))[:, 0]  # [4, n]
    x = x * torch.gather(col_norm, 0, col[None]).clamp_min(1e-300).rsqrt()
    change = torch.zeros_like(scale)
    for _ in range(iterations):
        y = [b[i][0] * x[0] + b[i][1] * x[1] + b[i][2] * x[2] + b[i][3] * x[3] for i in range(4)]
        inv = (y[0] * y[0] + y[1] * y[1] + y[2] * y[2] + y[3] * y[3]).clamp_min(1e-300).rsqrt()
        sign = torch.where(y[0] * x[0] + y[1] * x[1] + y[2] * x[2] + y[3] * x[3] < 0, -inv, inv)
        y = torch.stack(y) * sign
        change = (y - x).square().sum(0).sqrt()
        x = y
    x = x.T
    bad = ~(change <= tol) | ~torch.isfinite(x).all(-1)
    if bad.any():
        # slow convergence (lambda_1 close to lambda_2): more steps on those, then eigh for the rest
        ib = torch.nonzero(bad).flatten()
        adj_b = adj[:, :, ib].permute(2, 0, 1)  # [m, 4, 4]
        xb = x[ib]
        for _ in range(16):
            y = (adj_b @ xb[..., None])[..., 0]
            y = y / y.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            y = torch.where((y * xb).sum(-1, keepdim=True) < 0, -y, y)
            ch = (y - xb).norm(dim=-1)
            xb = y
        x = x.clone()
        x[ib] = xb
        still = ib[~(ch <= tol) | ~torch.isfinite(xb).all(-1)]
        if still.numel():
            _, vecs = torch.linalg.eigh(M[still].reshape(-1, 4, 4) / scale[still, None, None])
            x[still] = vecs[..., 0]
    return x.reshape(shape + (4,))


def _dehomogenize(X: torch.Tensor) -> torch.Tensor:
    return X[..., :3] / X[..., 3:4]


# --------------------------------------------------------------------------------------------------
# multi-view and two-view triangulation


def bearings(points: torch.Tensor) -> torch.Tensor:
    """Unit viewing rays ``[..., 3]`` of normalised image points ``[..., 2]``."""
    h = torch.cat([points, torch.ones_like(points[..., :1])], -1)
    return h / h.norm(dim=-1, keepdim=True)


def triangulate_multi_view(extrinsics: torch.Tensor, points: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Point minimising the summed squared distances to the viewing rays (homogeneous, eigen).

    Args:
        extrinsics: ``[..., V, 3, 4]`` cam_from_world of the V views of each point.
        points: ``[..., V, 2]`` normalised observations.
        mask: ``[..., V]`` bool/float weights of the views (None: all).

    Returns:
        ``[..., 3]`` world points (the smallest eigenvector of ``A`` dehomogenised).

    Source: official ``triangulate_multi_view_point_batched``.
    """
    n = bearings(points.to(extrinsics.dtype))
    w = (extrinsics.transpose(-1, -2) @ n[..., None])[..., 0]  # [..., V, 4]
    Q = extrinsics.transpose(-1, -2) @ extrinsics  # [..., V, 4, 4]
    terms = Q - w[..., :, None] * w[..., None, :]
    if mask is not None:
        m = mask.to(terms.dtype)
        terms = terms * (m * m)[..., None, None]
    A = terms.sum(-3)
    return _dehomogenize(smallest_eigenvector(A))


def depths(points: torch.Tensor, extrinsics: torch.Tensor) -> torch.Tensor:
    """Camera-frame z of world points: ``[..., 3]`` x ``[..., V, 3, 4]`` -> ``[..., V]``."""
    return (extrinsics[..., 2, :3] * points[..., None, :]).sum(-1) + extrinsics[..., 2, 3]


def triangulation_angles(centers: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Triangulation angle of every pair of cameras at each point (degrees, folded to [0, 90]).

    Args:
        centers: ``[..., V, 3]`` camera centres.
        points: ``[..., 3]``.

    Returns:
        ``[..., V, V]``: ``min(theta, 180 - theta)`` of the angle between the rays from the point to
        the two centres (0 for coincident centres or a point on a centre).

    Source: official ``calculate_triangulation_angle_batched`` / COLMAP ``CalculateTriangulationAngle``.
    """
    d = centers - points[..., None, :]
    nrm = d.norm(dim=-1, keepdim=True)
    u = torch.where(nrm > 1e-12, d / nrm.clamp_min(1e-300), torch.zeros_like(d))
    cos = (u @ u.transpose(-1, -2)).abs().clamp(max=1.0)
    cos = torch.where((nrm > 1e-12) & (nrm.transpose(-1, -2) > 1e-12), cos, torch.ones_like(cos))
    return torch.rad2deg(torch.acos(cos))


def triangulate_two_view_dlt(P1: torch.Tensor, P2: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Linear (DLT) two-view triangulation.

    Args:
        P1, P2: ``[..., 3, 4]`` cam_from_world of the two views (broadcast over points).
        x1, x2: ``[..., N, 2]`` normalised observations.

    Returns:
        ``[..., N, 3]`` points (smallest right singular vector of the 4x4 DLT system).

    Source: official ``triangulate_point_batch``.
    """
    P1 = P1[..., None, :, :]
    P2 = P2[..., None, :, :]
    rows = [
        x1[..., 0:1] * P1[..., 2, :] - P1[..., 0, :],
        x1[..., 1:2] * P1[..., 2, :] - P1[..., 1, :],
        x2[..., 0:1] * P2[..., 2, :] - P2[..., 0, :],
        x2[..., 1:2] * P2[..., 2, :] - P2[..., 1, :],
    ]
    A = torch.stack(rows, -2)
    return _dehomogenize(smallest_eigenvector(A.transpose(-1, -2) @ A))


def two_view_cheirality(R: torch.Tensor, t: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Count correspondences in front of both cameras for a relative pose ``[R | t]``.

    Args:
        R: ``[..., 3, 3]``, t: ``[..., 3]``: camera 2 relative to camera 1 = ``[I | 0]``.
        x1, x2: ``[..., N, 2]`` normalised observations.
        mask: ``[..., N]`` bool; only masked correspondences are counted.

    Returns:
        ``(count [...] int64, points [..., N, 3])``; a point counts when both depths lie in
        ``(eps, 1000 |R^T t|)``.

    Source: official ``check_cheirality_batch`` (COLMAP ``CheckCheirality``).
    """
    P1 = torch.zeros(R.shape[:-2] + (3, 4), dtype=R.dtype, device=R.device)
    P1[..., :3, :3] = torch.eye(3, dtype=R.dtype, device=R.device)
    P2 = torch.cat([R, t[..., None]], -1)
    X = triangulate_two_view_dlt(P1, P2, x1, x2)
    eps = torch.finfo(R.dtype).eps
    max_depth = 1000.0 * (R.transpose(-1, -2) @ t[..., None])[..., 0].norm(dim=-1)
    d1 = X[..., 2]
    d2 = (X @ R[..., 2:3, :].transpose(-1, -2))[..., 0] + t[..., 2:3]
    ok = (d1 > eps) & (d1 < max_depth[..., None]) & (d2 > eps) & (d2 < max_depth[..., None])
    if mask is not None:
        ok = ok & mask
    return ok.sum(-1), X


def relative_pose_from_essential(E: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick the ``(R, t)`` of an essential matrix with the most points in front of both cameras.

    Args:
        E: ``[..., 3, 3]``; x1, x2: ``[..., N, 2]`` normalised; mask: ``[..., N]``.

    Returns:
        ``(R [..., 3, 3], t [..., 3] unit, count [...])``.

    Source: official ``decompose_essential_matrix`` + ``remove_cheirality``.
    """
    from .epipolar import decompose_essential

    Rs, ts = decompose_essential(E)
    m = None if mask is None else mask[..., None, :]
    count, _ = two_view_cheirality(Rs, ts, x1[..., None, :, :], x2[..., None, :, :], m)
    best = count.argmax(-1)
    idx = best[..., None, None, None].expand(best.shape + (1, 3, 3))
    R = torch.gather(Rs, -3, idx)[..., 0, :, :]
    t = torch.gather(ts, -2, best[..., None, None].expand(best.shape + (1, 3)))[..., 0, :]
    return R, t, torch.gather(count, -1, best[..., None])[..., 0]


def triangulate_by_pair(extrinsics: torch.Tensor, tracks: torch.Tensor, ref: int = 0, valid: Optional[torch.Tensor] = None,
                        max_pairs_per_chunk: int = 0, num_workers: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triangulate every track from the pair (reference frame, frame i) for every other frame i.

    Args:
        extrinsics: ``[S, 3, 4]``.
        tracks: ``[S, N, 2]`` normalised observations.
        ref: the reference frame.
        valid: ``[S, N]`` bool; pairs where either observation is invalid are skipped (NaN point,
            no cheirality, angle 0). None: all.
        max_pairs_per_chunk: track pairs triangulated at once (0: from free memory).
        num_workers: most CPU threads that triangulate chunks in parallel (default
            :func:`vggsfm_ns.threads.cpu_workers`; ignored on GPU; fewer when the work is small,
            :func:`vggsfm_ns.threads.parallel_workers`). The result does not depend on it (up to
            floating-point rounding of the batched products).

    Returns:
        ``(points [S-1, N, 3], cheirality [S-1, N] bool (depth > 0 in both views),
        angles [S-1, N] degrees)`` for the frames ``i != ref`` in increasing order.

    Source: official ``triangulate_by_pair`` (``ref = 0``).
    """
    S, N, _ = tracks.shape
    others = [i for i in range(S) if i != ref]
    ext = extrinsics.to(torch.float64) if extrinsics.dtype != tracks.dtype else extrinsics
    if valid is None:
        use = torch.ones(len(others), N, dtype=torch.bool, device=tracks.device)
    else:
        use = valid[others] & valid[ref][None]
    pi_all, ni_all = torch.nonzero(use, as_tuple=True)
    pair_ext = torch.stack([ext[ref].expand(len(others), 3, 4), ext[others]], 1)  # [S-1, 2, 3, 4]
    C = camera_centers(pair_ext)  # [S-1, 2, 3]
    out_X = torch.full((len(others), N, 3), float("nan"), dtype=ext.dtype, device=tracks.device)
    out_c = torch.zeros(len(others), N, dtype=torch.bool, device=tracks.device)
    out_a = torch.zeros(len(others), N, dtype=ext.dtype, device=tracks.device)
    M = pi_all.numel()
    workers = parallel_workers(M * SECONDS_PER_PAIR, device_workers(tracks.device, num_workers))
    size = chunk_size(M, 8.0 * 200 * workers, max_pairs_per_chunk, device=tracks.device)

    def run(job: Tuple[int, int]) -> None:
        pi, ni = pi_all[job[0]:job[1]], ni_all[job[0]:job[1]]
        pts = torch.stack([tracks[ref][ni], tracks[others][pi, ni]], 1).to(ext.dtype)  # [M, 2, 2]
        X = triangulate_multi_view(pair_ext[pi], pts)  # [M, 3]
        d = depths(X, pair_ext[pi])  # [M, 2]
        out_X[pi, ni] = X  # disjoint entries per job
        out_c[pi, ni] = (d > 0).all(-1)
        out_a[pi, ni] = _pair_angle(C[pi, 0], C[pi, 1], X)

    for _ in thread_map(run, job_ranges(M, size, workers, SECONDS_PER_PAIR), workers):
        pass
    return out_X, out_c, out_a


def _pair_angle(c1: torch.Tensor, c2: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Folded triangulation angle (degrees) at ``X [..., 3]`` between centres ``c1``, ``c2`` ``[..., 3]``."""
    d1 = c1 - X
    d2 = c2 - X
    n1 = d1.norm(dim=-1)
    n2 = d2.norm(dim=-1)
    ok = (n1 > 1e-12) & (n2 > 1e-12)
    cos = ((d1 * d2).sum(-1) / (n1 * n2).clamp_min(1e-300)).abs().clamp(max=1.0)
    cos = torch.where(ok, cos, torch.ones_like(cos))
    return torch.rad2deg(torch.acos(cos))


class _RayTerms:
    """Per-track terms of the angular error and depth, computed once per chunk.

    ``cos = b . (R X + t) / (|b| |R X + t|)`` with ``b = (x, y, 1)``; the numerator is
    ``(R^T b) . X + b . t`` and ``|R X + t|^2 = X^T (R^T R) X + 2 (R^T t) . X + |t|^2`` (exact also for
    slightly non-orthonormal R), so a candidate set costs three batched matrix products and a few
    elementwise passes over ``[N, H, V]``.

    ``extrinsics`` are ``[N, V, 3, 4]``: the cameras of each track's V views.
    """

    def __init__(self, extrinsics: torch.Tensor, tracks: torch.Tensor):
        R = extrinsics[..., :3, :3]
        t = extrinsics[..., :3, 3]
        N, V = tracks.shape[:2]
        b = torch.cat([tracks, torch.ones_like(tracks[..., :1])], -1)  # [N, V, 3]
        inv_bn = 1.0 / b.norm(dim=-1)  # [N, V]
        a = (R.transpose(-1, -2) @ b[..., None])[..., 0] * inv_bn[..., None]  # R^T b / |b|: [N, V, 3]
        c = (b * t).sum(-1) * inv_bn
        self.num = torch.cat([a, c[..., None]], -1).transpose(1, 2).contiguous()  # [N, 4, V]
        M = (R.transpose(-1, -2) @ R).reshape(N, V, 9)
        Rt = (R.transpose(-1, -2) @ t[..., None])[..., 0]
        self.den = torch.cat([M, 2 * Rt, (t * t).sum(-1, keepdim=True)], -1).transpose(1, 2).contiguous()  # [N, 13, V]
        self.depth = torch.cat([extrinsics[..., 2, :3], extrinsics[..., 2, 3:4]], -1).transpose(1, 2).contiguous()  # [N, 4, V]

    def cos(self, X: torch.Tensor) -> torch.Tensor:
        """``[N, H, 3]`` candidates -> ``[N, H, V]`` cosines (clamped to [-1, 1])."""
        Xh = torch.cat([X, torch.ones_like(X[..., :1])], -1)  # [N, H, 4]
        num = torch.bmm(Xh, self.num)
        XX = (X[..., :, None] * X[..., None, :]).flatten(-2)
        q = torch.bmm(torch.cat([XX, X, torch.ones_like(X[..., :1])], -1), self.den)  # |R X + t|^2
        return (num * q.clamp_min(1e-300).rsqrt()).clamp_(-1.0, 1.0)

    def depths(self, X: torch.Tensor) -> torch.Tensor:
        """``[N, H, 3]`` -> camera-frame z ``[N, H, V]``."""
        return torch.bmm(torch.cat([X, torch.ones_like(X[..., :1])], -1), self.depth)


def max_triangulation_angle(C: torch.Tensor, X: torch.Tensor, mask: torch.Tensor, exact_max_views: int = 8) -> torch.Tensor:
    """Largest folded triangulation angle (degrees) of points over the masked views.

    Args:
        C: ``[S, 3]`` camera centres shared by all points, or ``[N, S, 3]`` per point row (then
            ``X`` is ``[N, H, 3]`` and ``mask`` ``[N, H, S]``).
        X: ``[..., 3]`` points.
        mask: ``[..., S]`` bool, the views of each point that count.
        exact_max_views: exact (all pairs, ``[..., S, S]`` temporaries) for ``S`` up to this; above,
            a double sweep in the metric of line angles ``acos |u . v|``: from the first masked
            direction to the farthest one, then the largest angle from there. It returns ``D'`` with
            ``D / 2 <= D' <= D`` for the true largest angle ``D`` and is exact for views along a
            path (camera trajectories); it needs ``[..., S]`` temporaries only.

    Returns:
        ``[...]`` degrees in [0, 90]; 0 with fewer than two usable views.

    Source: the "any pair above ``min_tri_angle``" test of the official ``filter_all_points3D``
    and ``local_refinement_tri``.
    """
    per_track = C.dim() == 3
    S = C.shape[-2]
    if per_track:
        XC = torch.bmm(X, C.transpose(1, 2))  # [N, H, S]
        G = torch.bmm(C, C.transpose(1, 2))  # [N, S, S]
        CC = torch.diagonal(G, dim1=-2, dim2=-1)[:, None, :]
    else:
        XC = X @ C.T
        G = C @ C.T
        CC = torch.diagonal(G)
    XX = (X * X).sum(-1, keepdim=True)
    n = (XX - 2 * XC + CC).clamp_min(0).sqrt()  # |C_s - X|
    m = mask & (n > 1e-12)
    if S <= exact_max_views:
        # (C_a - X).(C_b - X) = G_ab - X.C_a - X.C_b + |X|^2
        Gb = G[:, None] if per_track else G
        dots = Gb - XC[..., :, None] - XC[..., None, :] + XX[..., None]
        cos = (dots / (n[..., :, None] * n[..., None, :]).clamp_min(1e-300)).abs()
        pm = m[..., :, None] & m[..., None, :]
        cos = torch.where(pm, cos, torch.full_like(cos, 2.0))
        cmin = cos.flatten(-2).min(-1).values.clamp(-1.0, 1.0)
        return torch.rad2deg(torch.acos(cmin))

    def cos_to(idx):
        if per_track:
            Ga = torch.gather(G, 1, idx[..., None].expand(idx.shape + (S,)))  # rows G[n, idx[n, h]]
        else:
            Ga = G[idx]
        XCa = torch.gather(XC, -1, idx[..., None])
        na = torch.gather(n, -1, idx[..., None])
        c = ((Ga - XCa - XC + XX) / (na * n).clamp_min(1e-300)).abs()
        return torch.where(m, c, torch.full_like(c, 2.0))

    first = m.to(torch.int8).argmax(-1)
    ca = cos_to(first)
    cb = cos_to(ca.argmin(-1))
    cmin = torch.minimum(ca.min(-1).values, cb.min(-1).values).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cmin))


def _ray_system(extrinsics: torch.Tensor, tracks: torch.Tensor) -> torch.Tensor:
    """``[..., V, 16]`` rows ``P^T P - w w^T`` (``w = P^T n``) of the ray system, so that a view
    subset's 4x4 system is the (masked) sum of its rows. ``extrinsics [..., V, 3, 4]``,
    ``tracks [..., V, 2]``."""
    n = bearings(tracks)
    w = (extrinsics.transpose(-1, -2) @ n[..., None])[..., 0]  # [..., V, 4]
    Q = extrinsics.transpose(-1, -2) @ extrinsics
    return (Q - w[..., :, None] * w[..., None, :]).flatten(-2)


def _solve_masked(T: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Triangulate each track with each view mask: rows ``T [N, V, 16]``, ``mask [N, H, V]`` ->
    points ``[N, H, 3]``."""
    A = torch.bmm(mask.to(T.dtype), T).reshape(mask.shape[0], mask.shape[1], 4, 4)
    A = 0.5 * (A + A.transpose(-1, -2))
    return _dehomogenize(smallest_eigenvector(A))


def triangulate_tracks_linear(extrinsics: torch.Tensor, tracks: torch.Tensor, mask: torch.Tensor, max_tracks_per_chunk: int = 0,
                              num_workers: Optional[int] = None) -> torch.Tensor:
    """Ray-distance least-squares triangulation of many tracks over shared cameras (no RANSAC).

    Args:
        extrinsics: ``[S, 3, 4]`` OpenCV ``cam_from_world`` (float32 or float64).
        tracks: ``[S, N, 2]`` normalised image coordinates (``K^-1`` applied, no distortion),
            same dtype; float64 tracks are solved in float64.
        mask: ``[S, N]`` bool, the views used for each track.
        max_tracks_per_chunk: tracks processed at once (0: from free memory).
        num_workers: most CPU threads that process chunks in parallel (default
            :func:`vggsfm_ns.threads.cpu_workers`; ignored on GPU; fewer when the work is small,
            :func:`vggsfm_ns.threads.parallel_workers`).

    Returns:
        ``[N, 3]``; same result as :func:`triangulate_multi_view` with shared cameras for tracks
        with at least two views, NaN for the others. Each track is solved over its own views only
        (tracks sorted by view count, chunks padded to at most twice their shortest track's count),
        so the cost is the number of observations, not ``S x N``. World units of ``extrinsics``.

    Source: the linear step of the official ``triangulate_multi_view_point_batched`` (minimum of
    the summed squared distances to the observation rays), without its RANSAC.
    """
    S, N = mask.shape
    ext = extrinsics.to(torch.float64) if tracks.dtype == torch.float64 else extrinsics
    dev = tracks.device
    out = torch.full((N, 3), float("nan"), dtype=ext.dtype, device=dev)
    count = mask.sum(0)
    todo = torch.nonzero(count >= 2).flatten()
    if todo.numel() == 0:
        return out
    todo = todo[torch.argsort(count[todo], stable=True)]
    valid_all = mask.T  # [N, S]
    trk = tracks.transpose(0, 1).to(ext.dtype)  # [N, S, 2]
    workers = parallel_workers(float(count[todo].sum()) * SECONDS_PER_OBSERVATION, device_workers(dev, num_workers))

    def run(job: Tuple[int, int, int]) -> None:
        a, b, V = job
        sel = todo[a:b]
        views = torch.argsort((~valid_all[sel]).to(torch.int8), dim=-1, stable=True)[:, :V]  # valid views first
        valid = torch.gather(valid_all[sel], 1, views)
        T = _ray_system(ext[views], torch.gather(trk[sel], 1, views[..., None].expand(-1, -1, 2)))  # [n, V, 16]
        out[sel] = _solve_masked(T, valid[:, None, :])[:, 0]  # disjoint rows per job

    jobs = _balanced(list(_view_chunks(count[todo], 1, max_tracks_per_chunk, dev, 0, share=workers)), workers,
                     min_job_items(SECONDS_PER_OBSERVATION))
    for _ in thread_map(run, jobs, workers):
        pass
    return out


def _score(terms: _RayTerms, X, view_mask, invalid_obs, angle_ok):
    """Angular errors ``[N, H, V]`` of candidates ``X`` triangulated from ``view_mask``: ``+pi`` for
    candidates behind one of their views, with a failed angle test (``angle_ok`` False) or
    non-finite, and for invalid observations."""
    err = torch.acos(terms.cos(X))
    behind = ((terms.depths(X) <= 0) & view_mask).any(-1)
    bad = behind | ~torch.isfinite(X).all(-1)
    if angle_ok is not None:
        bad = bad | ~angle_ok
    err = torch.nan_to_num(err, nan=100 * math.pi)
    err += math.pi * bad[..., None].to(err.dtype)
    err += math.pi * invalid_obs[:, None, :].to(err.dtype)
    return err


def _triangulate_tracks_chunk(ext, C, tracks, valid, pairs, lo_num, lo_sec, max_rad, min_tri_angle, rand, exact_max_views):
    """LO-RANSAC for ``N`` tracks over their ``V`` views: ``ext [N, V, 3, 4]``, ``C [N, V, 3]``,
    ``tracks [N, V, 2]``, ``valid [N, V]``; ``pairs [H, 2]`` (all view pairs) or ``rand [2, N, H]``
    (uniform draws for H pairs among each track's valid views)."""
    N, V, _ = tracks.shape
    dev = tracks.device
    T = _ray_system(ext, tracks)  # [N, V, 16]
    terms = _RayTerms(ext, tracks)
    invalid = ~valid
    n_idx = torch.arange(N, device=dev)[:, None]
    if pairs is not None:
        v1 = pairs[:, 0][None].expand(N, -1)
        v2 = pairs[:, 1][None].expand(N, -1)
    else:
        # valid views come first (the caller ordered them); a track with < 2 valid views never gets here
        nv = valid.sum(-1).clamp_min(2)
        v1 = torch.floor(rand[0] * nv[:, None]).long()
        v2 = torch.floor(rand[1] * (nv - 1)[:, None]).long()
        v2 = v2 + (v2 >= v1).long()
    hyp_mask = torch.zeros(N, v1.shape[1], V, dtype=torch.bool, device=dev)
    hyp_mask.scatter_(2, v1[..., None], True)
    hyp_mask.scatter_(2, v2[..., None], True)
    # two-view hypotheses: A = T_i + T_j
    A0 = (T[n_idx, v1] + T[n_idx, v2]).reshape(N, -1, 4, 4)
    X0 = _dehomogenize(smallest_eigenvector(A0))
    ang0 = _pair_angle(C[n_idx, v1], C[n_idx, v2], X0) >= min_tri_angle
    err0 = _score(terms, X0, hyp_mask, invalid, ang0)
    Hh = X0.shape[1]
    lo1 = min(lo_num, Hh)
    lo2 = min(lo_sec, lo1)
    exact = V <= exact_max_views

    def local(err, lo):
        inl = err <= max_rad
        top = torch.sort(inl.sum(-1), dim=1, descending=True)[1][:, :lo]
        m = torch.gather(inl, 1, top[..., None].expand(-1, -1, V))
        X = _solve_masked(T, m)
        ok = max_triangulation_angle(C, X, m, exact_max_views) >= min_tri_angle if exact else None
        return X, _score(terms, X, m, invalid, ok)

    X1, err1 = local(err0, lo1)
    X2, err2 = local(err1, lo2)
    X_all = torch.cat([X0, X1, X2], 1)
    err_all = torch.cat([err0, err1, err2], 1)
    score, count, inl = residual_indicator(err_all, max_rad, nan_value=2 * math.pi)
    best = score.argmax(1)
    n = torch.arange(N, device=dev)
    Xb, cb, mb = X_all[n, best], count[n, best], inl[n, best]
    if not exact:
        # many views: the angle test of the local refinements runs on the winners only
        ok = max_triangulation_angle(C, Xb[:, None], mb[:, None], exact_max_views)[:, 0] >= min_tri_angle
        cb = torch.where(ok, cb, torch.zeros_like(cb))
        mb = mb & ok[:, None]
    return Xb, cb, mb


def triangulate_tracks(
    extrinsics: torch.Tensor,
    tracks: torch.Tensor,
    valid: Optional[torch.Tensor] = None,
    max_ransac_iters: int = 256,
    lo_num: int = 50,
    lo_num_second: int = 10,
    max_angular_error: float = 2.0,
    min_tri_angle: float = 1.5,
    seed: int = 0,
    max_tracks_per_chunk: int = 0,
    exact_max_views: int = 8,
    num_workers: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Robust multi-view triangulation of tracks with known cameras (LO-RANSAC).

    Hypotheses are two-view triangulations. When ``C(S, 2) <= max_ransac_iters`` all frame pairs are
    used (deterministic, the official behaviour); otherwise each track draws ``max_ransac_iters``
    pairs among its *valid* views (the official draws one set of random pairs among all frames,
    most of which a track does not see) and is processed over its valid views only (sparse tracks
    cost little); tracks with at least ``LONG_TRACK_VIEWS`` valid views use at most
    ``LONG_TRACK_HYPOTHESES`` pairs and local optimisations of 4 and 2. Tracks with fewer than two
    valid views are skipped (count 0). An observation is an inlier when its angular error is at
    most ``max_angular_error``; candidates that fail cheirality or have a triangulation angle below
    ``min_tri_angle`` over the views they were triangulated from get ``+pi`` on every error, invalid
    observations too. The ``lo_num`` best hypotheses are re-triangulated from their inliers, then the
    ``lo_num_second`` best of those again; the winner maximises the inlier count, ties broken by the
    mean inlier error (:func:`~vggsfm_ns.geometry.epipolar.residual_indicator`).

    Args:
        extrinsics: ``[S, 3, 4]`` cam_from_world.
        tracks: ``[S, N, 2]`` normalised observations.
        valid: ``[S, N]`` bool, observations that may be inliers (official: ``vis > 0.05`` and
            ``score > 0.5``). None: all.
        max_ransac_iters: hypotheses per track.
        lo_num, lo_num_second: local-optimisation sizes (official 50 and 10).
        max_angular_error: inlier threshold in degrees (official 2).
        min_tri_angle: degrees (official 1.5).
        seed: seed of the per-track pair sampling.
        max_tracks_per_chunk: tracks processed at once (0: from free memory).
        exact_max_views: above this many frames the angle check uses the double sweep.
        num_workers: most CPU threads that process chunks of tracks in parallel (default
            :func:`vggsfm_ns.threads.cpu_workers`; ignored on GPU; fewer when the work is small,
            :func:`vggsfm_ns.threads.parallel_workers`). The result does not depend on it (up to
            floating-point rounding of the batched products).

    Returns:
        ``(points [N, 3], inlier_count [N] int64, inlier_mask [N, S] bool)``.

    Source: official ``triangulate_tracks`` / ``triangulate_tracks_single_chunk``.
    """
    S, N, _ = tracks.shape
    dtype = torch.float64 if extrinsics.dtype == torch.float64 or tracks.dtype == torch.float64 else torch.float32
    ext = extrinsics.to(dtype)
    trk = tracks.to(dtype).transpose(0, 1).contiguous()  # [N, S, 2]
    dev = tracks.device
    val = torch.ones(N, S, dtype=torch.bool, device=dev) if valid is None else valid.transpose(0, 1).contiguous()
    C = camera_centers(ext)  # [S, 3]
    out_X = torch.zeros(N, 3, dtype=dtype, device=dev)
    out_n = torch.zeros(N, dtype=torch.int64, device=dev)
    out_m = torch.zeros(N, S, dtype=torch.bool, device=dev)
    if N == 0 or S < 2:
        return out_X, out_n, out_m
    max_rad = math.radians(max_angular_error)
    all_pairs = S * (S - 1) // 2
    if all_pairs <= max_ransac_iters:
        # every frame pair, deterministic (official); tracks keep all S views
        pairs = torch.tensor(list(combinations(range(S), 2)), dtype=torch.long, device=dev).reshape(-1, 2)
        H = pairs.shape[0]
        rand = None
    else:
        pairs = None
        H = max_ransac_iters
        gen = torch.Generator().manual_seed(int(seed))
        # uniform draws for the per-track pair sampling, made once so that chunking does not change them
        rand = torch.rand(2, N, H, generator=gen, dtype=torch.float64).to(dev)
    # tracks with fewer than two valid views cannot become points (their hypotheses would be junk)
    nvalid = val.sum(-1)
    todo = torch.nonzero(nvalid >= 2).flatten()
    if todo.numel() == 0:
        return out_X, out_n, out_m
    if pairs is None:
        # compact each track to its valid views (sparse tracks: V << S); chunks by view count
        todo = todo[torch.argsort(nvalid[todo], stable=True)]
    H_tot = H + min(lo_num, H) + min(lo_num_second, lo_num, H)
    views = nvalid[todo] if pairs is None else torch.full((todo.numel(),), S, device=dev)
    workers = parallel_workers(float(views.sum()) * H_tot * SECONDS_PER_HYPOTHESIS_VIEW, device_workers(dev, num_workers))
    # the chunks that run at the same time share the memory budget
    jobs = _balanced(list(_view_chunks(views, H_tot, max_tracks_per_chunk, dev, exact_max_views, share=workers)), workers,
                     min_job_items(H_tot * SECONDS_PER_HYPOTHESIS_VIEW))

    def run(job: Tuple[int, int, int]) -> None:
        a, b, V = job
        sel = todo[a:b]
        if pairs is None:
            order = torch.argsort((~val[sel]).to(torch.int8), dim=-1, stable=True)[:, :V]  # valid views first
        else:
            order = torch.arange(S, device=dev)[None].expand(sel.numel(), -1)
        ext_g = ext[order]  # [n, V, 3, 4]
        h, lo1, lo2 = H, lo_num, lo_num_second
        if pairs is None and V >= LONG_TRACK_VIEWS:
            # long tracks: two valid views are both inliers far more often than for short ones
            h, lo1, lo2 = min(H, LONG_TRACK_HYPOTHESES), min(lo_num, 4), min(lo_num_second, 2)
        X, n, m = _triangulate_tracks_chunk(
            ext_g, C[order], torch.gather(trk[sel], 1, order[..., None].expand(-1, -1, 2)), torch.gather(val[sel], 1, order),
            pairs, lo1, lo2, max_rad, min_tri_angle, None if rand is None else rand[:, sel, :h], exact_max_views,
        )
        full = torch.zeros(sel.numel(), S, dtype=torch.bool, device=dev)
        full.scatter_(1, order, m)
        out_X[sel], out_n[sel], out_m[sel] = X, n, full  # disjoint rows per job

    for _ in thread_map(run, jobs, workers):
        pass
    return out_X, out_n, out_m


#: With at least this many valid views a track samples at most ``LONG_TRACK_HYPOTHESES`` pairs (and
#: refines 4 / 2 of them): at 30 % outliers 10 random pairs all contain an outlier with probability
#: 0.51^10 = 1e-3, and these tracks dominate the cost.
LONG_TRACK_VIEWS, LONG_TRACK_HYPOTHESES = 10, 10


def _balanced(chunks: List[Tuple[int, int, int]], workers: int, min_cost: float = 0.0) -> List[Tuple[int, int, int]]:
    """Split ``(start, stop, V)`` chunks so that no job costs more than ``1 / (JOBS_PER_WORKER *
    workers)`` of the total (cost: tracks x views), largest first, but never into pieces that cost
    less than ``min_cost``; unchanged for one worker.

    Tracks of a piece keep the chunk's padded view count ``V``, so every track goes through the
    same computation as in the unsplit chunk (batch size can only change floating-point rounding).
    """
    if workers <= 1 or not chunks:
        return chunks
    total = sum((b - a) * V for a, b, V in chunks)
    target = max(1.0, total / (JOBS_PER_WORKER * workers))
    jobs = []
    for a, b, V in chunks:
        pieces = min(b - a, math.ceil((b - a) * V / target))
        if min_cost > 0:
            pieces = min(pieces, int((b - a) * V // min_cost))
        pieces = max(1, pieces)
        edges = [a + (b - a) * k // pieces for k in range(pieces + 1)]
        jobs += [(edges[k], edges[k + 1], V) for k in range(pieces) if edges[k + 1] > edges[k]]
    return sorted(jobs, key=lambda j: -(j[1] - j[0]) * j[2])


def _view_chunks(views: torch.Tensor, H_tot: int, max_tracks: int, device, exact_max_views: int, share: int = 1):
    """``(start, stop, V)`` chunks over tracks sorted by view count, sized from memory (``share``
    chunks at a time).

    Each chunk is padded to its largest view count ``V``, so a chunk spans at most a doubling of
    the view count (tracks of 3 and of 50 views in one chunk would cost 50 views each), and never
    straddles ``exact_max_views`` or ``LONG_TRACK_VIEWS``: the angle check and the hypothesis
    budget then depend on each track's own view count, not on the chunking.
    """
    n = views.numel()
    vs = views.cpu()
    bounds = torch.tensor(sorted({exact_max_views + 1, LONG_TRACK_VIEWS}), dtype=vs.dtype)

    def per_track(V: int) -> float:
        return 8.0 * V * H_tot * 16 + 8.0 * V * 40 + (8.0 * V * V * H_tot * 4 if V <= exact_max_views else 0.0)

    start = 0
    while start < n:
        v0 = int(vs[start])
        # up to the last track with at most twice the views of this chunk's first one, and below
        # the next boundary above v0
        cap = max(2 * v0, v0 + 2)
        above = bounds[bounds > v0]
        if above.numel():
            cap = min(cap, int(above[0]) - 1)
        stop = min(n, int(torch.searchsorted(vs, cap, right=True)))
        V = int(vs[stop - 1])  # the largest in the chunk (sorted)
        stop = min(stop, start + chunk_size(n - start, per_track(V) * share, max_tracks, device=device))
        V = int(vs[stop - 1])
        yield start, stop, V
        start = stop
