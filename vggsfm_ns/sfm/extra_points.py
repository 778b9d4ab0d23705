"""Extra points: triangulate additional (dense grid) tracks against the solved, fixed cameras.

Source: official ``VGGSfMRunner.triangulate_extra_points`` (``extra_pt_pixel_interval > 0``): the
grid tracks of each frame are triangulated with LO-RANSAC (``triangulate_tracks``), points with more
than 3 inlier views that pass ``filter_all_points3D`` are kept, coloured by their query pixel, and
appended to the model with an empty track when ``concat_extra_points``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch

from ..config import SfMConfig
from ..conventions import center_to_corner, corner_to_center
from ..errors import InputError
from ..geometry.camera import cam_from_img
from ..geometry.filtering import filter_points3d
from ..geometry.triangulation import triangulate_tracks
from ..types import FrameSet, SfMResult, TrackSet
from ..threads import torch_threads
from .backend import TRI_HYPOTHESES, TRI_LO, TRI_LO_SECOND

#: Extra points need more than this many inlier views (official ``extra_inlier_num > 3``).
MIN_EXTRA_INLIERS = 3


def triangulate_extra_points(result: SfMResult, extra_tracks: TrackSet, sfm_cfg: SfMConfig, frames: Optional[FrameSet] = None) -> SfMResult:
    """Triangulate ``extra_tracks`` with the cameras of ``result`` held fixed.

    Args:
        result: the reconstruction (original pixels, corner convention).
        extra_tracks: ``[S, M]`` tracks over the same frames, processed pixels (pixel-centre) with
            their ``transforms``; each track's colour is taken at its query pixel.
        sfm_cfg: ``max_reproj_error`` (processed px, converted per frame), ``min_tri_angle``,
            ``concat_extra_points``, ``max_points_per_chunk``.
        frames: the frames, for colours (grey without them).

    Returns:
        A new :class:`SfMResult`. With ``concat_extra_points`` the points are appended to
        ``points3D`` / ``points3D_rgb`` (``point_track_ids = -1``) and to a copy of the pycolmap model
        (empty tracks); otherwise they are returned in ``stats["extra_points3D"]`` ``(M', 3)`` float64
        and ``stats["extra_points_rgb"]`` ``(M', 3)`` uint8. ``stats["num_extra_points"]`` counts them.

    Raises:
        InputError: the tracks cover a different number of frames than the reconstruction.
    """
    with torch_threads(1):
        return _extra_points(result, extra_tracks, sfm_cfg, frames)


def _extra_points(result: SfMResult, extra_tracks: TrackSet, sfm_cfg: SfMConfig, frames: Optional[FrameSet]) -> SfMResult:
    S = int(result.valid_frame_mask.shape[0])
    if extra_tracks.num_frames != S:
        raise InputError(f"extra tracks cover {extra_tracks.num_frames} frames, the reconstruction {S}")
    M = extra_tracks.num_tracks
    valid = torch.nonzero(result.valid_frame_mask).flatten()
    tr = extra_tracks.transforms
    xy = torch.stack([torch.as_tensor(tr[i].proc_to_orig(center_to_corner(extra_tracks.tracks[i].to(torch.float64)), "corner")) for i in range(S)])
    sizes = torch.tensor([t.orig_size for t in tr], dtype=torch.float64)
    obs = extra_tracks.valid_mask() & torch.isfinite(xy).all(-1)
    obs &= (xy[..., 0] >= 0) & (xy[..., 1] >= 0) & (xy[..., 0] <= sizes[:, None, 0]) & (xy[..., 1] <= sizes[:, None, 1])
    pts = torch.zeros(0, 3, dtype=torch.float64)
    rgb = torch.zeros(0, 3, dtype=torch.uint8)
    if M > 0 and valid.numel() >= 2:
        ext = result.extrinsics[valid].to(torch.float64)
        K = result.intrinsics[valid].to(torch.float64)
        E = result.extra_params[valid].to(torch.float64) if result.extra_params.shape[-1] else None
        xn = cam_from_img(xy[valid], K, E)
        X, n, _ = triangulate_tracks(
            ext, xn, valid=obs[valid], max_ransac_iters=TRI_HYPOTHESES, lo_num=TRI_LO, lo_num_second=TRI_LO_SECOND,
            min_tri_angle=sfm_cfg.min_tri_angle, max_tracks_per_chunk=sfm_cfg.max_points_per_chunk,
        )
        keep = n > MIN_EXTRA_INLIERS
        idx = torch.nonzero(keep).flatten()
        if idx.numel():
            thr = torch.tensor([sfm_cfg.max_reproj_error / tr[int(i)].scale for i in valid], dtype=torch.float64)
            ok, _ = filter_points3d(X[idx], xy[valid][:, idx], ext, K, E, max_reproj_error=thr, min_tri_angle=sfm_cfg.min_tri_angle,
                                    obs_mask=obs[valid][:, idx], max_points_per_chunk=sfm_cfg.max_points_per_chunk)
            idx = idx[ok]
        pts = X[idx]
        rgb = _query_colors(frames, extra_tracks, xy, idx)
    out = dataclasses.replace(result, stats=dict(result.stats))
    out.stats["num_extra_points"] = int(pts.shape[0])
    if sfm_cfg.concat_extra_points:
        import pycolmap

        rec = pycolmap.Reconstruction(result.reconstruction)
        p_np, c_np = pts.numpy(), rgb.numpy()
        for k in range(p_np.shape[0]):
            rec.add_point3D(p_np[k], pycolmap.Track(), c_np[k])
        out.reconstruction = rec
        out.points3D = torch.cat([result.points3D.to(torch.float64), pts], 0)
        out.points3D_rgb = torch.cat([result.points3D_rgb, rgb], 0)
        out.point_track_ids = torch.cat([result.point_track_ids, torch.full((pts.shape[0],), -1, dtype=torch.int64)], 0)
    else:
        out.stats["extra_points3D"] = pts
        out.stats["extra_points_rgb"] = rgb
    return out


def _query_colors(frames: Optional[FrameSet], tracks: TrackSet, xy_orig: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``(len(idx), 3)`` uint8 colour of each kept track at its query pixel (grey without frames)."""
    n = idx.numel()
    if frames is None or n == 0:
        return torch.full((n, 3), 128, dtype=torch.uint8)
    q = tracks.query_frames[idx]
    out = np.full((n, 3), 128, np.uint8)
    for f in torch.unique(q).tolist():
        sel = torch.nonzero(q == f).flatten()
        img = np.asarray(frames.image(int(f)))
        if img.ndim == 2:
            img = img[..., None].repeat(3, -1)
        H, W = img.shape[:2]
        p = corner_to_center(xy_orig[f, idx[sel]].numpy())  # nearest pixel
        x = np.clip(np.round(p[:, 0]).astype(int), 0, W - 1)
        y = np.clip(np.round(p[:, 1]).astype(int), 0, H - 1)
        out[sel.numpy()] = img[y, x, :3]
    return torch.from_numpy(out)
