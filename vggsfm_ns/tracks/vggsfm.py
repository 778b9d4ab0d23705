"""Learned tracks: the VGGSfM v2 tracker run over a frame set (official ``predict_tracks``).

Steps (spec §3.4, §4.1–4.3):

1. Frames are loaded into VGGSfM's centred black-padded square (``cfg.img_size``).
2. Query frames: ``query_frames`` if given, else the configured ranking (``dino`` by default).
3. The DINOv2 patch tokens are computed once and shared by the DINO ranking and the camera
   prediction (:func:`vggsfm_ns.cameras.predict_cameras`, the official averaged camera prior).
4. Coarse feature maps are computed once (one frame at a time, fp32) and their correlation pyramid is
   shared by every query frame.
5. For every query frame q: query points are detected inside the content box (minus the official
   4 px border margin) and outside dynamic masks; frame q is swapped with frame 0 (a swap, done by
   indexing, not by copying images or maps), the points are tracked, the outputs swapped back.
6. The complement pass: frames seeing fewer than ``cfg.min_visible`` tracks become extra query
   frames one at a time; a frame that stays deficient gets a final trial with an extra detector and
   half the points (official ``comple_nonvis_frames``).
7. Tracks outside a frame's content box get ``vis = 0``.

Memory: work per call is chunked by tokens (track x frame pairs) from the free device memory
(``torch.cuda.mem_get_info`` on CUDA, available RAM on CPU); the chunking does not change the
result. Only when even the per-call state (about 12 kB per token) would not fit are the query
points split into independent calls, as the official code does above 163,840 tokens (there with a
fixed constant sized for 32 GB GPUs).

Precision: the tracker runs under autocast (``precision``: ``auto`` = fp16 on CUDA like the
official ``mixed_precision: fp16``, fp32 on CPU); feature maps and cameras are computed in fp32.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..config import TrackConfig
from ..conventions import ImageTransform, corner_to_center
from ..errors import InputError
from ..geometry.chunking import free_memory_bytes
from ..progress import PipelineObserver, Stage
from ..types import VIS_THRESH, CameraPrior, FrameSet, TrackSet

__all__ = ["track_vggsfm", "content_ranges", "autocast_dtype", "token_budget"]

#: Official ``remove_borders``: margin (processed px) kept from padded borders.
REMOVE_BORDERS = 4
#: Peak transient bytes per token of a chunk (fine stage dominates: patches + 32x31x31 features).
BYTES_PER_CHUNK_TOKEN = 400_000
#: Bytes per token of the state one tracker call keeps for all its tokens (transformer tokens).
BYTES_PER_CALL_TOKEN = 12_000
#: Fraction of the free memory the tracker may plan for.
MEMORY_FRACTION = 0.5
#: Upper bound of the automatic chunk (tokens) per device type: bigger chunks no longer speed
#: anything up but raise the peak memory (fine stage: ~0.3 MB per token in fp32).
CHUNK_CAP = {"cuda": 16384, "cpu": 2048}

Detector = Callable[[torch.Tensor, Optional[torch.Tensor], int], torch.Tensor]


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32).

    ``auto``: fp16 on CUDA (the official ``mixed_precision``), fp32 elsewhere; ``fp16`` / ``bf16``
    are honoured on any device; ``fp32`` disables autocast.

    Raises:
        ValueError: for an unknown precision.
    """
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    table = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32, fp16 or bf16")
    return table[precision]


