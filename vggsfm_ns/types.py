"""Data passed between pipeline stages.

Each stage has one typed entry function; these dataclasses are what flows between them:

``FrameSet`` (input frames) -> ``TrackSet`` (2D tracks) [+ ``CameraPrior`` from the camera predictor]
-> ``SfMResult`` (cameras, points, COLMAP model) -> ``DepthResult`` (aligned dense depth)
-> ``ReconstructionResult`` (everything, what :func:`vggsfm_ns.reconstruct` returns).

Conventions (pixel centre/corner, OpenCV/OpenGL) are defined in :mod:`vggsfm_ns.conventions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .conventions import ImageTransform

if TYPE_CHECKING:  # pragma: no cover
    import pycolmap

    from .config import ReconstructionConfig


@dataclass
class FrameSet:
    """An ordered set of input frames, loaded lazily so that long videos keep memory flat.

    Attributes:
        names: file name of each frame as written to ``images/`` and into the COLMAP model (the
            user's original file name for image folders; ``frame_00001.png``... for videos).
        sizes: ``(S, 2)`` int64 original ``(width, height)`` of each frame, after EXIF orientation.
        paths: source file of each frame, or ``None`` where the frame lives in ``arrays``.
        arrays: in-memory ``(H, W, 3)`` uint8 RGB frames (used when ``paths[i]`` is ``None``).
        mask_paths: per-frame dynamic-object mask file (VGGSfM convention: non-zero = dynamic pixel
            to drop), or ``None``.
        exif_focal_px: per-frame focal length in original pixels from EXIF, or ``None``.
        ordered: True when frames come from a video (temporal order is meaningful: KLT, video mode).
        source: the user's input path (folder or video file).
    """

    names: List[str]
    sizes: np.ndarray
    paths: List[Optional[Path]]
    arrays: Dict[int, np.ndarray] = field(default_factory=dict)
    mask_paths: List[Optional[Path]] = field(default_factory=list)
    exif_focal_px: List[Optional[float]] = field(default_factory=list)
    ordered: bool = False
    source: Optional[Path] = None

    def __post_init__(self) -> None:
        self.sizes = np.asarray(self.sizes, dtype=np.int64).reshape(-1, 2)
        n = len(self.names)
        if len(self.paths) != n or self.sizes.shape[0] != n:
            raise ValueError("FrameSet: names, paths and sizes must have the same length")
        if not self.mask_paths:
            self.mask_paths = [None] * n
        if not self.exif_focal_px:
            self.exif_focal_px = [None] * n

    def __len__(self) -> int:
        return len(self.names)

    def image(self, i: int) -> np.ndarray:
        """Frame ``i`` as ``(H, W, 3)`` uint8 RGB in original resolution (EXIF orientation applied).

        Raises:
            vggsfm_ns.errors.InputError: if the file cannot be decoded.
        """
        if self.paths[i] is None:
            return self.arrays[i]
        from .io.images import read_image

        return read_image(self.paths[i])

    def mask(self, i: int) -> Optional[np.ndarray]:
        """Dynamic-object mask of frame ``i`` as ``(H, W)`` bool (True = dynamic, drop), or None."""
        if self.mask_paths[i] is None:
            return None
        from .io.images import read_mask

        return read_mask(self.mask_paths[i], tuple(int(v) for v in self.sizes[i]))

    @property
    def has_masks(self) -> bool:
        """True when at least one frame has a dynamic-object mask."""
        return any(p is not None for p in self.mask_paths)

    def subset(self, indices: Sequence[int]) -> "FrameSet":
        """A new FrameSet holding frames ``indices`` (in that order); arrays are shared, not copied."""
        idx = [int(i) for i in indices]
        return FrameSet(
            names=[self.names[i] for i in idx],
            sizes=self.sizes[idx],
            paths=[self.paths[i] for i in idx],
            arrays={k: self.arrays[i] for k, i in enumerate(idx) if i in self.arrays},
            mask_paths=[self.mask_paths[i] for i in idx],
            exif_focal_px=[self.exif_focal_px[i] for i in idx],
            ordered=self.ordered,
            source=self.source,
        )


#: A track observation counts when its visibility exceeds this (official back end ``vis_thres``).
VIS_THRESH = 0.05
#: ... and, for trackers that output one, its confidence exceeds this (official ``score_thres``).
SCORE_THRESH = 0.5


@dataclass
class TrackSet:
    """2D tracks over S frames: the contract between every track source and the geometric back end.

    Attributes:
        tracks: ``(S, N, 2)`` float32, pixel-centre convention, in each frame's *processed* frame
            (see ``transforms``).
        vis: ``(S, N)`` float32 in [0, 1]; the back end treats ``vis > 0.05`` as observed
            (official threshold).
        score: ``(S, N)`` float32 or None. Official VGGSfM semantics: an observation is trusted when
            ``score > 0.5``. None means "all trusted" (weight-free trackers).
        query_frames: ``(N,)`` int64, the frame each track was seeded in (its query frame).
        transforms: per-frame :class:`ImageTransform` from original to processed pixels.
        source: which tracker produced the tracks (``"vggsfm"``, ``"klt"``, ``"sift"``).

    All tensors live on the CPU.
    """

    tracks: torch.Tensor
    vis: torch.Tensor
    score: Optional[torch.Tensor]
    query_frames: torch.Tensor
    transforms: List[ImageTransform]
    source: str = "unknown"

    def __post_init__(self) -> None:
        S, N = self.tracks.shape[:2]
        if self.tracks.shape != (S, N, 2) or self.vis.shape != (S, N):
            raise ValueError(f"TrackSet: tracks {tuple(self.tracks.shape)} and vis {tuple(self.vis.shape)} disagree")
        if self.score is not None and self.score.shape != (S, N):
            raise ValueError(f"TrackSet: score {tuple(self.score.shape)} must be {(S, N)}")
        if self.query_frames.shape != (N,):
            raise ValueError(f"TrackSet: query_frames {tuple(self.query_frames.shape)} must be {(N,)}")
        if len(self.transforms) != S:
            raise ValueError(f"TrackSet: {len(self.transforms)} transforms for {S} frames")

    @property
    def num_frames(self) -> int:
        """``S``."""
        return int(self.tracks.shape[0])

    @property
    def num_tracks(self) -> int:
        """``N``."""
        return int(self.tracks.shape[1])

    def valid_mask(self, vis_thresh: float = VIS_THRESH, score_thresh: float = SCORE_THRESH) -> torch.Tensor:
        """``(S, N)`` bool: ``vis > vis_thresh`` and (``score > score_thresh`` when a score exists)."""
        m = self.vis > vis_thresh
        if self.score is not None:
            m = m & (self.score > score_thresh)
        return m

    @staticmethod
    def concat(sets: Sequence["TrackSet"]) -> "TrackSet":
        """Concatenate track sets over the same frames along N."""
        if not sets:
            raise ValueError("TrackSet.concat needs at least one set")
        score = None
        if any(s.score is not None for s in sets):
            score = torch.cat([s.score if s.score is not None else torch.ones_like(s.vis) for s in sets], 1)
        return TrackSet(
            tracks=torch.cat([s.tracks for s in sets], 1),
            vis=torch.cat([s.vis for s in sets], 1),
            score=score,
            query_frames=torch.cat([s.query_frames for s in sets], 0),
            transforms=list(sets[0].transforms),
            source="+".join(dict.fromkeys(s.source for s in sets)),
        )


@dataclass
class CameraPrior:
    """Cameras predicted by the VGGSfM camera predictor (or any other prior), in the processed frame.

    Attributes:
        extrinsics: ``(S, 3, 4)`` float64 OpenCV ``cam_from_world``; frame 0 is the identity.
        intrinsics: ``(S, 3, 3)`` float64 pinhole K in processed pixels, pixel-centre convention.
    """

    extrinsics: torch.Tensor
    intrinsics: torch.Tensor


@dataclass
class KnownIntrinsics:
    """Calibration supplied by the user (EXIF focal length or a file).

    Attributes:
        intrinsics: ``(S, 3, 3)`` float64 K in *original* pixels, pixel-corner (COLMAP) convention.
        extra_params: ``(S, K)`` float64 distortion parameters of ``camera_type`` (may be empty).
        fixed: hold them fixed in bundle adjustment (``--fix-intrinsics``).
        source: ``"exif"`` or ``"file"``.
    """

    intrinsics: torch.Tensor
    extra_params: torch.Tensor
    fixed: bool = False
    source: str = "file"


@dataclass
class SfMResult:
    """The output of the geometric back end, rescaled to each frame's original resolution.

    Attributes:
        reconstruction: pycolmap model. Image names are ``FrameSet.names``; cameras, 2D
            observations and principal points are in original pixels, COLMAP (corner) convention.
            Only valid frames are registered.
        extrinsics: ``(S, 3, 4)`` float64 OpenCV ``cam_from_world`` (rows of invalid frames are
            meaningless; see ``valid_frame_mask``).
        intrinsics: ``(S, 3, 3)`` float64 K in original pixels, corner convention.
        extra_params: ``(S, K)`` float64 distortion parameters (``K = 0`` for pinhole models).
        camera_type: COLMAP model name, e.g. ``"SIMPLE_PINHOLE"``.
        points3D: ``(P, 3)`` float64 world points (same world as ``extrinsics``).
        points3D_rgb: ``(P, 3)`` uint8 colours.
        point_track_ids: ``(P,)`` int64 index of each point's track in the input ``TrackSet``
            (``-1`` for extra points that have no track).
        track_inlier_mask: ``(S, N)`` bool, observations kept as inliers of the final model.
        valid_frame_mask: ``(S,)`` bool, frames registered in the final model.
        image_ids: ``(S,)`` int64 pycolmap image id of each frame.
        stats: free-form numbers for the summary (mean reprojection error in px, etc.).
    """

    reconstruction: "pycolmap.Reconstruction"
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    extra_params: torch.Tensor
    camera_type: str
    points3D: torch.Tensor
    points3D_rgb: torch.Tensor
    point_track_ids: torch.Tensor
    track_inlier_mask: torch.Tensor
    valid_frame_mask: torch.Tensor
    image_ids: torch.Tensor
    stats: Dict[str, Any] = field(default_factory=dict)


@dataclass
class FrameDepth:
    """Aligned dense depth of one frame.

    Attributes:
        frame: frame index into the FrameSet.
        depth: ``(H, W)`` float32 z-depth in world units of the reconstruction (original
            resolution); 0 where invalid (masked, no prediction, rejected).
        confidence: ``(H, W)`` float32 in [0, 1] or None.
        scale, shift: the affine map applied to the model's inverse-depth prediction.
        inlier_ratio: fraction of sparse SfM depths that agree with the fit.
        residual: median relative depth residual on the inliers.
        accepted: False when the frame was rejected (too few inliers); its depth is then all 0.
        path: ``.npy`` file holding the depth map when it is kept on disk (then ``depth`` is None
            so that hundreds of frames keep memory flat); read it with :meth:`load_depth`.
        num_sparse: SfM depths available for the fit; num_inliers: how many agreed with it.
    """

    frame: int
    depth: Optional[np.ndarray]
    confidence: Optional[np.ndarray]
    scale: float
    shift: float
    inlier_ratio: float
    residual: float
    accepted: bool
    path: Optional[Path] = None
    num_sparse: int = 0
    num_inliers: int = 0

    def load_depth(self) -> Optional[np.ndarray]:
        """The ``(H, W)`` float32 depth map, from memory or from :attr:`path`; None if neither is set."""
        if self.depth is not None:
            return self.depth
        if self.path is not None:
            return np.load(self.path).astype(np.float32, copy=False)
        return None


@dataclass
class DepthResult:
    """Dense depth for the registered frames (see :class:`FrameDepth`)."""

    frames: List[FrameDepth]
    model_id: str
    temporal: bool = False


@dataclass
class ReconstructionResult:
    """Everything :func:`vggsfm_ns.reconstruct` produced; :func:`vggsfm_ns.export_nerfstudio` writes it.

    Attributes:
        frames: the input frames.
        tracks: the 2D tracks used by the back end.
        sfm: cameras, points and the COLMAP model.
        depth: aligned dense depth, when ``--dense-depth`` was asked.
        dense_points: ``((M, 3) float64, (M, 3) uint8)`` dense seed points, when ``--dense-init``.
        timings: seconds per stage, in execution order.
        messages: warnings and notes collected for the summary.
        config: the configuration that produced the result.
        tracker: the track source that ran (``vggsfm``, ``klt``, ``sift``), in either mode (in the
            video mode ``tracks`` is None: tracks live window by window).
    """

    frames: FrameSet
    tracks: Optional[TrackSet]
    sfm: SfMResult
    depth: Optional[DepthResult] = None
    dense_points: Optional[Tuple[np.ndarray, np.ndarray]] = None
    timings: Dict[str, float] = field(default_factory=dict)
    messages: List[str] = field(default_factory=list)
    config: Optional["ReconstructionConfig"] = None
    tracker: Optional[str] = None
