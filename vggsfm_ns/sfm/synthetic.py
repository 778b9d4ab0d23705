"""Synthetic scenes with ground truth for testing track consumers (back end, video mode, export).

:func:`make_scene` places cameras along a trajectory around (or through) a random point cloud,
projects the points with a chosen camera model, and turns the projections into a
:class:`~vggsfm_ns.types.TrackSet` in a processed frame exactly as a tracker would deliver it:
pixel-centre coordinates, ``vis``, query frames, per-frame :class:`ImageTransform`. Noise, outlier
observations and missing observations are controlled separately; ground truth is kept for scoring.

Trajectories (``trajectory=``):

* ``"orbit"``: a full circle around the points, looking at the centre (turntable / 360 capture);
* ``"arc"``: a part of a sphere around the object (DTU-like: azimuth +-60 deg, two elevation rows);
* ``"forward"``: a smooth walk along +z through a field of points (video, sliding window);
* ``"rotation"``: pure rotation about the camera centre (degenerate: no parallax);
* an explicit ``(S, 3, 4)`` array of cam_from_world matrices.

Everything is numpy / torch on the CPU and vectorised, so 300 frames x 8k points take well under a
second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..conventions import corner_to_center, resize_transform, square_pad_transform
from ..geometry.camera import num_extra_params
from ..types import FrameSet, TrackSet


def look_at(center: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, -1.0, 0.0])) -> np.ndarray:
    """OpenCV cam_from_world ``(3, 4)`` of a camera at ``center`` looking at ``target``.

    ``up`` is the world direction that should appear up in the image (OpenCV y points down, so the
    default ``-y`` world axis is "up").
    """
    z = np.asarray(target, np.float64) - np.asarray(center, np.float64)
    z = z / np.linalg.norm(z)
    x = np.cross(-np.asarray(up, np.float64), z)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(np.array([1.0, 0.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return np.hstack([R, (-R @ np.asarray(center, np.float64))[:, None]])


def trajectory_poses(kind: str, num_frames: int, rng: np.random.Generator, radius: float = 4.0) -> np.ndarray:
    """cam_from_world ``(S, 3, 4)`` of a named trajectory (see the module docstring)."""
    S = num_frames
    if kind == "orbit":
        a = np.linspace(0, 2 * np.pi, S, endpoint=False)
        C = np.stack([radius * np.cos(a), -0.6 + 0.2 * np.sin(3 * a), radius * np.sin(a)], -1)
        return np.stack([look_at(c, np.zeros(3)) for c in C])
    if kind == "arc":
        rows = 2 if S >= 6 else 1
        per = int(np.ceil(S / rows))
        out = []
        for r in range(rows):
            el = np.deg2rad(-30.0 + 20.0 * r)
            for az in np.deg2rad(np.linspace(-60.0, 60.0, per)):
                c = radius * np.array([np.sin(az) * np.cos(el), np.sin(el), -np.cos(az) * np.cos(el)])
                jitter = rng.normal(0, 0.02 * radius, 3)
                out.append(look_at(c + jitter, rng.normal(0, 0.05, 3)))
        return np.stack(out[:S])
    if kind == "forward":
        z = np.linspace(0.0, 0.15 * radius * S / 10.0, S)
        x = 0.3 * np.sin(z / radius * 2.0)
        y = 0.1 * np.sin(z / radius * 3.0)
        yaw = 0.15 * np.cos(z / radius * 2.0)
        out = []
        for xi, yi, zi, w in zip(x, y, z, yaw):
            c = np.array([xi, yi, zi])
            out.append(look_at(c, c + np.array([np.sin(w), 0.0, np.cos(w)])))
        return np.stack(out)
    if kind == "rotation":
        yaw = np.deg2rad(np.linspace(-20.0, 20.0, S))
        c = np.array([0.0, 0.0, -radius])
        return np.stack([look_at(c, c + np.array([np.sin(w), 0.05 * np.sin(3 * w), np.cos(w)])) for w in yaw])
    raise ValueError(f"unknown trajectory {kind!r}")


def scene_points(kind: str, num_points: int, rng: np.random.Generator, extrinsics: np.ndarray, radius: float = 4.0) -> np.ndarray:
    """World points ``(N, 3)`` suited to a trajectory: a ball at the origin for object-centric
    trajectories, a corridor of points around the path for ``forward``."""
    if kind == "forward":
        R = extrinsics[:, :3, :3]
        C = -np.einsum("sji,sj->si", R, extrinsics[:, :3, 3])
        k = rng.integers(0, len(C), num_points)
        depth = rng.uniform(2.0, 12.0, num_points)
        fwd = R[k, 2]
        lateral = rng.normal(0, 1.0, (num_points, 2)) * np.array([2.5, 1.2])
        return C[k] + fwd * depth[:, None] + R[k, 0] * lateral[:, :1] + R[k, 1] * lateral[:, 1:]
    if kind == "rotation":
        d = rng.normal(size=(num_points, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        d[:, 2] = np.abs(d[:, 2]) + 0.8
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return np.array([0.0, 0.0, -radius]) + d * rng.uniform(3.0, 30.0, (num_points, 1))
    u = rng.normal(size=(num_points, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return u * rng.uniform(0.2, 1.0, (num_points, 1)) ** (1 / 3) * 1.0


@dataclass
class SyntheticScene:
    """A synthetic scene and its tracks.

    Attributes:
        tracks: the :class:`TrackSet` (processed frame, pixel-centre).
        frames: a :class:`FrameSet` (in-memory images whose colour encodes the pixel position when
            ``with_images``; else None).
        extrinsics: ``(S, 3, 4)`` float64 ground-truth cam_from_world.
        intrinsics: ``(S, 3, 3)`` float64 ground-truth K, original pixels, corner convention.
        extra_params: ``(S, E)`` float64 ground-truth distortion.
        camera_type: COLMAP model of the ground truth.
        points: ``(N, 3)`` float64 ground-truth points.
        visible: ``(S, N)`` bool, geometrically visible (in front, inside the image).
        observed: ``(S, N)`` bool, delivered as observed (``vis = 1``): visible and not dropped.
        outlier: ``(S, N)`` bool, observed but displaced (gross outliers).
        names: frame names.
    """

    tracks: TrackSet
    frames: Optional[FrameSet]
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    extra_params: np.ndarray
    camera_type: str
    points: np.ndarray
    visible: np.ndarray
    observed: np.ndarray
    outlier: np.ndarray
    names: list = field(default_factory=list)


def _distort_np(uv: np.ndarray, extra: np.ndarray) -> np.ndarray:
    if extra.size == 0:
        return uv
    e = np.zeros(4)
    e[: extra.size] = extra
    k1, k2, p1, p2 = e
    u, v = uv[..., 0], uv[..., 1]
    r2 = u * u + v * v
    rad = k1 * r2 + k2 * r2 * r2
    du = u * rad + 2 * p1 * u * v + p2 * (r2 + 2 * u * u)
    dv = v * rad + 2 * p2 * u * v + p1 * (r2 + 2 * v * v)
    return np.stack([u + du, v + dv], -1)


def position_image(width: int, height: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 image whose colour encodes the pixel position: R = x, G = y ramps, B = 128.

    The colour of a point is therefore a known function of where it is observed (tests of the
    colour sampling).
    """
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.stack([x, y, np.full_like(x, 128.0)], -1).round().astype(np.uint8)


