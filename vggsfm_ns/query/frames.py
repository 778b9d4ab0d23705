"""Query-frame selection: which frames tracks are seeded in.

Source: VGGSfM v2 ``vggsfm/utils/utils.py`` (``generate_rank_by_midpoint``,
``generate_rank_by_interval``, ``farthest_point_sampling``, ``generate_rank_by_dino``) and the
choice between them in ``VGGSfMRunner.sparse_reconstruct`` (spec §4.1). Only the first
``query_frame_num`` entries of a ranking are used as query frames.
"""

from __future__ import annotations

from collections import deque
from typing import List, Optional

import torch

#: Ranking methods understood by :func:`select_query_frames`.
QUERY_FRAME_METHODS = ("midpoint", "interval", "dino")


def rank_by_midpoint(num_frames: int) -> List[int]:
    """Order frames by recursive bisection of ``[0, S-1]``.

    The order starts with the middle frame ``(S-1)//2``, then the two ends ``0`` and ``S-1``, then
    the midpoints of the two halves, of the four quarters, ... breadth first. Every frame appears
    exactly once.

    Args:
        num_frames: ``S >= 1``.

    Returns:
        A permutation of ``range(S)`` (list of int).

    Source: official ``generate_rank_by_midpoint``. For ``S <= 2`` the official list repeats
    frame 0 (``[0, 0, 0]``, ``[0, 0, 1]``); we drop the repeats.

    Raises:
        ValueError: if ``num_frames < 1``.
    """
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    last = num_frames - 1
    middle = last // 2
    order: List[int] = []
    seen = set()
    for f in (middle, 0, last):
        if f not in seen:
            seen.add(f)
            order.append(f)
    pending = deque([(0, middle), (middle, last)])
    while pending:
        lo, hi = pending.popleft()
        m = lo + (hi - lo) // 2
        if lo < m < hi and m not in seen:
            seen.add(m)
            order.append(m)
            pending.append((lo, m))
            pending.append((m, hi))
    return order


def rank_by_interval(num_frames: int, step: int) -> List[int]:
    """Order frames by a regular stride: ``0, k, 2k, ...`` then ``1, 1+k, ...`` and so on.

    Args:
        num_frames: ``S >= 1``.
        step: the stride ``k >= 1``.

    Returns:
        A permutation of ``range(S)`` (list of int).

    Source: official ``generate_rank_by_interval(N, k)``; the pipeline calls it with
    ``k = S // query_frame_num + 1``.

    Raises:
        ValueError: if ``num_frames < 1`` or ``step < 1``.
    """
    if num_frames < 1 or step < 1:
        raise ValueError(f"need num_frames >= 1 and step >= 1, got {num_frames}, {step}")
    order: List[int] = []
    for offset in range(min(step, num_frames)):
        order.extend(range(offset, num_frames, step))
    return order


def farthest_point_sampling(distance: torch.Tensor, num_samples: int, start: int = 0) -> List[int]:
    """Greedy frame ordering on a distance matrix, hopping from the *last* picked frame.

    Starting at ``start``, repeatedly pick the not-yet-picked frame farthest from the frame picked
    last (not from the whole picked set), until ``num_samples`` frames are picked.

    Args:
        distance: ``(S, S)`` float pairwise distances (negative values count as 0).
        num_samples: how many frames to return (clamped to ``S``).
        start: the first frame (the official pipeline uses the "most common" frame).

    Returns:
        List of ``min(num_samples, S)`` distinct frame indices, ``start`` first.

    Source: official ``farthest_point_sampling`` (used by ``generate_rank_by_dino``). Unlike the
    official loop, ``start`` is excluded from the second pick even if its self-distance is the
    largest in its row (the official can then return it twice; with DINO similarities the
    self-distance is the row minimum, so the results agree).

    Raises:
        ValueError: if ``distance`` is not square or ``start`` is out of range.
    """
    if distance.ndim != 2 or distance.shape[0] != distance.shape[1]:
        raise ValueError(f"distance must be (S, S), got {tuple(distance.shape)}")
    S = int(distance.shape[0])
    if not 0 <= start < S:
        raise ValueError(f"start frame {start} out of range for {S} frames")
    dist = distance.detach().clamp(min=0).to(torch.float64).cpu()
    picked = [int(start)]
    taken = torch.zeros(S, dtype=torch.bool)
    taken[start] = True
    n = min(int(num_samples), S)
    while len(picked) < n:
        row = dist[picked[-1]].masked_fill(taken, 0.0)
        nxt = int(torch.argmax(row))
        if taken[nxt]:  # every remaining distance is 0: take the lowest free index
            nxt = int(torch.nonzero(~taken)[0])
        picked.append(nxt)
        taken[nxt] = True
    return picked


def select_query_frames(
    num_frames: int,
    num_query: int,
    method: str = "interval",
    images: Optional[torch.Tensor] = None,
    camera_predictor=None,
) -> torch.Tensor:
    """Choose the query frames tracks are seeded in.

    Args:
        num_frames: ``S``, number of frames.
        num_query: how many query frames (official ``query_frame_num``, default 3); clamped to ``S``.
        method: ``"midpoint"`` (:func:`rank_by_midpoint`), ``"interval"`` (:func:`rank_by_interval`
            with step ``S // num_query + 1``) or ``"dino"`` (DINOv2 patch-feature similarity of the
            camera predictor's backbone, then :func:`farthest_point_sampling`; needs ``images`` and
            ``camera_predictor``).
        images: ``(S, 3, H, W)`` float32 RGB in [0, 1], the processed frames (``dino`` only).
        camera_predictor: the VGGSfM camera predictor whose DINOv2 backbone ranks the frames
            (``dino`` only).

    Returns:
        ``(min(num_query, S),)`` int64 CPU tensor of distinct frame indices, in ranking order (the
        first one is the most important query frame).

    Source: official query-frame choice (spec §4.1); ``dino`` delegates to
    :func:`vggsfm_ns.networks.ranking.rank_frames_by_dino`.

    Raises:
        ValueError: for ``num_frames < 1``, ``num_query < 1``, an unknown method, or ``dino``
            without ``images``/``camera_predictor`` (or with ``images`` of another length).
    """
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    if num_query < 1:
        raise ValueError(f"need at least one query frame, got {num_query}")
    n = min(int(num_query), int(num_frames))
    if method == "midpoint":
        order = rank_by_midpoint(num_frames)
    elif method == "interval":
        order = rank_by_interval(num_frames, num_frames // num_query + 1)
    elif method == "dino":
        if images is None or camera_predictor is None:
            raise ValueError(
                "query-frame ranking 'dino' needs the frames and the VGGSfM camera predictor "
                "(use 'midpoint' or 'interval' without the checkpoint)"
            )
        if images.shape[0] != num_frames:
            raise ValueError(f"query-frame ranking 'dino': {images.shape[0]} images for {num_frames} frames")
        from ..networks.ranking import rank_frames_by_dino

        ranked = rank_frames_by_dino(images, camera_predictor)
        order = [int(v) for v in torch.as_tensor(ranked).reshape(-1).tolist()]
    else:
        raise ValueError(f"unknown query-frame method {method!r}; choose one of {QUERY_FRAME_METHODS}")
    return torch.as_tensor(order[:n], dtype=torch.int64)
