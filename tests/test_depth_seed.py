"""Dense splat seed from aligned depth: on the surfaces of a scene of known geometry, inconsistent
depth removed, downsampled to the target, coloured from the images."""

from __future__ import annotations

import numpy as np

from _depth_scene import SCENE_SCALE, make_depth_scene, surface_colour, surface_distance
from vggsfm_ns.depth.seed import dense_seed_points, edge_mask, voxel_downsample, voxel_size_for_target
from vggsfm_ns.types import DepthResult, FrameDepth


def _result(depths, accepted=None):
    return DepthResult(
        frames=[FrameDepth(i, d, None, 1.0, 0.0, 1.0, 0.0, True if accepted is None else accepted[i]) for i, d in enumerate(depths)],
        model_id="test",
    )


def test_seed_points_lie_on_the_surfaces_and_bad_depth_is_removed():
    cams, depths, images, frames, sfm = make_depth_scene(n_cams=4, n_points=400)
    # no downsampling (target above the candidate count): every point is an unprojected pixel
    xyz, rgb = dense_seed_points(frames, sfm, _result(depths), target=10**7)
    assert xyz.dtype == np.float64 and rgb.dtype == np.uint8 and xyz.shape == rgb.shape
    n_clean = len(xyz)
    assert n_clean > 0.5 * sum(d.size for d in depths)  # most pixels survive (measured 12882 / 19200)
    dist = surface_distance(xyz)
    assert dist.max() < 1e-5 * SCENE_SCALE  # exact depth -> exactly on the surfaces (float32 depth)
    # colours come from the images: the texture at the point
    assert (rgb == surface_colour(xyz)).all(1).mean() > 0.99

    # corrupt a 30x20 block of frame 0 (30 % too far): no other view agrees -> all removed
    bad = [d.copy() for d in depths]
    bad[0][10:30, 20:50] *= 1.3
    xyz2, _ = dense_seed_points(frames, sfm, _result(bad), target=10**7)
    assert surface_distance(xyz2).max() < 1e-5 * SCENE_SCALE  # the wrong points would be >= 1 unit off
    assert n_clean - len(xyz2) >= 0.8 * 600  # (measured: 641 fewer points)


def test_seed_is_downsampled_to_the_target_and_stays_on_the_surfaces():
    cams, depths, images, frames, sfm = make_depth_scene(n_cams=4, n_points=400)
    bad = [d.copy() for d in depths]
    bad[1][5:25, 40:70] *= 0.8
    for target in (3000, 800):
        xyz, rgb = dense_seed_points(frames, sfm, _result(bad), target=target)
        assert 0.9 * target <= len(xyz) <= target
        dist = surface_distance(xyz)
        # voxel means of points on one plane stay on it; only voxels straddling the wall/floor
        # corner or the patch rim may move off (by less than a voxel)
        assert np.median(dist) < 1e-4 * SCENE_SCALE
        assert np.percentile(dist, 99) < 0.02 * SCENE_SCALE


def test_rejected_frames_and_single_view():
    cams, depths, images, frames, sfm = make_depth_scene(n_cams=3, n_points=300)
    xyz, rgb = dense_seed_points(frames, sfm, _result(depths, accepted=[True, False, False]))
    assert xyz.shape == (0, 3) and rgb.shape == (0, 3)  # nothing can be confirmed by a second view
    xyz, _ = dense_seed_points(frames, sfm, _result(depths, accepted=[True, False, True]), target=10**7)
    assert len(xyz) > 1000 and surface_distance(xyz).max() < 1e-5 * SCENE_SCALE


def test_edge_mask_marks_discontinuities_and_invalid_pixels():
    d = np.full((5, 8), 2.0, np.float32)
    d[:, 4:] = 3.0  # a 50 % step between columns 3 and 4
    d[0, 0] = 0.0
    m = edge_mask(d, radius=1, tol=0.05)
    expected = np.zeros((5, 8), bool)
    expected[:, 3:5] = True
    expected[:2, :2] = True  # around the invalid pixel
    np.testing.assert_array_equal(m, expected)
    slope = np.tile(np.linspace(2.0, 2.2, 8, dtype=np.float32), (5, 1))  # 1.4 % per pixel: a slanted surface
    assert not edge_mask(slope, radius=1, tol=0.05).any()


def test_voxel_downsample_means():
    xyz = np.array([[0.1, 0.1, 0.1], [0.3, 0.3, 0.3], [1.5, 0.2, 0.2]])
    rgb = np.array([[0, 0, 0], [100, 200, 50], [9, 9, 9]], np.uint8)
    p, c = voxel_downsample(xyz, rgb, 1.0)
    order = np.argsort(p[:, 0])
    np.testing.assert_allclose(p[order], [[0.2, 0.2, 0.2], [1.5, 0.2, 0.2]])
    np.testing.assert_array_equal(c[order], [[50, 100, 25], [9, 9, 9]])
    rng = np.random.default_rng(0)
    pts = rng.random((20000, 3))
    v = voxel_size_for_target(pts, 1000)
    n = len(voxel_downsample(pts, np.zeros((20000, 3), np.uint8), v)[0])
    assert 900 <= n <= 1000
    assert voxel_size_for_target(pts, 30000) == 0.0
