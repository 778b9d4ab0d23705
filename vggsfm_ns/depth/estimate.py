"""The dense-depth stage: predict Depth-Anything-V2 disparity for every registered frame and align it.

:func:`estimate_depth` is the stage's entry function (``vggsfm_ns.api.reconstruct`` calls it when
``--dense-depth`` or ``--dense-init`` is given). Memory stays flat for long videos: each frame is
predicted, aligned and (for more than a few frames) written to disk before the next one is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from ..config import DepthConfig
from ..io.atomic import process_temp_dir
from ..progress import PipelineObserver, Stage
from ..types import DepthResult, FrameDepth, FrameSet, SfMResult
from .align import (
    AlignmentFit,
    apply_alignment,
    fit_inverse_depth,
    max_depth_for,
    registered_frames,
    smooth_alignment_over_time,
    sparse_depth_from_sfm,
)

#: Depth maps stay in memory while all registered frames together have at most this many pixels
#: (about 200 MB of float32); beyond it they are written to ``work_dir`` (or a temporary folder).
IN_MEMORY_PIXELS = 50_000_000

#: Frames needed before the temporal joint fit is used on ordered input.
MIN_TEMPORAL_FRAMES = 3

def _stem(frames: FrameSet, s: int) -> str:
    return f"{s:05d}_{Path(frames.names[s]).stem}"


def estimate_depth(
    frames: FrameSet,
    sfm: SfMResult,
    cfg: DepthConfig,
    device=None,
    observer: Optional[PipelineObserver] = None,
    work_dir: Optional[Path] = None,
    model=None,
    seed: int = 0,
) -> DepthResult:
    """Aligned dense depth for every registered frame (official ``dense_reconstruct``).

    Steps, per registered frame in frame order:

    1. Depth-Anything-V2 disparity at the original resolution (:class:`~vggsfm_ns.depth.model.DepthModel`);
       dynamic-mask pixels (``frames.mask``) are set to 0 (no prediction).
    2. SfM depths of the frame's inlier points (:func:`~vggsfm_ns.depth.align.sparse_depth_from_sfm`),
       nearest-pixel disparity samples, RANSAC fit in inverse depth
       (:func:`~vggsfm_ns.depth.align.fit_inverse_depth`, ``random_state = seed + frame``).
    3. For ordered frames (``frames.ordered``) with ``cfg.temporal_smoothing``: joint refinement of
       all frames' scale/shift (:func:`~vggsfm_ns.depth.align.smooth_alignment_over_time`); the
       disparity maps wait on disk meanwhile.
    4. ``depth = 1 / (scale * disparity + shift)``, 0 where invalid, masked or beyond 10x the
       farthest inlier SfM depth; rejected frames get an all-zero map.

    Args:
        frames: the input frames (original images, masks).
        sfm: the reconstruction; its world and units define the depth.
        cfg: ``depth_model`` (Hugging Face id or local directory) and ``temporal_smoothing``.
        device: torch device for the network (None: CUDA when available).
        observer: progress receiver (one step per frame, stage ``"monocular depth"``).
        work_dir: where depth maps (``depth/*.npy``, float32) and temporary disparity maps are
            kept. Without it, maps stay in memory up to :data:`IN_MEMORY_PIXELS` pixels in total,
            else go to a temporary folder removed at process exit.
        model: an already loaded :class:`~vggsfm_ns.depth.model.DepthModel` (skips loading).
        seed: base RANSAC seed.

    Returns:
        :class:`DepthResult` with one :class:`FrameDepth` per registered frame, in frame order
        (read maps with ``FrameDepth.load_depth()``; ``confidence`` is None), ``temporal`` True when
        the joint temporal fit was used.

    Raises:
        CheckpointError: the depth model is not available (see
            :func:`~vggsfm_ns.depth.model.load_depth_model`).
        InputError: a frame cannot be decoded.
    """
    obs = observer or PipelineObserver()
    reg = registered_frames(sfm)
    if model is None:
        from .model import load_depth_model

        model = load_depth_model(cfg.depth_model, device)
    model_id = str(getattr(model, "model_id", cfg.depth_model))
    sparse = sparse_depth_from_sfm(sfm, frames)
    temporal = bool(cfg.temporal_smoothing and frames.ordered and len(reg) >= MIN_TEMPORAL_FRAMES)

    total_px = int(sum(int(frames.sizes[s, 0]) * int(frames.sizes[s, 1]) for s in reg))
    on_disk = work_dir is not None or total_px > IN_MEMORY_PIXELS
    root = (Path(work_dir) / "depth") if work_dir is not None else (process_temp_dir("vggsfm_ns_depth_") if on_disk or temporal else None)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)

    fits: List[AlignmentFit] = []
    disp_store: List[object] = []
    out: List[FrameDepth] = []

    def finish(s: int, disp: np.ndarray, fit: AlignmentFit) -> FrameDepth:
        if fit.accepted:
            depth = apply_alignment(disp, fit.scale, fit.shift, max_depth_for(fit))
        else:
            depth = np.zeros(disp.shape, np.float32)
        path = None
        if on_disk:
            path = root / f"{_stem(frames, s)}.npy"
            np.save(path, depth)
            depth = None
        return FrameDepth(
            frame=s,
            depth=depth,
            confidence=None,
            scale=float(fit.scale),
            shift=float(fit.shift),
            inlier_ratio=float(fit.inlier_ratio),
            residual=float(fit.residual),
            accepted=bool(fit.accepted),
            path=path,
            num_sparse=fit.num_samples,
            num_inliers=fit.num_inliers,
        )

    with Stage(obs, "monocular depth", total=len(reg)) as st:
        for s in reg:
            disp = model.predict(frames.image(s))
            mask = frames.mask(s)
            if mask is not None:
                disp[mask] = 0.0
            sd = sparse[s]
            pix = sd.pixels()
            samples = disp[pix[:, 1], pix[:, 0]] if len(pix) else np.zeros(0, np.float32)
            fit = fit_inverse_depth(samples, sd.z, seed=seed + s)
            if not fit.accepted:
                obs.message(f"depth: frame {frames.names[s]} not aligned ({fit.reason}); its depth map is empty", "warning")
            if temporal:
                p = root / f"{_stem(frames, s)}.disparity.npy"
                np.save(p, disp)
                disp_store.append(p)
                fits.append(fit)
            else:
                out.append(finish(s, disp, fit))
            del disp
            st.advance(note=f"{frames.names[s]} inliers {fit.num_inliers}/{fit.num_samples}")

    if temporal:
        fits = smooth_alignment_over_time(fits, [float(s) for s in reg])
        for s, p, fit in zip(reg, disp_store, fits):
            disp = np.load(p)
            out.append(finish(s, disp, fit))
            Path(p).unlink(missing_ok=True)

    n_ok = sum(f.accepted for f in out)
    if reg and n_ok < len(reg):
        obs.message(f"depth: {n_ok}/{len(reg)} registered frames aligned", "warning")
    return DepthResult(frames=out, model_id=model_id, temporal=temporal)


__all__ = ["estimate_depth", "IN_MEMORY_PIXELS"]
