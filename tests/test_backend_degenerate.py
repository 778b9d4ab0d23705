"""Degenerate and malformed inputs of the back end: clear errors or flagged results, never garbage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vggsfm_ns.config import CameraConfig, SfMConfig
from vggsfm_ns.conventions import resize_transform
from vggsfm_ns.errors import InputError, ReconstructionError
from vggsfm_ns.metrics import pose_metrics
from vggsfm_ns.sfm.backend import reconstruct_from_tracks
from vggsfm_ns.sfm.synthetic import make_scene
from vggsfm_ns.types import FrameSet, TrackSet


def frames_subset(tracks: TrackSet, idx) -> TrackSet:
    return TrackSet(tracks.tracks[idx], tracks.vis[idx], None, torch.zeros(tracks.num_tracks, dtype=torch.int64),
                    [tracks.transforms[i] for i in idx], tracks.source)


def test_pure_rotation_raises():
    scene = make_scene(num_frames=12, num_points=1500, trajectory="rotation", outlier_ratio=0.05, seed=1)
    with pytest.raises(ReconstructionError, match="parallax"):
        reconstruct_from_tracks(scene.tracks, None, SfMConfig(), CameraConfig())


def test_two_frames_give_a_flagged_two_view_model():
    scene = make_scene(num_frames=12, num_points=800, trajectory="orbit", seed=2)
    two = frames_subset(scene.tracks, [0, 1])
    res = reconstruct_from_tracks(two, None, SfMConfig(), CameraConfig())
    assert res.valid_frame_mask.tolist() == [True, True]
    m = pose_metrics(res.extrinsics.numpy(), scene.extrinsics[:2], res.valid_frame_mask.numpy())
    assert m.rra[5] == 100.0 and m.rta[5] == 100.0
    assert res.stats["num_points"] > 200 and res.stats["mean_reproj_error_px"] < 1.0
    assert any("two-view" in msg for msg in res.stats["messages"])
    # the focal length stays at the default guess max(W, H) instead of drifting
    np.testing.assert_allclose(res.intrinsics[:, 0, 0].numpy(), 640.0)


def test_frame_without_visible_tracks_is_unregistered():
    scene = make_scene(num_frames=15, num_points=1500, trajectory="orbit", seed=3)
    scene.tracks.vis[7] = 0
    res = reconstruct_from_tracks(scene.tracks, None, SfMConfig(), CameraConfig())
    assert res.valid_frame_mask.tolist() == [i != 7 for i in range(15)]
    assert not res.track_inlier_mask[7].any()
    assert not res.reconstruction.exists_image(int(res.image_ids[7]))
    assert res.reconstruction.num_reg_images() == 14
    keep = np.arange(15) != 7
    m = pose_metrics(res.extrinsics.numpy()[keep], scene.extrinsics[keep])
    assert m.rra[5] == 100.0 and m.auc[30] > 95.0


def test_low_confidence_scores_are_ignored():
    scene = make_scene(num_frames=10, num_points=1000, trajectory="orbit", seed=4, outlier_ratio=0.0)
    t = scene.tracks
    score = torch.ones_like(t.vis)
    # corrupt 20 % of observations but flag them with a low score: they must not be used
    g = torch.Generator().manual_seed(0)
    bad = (torch.rand(t.vis.shape, generator=g) < 0.2) & (t.vis > 0)
    bad[t.query_frames, torch.arange(t.num_tracks)] = False
    tracks = t.tracks.clone()
    tracks[bad] += 40.0
    score[bad] = 0.1
    ts = TrackSet(tracks, t.vis, score, t.query_frames, t.transforms, "test")
    res = reconstruct_from_tracks(ts, None, SfMConfig(), CameraConfig())
    assert not (res.track_inlier_mask & bad).any()
    assert res.stats["mean_reproj_error_px"] < 1.0


def test_input_errors():
    scene = make_scene(num_frames=6, num_points=500, trajectory="orbit", seed=5)
    t = scene.tracks
    with pytest.raises(InputError, match="at least 2 frames"):
        reconstruct_from_tracks(frames_subset(t, [0]), None, SfMConfig(), CameraConfig())
    frames = FrameSet(names=[f"a{i}.png" for i in range(5)], sizes=np.tile([640, 480], (5, 1)), paths=[None] * 5)
    with pytest.raises(InputError, match="5 frames"):
        reconstruct_from_tracks(t, frames, SfMConfig(), CameraConfig())
    mixed = TrackSet(t.tracks, t.vis, None, t.query_frames, [resize_transform(640, 480, 1024)] * 5 + [resize_transform(480, 640, 1024)])
    with pytest.raises(InputError, match="same size"):
        reconstruct_from_tracks(mixed, None, SfMConfig(), CameraConfig(shared_camera=True))
    with pytest.raises(InputError, match="unsupported camera model"):
        reconstruct_from_tracks(t, None, SfMConfig(), CameraConfig(camera_type="FISHEYE"))
    wrong = FrameSet(names=[f"a{i}.png" for i in range(6)], sizes=np.tile([320, 240], (6, 1)), paths=[None] * 6)
    with pytest.raises(InputError, match="expects"):
        reconstruct_from_tracks(t, wrong, SfMConfig(), CameraConfig())


def test_too_few_tracks_raise():
    scene = make_scene(num_frames=6, num_points=500, trajectory="orbit", seed=6)
    t = scene.tracks
    few = TrackSet(t.tracks[:, :10], t.vis[:, :10], None, t.query_frames[:10], t.transforms)
    with pytest.raises(ReconstructionError, match="tracks"):
        reconstruct_from_tracks(few, None, SfMConfig(), CameraConfig())


def test_different_image_sizes_per_frame():
    sizes = [(640, 480)] * 8 + [(480, 640)] * 8
    scene = make_scene(num_frames=16, num_points=1500, trajectory="orbit", image_sizes=sizes, focal=600.0, seed=7)
    res = reconstruct_from_tracks(scene.tracks, None, SfMConfig(), CameraConfig())
    m = pose_metrics(res.extrinsics.numpy(), scene.extrinsics, res.valid_frame_mask.numpy())
    assert m.rra[5] >= 98.0 and m.auc[30] >= 95.0, m.as_dict()
    for i, (w, h) in enumerate(sizes):
        c = res.reconstruction.camera(res.reconstruction.image(i + 1).camera_id)
        assert (c.width, c.height) == (w, h)
    np.testing.assert_allclose(res.intrinsics[:, 0, 0].numpy(), 600.0, rtol=0.01)
