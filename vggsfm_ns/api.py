"""The pipeline: from a video or an image folder to a reconstruction, one stage after another.

:func:`reconstruct` is the Python entry point that ``ns-process-data vggsfm`` and ``vggsfm-ns
process`` are thin shells over. Each stage is its own module with one entry function (see
``docs/architecture.md``); this module only decides which stages run and in which order:

frames → [tracker choice] → tracks (+ camera prior) → triangulation / BA → extra points → depth.

Long ordered inputs go through the sliding-window video mode instead of the single sparse pass.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import torch

from .config import ReconstructionConfig
from .devices import resolve_device
from .errors import InputError
from .io.frames import MIN_FRAMES, check_uniform_size
from .progress import Observers, PipelineObserver, Stage
from .types import FrameSet, ReconstructionResult, TrackSet


@dataclass
class TrackerChoice:
    """Which track source runs, and why (for the summary).

    Attributes:
        name: ``"vggsfm"``, ``"klt"`` or ``"sift"``.
        checkpoint: the VGGSfM checkpoint file when ``name == "vggsfm"``.
        reason: one line explaining the choice (shown once when ``auto`` falls back).
    """

    name: str
    checkpoint: Optional[Path]
    reason: str


def choose_tracker(cfg: ReconstructionConfig, frames: FrameSet) -> TrackerChoice:
    """Resolve ``cfg.track.tracker`` (``auto``: the learned tracker when a checkpoint is found locally,
    else KLT for ordered video frames and SIFT for image folders).

    Never downloads in ``auto`` mode: it only looks at the Hugging Face cache. An explicit
    ``--checkpoint`` or ``--tracker vggsfm`` resolves the checkpoint (``vggsfm`` may download it).

    Raises:
        CheckpointError: ``--tracker vggsfm`` and the checkpoint cannot be found or fetched.
    """
    from .checkpoints import find_checkpoint, resolve_checkpoint

    name = cfg.track.tracker
    if name == "auto" and cfg.track.checkpoint is not None:
        # an explicit --checkpoint means the learned tracker; a wrong path is an error, not a fallback
        name = "vggsfm"
    if name == "vggsfm":
        return TrackerChoice("vggsfm", resolve_checkpoint(cfg.track.checkpoint), "requested explicitly")
    if name in ("klt", "sift"):
        return TrackerChoice(name, None, "requested explicitly")
    if name != "auto":
        raise InputError(f"unknown tracker {name!r}; choose auto, vggsfm, klt or sift")
    ckpt = find_checkpoint(None)
    if ckpt is not None:
        return TrackerChoice("vggsfm", ckpt, f"checkpoint found at {ckpt}")
    fallback = "klt" if frames.ordered else "sift"
    return TrackerChoice(
        fallback,
        None,
        f"no VGGSfM checkpoint in the Hugging Face cache (facebook/VGGSfM): using the weight-free "
        f"{fallback.upper()} tracker (pass --checkpoint FILE, or --tracker vggsfm to download it)",
    )


def choose_mode(cfg: ReconstructionConfig, frames: FrameSet) -> str:
    """``sparse`` or ``video``. ``auto`` picks ``video`` for ordered frames (a video input) with more
    than ``cfg.video.auto_min_frames`` frames: the single sparse pass holds every frame's tracks at
    once and its time grows faster than linearly, the windowed mode keeps memory flat and time linear
    (crossover measured in ``docs/benchmarks.md``).

    Raises:
        InputError: an unknown mode name.
    """
    if cfg.mode == "sparse":
        return "sparse"
    if cfg.mode == "video":
        # an image folder named in temporal order is a valid video input too: trust the user
        return "video"
    if cfg.mode != "auto":
        raise InputError(f"unknown mode {cfg.mode!r}; choose auto, sparse or video")
    return "video" if frames.ordered and len(frames) > cfg.video.auto_min_frames else "sparse"


def _load_frames(source, cfg: ReconstructionConfig, masks, work_dir, observer, timings) -> FrameSet:
    if isinstance(source, FrameSet):
        return source
    from .io.frames import load_frames

    with Stage(observer, "frames", timings=timings):
        return load_frames(Path(source), masks=masks, num_frames_target=cfg.num_frames_target, work_dir=work_dir, observer=observer)


def _resolve_query_method(cfg: ReconstructionConfig, observer, messages: List[str]) -> None:
    """Fall back from ALIKED to SIFT query points when ALIKED's weights cannot be had (offline, no
    cache), instead of failing after the expensive stages; says so once."""
    methods = cfg.track.query_method.split("+")
    if "aliked" not in methods:
        return
    from .checkpoints import resolve_url_file
    from .errors import CheckpointError
    from .query.points import ALIKED_FILENAME, ALIKED_URL

    try:
        resolve_url_file(ALIKED_URL, cfg.track.aliked_weights, ALIKED_FILENAME)
    except CheckpointError as e:
        rest = [m for m in methods if m != "aliked"]
        cfg.track.query_method = "+".join(rest if "sift" in rest else rest + ["sift"])
        note = f"ALIKED weights unavailable ({e}); using {cfg.track.query_method} query points"
        observer.message(note, "warning")
        messages.append(note)


def _run_tracker(choice: TrackerChoice, frames: FrameSet, cfg: ReconstructionConfig, device, observer, timings, model=None):
    """Run the chosen track source; returns ``(TrackSet, CameraPrior or None, model or None)``."""
    if choice.name == "vggsfm":
        from .networks import VGGSfMModel
        from .tracks.vggsfm import track_vggsfm

        if model is None:
            with Stage(observer, "load model", timings=timings):
                model = VGGSfMModel.from_checkpoint(choice.checkpoint, device=device)
        with Stage(observer, "tracks", timings=timings):
            tracks, prior = track_vggsfm(frames, model, cfg.track, device=device, precision=cfg.precision, observer=observer)
        return tracks, prior, model
    if choice.name == "klt":
        from .tracks.klt import track_klt

        with Stage(observer, "tracks", timings=timings):
            return track_klt(frames, cfg.track, observer=observer), None, None
    from .tracks.sift import track_sift

    with Stage(observer, "tracks", timings=timings):
        return track_sift(frames, cfg.track, observer=observer), None, None


def _add_extra_points(frames: FrameSet, sfm, cfg: ReconstructionConfig, observer):
    """Extra points (official ``extra_pt_pixel_interval``): grid tracks guided by the solved model,
    triangulated against the fixed cameras, chunk by chunk."""
    from .sfm.extra_points import triangulate_extra_points
    from .tracks.extra import extra_point_tracks

    kept_pts, kept_rgb = [], []
    for chunk in extra_point_tracks(frames, sfm, cfg, observer=observer):
        sfm = triangulate_extra_points(sfm, chunk, cfg.sfm, frames=frames)
        if not cfg.sfm.concat_extra_points:
            kept_pts.append(sfm.stats.pop("extra_points3D"))
            kept_rgb.append(sfm.stats.pop("extra_points_rgb"))
    if not cfg.sfm.concat_extra_points:
        sfm.stats["extra_points3D"] = torch.cat(kept_pts, 0) if kept_pts else torch.zeros(0, 3, dtype=torch.float64)
        sfm.stats["extra_points_rgb"] = torch.cat(kept_rgb, 0) if kept_rgb else torch.zeros(0, 3, dtype=torch.uint8)
    sfm.stats["num_extra_points"] = int(sfm.stats["extra_points3D"].shape[0]) if not cfg.sfm.concat_extra_points else int((sfm.point_track_ids < 0).sum())
    return sfm


def reconstruct(
    source: Union[str, Path, FrameSet],
    config: Optional[ReconstructionConfig] = None,
    observer: Optional[PipelineObserver] = None,
    masks: Optional[Path] = None,
    work_dir: Optional[Path] = None,
) -> ReconstructionResult:
    """Run the VGGSfM pipeline on a video file, an image folder or a prepared :class:`FrameSet`.

    Args:
        source: video file (frames are extracted, the sharpest per interval), folder of images (any
            order), or a ``FrameSet``.
        config: pipeline configuration (default: ``preset("default")``, the official VGGSfM v2 demo
            settings).
        observer: progress/live-view receiver (e.g. :class:`vggsfm_ns.progress.RichProgress`, the
            viser live viewer, or :class:`vggsfm_ns.progress.Observers` of several).
        masks: folder of dynamic-object masks matched to the images by name (non-zero = dynamic).
        work_dir: where decoded video frames are written (default: a temporary folder deleted
            when the process exits, :func:`vggsfm_ns.io.atomic.process_temp_dir`).

    Returns:
        :class:`ReconstructionResult` with the frames, tracks, the bundle-adjusted model rescaled to
        the original image resolution, optional aligned depth and dense seed points, seconds per
        stage and messages for the summary.

    Raises:
        InputError: unusable input (missing path, no images, fewer than 3 frames, ...).
        CheckpointError: the learned tracker was asked for and its checkpoint is unavailable.
        ReconstructionError: the geometry failed as a whole (no initial pair, nothing registered).
    """
    from .io.images import decoded_image_cache

    # each image file is decoded once per run (header check, features, point colours)
    with decoded_image_cache():
        return _reconstruct(source, config, observer, masks, work_dir)


def _reconstruct(source, config, observer, masks, work_dir) -> ReconstructionResult:
    # a private copy: fallbacks (e.g. ALIKED -> SIFT query points) must not change the caller's object,
    # and result.config then records the settings that were actually used
    cfg = copy.deepcopy(config) if config is not None else ReconstructionConfig()
    obs = Observers([observer]) if not isinstance(observer, Observers) else observer
    timings: dict = {}
    messages: List[str] = []
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)

    frames = _load_frames(source, cfg, masks, work_dir, obs, timings)
    obs.frames_loaded(frames)
    if len(frames) < MIN_FRAMES:
        raise InputError(f"found {len(frames)} usable frame(s); at least {MIN_FRAMES} are needed", frames.source)
    if cfg.camera.shared_camera:
        check_uniform_size(frames)

    device = resolve_device(cfg.device)
    choice = choose_tracker(cfg, frames)
    if cfg.track.tracker == "auto" and choice.name != "vggsfm":
        obs.message(choice.reason, "warning")
    messages.append(f"tracker: {choice.name} ({choice.reason})")
    mode = choose_mode(cfg, frames)
    messages.append(f"mode: {mode} ({len(frames)} frames)")

    from .sfm.intrinsics import known_intrinsics

    known = known_intrinsics(frames, cfg.camera)
    if known is not None:
        messages.append(f"intrinsics: {known.source}{' (fixed)' if known.fixed else ''}")

    depth_model = None
    if cfg.depth.dense_depth or cfg.depth.dense_init:
        # loaded (downloaded if needed) before the SfM, so that a missing model fails in seconds, not
        # after the whole reconstruction; kept on the CPU until the depth stage
        from .depth.model import load_depth_model

        with Stage(obs, "depth model", timings=timings):
            depth_model = load_depth_model(cfg.depth.depth_model, device="cpu")

    tracks: Optional[TrackSet] = None
    if choice.name == "vggsfm":
        _resolve_query_method(cfg, obs, messages)
    if mode == "video":
        from .sfm.video import reconstruct_video

        sfm, tracks = reconstruct_video(frames, cfg, tracker=choice, device=device, known=known, observer=obs, timings=timings)
    else:
        tracks, prior, model = _run_tracker(choice, frames, cfg, device, obs, timings)
        from .sfm.backend import reconstruct_from_tracks

        with Stage(obs, "triangulate + BA", timings=timings):
            sfm = reconstruct_from_tracks(tracks, frames, cfg.sfm, cfg.camera, prior=prior, known=known, observer=obs, seed=cfg.seed)
        del model
        if cfg.sfm.extra_pt_pixel_interval > 0:
            with Stage(obs, "extra points", timings=timings):
                sfm = _add_extra_points(frames, sfm, cfg, obs)

    messages.extend(str(m) for m in sfm.stats.get("messages", []))

    depth = None
    dense_points = None
    if cfg.depth.dense_depth or cfg.depth.dense_init:
        from .depth import estimate_depth

        with Stage(obs, "depth", timings=timings):
            depth = estimate_depth(frames, sfm, cfg.depth, device=device, observer=obs, work_dir=work_dir, model=depth_model.to(device))
            depth_model = None
        if cfg.depth.dense_init:
            from .depth import dense_seed_points

            with Stage(obs, "dense seed", timings=timings):
                dense_points = dense_seed_points(frames, sfm, depth, target=cfg.depth.dense_points_target)

    timings["total"] = time.perf_counter() - t_start
    return ReconstructionResult(
        frames=frames,
        tracks=tracks,
        sfm=sfm,
        depth=depth,
        dense_points=dense_points,
        timings=timings,
        messages=messages,
        config=cfg,
        tracker=choice.name,
    )


__all__ = ["reconstruct", "choose_tracker", "choose_mode", "resolve_device", "TrackerChoice", "MIN_FRAMES"]
