"""The sliding-window video mode (:mod:`vggsfm_ns.sfm.video`).

Synthetic sequences come from :func:`vggsfm_ns.sfm.synthetic.make_scene` (0.5 px noise, 10 % outlier
observations 15-60 px off, 30 % missing observations, the back-end tests' model) and are handed to
the window machinery by :class:`~vggsfm_ns.sfm.video.SyntheticWindowSource`, which delivers per
window what a tracker would (new tracks seen in the window, existing points re-found from their
anchor pixels). Accuracy is the absolute trajectory error after a similarity alignment
(:func:`vggsfm_ns.metrics.absolute_trajectory_error`) relative to the trajectory length.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vggsfm_ns.config import TrackConfig, preset
from vggsfm_ns.conventions import center_to_corner, corner_to_center
from vggsfm_ns.errors import ReconstructionError
from vggsfm_ns.geometry.camera import transform_cameras
from vggsfm_ns.metrics import absolute_trajectory_error, pose_metrics
from vggsfm_ns.progress import PipelineObserver
from vggsfm_ns.sfm import video as V
from vggsfm_ns.sfm.synthetic import look_at, make_scene
from vggsfm_ns.types import CameraPrior, FrameSet, KnownIntrinsics, TrackSet

CPU = torch.device("cpu")


class Recorder(PipelineObserver):
    def __init__(self):
        self.messages = []
        self.snapshots = []

    def message(self, text, level="info"):
        self.messages.append((level, text))

    def reconstruction_updated(self, snapshot):
        self.snapshots.append(snapshot)


def synthetic_frames(scene) -> FrameSet:
    S = scene.extrinsics.shape[0]
    w, h = scene.tracks.transforms[0].orig_size
    return FrameSet(names=list(scene.names), sizes=np.array([[w, h]] * S), paths=[None] * S, ordered=True)


def video_cfg(init=32, window=16, max_pts=256):
    cfg = preset("video")
    cfg.video.init_window_size = init
    cfg.video.window_size = window
    cfg.track.max_query_pts = max_pts
    return cfg


def trajectory_length(ext: np.ndarray) -> float:
    C = -np.einsum("sji,sj->si", ext[:, :, :3], ext[:, :, 3])
    return float(np.linalg.norm(np.diff(C, axis=0), axis=1).sum())


def relative_ate(res, scene, mask=None) -> float:
    v = res.valid_frame_mask.numpy() if mask is None else mask
    return absolute_trajectory_error(res.extrinsics.numpy(), scene.extrinsics, v) / trajectory_length(scene.extrinsics)


# ------------------------------------------------------------------------------------------------
# small pieces


def test_plan_windows_follows_the_official_schedule():
    assert V.plan_windows(100, 32, 16) == [(0, 32), (32, 48), (48, 64), (64, 80), (80, 100)]  # 20 <= 1.25 * 16
    assert V.plan_windows(101, 32, 16) == [(0, 32), (32, 48), (48, 64), (64, 80), (80, 96), (96, 101)]
    assert V.plan_windows(20, 32, 16) == [(0, 20)]
    with pytest.raises(ValueError):
        V.plan_windows(10, 0, 16)


def test_align_camera_extrinsics_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = torch.from_numpy(np.stack([look_at(rng.normal(0, 3, 3), rng.normal(0, 0.3, 3)) for _ in range(6)]))
    a = torch.from_numpy(rng.normal(size=3))
    from vggsfm_ns.sfm.synthetic import _rotvec_to_matrix

    R = torch.from_numpy(_rotvec_to_matrix(a.numpy()))
    t = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    s = torch.tensor(2.7, dtype=torch.float64)
    tgt = transform_cameras(src, R, t, s)
    # the same cameras in the target world: a world point maps with X' = s R X + t
    X = torch.tensor([0.3, 0.2, -0.1], dtype=torch.float64)
    x_src = src[:, :, :3] @ X + src[:, :, 3]
    x_tgt = tgt[:, :, :3] @ (s * R @ X + t) + tgt[:, :, 3]
    torch.testing.assert_close(x_tgt, s * x_src)
    R2, t2, s2 = V.align_camera_extrinsics(src, tgt)
    torch.testing.assert_close(R2, R, atol=1e-9, rtol=0)
    torch.testing.assert_close(t2, t, atol=1e-9, rtol=0)
    assert abs(float(s2) - 2.7) < 1e-9
    # noisy target: still close
    noisy = tgt.clone()
    noisy[:, :, 3] += torch.from_numpy(rng.normal(0, 0.01, (6, 3)))
    _, _, s3 = V.align_camera_extrinsics(src, noisy)
    assert abs(float(s3) - 2.7) < 0.05


def test_auto_mode_picks_video_above_the_threshold():
    from vggsfm_ns.api import choose_mode

    cfg = preset("default")
    n = cfg.video.auto_min_frames

    def fs(S, ordered):
        return FrameSet(names=[f"f{i}.png" for i in range(S)], sizes=np.array([[64, 48]] * S), paths=[None] * S, ordered=ordered)

    assert choose_mode(cfg, fs(n + 1, True)) == "video"
    assert choose_mode(cfg, fs(n, True)) == "sparse"
    assert choose_mode(cfg, fs(n + 1, False)) == "sparse"
    cfg.mode = "video"
    assert choose_mode(cfg, fs(10, False)) == "video"


def test_klt_window_source_maps_points_between_original_and_processed_pixels():
    """A textured frame shifted by a known sub-pixel amount per frame, tracked at 1024 px from
    1280x720 originals: existing points land at their shifted original pixels."""
    import cv2

    rng = np.random.default_rng(1)
    base = cv2.GaussianBlur((rng.random((760, 1320)) * 255).astype(np.float32), (0, 0), 2.0)
    shift = np.array([2.5, 1.5])
    arrays = {}
    for k in range(4):
        M = np.float32([[1, 0, k * shift[0] - 20], [0, 1, k * shift[1] - 20]])
        g = cv2.warpAffine(base, M, (1280, 720), flags=cv2.INTER_CUBIC)
        arrays[k] = np.repeat(np.clip(g, 0, 255).astype(np.uint8)[..., None], 3, -1)
    frames = FrameSet(names=[f"{k}.png" for k in range(4)], sizes=np.array([[1280, 720]] * 4), paths=[None] * 4, arrays=arrays, ordered=True)
    src = V.KltWindowSource(frames, TrackConfig(max_image_size=1024, max_query_pts=300), cache_size=3)
    gx, gy = np.meshgrid(np.linspace(200, 1080, 8), np.linspace(150, 570, 5))
    q = np.stack([gx.ravel(), gy.ravel()], -1)
    ex = src.track_existing([0, 1, 2, 3], q)
    assert ex.xy.shape == (4, 40, 2) and ex.valid[0].all()
    np.testing.assert_array_equal(ex.xy[0], q)
    for k in range(1, 4):
        assert ex.valid[k].mean() > 0.9
        err = np.linalg.norm(ex.xy[k][ex.valid[k]] - (q[ex.valid[k]] + k * shift), axis=1)
        assert np.median(err) < 0.1 and err.max() < 0.5, (k, err.max())
    nw = src.track_new([0, 1, 2, 3], 300)
    ok = nw.valid[0] & nw.valid[1]
    assert ok.sum() > 100 and nw.colors.shape == (nw.num_tracks, 3)
    np.testing.assert_allclose(np.median(nw.xy[1][ok] - nw.xy[0][ok], axis=0), shift, atol=0.05)
    ts, prior = src.init_tracks([0, 1, 2, 3], 200)
    assert prior is None and ts.transforms[0].orig_size == (1280, 720) and ts.transforms[0].size == (1024, 576)
    assert len(src._rgb) <= 4 and len(src._gray) == len(src._rgb)


# ------------------------------------------------------------------------------------------------
# synthetic sequences through the window machinery


def test_long_loop_ate_below_one_percent_every_frame_registered():
    S = 300
    scene = make_scene(num_frames=S, num_points=800, trajectory="orbit", seed=3)
    obs = Recorder()
    timings = {}
    res, tracks = V.reconstruct_video(synthetic_frames(scene), video_cfg(), None, CPU, observer=obs, timings=timings,
                                      source=V.SyntheticWindowSource.from_scene(scene))
    assert tracks is None
    assert res.valid_frame_mask.all() and res.stats["skipped_frames"] == []
    rel = relative_ate(res, scene)
    assert rel < 0.01, rel
    m = pose_metrics(res.extrinsics.numpy(), scene.extrinsics)
    assert m.auc[30] > 95.0, m.as_dict()
    assert res.stats["mean_reproj_error_px"] < 1.0
    assert abs(res.intrinsics[0, 0, 0].item() / 600.0 - 1) < 0.01
    # complete result: all S frames, original resolution, names, shared camera
    rec = res.reconstruction
    assert res.extrinsics.shape == (S, 3, 4) and res.intrinsics.shape == (S, 3, 3) and res.extra_params.shape == (S, 1)
    assert rec.num_reg_images() == S and rec.num_cameras() == 1
    assert [rec.image(int(i)).name for i in res.image_ids] == scene.names
    cam = rec.camera(1)
    assert (cam.width, cam.height) == (640, 480) and cam.model.name == "SIMPLE_RADIAL"
    assert res.points3D.shape == (rec.num_points3D(), 3) and res.points3D_rgb.dtype == torch.uint8
    # windows: initial + official schedule; the live view got one snapshot per window
    plan = V.plan_windows(S, 32, 16)
    assert res.stats["num_windows"] == len(plan)
    assert [tuple(w["frames"]) for w in res.stats["windows"]] == [(a, b - 1) for a, b in plan]
    assert [s.progress for s in obs.snapshots] == [(k + 1, len(plan)) for k in range(len(plan))]
    assert obs.snapshots[-1].registered.all() and obs.snapshots[-1].points.shape[0] > 1000
    assert {"video: initial window", "video: windows", "video: final BA", "video: joint BA"} <= set(timings)


def test_a_window_without_tracks_is_skipped_and_the_rest_registers():
    """Frames 100-115 have no valid observation (a hand over the lens). Also: the default camera
    model (SIMPLE_PINHOLE) and known, fixed intrinsics."""
    S = 200
    dead = list(range(100, 116))
    scene = make_scene(num_frames=S, num_points=800, trajectory="orbit", seed=4)
    obs = Recorder()
    cfg = video_cfg()
    cfg.camera.camera_type = "SIMPLE_PINHOLE"
    known = KnownIntrinsics(torch.from_numpy(scene.intrinsics), torch.zeros(S, 0, dtype=torch.float64), fixed=True, source="file")
    res, _ = V.reconstruct_video(synthetic_frames(scene), cfg, None, CPU, known=known, observer=obs,
                                 source=V.SyntheticWindowSource.from_scene(scene, dead_frames=dead))
    assert res.camera_type == "SIMPLE_PINHOLE" and res.extra_params.shape == (S, 0)
    assert torch.allclose(res.intrinsics[:, 0, 0], torch.full((S,), 600.0, dtype=torch.float64), atol=1e-9, rtol=0)
    assert res.stats["intrinsics_source"] == "file"
    valid = res.valid_frame_mask.numpy()
    assert res.stats["skipped_frame_indices"] == dead
    assert res.stats["skipped_frames"] == [scene.names[f] for f in dead]
    assert valid.sum() == S - len(dead) and valid[116:].all()
    warnings = [t for lvl, t in obs.messages if lvl == "warning"]
    assert any("no frame could be registered" in t for t in warnings)
    assert any("re-seeded" in t for t in warnings)
    assert relative_ate(res, scene) < 0.01
    after = np.zeros(S, bool)
    after[116:] = True
    # the frames after the gap, aligned on their own, are as accurate
    assert relative_ate(res, scene, after) < 0.01


def _orbit_with_rotation(S=176, rot=(64, 112)) -> np.ndarray:
    """Orbit poses, except frames ``rot[0]..rot[1]-1`` that only turn (+-6 deg) at one position."""
    ang = np.deg2rad(1.2) * np.arange(S)
    a0, a1 = rot
    ang[a0:a1] = ang[a0 - 1]
    ang[a1:] -= ang[a1] - ang[a0 - 1] - np.deg2rad(1.2)
    out = []
    for k, a in enumerate(ang):
        c = np.array([4.0 * np.cos(a), -0.6, 4.0 * np.sin(a)])
        target = np.zeros(3)
        if a0 <= k < a1:
            yaw = np.deg2rad(6.0) * math.sin(2 * math.pi * (k - a0) / 24.0)
            d = -c / np.linalg.norm(c)
            side = np.cross(d, [0.0, -1.0, 0.0])
            target = c + 4.0 * (np.cos(yaw) * d + np.sin(yaw) * side / np.linalg.norm(side))
        out.append(look_at(c, target))
    return np.stack(out)


def test_rotation_only_stretch_warns_and_registers():
    ext = _orbit_with_rotation()
    scene = make_scene(num_points=800, trajectory=ext, seed=5)
    obs = Recorder()
    res, _ = V.reconstruct_video(synthetic_frames(scene), video_cfg(), None, CPU, observer=obs,
                                 source=V.SyntheticWindowSource.from_scene(scene))
    assert res.valid_frame_mask.all()
    warn = [t for lvl, t in obs.messages if lvl == "warning" and "rotates" in t]
    assert len(warn) == 1 and scene.names[64] in warn[0]
    assert any("parallax back" in t for _, t in obs.messages)
    par = {tuple(w["frames"]): w["parallax"] for w in res.stats["windows"] if w["kind"] == "window"}
    assert par[(64, 79)] < V.ROTATION_PARALLAX and par[(48, 63)] > 0.1
    assert relative_ate(res, scene) < 0.01


def test_rotation_only_capture_raises_a_clear_error():
    scene = make_scene(num_frames=60, num_points=800, trajectory="rotation", seed=6)
    obs = Recorder()
    with pytest.raises(ReconstructionError, match="rotates"):
        V.reconstruct_video(synthetic_frames(scene), video_cfg(init=24, window=12), None, CPU, observer=obs,
                            source=V.SyntheticWindowSource.from_scene(scene))
    assert sum("cannot initialise" in t for _, t in obs.messages) >= 3


# ------------------------------------------------------------------------------------------------
# the learned-tracker adapter against the track_vggsfm / predict_cameras contracts


class _FakeLearned:
    """Stands in for ``track_vggsfm`` / ``predict_cameras``: tracks come from a synthetic scene in
    VGGSfM's padded square frame; cameras are the ground truth in another world (a similarity)
    with 0.5 deg / 1 % noise."""

    def __init__(self, scene):
        ts = scene.tracks
        tr = center_to_corner(ts.tracks.double().numpy())
        self.xy = np.stack([ts.transforms[s].proc_to_orig(tr[s], "corner") for s in range(ts.num_frames)])
        self.obs = ts.valid_mask().numpy()
        self.scene = scene
        self.index = {n: i for i, n in enumerate(scene.names)}
        self.detector_sizes = []
        self.camera_calls = []
        self.rng = np.random.default_rng(0)
        from vggsfm_ns.sfm.synthetic import _rotvec_to_matrix

        self.R = torch.from_numpy(_rotvec_to_matrix(np.array([0.3, -0.2, 0.5])))
        self.t = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
        self.s = torch.tensor(0.37, dtype=torch.float64)

    def cameras(self, idx):
        ext = transform_cameras(torch.from_numpy(self.scene.extrinsics[idx]), self.R, self.t, self.s)
        from vggsfm_ns.sfm.synthetic import _rotvec_to_matrix

        dR = torch.from_numpy(np.stack([_rotvec_to_matrix(v) for v in self.rng.normal(0, np.deg2rad(0.5) / math.sqrt(3), (len(idx), 3))]))
        ext[:, :, :3] = dR @ ext[:, :, :3]
        ext[:, :, 3] *= 1 + self.rng.normal(0, 0.01, (len(idx), 1))
        return ext

    def track_vggsfm(self, frames, model, cfg, device, precision="auto", observer=None, query_frames=None, *, seed=0,
                     predict_camera=True, detector=None, **kw):
        from scipy.spatial import cKDTree

        from vggsfm_ns.preprocess import square_transforms

        idx = [self.index[n] for n in frames.names]
        tf = square_transforms(frames, cfg.img_size)
        W = len(idx)
        xy, obs = self.xy[idx], self.obs[idx]
        if detector is not None:
            q = query_frames[0]
            pts = detector(None, None, cfg.max_query_pts).double().numpy()
            self.detector_sizes.append(pts.shape[0])
            orig = tf[q].proc_to_orig(center_to_corner(pts), "corner")
            cand = np.nonzero(obs[q])[0]
            d, j = cKDTree(xy[q, cand]).query(orig)
            hit = d < 1e-3
            out_xy = np.repeat(orig[None], W, 0)
            vis = np.zeros((W, pts.shape[0]), bool)
            out_xy[:, hit] = xy[:, cand[j[hit]]]
            vis[:, hit] = obs[:, cand[j[hit]]]
            vis[q] = True
            qf = np.full(pts.shape[0], q)
        else:
            cand = np.nonzero(obs.sum(0) >= 2)[0]
            n = min(cand.size, cfg.max_query_pts * (len(query_frames) if query_frames else 3))
            sel = np.sort(self.rng.choice(cand, n, replace=False))
            out_xy, vis = xy[:, sel], obs[:, sel]
            qf = vis.argmax(0)
        proc = np.stack([corner_to_center(tf[k].orig_to_proc(out_xy[k], "corner")) for k in range(W)])
        ts = TrackSet(torch.from_numpy(proc).float(), torch.from_numpy(vis).float(), torch.ones(W, vis.shape[1]),
                      torch.from_numpy(qf.astype(np.int64)), tf, "vggsfm")
        prior = None
        if predict_camera:
            ext = self.cameras(idx)
            K = torch.zeros(W, 3, 3, dtype=torch.float64)
            for k in range(W):
                f = 600.0 * tf[k].scale
                K[k] = torch.tensor([[f, 0, 511.5], [0, f, 511.5], [0, 0, 1]], dtype=torch.float64)
            prior = CameraPrior(ext, K)
        return ts, prior

    def load_processed(self, frames, transforms, indices=None, on_frame=None):
        return torch.tensor(list(indices), dtype=torch.int64)

    def predict_cameras(self, images, model, query_indices, image_transforms, patch_tokens=None, iters=4):
        idx = images.tolist()
        self.camera_calls.append((idx, list(query_indices)))
        return CameraPrior(self.cameras(idx), torch.eye(3, dtype=torch.float64).repeat(len(idx), 1, 1))


@pytest.mark.parametrize("with_pnp", [True, False])
def test_learned_adapter_tracks_given_points_and_aligns_predicted_cameras(monkeypatch, with_pnp):
    """Through ``VggsfmWindowSource`` with fakes of ``track_vggsfm`` / ``predict_cameras``. Without
    PnP every window frame is registered from its aligned camera prediction alone."""
    import vggsfm_ns.cameras
    import vggsfm_ns.preprocess
    import vggsfm_ns.tracks.vggsfm

    S = 96
    scene = make_scene(num_frames=S, num_points=600, trajectory="orbit", seed=7)
    fake = _FakeLearned(scene)
    monkeypatch.setattr(vggsfm_ns.tracks.vggsfm, "track_vggsfm", fake.track_vggsfm)
    monkeypatch.setattr(vggsfm_ns.cameras, "predict_cameras", fake.predict_cameras)
    monkeypatch.setattr(vggsfm_ns.preprocess, "load_processed", fake.load_processed)
    if not with_pnp:
        monkeypatch.setattr(V, "_pnp", lambda *a, **k: None)
    cfg = video_cfg(init=24, window=12, max_pts=200)
    frames = synthetic_frames(scene)
    src = V.VggsfmWindowSource(frames, cfg, model=object(), device=CPU)
    res, _ = V.reconstruct_video(frames, cfg, None, CPU, source=src)
    assert res.valid_frame_mask.all()
    assert relative_ate(res, scene) < 0.01
    # existing points: M anchor points + max_query_pts grid support points per window
    n_windows = len(V.plan_windows(S, 24, 12)) - 1
    assert len(fake.detector_sizes) == n_windows
    assert all(200 < n <= 200 + 200 + 40 for n in fake.detector_sizes)
    # cameras: the previous window's registered frames + the new ones, query frames first / middle / last
    assert len(fake.camera_calls) == n_windows
    idx, q = fake.camera_calls[0]
    assert idx == list(range(12, 36)) and q == [0, 12, 23]


# ------------------------------------------------------------------------------------------------
# slow: larger synthetic sequence, real video end to end


@pytest.mark.slow
def test_long_forward_walk_procedural_ate():
    """600 frames along a forward walk (points generated along the way, observations generated per
    frame on demand), default windows and points."""
    from vggsfm_ns.sfm.synthetic import scene_points, trajectory_poses

    S = 600
    rng = np.random.default_rng(8)
    ext = trajectory_poses("forward", S, rng)
    pts = scene_points("forward", 40 * S, rng, ext)
    K = np.tile(np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]]), (S, 1, 1))
    src = V.SyntheticWindowSource.procedural(pts, ext, K, (640, 480), seed=8)
    frames = FrameSet(names=[f"f{i:05d}.png" for i in range(S)], sizes=np.array([[640, 480]] * S), paths=[None] * S, ordered=True)
    cfg = preset("video")
    res, _ = V.reconstruct_video(frames, cfg, None, CPU, source=src)
    v = res.valid_frame_mask.numpy()
    assert v.sum() >= S - 2
    rel = absolute_trajectory_error(res.extrinsics.numpy(), ext, v) / trajectory_length(ext)
    assert rel < 0.01, rel
    assert res.stats["mean_reproj_error_px"] < 1.0


@pytest.mark.slow
def test_real_video_klt_end_to_end_consistent_with_sparse_mode(shared_data, tmp_path):
    """The bundled apple video (50 frames, 1296x720) with KLT through ``vggsfm_ns.api.reconstruct``:
    video mode with init 16 / window 8 (five windows) against the sparse mode on the same frames."""
    from vggsfm_ns.api import reconstruct

    video = shared_data / "apple_video" / "video.mp4"
    cfg = preset("video")
    cfg.mode, cfg.track.tracker = "video", "klt"
    cfg.video.init_window_size, cfg.video.window_size = 16, 8
    obs = Recorder()
    res = reconstruct(video, cfg, observer=obs, work_dir=tmp_path / "v")
    sfm = res.sfm
    assert len(res.frames) == 50 and res.tracks is None
    from vggsfm_ns.report import build_report

    assert res.tracker == "klt" and build_report(res)["summary"]["tracker"] == "klt"  # no TrackSet, still named
    assert sfm.stats["mode"] == "video" and sfm.stats["num_windows"] == 5
    assert int(sfm.valid_frame_mask.sum()) >= 48
    assert sfm.stats["mean_reproj_error_px"] < 2.0
    assert sfm.reconstruction.num_points3D() > 2000
    assert [s.progress for s in obs.snapshots] == [(k, 5) for k in range(1, 6)]

    sparse_cfg = preset("default")
    sparse_cfg.mode, sparse_cfg.track.tracker = "sparse", "klt"
    ref = reconstruct(video, sparse_cfg, work_dir=tmp_path / "s").sfm
    both = sfm.valid_frame_mask.numpy() & ref.valid_frame_mask.numpy()
    assert both.sum() >= 45
    m = pose_metrics(sfm.extrinsics.numpy()[both], ref.extrinsics.numpy()[both])
    assert m.auc[30] > 90.0, m.as_dict()


@pytest.mark.slow
def test_learned_adapter_runs_the_real_tracker_and_camera_predictor(monkeypatch):
    """``VggsfmWindowSource`` against the real ``track_vggsfm`` / ``predict_cameras`` (deterministic
    random weights, 256 px, CPU): the given points reach the tracker through the detector hook (its
    raw tracks start at them), the support points are dropped, shapes and conventions hold."""
    from pathlib import Path

    import vggsfm_ns.tracks.vggsfm as tv
    from vggsfm_ns.networks import VGGSfMModel, deterministic_state_dict

    manifest = Path(__file__).parent / "golden" / "vggsfm" / "state_dict_manifest.json"
    model = VGGSfMModel.from_state_dict(deterministic_state_dict(manifest))
    rng = np.random.default_rng(0)
    arrays = {k: (rng.random((180, 320, 3)) * 255).astype(np.uint8) for k in range(4)}
    frames = FrameSet(names=[f"{k}.png" for k in range(4)], sizes=np.array([[320, 180]] * 4), paths=[None] * 4, arrays=arrays, ordered=True)
    cfg = preset("video")
    cfg.track.img_size, cfg.track.max_query_pts, cfg.track.query_method = 256, 32, "sift"
    raw = []
    real = tv.track_vggsfm

    def spy(*a, **k):
        out = real(*a, **k)
        raw.append(out[0])
        return out

    monkeypatch.setattr(tv, "track_vggsfm", spy)
    src = V.VggsfmWindowSource(frames, cfg, model, CPU)
    q = np.array([[50.5, 40.5], [200.25, 100.75], [300.0, 170.0]])
    ex = src.track_existing([0, 1, 2, 3], q)
    assert ex.xy.shape == (4, 3, 2) and ex.valid.shape == (4, 3) and ex.valid[0].all()
    t0 = src.transforms[0]
    expect = corner_to_center(t0.orig_to_proc(q, "corner"))
    assert raw[0].num_tracks >= 3 + 32 - 8  # the query points, then about max_query_pts support points
    np.testing.assert_allclose(raw[0].tracks[0, :3].double().numpy(), expect, atol=1e-3)
    assert np.isfinite(ex.xy).all()
    nw = src.track_new([0, 1, 2, 3], 32)
    assert nw.xy.shape[0] == 4 and nw.colors.shape == (nw.num_tracks, 3) and nw.valid.any(0).all()
    ext = src.predict_cameras([0, 1, 2, 3])
    assert ext.shape == (4, 3, 4) and torch.isfinite(ext).all()
    torch.testing.assert_close(ext[0], torch.eye(3, 4, dtype=torch.float64), atol=1e-6, rtol=0)
