"""Alignment of monocular inverse depth to SfM depth: sparse depth extraction, the RANSAC fit,
temporal smoothing and the depth stage with a synthetic predictor of known affine map."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _depth_scene import AffineInverseDepthModel, build_sfm, make_cams, make_depth_scene, project, render
from vggsfm_ns.config import DepthConfig
from vggsfm_ns.depth.align import (
    apply_alignment,
    fit_inverse_depth,
    smooth_alignment_over_time,
    sparse_depth_from_sfm,
    uv_to_pixel,
)


def test_uv_to_pixel_corner_convention():
    uv = np.array([[0.0, 0.0], [0.99, 0.5], [1.0, 1.49], [2.0, 2.5], [9.999, 3.0001]])
    np.testing.assert_array_equal(uv_to_pixel(uv), [[0, 0], [0, 0], [1, 1], [2, 2], [9, 3]])


def test_sparse_depth_matches_manual_projection_with_distortion():
    cams = make_cams(3, W=80, H=60, k1=0.05)
    rng = np.random.default_rng(3)
    pts = np.stack([rng.uniform(-2, 2, 300), rng.uniform(-1.5, 1.5, 300), rng.uniform(4, 7, 300)], 1)
    sfm = build_sfm(cams, pts)
    sparse = sparse_depth_from_sfm(sfm)
    assert sorted(sparse) == [0, 1, 2]
    rec = sfm.reconstruction
    for s, sd in sparse.items():
        assert len(sd.z) > 100
        X = np.array([rec.points3D[int(p)].xyz for p in sd.point_ids])
        uv, z = project(cams[s], X)  # independent SIMPLE_RADIAL projection
        np.testing.assert_allclose(sd.uv, uv, atol=1e-9)
        np.testing.assert_allclose(sd.z, z, rtol=1e-12)
        pix = sd.pixels()
        assert (pix[:, 0] >= 0).all() and (pix[:, 0] < 80).all() and (pix[:, 1] >= 0).all() and (pix[:, 1] < 60).all()
        # every observation of the frame's image with a 3D point is used
        n_obs = sum(p.has_point3D() for p in rec.image(int(sfm.image_ids[s])).points2D)
        assert len(sd.z) == n_obs


def _affine_case(n_samples: int = 400, noise: float = 0.002, outlier_frac: float = 0.2, seed: int = 0):
    cams = make_cams(1, W=80, H=60)
    depth, _ = render(cams[0])
    rng = np.random.default_rng(seed)
    a, c = 2.5, 0.4  # prediction = a / depth + c (+ noise)
    clean = np.where(depth > 0, a / np.maximum(depth, 1e-9) + c, 0.0).astype(np.float32)
    pred = (clean * (1 + noise * rng.standard_normal(clean.shape))).astype(np.float32)
    rows, cols = rng.integers(0, 60, n_samples), rng.integers(0, 80, n_samples)
    z = depth[rows, cols].astype(np.float64)
    bad = rng.random(n_samples) < outlier_frac
    z[bad] *= rng.uniform(0.3, 3.0, bad.sum())  # gross outliers in the SfM depth
    return depth, (pred, clean), pred[rows, cols], z, bad, (a, c)


def test_fit_recovers_depth_with_20_percent_outliers():
    depth, (pred, clean), samples, z, bad, (a, c) = _affine_case()
    fit = fit_inverse_depth(samples, z, seed=0)
    assert fit.accepted
    # true map: 1/depth = (pred - c) / a
    assert fit.scale == pytest.approx(1 / a, rel=0.01)
    assert fit.shift == pytest.approx(-c / a, abs=0.01 * float(np.median(1 / depth[depth > 0])))
    # inliers are the clean samples (a few outliers land inside the band by chance)
    assert 0.75 <= fit.inlier_ratio <= 0.85
    assert fit.inlier_mask[~bad].mean() > 0.97
    valid = depth > 0
    # the recovered map itself (applied to the noise-free prediction): within 1 % everywhere
    est = apply_alignment(clean, fit.scale, fit.shift)
    rel = np.abs(est[valid] - depth[valid]) / depth[valid]
    assert rel.max() < 0.01
    # applied to the noisy prediction (0.2 % noise, amplified ~2x by the shift): median within 0.5 %
    est = apply_alignment(pred, fit.scale, fit.shift)
    rel = np.abs(est[valid] - depth[valid]) / depth[valid]
    assert np.median(rel) < 0.005 and np.percentile(rel, 95) < 0.01
    assert fit.residual < 0.005


def test_fit_is_seeded_and_rejects_bad_frames():
    _, _, samples, z, _, _ = _affine_case(seed=1)
    f1, f2 = fit_inverse_depth(samples, z, seed=7), fit_inverse_depth(samples, z, seed=7)
    assert (f1.scale, f1.shift) == (f2.scale, f2.shift)
    few = fit_inverse_depth(samples[:5], z[:5])
    assert not few.accepted and "usable" in few.reason
    # disparity anti-correlated with inverse depth: no positive scale
    neg = fit_inverse_depth(-samples + 2 * samples.max(), z, seed=0)
    assert not neg.accepted
    # no prediction (0) at the samples: ignored
    none = fit_inverse_depth(np.zeros_like(samples), z)
    assert not none.accepted and none.num_samples == 0


def test_apply_alignment_limits():
    disp = np.array([[0.0, 1.0, 2.0, 1e-9]], np.float32)
    out = apply_alignment(disp, 0.5, 0.0, max_depth=100.0)
    np.testing.assert_allclose(out, [[0.0, 2.0, 1.0, 0.0]])
    out = apply_alignment(disp, 1.0, -1.5)  # aligned disparity <= 0 -> invalid
    np.testing.assert_allclose(out, [[0.0, 0.0, 2.0, 0.0]])


def _sequence(T=40, n=25, z_noise=0.05, outlier_frac=0.1, a=None, seed=0):
    """Per-frame (samples, z) of a sequence whose true map is 1/z = (d - c) / a_t."""
    cams = make_cams(1, W=80, H=60)
    depth, _ = render(cams[0])
    rng = np.random.default_rng(seed)
    a = np.full(T, 2.0) if a is None else np.asarray(a)
    c = 0.3
    data = []
    for t in range(T):
        rows, cols = rng.integers(0, 60, n), rng.integers(0, 80, n)
        ztrue = depth[rows, cols].astype(np.float64)
        d = a[t] / ztrue + c
        z = ztrue * (1 + z_noise * rng.standard_normal(n))
        bad = rng.random(n) < outlier_frac
        z[bad] *= rng.uniform(0.3, 3.0, bad.sum())
        data.append((d, z))
    return data, a, c


def test_temporal_smoothing_reduces_scale_jitter():
    data, a, c = _sequence()
    fits = [fit_inverse_depth(d, z, seed=t, min_inliers=5) for t, (d, z) in enumerate(data)]
    assert all(f.accepted for f in fits)
    smooth = smooth_alignment_over_time(fits, np.arange(len(fits)))
    s0 = np.array([f.scale for f in fits])
    s1 = np.array([f.scale for f in smooth])
    jitter0 = np.median(np.abs(s0[1:] / s0[:-1] - 1))
    jitter1 = np.median(np.abs(s1[1:] / s1[:-1] - 1))
    assert jitter1 < 0.2 * jitter0, (jitter0, jitter1)  # measured: 0.11 -> 0.006
    # and closer to the truth (1 / a)
    err0 = np.median(np.abs(s0 * a - 1))
    err1 = np.median(np.abs(s1 * a - 1))
    assert err1 < 0.5 * err0, (err0, err1)  # measured: 9.7 % -> 3.1 %


def test_temporal_smoothing_follows_a_real_change_when_data_is_strong():
    a = np.where(np.arange(30) < 15, 2.0, 2.4)  # the network's output scale jumps by 20 %
    data, a, c = _sequence(T=30, n=300, z_noise=0.005, outlier_frac=0.1, a=a, seed=2)
    fits = [fit_inverse_depth(d, z, seed=t) for t, (d, z) in enumerate(data)]
    smooth = smooth_alignment_over_time(fits, np.arange(30))
    # the aligned inverse depth of every frame (both sides of the jump) matches the truth
    for t, f in enumerate(smooth):
        d = data[t][0]
        truth = (d - c) / a[t]
        rel = np.abs(f.scale * d + f.shift - truth) / truth
        assert rel.max() < 0.005, (t, rel.max())


def test_temporal_smoothing_skips_rejected_frames():
    data, a, c = _sequence(T=10, n=25, seed=3)
    fits = [fit_inverse_depth(d, z, seed=t, min_inliers=5) for t, (d, z) in enumerate(data)]
    fits[4] = fit_inverse_depth(data[4][0][:3], data[4][1][:3])
    assert not fits[4].accepted
    smooth = smooth_alignment_over_time(fits, np.arange(10))
    assert smooth[4] is fits[4]
    assert all(smooth[t].accepted for t in range(10) if t != 4)


@pytest.mark.parametrize("ordered", [False, True])
def test_estimate_depth_recovers_rendered_depth(tmp_path, ordered):
    from vggsfm_ns.depth.estimate import estimate_depth

    cams, depths, images, frames, sfm = make_depth_scene(n_cams=4, n_points=400, ordered=ordered)
    # frame 2 has a dynamic-object mask (file, non-zero = dynamic)
    m = np.zeros((60, 80), np.uint8)
    m[10:25, 30:60] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    frames.mask_paths[2] = tmp_path / "mask.png"
    params = [(2.0 + 0.3 * i, 0.1 * i) for i in range(4)]  # a different affine map per frame
    model = AffineInverseDepthModel(depths, images, params)
    res = estimate_depth(frames, sfm, DepthConfig(dense_depth=True), model=model)
    assert res.temporal == ordered
    assert [fd.frame for fd in res.frames] == [0, 1, 2, 3]
    for fd, (a, c) in zip(res.frames, params):
        assert fd.accepted and fd.depth is not None and fd.path is None
        assert fd.scale == pytest.approx(1 / a, rel=0.01)
        d, gt = fd.depth, depths[fd.frame]
        valid = gt > 0
        if fd.frame == 2:
            assert (d[10:25, 30:60] == 0).all()
            valid[10:25, 30:60] = False
        rel = np.abs(d[valid] - gt[valid]) / gt[valid]
        assert rel.max() < 0.01, (fd.frame, rel.max())
        assert fd.inlier_ratio > 0.95 and fd.num_inliers == fd.num_sparse * fd.inlier_ratio


def test_estimate_depth_keeps_maps_on_disk_with_work_dir(tmp_path):
    from vggsfm_ns.depth.estimate import estimate_depth

    cams, depths, images, frames, sfm = make_depth_scene(n_cams=3, n_points=300, ordered=True)
    sfm.valid_frame_mask[1] = False  # an unregistered frame gets no depth
    model = AffineInverseDepthModel(depths, images, [(2.0, 0.1)] * 3)
    res = estimate_depth(frames, sfm, DepthConfig(dense_depth=True), model=model, work_dir=tmp_path)
    assert [fd.frame for fd in res.frames] == [0, 2]
    assert not res.temporal  # only 2 registered frames
    for fd in res.frames:
        assert fd.depth is None and fd.path.parent == tmp_path / "depth"
        gt = depths[fd.frame]
        d = fd.load_depth()
        np.testing.assert_allclose(d[gt > 0], gt[gt > 0], rtol=0.01)
    assert not list((tmp_path / "depth").glob("*.disparity.npy"))
