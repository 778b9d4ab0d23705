"""Two-view epipolar geometry (torch, batched): fundamental / essential matrices.

Conventions: ``x2^T F x1 = 0`` for a match ``x1`` (image 1) <-> ``x2`` (image 2); matrices returned by
the solvers are scaled so that ``F[2, 2] = 1`` (where that entry is not ~0), as kornia's
``normalize_transformation``. Pixel or normalised coordinates are both fine.

Source: official ``vggsfm/two_view_geo/fundamental.py`` and ``utils.py`` (``run_7point``,
``run_8point``, ``normalize_points_masked``, ``sampson_epipolar_distance_batched``,
``estimate_fundamental``, ``calculate_residual_indicator``, ``local_refinement``), which follow
Hartley & Zisserman (algorithm 11.1) and Zhang & Kanade's 7-point method.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch


def normalize_points(points: torch.Tensor, mask: Optional[torch.Tensor] = None, eps: float = 1e-8) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hartley normalisation: zero mean, mean distance sqrt(2) from the origin.

    Args:
        points: ``[..., N, 2]``.
        mask: ``[..., N]`` bool/float; statistics use the masked points only (official
            ``normalize_points_masked``). None: all points (kornia ``normalize_points``).
        eps: guards the divisions.

    Returns:
        ``(normalised [..., N, 2], T [..., 3, 3])`` with ``normalised = T * [points; 1]``.
    """
    if mask is None:
        mean = points.mean(dim=-2, keepdim=True)
        dist = (points - mean).norm(dim=-1).mean(dim=-1)
    else:
        m = mask.to(points.dtype)
        count = m.sum(-1)
        mean = (points * m[..., None]).sum(-2, keepdim=True) / (count[..., None, None] + eps)
        dist = ((points * m[..., None] - mean).norm(dim=-1) * m).sum(-1) / (count + eps)
    scale = math.sqrt(2.0) / (dist + eps)
    T = torch.zeros(points.shape[:-2] + (3, 3), dtype=points.dtype, device=points.device)
    T[..., 0, 0] = scale
    T[..., 1, 1] = scale
    T[..., 0, 2] = -scale * mean[..., 0, 0]
    T[..., 1, 2] = -scale * mean[..., 0, 1]
    T[..., 2, 2] = 1.0
    normalised = points * scale[..., None, None] + T[..., None, :2, 2]
    return normalised, T


