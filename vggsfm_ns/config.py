"""Configuration of the pipeline: one dataclass per stage, grouped in :class:`ReconstructionConfig`.

Defaults follow the official VGGSfM v2 ``cfgs/demo.yaml`` (and ``cfgs/video_demo.yaml`` for the
sliding-window mode) unless a field's docstring says otherwise. Named presets live in
:data:`PRESETS`; nothing else in the package hard-codes a tunable default.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional

CameraType = Literal["SIMPLE_PINHOLE", "SIMPLE_RADIAL", "PINHOLE", "OPENCV"]
TrackerName = Literal["auto", "vggsfm", "klt", "sift"]
#: Query-point detectors (:func:`vggsfm_ns.query.points.detect_query_points`); ``query_method`` joins
#: them with ``+``.
QUERY_POINT_METHODS = ("aliked", "sift", "grid", "gftt")
#: Other names a detector answers to.
QUERY_POINT_ALIASES = {"shi-tomasi": "gftt"}


def unknown_query_methods(spec: str) -> List[str]:
    """The names in a ``+``-joined ``query_method`` (spaces around names allowed) that are neither in
    :data:`QUERY_POINT_METHODS` nor an alias (:data:`QUERY_POINT_ALIASES`); empty when all are known."""
    names = (m.strip() for m in spec.split("+"))
    return [m for m in names if m and m not in QUERY_POINT_METHODS and m not in QUERY_POINT_ALIASES]


ModeName = Literal["auto", "sparse", "video"]


@dataclass
class TrackConfig:
    """Query frames, query points and the track source."""

    tracker: TrackerName = "auto"
    """Track source: ``vggsfm`` (learned, needs the checkpoint), ``klt`` (optical flow, ordered
    frames), ``sift`` (SIFT matching, any order), or ``auto``: ``vggsfm`` when a checkpoint is found,
    else ``klt`` for videos and ``sift`` for image folders."""
    checkpoint: Optional[Path] = None
    """VGGSfM checkpoint (``vggsfm_v2_0_0.bin``). Default: the Hugging Face cache (``facebook/VGGSfM``),
    downloaded on first use unless ``HF_HUB_OFFLINE=1``."""
    query_method: str = "aliked"
    """Query-point detectors joined with ``+``: ``aliked``, ``sift``, ``grid``. The weight-free
    trackers use ``sift`` (and ``grid``) when ``aliked`` weights are unavailable."""
    max_query_pts: int = 2048
    """Maximum query points per query frame (official ``max_query_pts``)."""
    query_frame_num: int = 3
    """Number of query frames (official ``query_frame_num``)."""
    query_frame_ranking: Literal["dino", "midpoint", "interval"] = "dino"
    """How query frames are chosen: DINO similarity (needs the checkpoint), the midpoint ranking or
    a regular interval. Weight-free trackers fall back to ``interval`` when ``dino`` is unavailable."""
    img_size: int = 1024
    """Side of the square frame the VGGSfM tracker runs on."""
    max_image_size: int = 1024
    """Longer side of the frames the weight-free trackers run on (never upscaled)."""
    sift_small_frame: int = 448
    """SIFT tracker: frames whose longer side (processed px) is below this are enlarged to it (at
    most 2x) for feature detection; 0 never enlarges. Measured on dtu_scan24's 384 px frames (share
    of track observations within 2 px of the true epipolar line; fewest tracks in a frame; SIFT
    tracks time): no enlargement 94.5 %, 88, 2.6 s; 416: 96.0 %, 196, 3.1 s; 448: 97.4 %, 225,
    3.7 s; 512: 98.3 %, 315, 5.7 s. The final poses score AUC@30 99.99 with 448 and with 512. The
    ``fast`` preset turns it off."""
    sift_partners: int = 8
    """SIFT tracker: each frame is matched with this many partners, the most similar frames by a
    cheap retrieval (all pairs when there are no more frames than this plus one). Measured with
    the ``fast`` preset on six scenes (``docs/benchmarks.md``, eleventh session): 6 registers the
    same frames as 8, with the same AUC@30 to 0.02, in 13-17 % less time; with 5, ``kitchen``
    (repeated texture) registers 19 of 25 frames. The ``fast`` preset uses 6."""
    sift_octave_layers: int = 3
    """SIFT tracker: scales per octave of the feature detector (Lowe's and COLMAP's 3). Below 3,
    when the verified frame pairs do not join every frame into one graph, the features are
    extracted and matched again with 3 (a cheap first pass, the full one where it falls short).
    Measured with the ``fast`` preset (``docs/benchmarks.md``, twelfth session): on dtu_scan24, 2
    layers take 2.66 s against 3.27 s (median of six warm runs), AUC@30 99.83 against 99.91; fox,
    kitchen, statue and british_museum register the same frames; cake's pairs do not join with 2
    layers, so it takes the second pass (1.2 s, against 0.8 s for the ``default`` preset; the
    same 4 of 8 frames). The ``fast`` preset uses 2."""
    fine_tracking: bool = True
    """Run the fine (sub-pixel) tracker after the coarse one."""
    complement_nonvisible: bool = True
    """Add extra query frames for frames with fewer than ``min_visible`` visible tracks
    (official ``comple_nonvis``)."""
    min_visible: int = 500
    """Visible-track count below which a frame is complemented (official ``min_vis``)."""
    aliked_weights: Optional[Path] = None
    """ALIKED weights file (``aliked-n16.pth``); default: the torch hub cache."""


@dataclass
class CameraConfig:
    """Camera model and intrinsics."""

    camera_type: CameraType = "SIMPLE_PINHOLE"
    """COLMAP camera model of the output."""
    shared_camera: bool = False
    """One camera for all frames (requires all frames to have the same size)."""
    intrinsics: Literal["auto", "predict", "exif", "file"] = "auto"
    """Where the initial intrinsics come from: the camera predictor (``predict``), EXIF focal
    length (``exif``), ``intrinsics_file``, or ``auto`` (file if given, else EXIF when every frame
    has it, else predicted / default)."""
    intrinsics_file: Optional[Path] = None
    """JSON with ``fl_x fl_y cx cy`` (+ distortion) shared or per frame (nerfstudio keys), or a COLMAP
    ``cameras.txt``/``cameras.bin``."""
    fix_intrinsics: bool = False
    """Hold the known intrinsics fixed in bundle adjustment."""


@dataclass
class SfMConfig:
    """Triangulation and bundle adjustment (official ``Triangulator`` defaults)."""

    fmat_thres: float = 4.0
    """Max epipolar error (px) of the fundamental-matrix LO-RANSAC."""
    max_reproj_error: float = 4.0
    """Observations with a larger reprojection error (px) are dropped."""
    init_max_reproj_error: float = 4.0
    """Reprojection threshold (px) after the initial two-view BA."""
    robust_refine: int = 2
    """Rounds of pose refinement + re-triangulation + BA."""
    ba_iters: int = 1
    """Final iterative global BA rounds (official ``BA_iters``)."""
    init_tri_angle_thres: float = 16.0
    """Starting triangulation-angle threshold (degrees) for the initial pair search."""
    min_valid_track_length: int = 3
    """Tracks need at least this many inlier views to become points."""
    min_tri_angle: float = 1.5
    """Minimum triangulation angle (degrees) of a point."""
    filter_invalid_frame: bool = True
    """Deregister frames with an implausible focal length, distortion or translation."""
    extra_pt_pixel_interval: int = -1
    """Grid spacing (px in the processed frame) of extra points; -1 disables them."""
    extra_by_neighbor: int = -1
    """Track extra points only into this many neighbouring frames (-1: all frames)."""
    concat_extra_points: bool = False
    """Append extra points to the reconstruction (denser splat seed)."""
    max_points_per_chunk: int = 0
    """Tracks per chunk in per-point operations; 0 = choose from free memory."""


@dataclass
class DepthConfig:
    """Dense depth (Depth-Anything-V2 aligned to the SfM points)."""

    dense_depth: bool = False
    """Run monocular depth and align it to the reconstruction."""
    depth_model: str = "depth-anything/Depth-Anything-V2-Large-hf"
    """Hugging Face model id or a local ``save_pretrained`` directory."""
    temporal_smoothing: bool = True
    """Smooth the per-frame scale/shift over time for ordered frames (video)."""
    dense_init: bool = False
    """Write a dense seed point cloud from the aligned depth and point ``transforms.json`` at it."""
    dense_points_target: int = 500_000
    """Target number of dense seed points after voxel downsampling."""


@dataclass
class VideoConfig:
    """Sliding-window reconstruction of long ordered sequences (official ``video_demo.yaml``)."""

    init_window_size: int = 32
    """Frames in the initial window."""
    window_size: int = 16
    """Frames added per window."""
    joint_ba_interval: int = 6
    """Joint bundle adjustment every this many windows."""
    auto_min_frames: int = 150
    """``--mode auto`` switches to the video mode for ordered inputs with more frames than this.
    Measured (``docs/benchmarks.md``, video mode): the sparse pass is faster up to about 100 frames,
    the video mode from about 150 (KLT, 200 frames: 2x faster, a quarter of the memory; the sparse
    back end's time and memory grow super-linearly with the frames)."""


@dataclass
class ReconstructionConfig:
    """Everything :func:`vggsfm_ns.reconstruct` needs. Build one from a preset with :func:`preset`."""

    mode: ModeName = "auto"
    """``sparse`` (all frames at once), ``video`` (sliding window), or ``auto``."""
    device: str = "auto"
    """Torch device for the networks (``auto``: CUDA if available, else CPU)."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """Autocast dtype of the tracker: ``auto`` = bf16/fp16 on CUDA, fp32 on CPU."""
    seed: int = 0
    """Seed of every random choice (RANSAC samples, query-point subsets)."""
    num_frames_target: int = 300
    """For video input: number of frames to extract (the sharpest frame in each interval); 0 keeps every frame."""
    track: TrackConfig = field(default_factory=TrackConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    sfm: SfMConfig = field(default_factory=SfMConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    verbose: bool = False
    """Print extra logging."""


def _fast() -> ReconstructionConfig:
    cfg = ReconstructionConfig()
    cfg.track.max_query_pts = 1024
    cfg.track.query_frame_num = 2
    cfg.track.max_image_size = 768
    cfg.track.sift_small_frame = 0
    cfg.track.sift_partners = 6
    cfg.track.sift_octave_layers = 2
    cfg.sfm.robust_refine = 1
    return cfg


def _video() -> ReconstructionConfig:
    cfg = ReconstructionConfig(mode="video")
    cfg.track.max_query_pts = 1024
    cfg.track.query_frame_ranking = "midpoint"
    cfg.camera.shared_camera = True
    cfg.camera.camera_type = "SIMPLE_RADIAL"
    return cfg


def _dense() -> ReconstructionConfig:
    cfg = ReconstructionConfig()
    cfg.sfm.extra_pt_pixel_interval = 10
    cfg.sfm.concat_extra_points = True
    cfg.depth.dense_depth = True
    cfg.depth.dense_init = True
    return cfg


#: Named presets (hloc style). ``default`` is the official VGGSfM v2 demo configuration.
PRESETS = {
    "default": ReconstructionConfig,
    "fast": _fast,
    "video": _video,
    "dense": _dense,
}


def preset(name: str = "default") -> ReconstructionConfig:
    """A fresh copy of the named preset.

    Raises:
        KeyError: with the list of preset names, if ``name`` is unknown.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name]())


def as_dict(cfg: ReconstructionConfig) -> Dict:
    """The configuration as a JSON-serialisable dict (paths as strings), for reports."""
    from dataclasses import asdict

    def conv(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(asdict(cfg))
