"""Validity checks of points and frames after triangulation / bundle adjustment (torch).

Source: official ``filter_all_points3D`` (``triangulation_helpers.py``, after COLMAP's
``IncrementalMapper::FilterPoints``) and ``get_valid_frame_mask`` (``triangulation.py``).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from .camera import camera_centers, project_points
from ..threads import device_workers, job_ranges, parallel_workers, thread_map
from .chunking import chunk_size
from .triangulation import max_triangulation_angle

#: Single-core seconds :func:`filter_points3d` spends per point and frame (measured on a 2-core
#: AMD EPYC VM, 50 frames; ``docs/benchmarks.md``, tenth session): decides whether it splits its
#: points over worker threads (:func:`vggsfm_ns.threads.parallel_workers`).
SECONDS_PER_POINT_VIEW = 1.6e-7


def reprojection_errors(
    points: torch.Tensor,
    points2d: torch.Tensor,
    extrinsics: torch.Tensor,
    K: torch.Tensor,
    extra: Optional[torch.Tensor] = None,
    behind: float = math.inf,
) -> torch.Tensor:
    """Reprojection error of every point in every frame.

    Args:
        points: ``[P, 3]`` world points.
        points2d: ``[S, P, 2]`` observed pixels.
        extrinsics: ``[S, 3, 4]``; K: ``[S, 3, 3]``; extra: ``[S, E]`` or None.
        behind: error given to points with depth <= 0.

    Returns:
        ``[S, P]`` Euclidean reprojection errors in pixels.
    """
    proj, depth = project_points(points, extrinsics, K, extra)
    err = (proj - points2d).norm(dim=-1)
    return torch.where(depth > 0, err, torch.full_like(err, behind))


def filter_points3d(
    points: torch.Tensor,
    points2d: torch.Tensor,
    extrinsics: torch.Tensor,
    K: torch.Tensor,
    extra: Optional[torch.Tensor] = None,
    max_reproj_error: Union[float, torch.Tensor] = 4.0,
    min_tri_angle: float = 1.5,
    check_triangle: bool = True,
    hard_max: float = 300.0,
    obs_mask: Optional[torch.Tensor] = None,
    max_points_per_chunk: int = 0,
    exact_max_views: int = 16,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which points survive: reprojection, track length, coordinate bound and triangulation angle.

    An observation is an inlier when the point is in front of the camera and reprojects within
    ``max_reproj_error`` px. A point is valid when it has >= 2 inliers, all ``|coordinates| <=
    hard_max`` (``hard_max <= 0`` disables the bound) and, with ``check_triangle``, some pair of
    inlier views sees it under a folded triangulation angle >= ``min_tri_angle`` degrees.

    Args:
        points: ``[P, 3]``.
        points2d: ``[S, P, 2]`` observed pixels.
        extrinsics: ``[S, 3, 4]``; K: ``[S, 3, 3]``; extra: ``[S, E]`` or None.
        max_reproj_error: px, one value or ``[S]`` (per-frame thresholds, e.g. a processed-pixel
            threshold expressed in each frame's original pixels).
        obs_mask: ``[S, P]`` bool; observations outside it are never inliers (the official function
            has no such mask: pass None to reproduce it).
        max_points_per_chunk: points per chunk (0: from free memory). Chunks run on
            :func:`vggsfm_ns.threads.cpu_workers` threads on CPU, fewer when the work is small
            (:func:`vggsfm_ns.threads.parallel_workers`; the result does not depend on it).
        exact_max_views: frames up to which the angle test checks every pair (see
            :func:`~vggsfm_ns.geometry.triangulation.max_triangulation_angle`).

    Returns:
        ``(valid [P] bool, inlier_detail [S, P] bool)``; ``inlier_detail`` is the reprojection
        inlier mask, cleared for points failing the angle test when ``check_triangle``.

    Source: official ``filter_all_points3D(..., return_detail=True)``.
    """
    S, P = points2d.shape[:2]
    C = camera_centers(extrinsics)
    valid = torch.zeros(P, dtype=torch.bool, device=points.device)
    detail = torch.zeros(S, P, dtype=torch.bool, device=points.device)
    per_point = 8.0 * S * 16 + (8.0 * S * S * 4 if S <= exact_max_views else 0.0)
    workers = parallel_workers(P * S * SECONDS_PER_POINT_VIEW, device_workers(points.device))
    size = chunk_size(P, per_point * workers, max_points_per_chunk, device=points.device)

    def run(job: Tuple[int, int]) -> None:
        a, b = job
        X = points[a:b]
        err = reprojection_errors(X, points2d[:, a:b], extrinsics, K, extra)
        inl = err <= (max_reproj_error[:, None] if isinstance(max_reproj_error, torch.Tensor) else max_reproj_error)
        if obs_mask is not None:
            inl = inl & obs_mask[:, a:b]
        ok = inl.sum(0) >= 2
        if hard_max > 0:
            ok = ok & (X.abs() <= hard_max).all(-1)
        if check_triangle:
            ok = ok & (max_triangulation_angle(C, X, inl.T, exact_max_views) >= min_tri_angle)
            inl = inl & ok[None]
        valid[a:b] = ok  # disjoint columns per job
        detail[:, a:b] = inl

    for _ in thread_map(run, job_ranges(P, size, workers, S * SECONDS_PER_POINT_VIEW), workers):
        pass
    return valid, detail


def valid_frame_mask(K: torch.Tensor, extrinsics: torch.Tensor, extra: Optional[torch.Tensor], max_size: torch.Tensor,
                     focal_range: Tuple[float, float] = (0.1, 30.0), max_abs_extra: float = 1.0, max_abs_translation: float = 30.0) -> torch.Tensor:
    """Frames with plausible cameras after bundle adjustment.

    Args:
        K: ``[S, 3, 3]``; extrinsics: ``[S, 3, 4]``; extra: ``[S, E]`` or None.
        max_size: ``[S]`` or scalar, ``max(W, H)`` of each frame in the same pixels as K.
        focal_range: allowed ``fx / max(W, H)``.
        max_abs_extra: bound on every distortion parameter.
        max_abs_translation: bound on every translation component (the scene is normalised to an
            extent of 5 units after each BA, as the official pipeline does).

    Returns:
        ``[S]`` bool.

    Source: official ``get_valid_frame_mask`` and the final check of ``Triangulator.forward``.
    """
    f = K[:, 0, 0]
    ok = (f >= focal_range[0] * max_size) & (f <= focal_range[1] * max_size)
    if extra is not None and extra.shape[-1] > 0:
        ok = ok & (extra.abs() <= max_abs_extra).all(-1)
    ok = ok & (extrinsics[:, :, 3].abs() <= max_abs_translation).all(-1)
    return ok & torch.isfinite(extrinsics).all(-1).all(-1)