def normalize_last_entry(M: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Divide ``[..., 3, 3]`` matrices by their ``[2, 2]`` entry where ``|M[2, 2]| > eps``."""
    d = M[..., 2:3, 2:3]
    ok = d.abs() > eps
    return torch.where(ok, M / torch.where(ok, d, torch.ones_like(d)), M)


def _design_matrix(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Epipolar constraint rows ``[..., N, 9]`` with ``row . vec(F) = x2^T F x1`` (F row-major)."""
    u1, v1 = x1[..., 0:1], x1[..., 1:2]
    u2, v2 = x2[..., 0:1], x2[..., 1:2]
    return torch.cat([u2 * u1, u2 * v1, u2, v2 * u1, v2 * v1, v2, u1, v1, torch.ones_like(u1)], -1)


def solve_cubic(coeffs: torch.Tensor) -> torch.Tensor:
    """Real roots of ``a x^3 + b x^2 + c x + d`` (trigonometric / Cardano closed form).

    Args:
        coeffs: ``[..., 4]`` as ``(a, b, c, d)`` with ``a != 0``.

    Returns:
        ``[..., 3]``: three real roots, or one real root in slot 0 and zeros elsewhere (the layout
        of kornia's ``solve_cubic``, which the official 7-point solver relies on: a missing root
        still yields a candidate).
    """
    a, b, c, d = coeffs.unbind(-1)
    ba, ca, da = b / a, c / a, d / a
    Q = (3 * ca - ba * ba) / 9
    R = (9 * ba * ca - 27 * da - 2 * ba * ba * ba) / 54
    D = Q * Q * Q + R * R
    shift = ba / 3
    out = torch.zeros(coeffs.shape[:-1] + (3,), dtype=coeffs.dtype, device=coeffs.device)
    three = (D <= 0) & (Q != 0)
    sq = torch.sqrt(torch.clamp(-Q, min=0))
    ratio = torch.clamp(R / torch.where(three, torch.sqrt(torch.clamp(-Q * Q * Q, min=1e-300)), torch.ones_like(R)), -1, 1)
    theta = torch.acos(ratio)
    for k in range(3):
        rk = 2 * sq * torch.cos((theta + 2 * math.pi * k) / 3) - shift
        out[..., k] = torch.where(three, rk, out[..., k])
    one = (D > 0) & (Q != 0)
    A = torch.pow(R.abs() + torch.sqrt(torch.clamp(D, min=0)), 1.0 / 3.0)
    A = torch.where(R < 0, -A, A)
    B = torch.where(A.abs() > 0, -Q / torch.where(A.abs() > 0, A, torch.ones_like(A)), torch.zeros_like(A))
    out[..., 0] = torch.where(one, A + B - shift, out[..., 0])
    q_zero = Q == 0
    cbrt = torch.sign(2 * R) * torch.pow((2 * R).abs(), 1.0 / 3.0)
    out[..., 0] = torch.where(q_zero, cbrt - shift, out[..., 0])
    return out


def seven_point(points1: torch.Tensor, points2: torch.Tensor) -> torch.Tensor:
    """Fundamental matrix candidates from 7 correspondences.

    Args:
        points1, points2: ``[..., 7, 2]``.

    Returns:
        ``[..., 3, 3, 3]``: up to three candidates per sample (one per real root of the cubic
        ``det(lambda F1 + F2) = 0``; a missing root is 0 and its candidate is still built, as in
        the official ``run_7point``), each scaled to ``F[2, 2] = 1``.

    Source: official ``run_7point`` (Zhang & Kanade 1998), Hartley-normalised points.
    """
    batch = points1.shape[:-2]
    p1 = points1.reshape(-1, 7, 2)
    p2 = points2.reshape(-1, 7, 2)
    n1, T1 = normalize_points(p1)
    n2, T2 = normalize_points(p2)
    X = _design_matrix(n1, n2)
    _, _, Vh = torch.linalg.svd(X)
    V = Vh.mH
    f1 = V[..., 7].reshape(-1, 3, 3).clone()
    f2 = V[..., 8].reshape(-1, 3, 3).clone()
    eye = torch.eye(3, dtype=f1.dtype, device=f1.device)
    det1 = torch.linalg.det(f1)
    det2 = torch.linalg.det(f2)
    # a singular basis matrix is swapped for the identity only to keep the inverses finite; its
    # (zero) determinant still enters the cubic, as in the official solver
    f1 = torch.where((det1 == 0)[:, None, None], eye, f1)
    f2 = torch.where((det2 == 0)[:, None, None], eye, f2)
    coeffs = torch.stack(
        [
            det1,
            torch.einsum("bii->b", f2 @ torch.linalg.inv(f1)) * det1,
            torch.einsum("bii->b", f1 @ torch.linalg.inv(f2)) * det2,
            det2,
        ],
        -1,
    )
    lam = solve_cubic(coeffs)  # (B, 3)
    s = f1[:, None, 2, 2] * lam + f2[:, None, 2, 2]
    nonzero = s.abs() > 1e-8
    mu = torch.where(nonzero, 1.0 / torch.where(nonzero, s, torch.ones_like(s)), torch.ones_like(s))
    lam = torch.where(nonzero, lam * mu, lam)
    F = f1[:, None] * lam[..., None, None] + f2[:, None] * mu[..., None, None]
    F[..., 2, 2] = torch.where(nonzero, torch.ones_like(s), torch.zeros_like(s))
    F = T2.transpose(-1, -2)[:, None] @ F @ T1[:, None]
    F = normalize_last_entry(F)
    return F.reshape(batch + (3, 3, 3))


def eight_point(
    points1: torch.Tensor,
    points2: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fundamental matrix by the (masked, weighted) normalised 8-point algorithm.

    Args:
        points1, points2: ``[..., N, 2]``, N >= 8.
        mask: ``[..., N]`` bool; only masked correspondences are used (normalisation statistics
            included). None: all.
        weights: ``[..., N]`` non-negative weights of the least-squares rows, or None.

    Returns:
        ``[..., 3, 3]`` rank-2 F scaled to ``F[2, 2] = 1``.

    Raises:
        ValueError: if shapes differ or N < 8.

    Source: official ``run_8point`` (Hartley & Zisserman algorithm 11.1).
    """
    if points1.shape != points2.shape or points1.shape[-2] < 8:
        raise ValueError(f"eight_point needs matching [..., N>=8, 2] points, got {tuple(points1.shape)} and {tuple(points2.shape)}")
    n1, T1 = normalize_points(points1, mask)
    n2, T2 = normalize_points(points2, mask)
    X = _design_matrix(n1, n2)
    if mask is not None:
        X = X * mask.to(X.dtype)[..., None]
    if weights is None:
        M = X.transpose(-1, -2) @ X
    else:
        M = X.transpose(-1, -2) @ (X * weights[..., None])
    _, _, Vh = torch.linalg.svd(M)
    F = Vh.mH[..., -1].reshape(points1.shape[:-2] + (3, 3))
    U, S, Vh2 = torch.linalg.svd(F)
    S = S * torch.tensor([1.0, 1.0, 0.0], dtype=S.dtype, device=S.device)
    F = U @ torch.diag_embed(S) @ Vh2
    F = T2.transpose(-1, -2) @ F @ T1
    return normalize_last_entry(F)


def sampson_distance(points1: torch.Tensor, points2: torch.Tensor, F: torch.Tensor, squared: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Sampson epipolar error of correspondences under fundamental matrices.

    Args:
        points1, points2: ``[..., N, 2]`` (image 1 / image 2).
        F: ``[..., 3, 3]``; broadcast with the points' leading dims (e.g. points ``[B, 1, N, 2]`` and
            F ``[B, K, 3, 3]`` give ``[B, K, N]``).
        squared: return the squared distance (px^2 for pixel inputs).

    Returns:
        ``[..., N]``: ``(x2^T F x1)^2 / ((F x1)_0^2 + (F x1)_1^2 + (F^T x2)_0^2 + (F^T x2)_1^2)``.

    Source: official ``sampson_epipolar_distance_batched``.
    """
    ones1 = torch.ones_like(points1[..., :1])
    x1 = torch.cat([points1, ones1], -1)
    x2 = torch.cat([points2, torch.ones_like(points2[..., :1])], -1)
    Fx1 = x1 @ F.transpose(-1, -2)  # [..., N, 3]
    Ftx2 = x2 @ F  # [..., N, 3]
    num = (x2 * Fx1).sum(-1) ** 2
    den = Fx1[..., 0] ** 2 + Fx1[..., 1] ** 2 + Ftx2[..., 0] ** 2 + Ftx2[..., 1] ** 2
    out = num / den
    return out if squared else torch.sqrt(out + eps)


def residual_indicator(residuals: torch.Tensor, max_residual: float, nan_value: float = 1e6) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model score of LO-RANSAC: inlier count, ties broken by the mean inlier residual.

    Args:
        residuals: ``[..., K, N]`` residual of each of K models on N data.
        max_residual: inlier threshold (same units as ``residuals``).
        nan_value: mean residual given to models without inliers.

    Returns:
        ``(score [..., K] float64, inlier_count [..., K], inlier_mask [..., K, N])``; the best model
        maximises ``score = count + (m - mean_inlier_residual) / m`` with ``m`` = 1e-6 + the largest
        mean residual in the whole input, so the count always dominates.

    Source: official ``calculate_residual_indicator``.
    """
    inlier = residuals <= max_residual
    count = inlier.sum(-1)
    mean = (residuals * inlier).sum(-1) / count
    mean = torch.nan_to_num(mean, nan=nan_value, posinf=nan_value, neginf=nan_value)
    thres = mean.max() + 1e-6 if mean.numel() else mean.new_tensor(1.0)
    score = ((thres - mean) / thres).double() + count.double()
    return score, count, inlier


def sample_minimal_sets(n: int, num: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` random index sets of ``size`` distinct indices in ``[0, n)`` -> ``(num', size)``.

    Draws twice as many sets and drops those with repeated indices (official ``generate_samples``);
    the result may hold fewer than ``num`` rows for tiny ``n``.
    """
    idx = rng.integers(0, n, size=(num * 2, size))
    s = np.sort(idx, axis=1)
    ok = ~(np.diff(s, axis=1) == 0).any(axis=1)
    return idx[ok][:num]


def ransac_iterations(num_inliers: int, num_points: int, sample_size: int, success_prob: float) -> float:
    """Samples RANSAC needs to draw one all-inlier minimal set with probability ``success_prob``.

    ``k = log(1 - p) / log(1 - q)`` (Fischler & Bolles; Hartley & Zisserman §4.7.1), with ``q``
    the probability that a sample of ``s`` distinct points out of ``n`` holds only inliers:
    ``q = prod_{i<s} (I - i) / (n - i)``, exact for samples drawn without replacement (the
    textbook ``(I / n)^s`` overstates ``q`` for small ``n``: 20 inliers of 27 points, ``s = 7``:
    0.087 against 0.122). Evaluated at the fewest inliers a model may have to be accepted, it
    bounds the search: after ``k`` samples without such a model, none exists with probability
    ``p``. COLMAP bounds its trials the same way (``RANSACOptions.min_inlier_ratio``).

    Args:
        num_inliers: ``I``, inliers among the points (``0 <= I <= n``).
        num_points: ``n``, points sampled from.
        sample_size: ``s``, points per minimal sample (7 for the 7-point fundamental matrix).
        success_prob: ``p`` in (0, 1).

    Returns:
        ``k`` as a float (not rounded): ``1.0`` when every point is an inlier, ``inf`` when no
        sample can be all inliers (``I < s``).

    Raises:
        ValueError: ``success_prob`` outside (0, 1), ``sample_size < 1``, ``num_points <
        sample_size`` or ``num_inliers`` outside ``[0, num_points]``.
    """
    if not 0.0 < success_prob < 1.0 or sample_size < 1 or num_points < sample_size or not 0 <= num_inliers <= num_points:
        raise ValueError(
            "ransac_iterations needs 0 < success_prob < 1, 1 <= sample_size <= num_points and "
            f"0 <= num_inliers <= num_points; got {success_prob}, {sample_size}, {num_points}, {num_inliers}"
        )
    if num_inliers == num_points:
        return 1.0
    if num_inliers < sample_size:
        return math.inf
    q = math.prod((num_inliers - i) / (num_points - i) for i in range(sample_size))
    return max(1.0, math.log1p(-success_prob) / math.log1p(-q))


def _local_refine(points1, points2, inlier_mask, order, lo_num):
    """8-point refits on the inliers of the ``lo_num`` best models. Returns ``[B, lo, 3, 3]``."""
    B, N, _ = points1.shape
    top = order[:, :lo_num]
    masks = torch.gather(inlier_mask, 1, top[..., None].expand(-1, -1, N))  # [B, lo, N]
    p1 = points1[:, None].expand(-1, lo_num, -1, -1)
    p2 = points2[:, None].expand(-1, lo_num, -1, -1)
    return eight_point(p1, p2, mask=masks)


def estimate_fundamental(
    points1: torch.Tensor,
    points2: torch.Tensor,
    max_ransac_iters: int = 4096,
    max_error: float = 4.0,
    lo_num: int = 300,
    valid_mask: Optional[torch.Tensor] = None,
    second_refine: bool = True,
    sample_idx: Optional[torch.Tensor] = None,
    seed: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LO-RANSAC fundamental matrix: 7-point hypotheses, 8-point local refinement (batched).

    Args:
        points1, points2: ``[B, N, 2]`` correspondences (pixels).
        max_ransac_iters: number of 7-point samples (shared by the batch).
        max_error: inlier threshold on the Sampson distance (px).
        lo_num: models refined by the first local optimisation (the second refines ``lo_num // 2``).
        valid_mask: ``[B, N]`` bool; invalid correspondences get residual 1e6.
        second_refine: run the second local optimisation.
        sample_idx: ``[iters, 7]`` int64 index sets to use instead of drawing them (tests).
        seed: seed of the sample generator when ``sample_idx`` is None.

    Returns:
        ``(F [B, 3, 3], inlier_count [B], inlier_mask [B, N], residuals [B, N])``; residuals are
        squared Sampson distances of the chosen model.

    Source: official ``estimate_fundamental`` (``squared=True``, ``return_residuals=True``). As
    there, the second local optimisation selects inliers before invalid correspondences are masked.
    """
    B, N, _ = points1.shape
    thr = max_error**2
    if sample_idx is None:
        sample_idx = torch.from_numpy(sample_minimal_sets(N, max_ransac_iters, 7, np.random.default_rng(seed)))
    sample_idx = sample_idx.to(points1.device)
    iters = sample_idx.shape[0]
    F7 = seven_point(points1[:, sample_idx], points2[:, sample_idx]).reshape(B, iters * 3, 3, 3)
    res = sampson_distance(points1[:, None], points2[:, None], F7)
    if valid_mask is not None:
        res = torch.where(valid_mask[:, None], res, torch.full_like(res, 1e6))
    inl = res <= thr
    order = torch.sort(inl.sum(-1), dim=1, descending=True)[1]
    lo = min(lo_num, iters * 3)
    F_lo = _local_refine(points1, points2, inl, order, lo)
    res_lo = sampson_distance(points1[:, None], points2[:, None], F_lo)
    if second_refine:
        lo2 = min(lo // 2, lo)
        inl_lo = res_lo <= thr
        order2 = torch.sort(inl_lo.sum(-1), dim=1, descending=True)[1]
        F_lo2 = _local_refine(points1, points2, inl_lo, order2, lo2)
        res_lo2 = sampson_distance(points1[:, None], points2[:, None], F_lo2)
        F_lo = torch.cat([F_lo, F_lo2], 1)
        res_lo = torch.cat([res_lo, res_lo2], 1)
    if valid_mask is not None:
        res_lo = torch.where(valid_mask[:, None], res_lo, torch.full_like(res_lo, 1e6))
    F_all = torch.cat([F7, F_lo], 1)
    res_all = torch.cat([res, res_lo], 1)
    score, count, inlier = residual_indicator(res_all, thr)
    best = score.argmax(1)
    b = torch.arange(B, device=points1.device)
    return F_all[b, best], count[b, best], inlier[b, best], res_all[b, best]


def essential_from_fundamental(F: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor) -> torch.Tensor:
    """``E = K2^T F K1`` for ``[..., 3, 3]`` inputs (Hartley & Zisserman eq. 9.12)."""
    return K2.transpose(-1, -2) @ F @ K1


def decompose_essential(E: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The four ``(R, t)`` candidates of an essential matrix.

    Args:
        E: ``[..., 3, 3]``.

    Returns:
        ``(R [..., 4, 3, 3], t [..., 4, 3])`` in the order ``(R1, t), (R1, -t), (R2, t), (R2, -t)``
        with unit ``t``; camera 2 is ``[R | t]`` relative to camera 1 = ``[I | 0]``.
    """
    U, _, Vh = torch.linalg.svd(E)
    U = U * torch.where(torch.linalg.det(U) < 0, -1.0, 1.0).to(U.dtype)[..., None, None]
    Vh = Vh * torch.where(torch.linalg.det(Vh) < 0, -1.0, 1.0).to(Vh.dtype)[..., None, None]
    W = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=E.dtype, device=E.device)
    R1 = U @ W @ Vh
    R2 = U @ W.T @ Vh
    t = U[..., :, 2]
    t = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    R = torch.stack([R1, R1, R2, R2], -3)
    T = torch.stack([t, -t, t, -t], -2)
    return R, T