def make_scene(
    num_frames: int = 20,
    num_points: int = 2000,
    trajectory: Union[str, np.ndarray] = "orbit",
    image_size: Tuple[int, int] = (640, 480),
    focal: Union[float, Sequence[float]] = 600.0,
    camera_type: str = "SIMPLE_PINHOLE",
    distortion: Optional[Sequence[float]] = None,
    principal_offset: Tuple[float, float] = (0.0, 0.0),
    noise_px: float = 0.5,
    outlier_ratio: float = 0.1,
    missing_ratio: float = 0.3,
    query_frames: Optional[Sequence[int]] = None,
    processed: str = "resize",
    processed_size: int = 1024,
    image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    with_images: bool = False,
    min_track_length: int = 2,
    radius: float = 4.0,
    seed: int = 0,
) -> SyntheticScene:
    """Build a synthetic scene, its tracks and ground truth.

    Args:
        num_frames: S.
        num_points: N (points never seen by 2 frames are dropped, so the TrackSet may hold fewer).
        trajectory: a name (``orbit``, ``arc``, ``forward``, ``rotation``) or ``(S, 3, 4)`` poses.
        image_size: ``(width, height)`` of every frame (unless ``image_sizes``).
        focal: focal length in original pixels, one value or one per frame (fx; ``fy = fx`` except
            for PINHOLE/OPENCV where ``fy = 0.995 fx``).
        camera_type: ground-truth model; ``distortion`` gives its extra parameters.
        principal_offset: principal point offset from the image centre (px).
        noise_px: Gaussian noise (std, px in original pixels) on every observation.
        outlier_ratio: fraction of observations displaced by 15-60 px (kept ``vis = 1``).
        missing_ratio: fraction of visible observations dropped (``vis = 0``).
        query_frames: frames tracks are seeded in (default: ``[0, S // 3, 2 S // 3]``); each track
            is observed, without noise or outlier, in its query frame.
        processed: ``"resize"`` (longer side ``processed_size``, no padding; weight-free trackers) or
            ``"square"`` (VGGSfM's padded square of side ``processed_size``).
        image_sizes: per-frame ``(width, height)``, overrides ``image_size``.
        with_images: attach a FrameSet with :func:`position_image` frames.
        min_track_length: drop tracks observed in fewer frames.
        seed: everything random derives from it.

    Returns:
        :class:`SyntheticScene`.
    """
    rng = np.random.default_rng(seed)
    if isinstance(trajectory, str):
        ext = trajectory_poses(trajectory, num_frames, rng, radius)
        kind = trajectory
    else:
        ext = np.asarray(trajectory, np.float64)
        kind = "orbit"
    S = ext.shape[0]
    sizes = np.array(image_sizes if image_sizes is not None else [image_size] * S, np.int64).reshape(S, 2)
    f = np.broadcast_to(np.asarray(focal, np.float64), (S,)).copy()
    E = num_extra_params(camera_type)
    extra = np.zeros((S, E))
    if distortion is not None:
        extra[:] = np.asarray(distortion, np.float64)[:E]
    K = np.zeros((S, 3, 3))
    K[:, 0, 0] = f
    K[:, 1, 1] = f * (0.995 if camera_type in ("PINHOLE", "OPENCV") else 1.0)
    K[:, 0, 2] = sizes[:, 0] / 2.0 + principal_offset[0]
    K[:, 1, 2] = sizes[:, 1] / 2.0 + principal_offset[1]
    K[:, 2, 2] = 1.0

    pts = scene_points(kind, num_points, rng, ext, radius)
    pc = np.einsum("sij,nj->sni", ext[:, :, :3], pts) + ext[:, None, :, 3]
    z = pc[..., 2]
    uv = pc[..., :2] / np.where(np.abs(z) < 1e-9, 1e-9, z)[..., None]
    uvd = np.stack([_distort_np(uv[s], extra[s]) for s in range(S)])
    xy = np.einsum("sij,snj->sni", K[:, :2, :2], uvd) + K[:, None, :2, 2]  # corner convention
    W, H = sizes[:, 0][:, None], sizes[:, 1][:, None]
    visible = (z > 0.05) & (xy[..., 0] >= 1) & (xy[..., 0] <= W - 1) & (xy[..., 1] >= 1) & (xy[..., 1] <= H - 1)
    visible &= np.abs(uv).max(-1) < 2.0

    keep = visible.sum(0) >= max(min_track_length, 2)
    pts, xy, visible = pts[keep], xy[:, keep], visible[:, keep]
    N = pts.shape[0]

    if query_frames is None:
        query_frames = sorted({0, S // 3, (2 * S) // 3})
    qf = np.asarray(list(query_frames), np.int64)
    # each track's query frame: a query frame where it is visible (else its first visible frame)
    vis_q = visible[qf]  # (Q, N)
    pick = rng.random((len(qf), N)) * vis_q
    qsel = np.where(vis_q.any(0), qf[pick.argmax(0)], visible.argmax(0))

    observed = visible & (rng.random((S, N)) >= missing_ratio)
    observed[qsel, np.arange(N)] = True
    obs_xy = xy + rng.normal(0, noise_px, xy.shape)
    outlier = observed & (rng.random((S, N)) < outlier_ratio)
    outlier[qsel, np.arange(N)] = False
    ang = rng.uniform(0, 2 * np.pi, (S, N))
    mag = rng.uniform(15.0, 60.0, (S, N))
    disp = np.stack([np.cos(ang), np.sin(ang)], -1) * mag[..., None]
    obs_xy = np.where(outlier[..., None], obs_xy + disp, obs_xy)
    obs_xy[qsel, np.arange(N)] = xy[qsel, np.arange(N)]

    if processed == "resize":
        transforms = [resize_transform(int(w), int(h), processed_size) for w, h in sizes]
    elif processed == "square":
        transforms = [square_pad_transform(int(w), int(h), processed_size) for w, h in sizes]
    else:
        raise ValueError(f"unknown processed mode {processed!r}")
    proc = np.stack([t.orig_to_proc(obs_xy[s], "corner") for s, t in enumerate(transforms)])
    proc = corner_to_center(proc)
    proc = np.where(observed[..., None], proc, 0.0)
    tracks = TrackSet(
        tracks=torch.from_numpy(proc.astype(np.float32)),
        vis=torch.from_numpy(observed.astype(np.float32)),
        score=None,
        query_frames=torch.from_numpy(qsel.astype(np.int64)),
        transforms=transforms,
        source="synthetic",
    )
    names = [f"synthetic_{s:05d}.png" for s in range(S)]
    frames = None
    if with_images:
        arrays = {s: position_image(int(sizes[s][0]), int(sizes[s][1])) for s in range(S)}
        frames = FrameSet(names=names, sizes=sizes, paths=[None] * S, arrays=arrays, ordered=kind in ("forward", "rotation"))
    return SyntheticScene(tracks, frames, ext, K, extra, camera_type, pts, visible, observed, outlier, names)


def position_color(xy_corner: np.ndarray, width: int, height: int) -> np.ndarray:
    """The colour :func:`position_image` has at corner-convention pixels ``(..., 2)`` (float RGB)."""
    xy = corner_to_center(np.asarray(xy_corner, dtype=np.float64))
    x = xy[..., 0] / max(width - 1, 1) * 255.0
    y = xy[..., 1] / max(height - 1, 1) * 255.0
    return np.stack([x, y, np.full_like(x, 128.0)], -1)


def _rotvec_to_matrix(v: np.ndarray) -> np.ndarray:
    th = np.linalg.norm(v, axis=-1, keepdims=True)
    k = v / np.maximum(th, 1e-12)
    Kx = np.zeros(v.shape[:-1] + (3, 3))
    Kx[..., 0, 1], Kx[..., 0, 2], Kx[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    Kx = Kx - np.swapaxes(Kx, -1, -2)
    th = th[..., None]
    return np.eye(3) + np.sin(th) * Kx + (1 - np.cos(th)) * (Kx @ Kx)


def noisy_prior(scene: SyntheticScene, rot_deg: float = 3.0, trans_rel: float = 0.05, focal_rel: float = 0.1, seed: int = 0):
    """A :class:`~vggsfm_ns.types.CameraPrior` like the camera predictor's: ground truth relative to
    frame 0, scaled to a unit first baseline, perturbed by ``rot_deg`` degrees of rotation, a
    translation error of ``trans_rel`` times the camera distance, and a focal error of
    ``focal_rel`` (relative); intrinsics in processed pixels, pixel-centre convention."""
    from ..types import CameraPrior

    rng = np.random.default_rng(seed)
    ext = scene.extrinsics
    S = ext.shape[0]
    T0 = np.eye(4)
    T0[:3] = ext[0]
    rel = np.stack([np.vstack([e, [0, 0, 0, 1]]) @ np.linalg.inv(T0) for e in ext])[:, :3]
    C = -np.einsum("sji,sj->si", rel[:, :, :3], rel[:, :, 3])
    scale = 1.0 / max(np.linalg.norm(C[1] - C[0]), 1e-9)
    rel[:, :, 3] *= scale
    dR = _rotvec_to_matrix(rng.normal(0, np.deg2rad(rot_deg) / np.sqrt(3), (S, 3)))
    dR[0] = np.eye(3)
    R = dR @ rel[:, :, :3]
    dist = np.linalg.norm(rel[:, :, 3], axis=-1, keepdims=True)
    t = rel[:, :, 3] + rng.normal(0, trans_rel, (S, 3)) * np.maximum(dist, 1.0)
    t[0] = 0
    K = np.zeros((S, 3, 3))
    for s, tf in enumerate(scene.tracks.transforms):
        f = scene.intrinsics[s, 0, 0] * (1 + rng.normal(0, focal_rel)) * tf.scale
        x0, y0, x1, y1 = tf.content_box()
        cx, cy = corner_to_center(np.array([(x0 + x1) / 2, (y0 + y1) / 2]))  # pixel-centre prior, as the predictor's
        K[s] = [[f, 0, cx], [0, f, cy], [0, 0, 1]]
    return CameraPrior(torch.from_numpy(np.concatenate([R, t[..., None]], -1)), torch.from_numpy(K))


def observe_points(
    points: np.ndarray,
    extrinsics: np.ndarray,
    intrinsics: np.ndarray,
    sizes: np.ndarray,
    rng: np.random.Generator,
    extra: Optional[np.ndarray] = None,
    noise_px: float = 0.5,
    outlier_ratio: float = 0.1,
    missing_ratio: float = 0.3,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observations of ``points`` in some frames with the noise model of :func:`make_scene`.

    The same visibility rule (in front by more than 0.05, inside ``[1, W-1] x [1, H-1]``,
    ``|u|, |v| < 2`` in normalised coordinates), Gaussian pixel noise, gross outliers displaced by
    15-60 px in a random direction (kept observed) and randomly missing observations; there are no
    query frames (every observation is subject to noise). Used to generate long sequences frame by
    frame (``SyntheticWindowSource.procedural`` in :mod:`vggsfm_ns.sfm.video`) without holding an
    ``(S, N)`` array.

    Args:
        points: ``(N, 3)`` float64 world points.
        extrinsics: ``(F, 3, 4)`` OpenCV cam_from_world of the frames to observe.
        intrinsics: ``(F, 3, 3)`` K in original pixels, corner convention.
        sizes: ``(F, 2)`` ``(width, height)``.
        rng: the random generator (seed it per frame for reproducible frames).
        extra: ``(F, E)`` distortion parameters or None.
        noise_px, outlier_ratio, missing_ratio: as in :func:`make_scene`.

    Returns:
        ``(xy (F, N, 2) float64 observed pixels (corner convention; 0 where not observed),
        observed (F, N) bool, outlier (F, N) bool)``.
    """
    ext = np.asarray(extrinsics, np.float64).reshape(-1, 3, 4)
    F = ext.shape[0]
    K = np.asarray(intrinsics, np.float64).reshape(F, 3, 3)
    sizes = np.asarray(sizes, np.int64).reshape(F, 2)
    pc = np.einsum("sij,nj->sni", ext[:, :, :3], points) + ext[:, None, :, 3]
    z = pc[..., 2]
    uv = pc[..., :2] / np.where(np.abs(z) < 1e-9, 1e-9, z)[..., None]
    if extra is not None and np.asarray(extra).size:
        e = np.asarray(extra, np.float64).reshape(F, -1)
        uvd = np.stack([_distort_np(uv[s], e[s]) for s in range(F)])
    else:
        uvd = uv
    xy = np.einsum("sij,snj->sni", K[:, :2, :2], uvd) + K[:, None, :2, 2]
    W, H = sizes[:, 0][:, None], sizes[:, 1][:, None]
    visible = (z > 0.05) & (xy[..., 0] >= 1) & (xy[..., 0] <= W - 1) & (xy[..., 1] >= 1) & (xy[..., 1] <= H - 1)
    visible &= np.abs(uv).max(-1) < 2.0
    observed = visible & (rng.random(visible.shape) >= missing_ratio)
    obs_xy = xy + rng.normal(0, noise_px, xy.shape)
    outlier = observed & (rng.random(visible.shape) < outlier_ratio)
    ang = rng.uniform(0, 2 * np.pi, visible.shape)
    mag = rng.uniform(15.0, 60.0, visible.shape)
    disp = np.stack([np.cos(ang), np.sin(ang)], -1) * mag[..., None]
    obs_xy = np.where(outlier[..., None], obs_xy + disp, obs_xy)
    return np.where(observed[..., None], obs_xy, 0.0), observed, outlier