def token_budget(device: torch.device, reserved_bytes: int = 0) -> Tuple[int, int]:
    """``(chunk_tokens, call_tokens)`` that fit in ``MEMORY_FRACTION`` of the free memory.

    ``chunk_tokens`` bounds the transient work processed at once (does not change results; capped
    by :data:`CHUNK_CAP`); ``call_tokens`` bounds the tokens of one tracker call (above it, query
    points are split).
    """
    budget = max(int(free_memory_bytes(device) * MEMORY_FRACTION) - int(reserved_bytes), 256 << 20)
    chunk = max(256, min(budget // (2 * BYTES_PER_CHUNK_TOKEN), CHUNK_CAP.get(device.type, CHUNK_CAP["cpu"])))
    call = max(4096, budget // (2 * BYTES_PER_CALL_TOKEN))
    return int(chunk), int(call)


def content_ranges(transforms: Sequence[ImageTransform], margin: float = REMOVE_BORDERS) -> torch.Tensor:
    """Valid pixel-centre ranges of each processed frame: ``[S, 4]`` float32 ``(x_lo, y_lo, x_hi, y_hi)``.

    The content box of :meth:`ImageTransform.content_box` (corner convention) shrunk by ``margin``
    on every padded side (official ``bound_bboxes`` with ``remove_borders``), expressed as the
    closed range of pixel-centre coordinates whose pixel lies inside it.
    """
    out = []
    for t in transforms:
        x0, y0, x1, y1 = t.content_box()
        mx = margin if t.pad[0] > 0 else 0.0
        my = margin if t.pad[1] > 0 else 0.0
        out.append([[x0 + mx, y0 + my], [x1 - mx, y1 - my]])  # corner convention
    return corner_to_center(torch.tensor(out, dtype=torch.float64)).reshape(-1, 4).float()


def _invalid_mask(rng: torch.Tensor, H: int, W: int, dynamic: Optional[torch.Tensor]) -> torch.Tensor:
    xs = torch.arange(W, dtype=torch.float32)
    ys = torch.arange(H, dtype=torch.float32)
    inside = ((ys >= rng[1]) & (ys <= rng[3]))[:, None] & ((xs >= rng[0]) & (xs <= rng[2]))[None, :]
    invalid = ~inside
    if dynamic is not None:
        invalid |= dynamic.bool()
    return invalid


def _swap(q: int, S: int, device) -> torch.Tensor:
    order = torch.arange(S, device=device)
    order[0] = q
    order[q] = 0
    return order


class _Runner:
    """State shared by all tracker calls of one :func:`track_vggsfm` run."""

    def __init__(self, tp, images, fmaps, pyramid, ranges, dtype, cfg, chunk, call_tokens, device, iters):
        self.tp, self.images, self.fmaps, self.pyramid = tp, images, fmaps, pyramid
        self.ranges, self.dtype, self.cfg = ranges, dtype, cfg
        self.chunk, self.call_tokens, self.device = chunk, call_tokens, device
        self.iters = iters

    def track(self, q: int, points: torch.Tensor, seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Track ``points [N, 2]`` of frame q -> CPU ``(tracks [S, N, 2], vis [S, N], score [S, N])``."""
        S = self.images.shape[1]
        N = points.shape[0]
        order = _swap(q, S, self.device)
        pts = points.to(self.device, torch.float32)
        per_call = max(1, self.call_tokens // S)
        if N > per_call:  # official-style split into independent calls (seeded permutation)
            perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed)).to(self.device)
            groups = [perm[i : i + per_call] for i in range(0, N, per_call)]
        else:
            perm, groups = None, [None]
        tracks = torch.empty(S, N, 2)
        vis = torch.empty(S, N)
        score = torch.empty(S, N)
        for idx in groups:
            sub = pts if idx is None else pts[idx]
            enabled = self.dtype is not None
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=enabled):
                fine, _, v, s = self.tp(
                    self.images,
                    sub[None],
                    fmaps=self.fmaps,
                    fine_tracking=self.cfg.fine_tracking,
                    coarse_iters=self.iters[0],
                    fine_iters=self.iters[1],
                    chunk=self.chunk,
                    frame_order=order,
                    pyramid=self.pyramid,
                )
            fine = fine[0].index_select(0, order).float().cpu()
            v = v[0].index_select(0, order).float().cpu()
            s = s[0].index_select(0, order).float().cpu()
            cols = slice(None) if idx is None else idx.cpu()
            tracks[:, cols] = fine
            vis[:, cols] = v
            score[:, cols] = s
        # official: tracks outside the (margin-shrunk) content box are not visible
        r = self.ranges
        inside = (
            (tracks[..., 0] >= r[:, 0:1]) & (tracks[..., 0] <= r[:, 2:3]) & (tracks[..., 1] >= r[:, 1:2]) & (tracks[..., 1] <= r[:, 3:4])
        )
        vis = vis * inside.float()
        return tracks, vis, score


@torch.no_grad()
def track_vggsfm(
    frames: FrameSet,
    model,
    cfg: TrackConfig,
    device: torch.device,
    precision: str = "auto",
    observer: Optional[PipelineObserver] = None,
    query_frames: Optional[Sequence[int]] = None,
    *,
    seed: int = 0,
    predict_camera: bool = True,
    detector: Optional[Detector] = None,
    chunk_tokens: Optional[int] = None,
    call_tokens: Optional[int] = None,
    coarse_iters: int = 6,
    fine_iters: int = 6,
    timings: Optional[Dict[str, float]] = None,
) -> Tuple[TrackSet, Optional[CameraPrior]]:
    """Track query points with the learned VGGSfM v2 tracker and predict the camera prior.

    Args:
        frames: the frame set (any order; S >= 2).
        model: :class:`vggsfm_ns.networks.VGGSfMModel` on ``device`` (eval mode).
        cfg: track settings. Used: ``img_size``, ``query_frame_num``, ``query_frame_ranking``,
            ``query_method``, ``max_query_pts``, ``fine_tracking``, ``complement_nonvisible``,
            ``min_visible``, ``aliked_weights``.
        device: torch device of the model (CPU or CUDA; never assumed).
        precision: ``auto`` | ``fp32`` | ``fp16`` | ``bf16`` (see :func:`autocast_dtype`).
        observer: progress reporting (stages ``"camera prior"``, ``"feature maps"``, ``"tracks"``).
        query_frames: explicit query frames; overrides the ranking.
        seed: seed of the query-point subsets and of the point split of oversized calls.
        predict_camera: also return the camera prior (:func:`vggsfm_ns.cameras.predict_cameras`).
        detector: optional replacement of :func:`vggsfm_ns.query.points.detect_query_points`,
            called as ``detector(image [3, H, W], invalid_mask [H, W] bool, max_points) -> [N, 2]``.
        chunk_tokens: tokens (track x frame) processed at once; None = from free memory. Does not
            change the result.
        call_tokens: maximum tokens of one tracker call; None = from free memory.
        coarse_iters, fine_iters: tracker iterations (official 6 and 6; fewer = faster preview).
        timings: dict receiving seconds per stage.

    Returns:
        ``(TrackSet, CameraPrior or None)``. Tracks ``(S, N, 2)`` float32 pixel-centre in each
        frame's processed frame (``transforms`` = :func:`vggsfm_ns.preprocess.square_transforms`);
        every track equals its query point in its query frame; ``vis`` is the sigmoid visibility,
        0 outside the content box; ``score`` the fine-stage score (official semantics: trusted when
        > 0.5; all ones without fine tracking); ``source="vggsfm"``.

    Raises:
        InputError: fewer than 2 frames, a query frame out of range, or no query point at all.

    Source: official ``VGGSfMRunner.sparse_reconstruct`` (query frames, camera prior, fmaps),
    ``predict_tracks`` and ``comple_nonvis_frames`` (``vggsfm/runners/runner.py``).
    """
    from .. import preprocess
    from ..cameras import predict_cameras

    device = torch.device(device)
    S = len(frames)
    if S < 2:
        raise InputError(f"the VGGSfM tracker needs at least 2 frames, got {S}", frames.source)
    tp, cp = model.track_predictor, model.camera_predictor
    dtype = autocast_dtype(precision, device)
    transforms = preprocess.square_transforms(frames, cfg.img_size)
    H = W = int(cfg.img_size)

    with Stage(observer, "load frames", total=S, timings=timings) as st:
        images = preprocess.load_processed(frames, transforms, on_frame=lambda i: st.advance())
        masks = preprocess.load_processed_masks(frames, transforms)
    images_dev = images.to(device)
    ranges = content_ranges(transforms)

    image_bytes = images_dev.numel() * 4
    fmap_bytes = S * 128 * (H // 8) * (W // 8) * 4 * 2  # maps + pyramid levels
    auto_chunk, auto_call = token_budget(device, reserved_bytes=image_bytes + fmap_bytes)
    chunk = int(chunk_tokens) if chunk_tokens is not None else auto_chunk
    call = int(call_tokens) if call_tokens is not None else auto_call

    # query frames and camera prior share one DINO pass
    num_query = max(1, min(int(cfg.query_frame_num), S))
    need_dino = predict_camera or (query_frames is None and cfg.query_frame_ranking == "dino")
    prior: Optional[CameraPrior] = None
    with Stage(observer, "camera prior", timings=timings):
        tokens = None
        if need_dino:
            with torch.autocast(device.type, enabled=False):
                tokens = cp.backbone_features(images_dev)
        if query_frames is not None:
            qf = [int(q) for q in query_frames]
            if not qf or any(q < 0 or q >= S for q in qf):
                raise InputError(f"query frames {qf} out of range for {S} frames", frames.source)
        elif cfg.query_frame_ranking == "dino":
            from ..networks.ranking import rank_frames_by_dino

            qf = rank_frames_by_dino(images_dev, cp, patch_tokens=tokens)[:num_query].tolist()
        else:
            from ..query.frames import select_query_frames

            qf = select_query_frames(S, num_query, cfg.query_frame_ranking).tolist()
        if predict_camera:
            prior = predict_cameras(None, model, qf, transforms, patch_tokens=tokens, chunk=chunk)
        del tokens

    with Stage(observer, "feature maps", total=S, timings=timings):
        with torch.autocast(device.type, enabled=False):
            # one frame at a time: least memory, and the maps do not depend on the free memory
            fmaps = tp.process_images_to_fmaps(images_dev[None], frame_chunk=1)
        pyramid = tp.build_pyramid(fmaps)
    runner = _Runner(tp, images_dev[None], fmaps, pyramid, ranges, dtype, cfg, chunk, call, device, (int(coarse_iters), int(fine_iters)))

    def detect(q: int, method: str, max_points: int) -> torch.Tensor:
        invalid = _invalid_mask(ranges[q], H, W, None if masks is None else masks[q])
        if detector is not None:
            pts = detector(images[q], invalid, max_points)
        else:
            from ..query.points import detect_query_points

            pts = detect_query_points(images[q], method, max_points, invalid_mask=invalid, device=device, aliked_weights=cfg.aliked_weights, seed=seed + q)
        return torch.as_tensor(pts, dtype=torch.float32).reshape(-1, 2).cpu()

    parts: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def run(query_list: Sequence[int], method: str, max_points: int, st: Stage) -> None:
        for q in query_list:
            pts = detect(q, method, max_points)
            if pts.shape[0] == 0:
                if observer is not None:
                    observer.message(f"VGGSfM tracker: no query points in frame {frames.names[q]}", "warning")
                st.advance()
                continue
            tr, v, s = runner.track(q, pts, seed + q)
            parts.append((tr, v, s, torch.full((pts.shape[0],), q, dtype=torch.int64)))
            st.advance(note=f"frame {q}: {pts.shape[0]} points")

    def visible_counts() -> torch.Tensor:
        if not parts:
            return torch.zeros(S, dtype=torch.long)
        return sum((p[1] > VIS_THRESH).sum(-1) for p in parts)

    with Stage(observer, "tracks", total=len(qf), timings=timings) as st:
        run(qf, cfg.query_method, int(cfg.max_query_pts), st)
        if cfg.complement_nonvisible:
            method, max_pts = cfg.query_method, int(cfg.max_query_pts)
            last, final = -1, False
            nonvis = torch.nonzero(visible_counts() < int(cfg.min_visible)).flatten().tolist()
            while nonvis:
                if nonvis[0] == last:  # still deficient after being a query frame: final trial
                    final = True
                    method = "+".join(dict.fromkeys(cfg.query_method.split("+") + ["sift"]))
                    max_pts = max(1, max_pts // 2)
                    todo = nonvis
                else:
                    todo = [nonvis[0]]
                last = nonvis[0]
                run(todo, method, max_pts, st)
                nonvis = torch.nonzero(visible_counts() < int(cfg.min_visible)).flatten().tolist()
                if final:
                    break
    if not parts:
        raise InputError("the VGGSfM tracker found no query points in any query frame", frames.source)
    trackset = TrackSet(
        tracks=torch.cat([p[0] for p in parts], 1).contiguous(),
        vis=torch.cat([p[1] for p in parts], 1).contiguous(),
        score=torch.cat([p[2] for p in parts], 1).contiguous(),
        query_frames=torch.cat([p[3] for p in parts], 0),
        transforms=list(transforms),
        source="vggsfm",
    )
    return trackset, prior
