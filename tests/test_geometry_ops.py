"""Small per-operation tests of ``vggsfm_ns.geometry`` (exact synthetic data, library cross-checks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vggsfm_ns.geometry import camera as cam
from vggsfm_ns.geometry import epipolar as epi
from vggsfm_ns.geometry import triangulation as tri
from vggsfm_ns.geometry.chunking import chunk_size, chunks
from vggsfm_ns.geometry.filtering import filter_points3d, reprojection_errors, valid_frame_mask
from vggsfm_ns.sfm.synthetic import look_at


def _cams(S=6, radius=4.0, seed=0):
    rng = np.random.default_rng(seed)
    a = np.linspace(0, 1.2, S)
    C = np.stack([radius * np.sin(a), rng.normal(0, 0.3, S), -radius * np.cos(a)], -1)
    return torch.from_numpy(np.stack([look_at(c, np.zeros(3)) for c in C]))


def _points(N=200, seed=1):
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 0.6, (N, 3)))


def _normalized(ext, X):
    pc = cam.transform_points(X, ext)
    return pc[..., :2] / pc[..., 2:]


# ------------------------------------------------------------------------------------------ camera


@pytest.mark.parametrize("extra", [[0.08], [0.05, -0.02], [0.03, -0.01, 0.002, -0.001]])
def test_distortion_roundtrip_and_jacobian(extra):
    e = torch.tensor(extra, dtype=torch.float64)
    uv = torch.from_numpy(np.random.default_rng(0).uniform(-0.6, 0.6, (300, 2)))
    d = cam.distort(uv, e)
    torch.testing.assert_close(cam.undistort(d, e), uv, atol=1e-12, rtol=0)
    J = cam.distortion_jacobian(uv, e)
    h = 1e-7
    for j in range(2):
        dx = torch.zeros(2, dtype=torch.float64)
        dx[j] = h
        num = (cam.distort(uv + dx, e) - cam.distort(uv - dx, e)) / (2 * h)
        torch.testing.assert_close(J[..., :, j], num, atol=1e-7, rtol=0)


@pytest.mark.parametrize("model,params", [
    ("SIMPLE_PINHOLE", [500.0, 320.0, 240.0]),
    ("PINHOLE", [500.0, 480.0, 321.0, 239.0]),
    ("SIMPLE_RADIAL", [500.0, 320.0, 240.0, 0.05]),
    ("RADIAL", [500.0, 320.0, 240.0, 0.05, -0.01]),
    ("OPENCV", [500.0, 490.0, 320.0, 240.0, 0.03, -0.01, 0.001, -0.002]),
])
def test_projection_matches_pycolmap(model, params):
    import pycolmap

    K, extra = cam.from_colmap_params(model, np.array(params))
    np.testing.assert_allclose(cam.colmap_params(model, K, extra), params)
    c = pycolmap.Camera(model=model, width=640, height=480, params=params, camera_id=1)
    pts = np.random.default_rng(2).uniform([-1.0, -0.8, 2.0], [1.0, 0.8, 4.0], (100, 3))
    ref = np.asarray(c.img_from_cam(pts))
    ours = cam.img_from_cam(torch.from_numpy(pts), torch.from_numpy(K), torch.from_numpy(extra) if extra.size else None)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-9)
    back = cam.cam_from_img(ours, torch.from_numpy(K), torch.from_numpy(extra) if extra.size else None)
    np.testing.assert_allclose(back.numpy(), pts[:, :2] / pts[:, 2:], atol=1e-10)


def test_num_extra_params_rejects_unknown_model():
    assert cam.num_extra_params("OPENCV") == 4
    with pytest.raises(ValueError):
        cam.num_extra_params("FISHEYE")


def test_project_points_broadcasts_over_frames():
    ext, X = _cams(4), _points(10)
    K = cam.intrinsics_matrix(torch.full((4,), 500.0, dtype=torch.float64), torch.full((4,), 500.0, dtype=torch.float64),
                              torch.full((4,), 320.0, dtype=torch.float64), torch.full((4,), 240.0, dtype=torch.float64))
    px, depth = cam.project_points(X, ext, K)
    assert px.shape == (4, 10, 2) and depth.shape == (4, 10)
    pc = cam.transform_points(X, ext)
    torch.testing.assert_close(px[2, 3], pc[2, 3, :2] / pc[2, 3, 2] * 500 + torch.tensor([320.0, 240.0], dtype=torch.float64))
    assert (depth > 0).all()


# ------------------------------------------------------------------------------------------ eigen / triangulation


def test_smallest_eigenvector_matches_eigh():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(500, 4, 3, generator=g, dtype=torch.float64)
    A = B @ B.transpose(-1, -2) + 1e-6 * torch.eye(4, dtype=torch.float64)  # near rank 3
    A2 = torch.randn(200, 4, 4, generator=g, dtype=torch.float64)
    A2 = A2 @ A2.transpose(-1, -2)  # generic spectrum (falls back to eigh)
    for M in (A, A2):
        x = tri.smallest_eigenvector(M)
        v = torch.linalg.eigh(M)[1][..., 0]
        err = torch.minimum((x - v).norm(dim=-1), (x + v).norm(dim=-1))
        assert float(err.max()) < 1e-8
    adj = tri.adjugate4(A2)
    torch.testing.assert_close(adj @ A2, torch.linalg.det(A2)[:, None, None] * torch.eye(4, dtype=torch.float64).expand(200, 4, 4), atol=1e-6, rtol=1e-9)


def test_multi_view_triangulation_exact_and_linear_variant(split_every_job):
    ext, X = _cams(5), _points(50)
    uv = _normalized(ext, X)  # [S, N, 2]
    Xt = tri.triangulate_multi_view(ext[None].expand(50, -1, -1, -1), uv.transpose(0, 1))
    torch.testing.assert_close(Xt, X, atol=1e-10, rtol=0)
    mask = torch.rand(5, 50, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[:2] = True
    Xl = tri.triangulate_tracks_linear(ext, uv, mask)
    Xm = tri.triangulate_multi_view(ext[None].expand(50, -1, -1, -1), uv.transpose(0, 1), mask.T)
    torch.testing.assert_close(Xl, Xm, atol=1e-10, rtol=0)
    torch.testing.assert_close(Xl, X, atol=1e-10, rtol=0)
    # each track over its own views, in chunks of any size; fewer than two views: NaN
    mask[:, :3] = False
    mask[4, 1] = True
    for cap, workers in ((7, 1), (0, 3), (7, 3)):
        Xc = tri.triangulate_tracks_linear(ext, uv, mask, max_tracks_per_chunk=cap, num_workers=workers)
        assert torch.isnan(Xc[:3]).all()
        torch.testing.assert_close(Xc[3:], Xm[3:], atol=1e-10, rtol=0)


def test_transform_cameras_and_centres_numpy_and_torch():
    """Cameras re-expressed in the world X' = s R X + t see X' where they saw X (same normalised
    coordinates); their centres move with the similarity; numpy and torch agree."""
    ext, X = _cams(5), _points(30)
    R = torch.from_numpy(look_at(np.array([0.3, -1.0, 2.0]), np.zeros(3))[:, :3])
    t, s = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64), 2.5
    Xn = s * X @ R.T + t
    new = cam.transform_cameras(ext, R, t, s)
    assert new.shape == (5, 3, 4) and new.dtype == torch.float64
    torch.testing.assert_close(_normalized(new, Xn), _normalized(ext, X), atol=1e-12, rtol=0)
    torch.testing.assert_close(cam.camera_centers(new), s * cam.camera_centers(ext) @ R.T + t, atol=1e-12, rtol=0)
    torch.testing.assert_close(new[:, :, :3] @ new[:, :, :3].transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3))
    E44 = np.concatenate([ext.numpy(), np.tile([[[0, 0, 0, 1.0]]], (5, 1, 1))], 1)
    new_np = cam.transform_cameras(E44, R.numpy(), t.numpy(), s)
    assert isinstance(new_np, np.ndarray) and new_np.shape == (5, 3, 4)
    np.testing.assert_allclose(new_np, new.numpy(), atol=1e-12)
    np.testing.assert_allclose(cam.camera_centers(E44), cam.camera_centers(ext).numpy(), atol=1e-12)
    np.testing.assert_allclose(cam.camera_centers(E44[0].tolist()), cam.camera_centers(ext[0]).numpy(), atol=1e-12)


def test_apply_affine_matches_camera_projection_numpy_and_torch():
    """A cam_from_world matrix applied to world points gives the camera coordinates that
    ``transform_points`` gives; 3x4 and 4x4 agree; numpy returns float64, torch keeps its dtype;
    a wrong matrix or point shape is refused."""
    ext, X = _cams(3), _points(20)
    want = cam.transform_points(X, ext)  # (3, 20, 3)
    for k in range(3):
        got = cam.apply_affine(X, ext[k])
        assert got.dtype == torch.float64 and got.shape == (20, 3)
        torch.testing.assert_close(got, want[k], atol=1e-12, rtol=0)
        E44 = np.vstack([ext[k].numpy(), [0, 0, 0, 1.0]])
        got_np = cam.apply_affine(X.numpy().tolist(), E44)
        assert isinstance(got_np, np.ndarray) and got_np.dtype == np.float64
        np.testing.assert_allclose(got_np, want[k].numpy(), atol=1e-12)
    assert cam.apply_affine(X.float()[None], ext[0]).dtype == torch.float32  # [..., P, 3] broadcast
    np.testing.assert_allclose(cam.apply_affine(np.ones(3), np.eye(4)[:3] * 2.0), [2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="3x4 or 4x4"):
        cam.apply_affine(X, np.eye(3))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        cam.apply_affine(np.zeros((5, 2)), np.eye(4))


def test_triangulation_angles_and_sweep():
    ext, X = _cams(12), _points(40)
    C = cam.camera_centers(ext)
    full = tri.triangulation_angles(C[None].expand(40, -1, -1), X)
    mask = torch.ones(40, 12, dtype=torch.bool)
    exact = tri.max_triangulation_angle(C, X, mask, exact_max_views=64)
    torch.testing.assert_close(exact, full.flatten(-2).max(-1).values)
    sweep = tri.max_triangulation_angle(C, X, mask, exact_max_views=4)
    assert torch.all(sweep <= exact + 1e-9) and torch.all(sweep >= exact / 2 - 1e-9)
    # cameras along an arc: the double sweep is exact
    torch.testing.assert_close(sweep, exact, atol=1e-6, rtol=0)
    one = torch.zeros(40, 12, dtype=torch.bool)
    one[:, 3] = True
    assert float(tri.max_triangulation_angle(C, X, one).max()) < 1e-4  # a single view: no angle


def test_two_view_pose_recovery_from_essential():
    ext, X = _cams(2), _points(100)
    T = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    T[:, :3] = ext
    rel = (T[1] @ torch.linalg.inv(T[0]))[:3]
    uv = _normalized(ext, X)
    # points in camera 0's frame == normalised coordinates with K = I
    tx = torch.tensor([[0, -rel[2, 3], rel[1, 3]], [rel[2, 3], 0, -rel[0, 3]], [-rel[1, 3], rel[0, 3], 0]], dtype=torch.float64)
    E = tx @ rel[:, :3]
    R, t, count = tri.relative_pose_from_essential(E, uv[0], uv[1])
    torch.testing.assert_close(R, rel[:, :3], atol=1e-9, rtol=0)
    torch.testing.assert_close(t, rel[:, 3] / rel[:, 3].norm(), atol=1e-9, rtol=0)
    assert int(count) == 100


def _noisy_tracks(S: int, N: int, seed: int, outliers: float):
    """Cameras, points, ``[S, N, 2]`` normalised tracks with 1e-3 noise and a fraction of 0.2
    outliers (mask ``out``), and the generator for further draws."""
    ext, X = _cams(S), _points(N)
    uv = _normalized(ext, X)
    g = torch.Generator().manual_seed(seed)
    noisy = uv + torch.randn(uv.shape, generator=g, dtype=torch.float64) * 1e-3
    out = torch.rand(S, N, generator=g) < outliers
    return ext, X, torch.where(out[..., None], noisy + 0.2, noisy), out, g


def test_triangulate_tracks_rejects_outliers_sampled_and_chunked():
    S, N = 30, 300  # C(30, 2) > 16: per-track pair sampling
    ext, X, noisy, out, g = _noisy_tracks(S, N, 0, 0.15)
    valid = torch.rand(S, N, generator=g) > 0.2
    Xt, n, m = tri.triangulate_tracks(ext, noisy, valid, max_ransac_iters=16, lo_num=6, lo_num_second=3)
    ok = n >= 3
    assert ok.float().mean() > 0.98
    assert float((Xt[ok] - X[ok]).norm(dim=-1).median()) < 0.01
    # outliers and invalid observations are never inliers; almost every clean valid one is
    assert not (m & out.T).any()
    assert not (m & ~valid.T).any()
    clean = valid.T & ~out.T
    assert (m & clean).sum() / clean.sum() > 0.97
    Xc, nc, mc = tri.triangulate_tracks(ext, noisy, valid, max_ransac_iters=16, lo_num=6, lo_num_second=3, max_tracks_per_chunk=37)
    assert torch.equal(nc, n) and torch.equal(mc, m)
    torch.testing.assert_close(Xc, Xt)


def test_view_chunks_bounded_by_view_count_and_boundaries():
    views = torch.tensor(sorted([2, 2, 3, 4, 5, 6, 7, 8, 8, 9, 9, 10, 12, 15, 20, 25, 40, 50] * 3))
    chunks = list(tri._view_chunks(views, 25, 0, "cpu", 8))
    assert chunks[0][0] == 0 and chunks[-1][1] == views.numel()
    for (a, b, V), nxt in zip(chunks, chunks[1:] + [None]):
        if nxt is not None:
            assert nxt[0] == b  # contiguous, every track once
        v0 = int(views[a])
        assert V == int(views[b - 1]) and V <= max(2 * v0, v0 + 2)  # padding at most a doubling
        for bound in (9, tri.LONG_TRACK_VIEWS):  # exact angle check (<= 8 views), long-track budget
            assert (v0 < bound) == (V < bound)
    # a memory cap splits further but keeps the same properties
    small = list(tri._view_chunks(views, 25, 4, "cpu", 8))
    assert len(small) > len(chunks) and all(b - a <= 4 for a, b, _ in small)


def test_triangulate_tracks_mixed_lengths_independent_of_chunking(split_every_job):
    S, N = 40, 400
    ext, X, noisy, out, g = _noisy_tracks(S, N, 1, 0.1)
    # track lengths from 2 to 40 views
    keep = torch.rand(S, N, generator=g) < torch.linspace(0.05, 1.0, N)[None]
    keep[:2] = True
    Xa, na, ma = tri.triangulate_tracks(ext, noisy, keep, max_ransac_iters=16, lo_num=6, lo_num_second=3)
    Xb, nb, mb = tri.triangulate_tracks(ext, noisy, keep, max_ransac_iters=16, lo_num=6, lo_num_second=3, max_tracks_per_chunk=13)
    assert torch.equal(na, nb) and torch.equal(ma, mb)
    torch.testing.assert_close(Xa, Xb)
    ok = na >= 3
    assert ok.float().mean() > 0.95
    assert float((Xa[ok] - X[ok]).norm(dim=-1).median()) < 0.01
    assert not (ma & out.T).any()


def test_triangulate_tracks_independent_of_workers(split_every_job):
    S, N = 40, 500
    ext, X, noisy, out, g = _noisy_tracks(S, N, 2, 0.1)
    keep = torch.rand(S, N, generator=g) < torch.linspace(0.05, 1.0, N)[None]
    keep[:2] = True
    kw = dict(max_ransac_iters=16, lo_num=6, lo_num_second=3)
    Xa, na, ma = tri.triangulate_tracks(ext, noisy, keep, num_workers=1, **kw)
    for w, cap in ((2, 0), (3, 0), (3, 29)):
        Xb, nb, mb = tri.triangulate_tracks(ext, noisy, keep, num_workers=w, max_tracks_per_chunk=cap, **kw)
        assert torch.equal(na, nb) and torch.equal(ma, mb)
        torch.testing.assert_close(Xa, Xb)
    assert (na >= 3).float().mean() > 0.95


def test_balanced_jobs_cover_every_track_once_with_bounded_cost():
    chunks = [(0, 100, 3), (100, 130, 6), (130, 131, 12), (131, 400, 40)]
    total = sum((b - a) * V for a, b, V in chunks)
    assert tri._balanced(chunks, 1) == chunks
    jobs = tri._balanced(chunks, 2)
    from vggsfm_ns.threads import JOBS_PER_WORKER

    target = total / (JOBS_PER_WORKER * 2)
    # every track once, with its chunk's padded view count
    covered = sorted((a, b, V) for a, b, V in jobs)
    pos = 0
    for a, b, V in covered:
        assert a == pos and b > a
        assert V == next(Vc for ac, bc, Vc in chunks if ac <= a and b <= bc)
        pos = b
    assert pos == 400
    assert max((b - a) * V for a, b, V in jobs) <= target + 40  # at most one track over the target
    costs = [(b - a) * V for a, b, V in jobs]
    assert costs == sorted(costs, reverse=True)  # largest first
    # a floor on the job cost: only the chunk of 269 x 40 = 10,760 track-views is split, in two
    floor = tri._balanced(chunks, 2, min_cost=5000)
    assert sorted(floor) == [(0, 100, 3), (100, 130, 6), (130, 131, 12), (131, 265, 40), (265, 400, 40)]
    assert sorted(tri._balanced(chunks, 2, min_cost=total)) == chunks  # nothing worth splitting


def test_triangulate_tracks_skips_tracks_without_two_views():
    ext, X = _cams(5), _points(20)
    uv = _normalized(ext, X)
    valid = torch.ones(5, 20, dtype=torch.bool)
    valid[1:, :4] = False
    _, n, m = tri.triangulate_tracks(ext, uv, valid)
    assert torch.all(n[:4] == 0) and not m[:4].any()  # one valid view: no point
    assert torch.all(n[4:] == 5)


# ------------------------------------------------------------------------------------------ epipolar


def test_solve_cubic_against_numpy():
    rng = np.random.default_rng(0)
    roots = rng.uniform(-3, 3, (50, 3))
    coeffs = np.stack([np.poly(r) for r in roots])
    out = epi.solve_cubic(torch.from_numpy(coeffs))
    np.testing.assert_allclose(np.sort(out.numpy(), 1), np.sort(roots, 1), atol=1e-6)
    one = epi.solve_cubic(torch.tensor([[1.0, 0.0, 1.0, 2.0]], dtype=torch.float64))  # x^3 + x + 2 = (x+1)(x^2-x+2)
    np.testing.assert_allclose(one.numpy(), [[-1.0, 0.0, 0.0]], atol=1e-12)


def test_fundamental_solvers_exact_data():
    ext, X = _cams(2), _points(60)
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]], dtype=torch.float64)
    px, _ = cam.project_points(X, ext, K.expand(2, 3, 3))
    F8 = epi.eight_point(px[0], px[1])
    assert float(epi.sampson_distance(px[0], px[1], F8).sqrt().max()) < 1e-6
    F7 = epi.seven_point(px[0][:7][None], px[1][:7][None])[0]
    best = epi.sampson_distance(px[0][None], px[1][None], F7).sqrt().max(-1).values.min()
    assert float(best) < 1e-5
    # masked 8-point ignores outliers outside the mask
    p2 = px[1].clone()
    p2[:10] += 30.0
    mask = torch.ones(60, dtype=torch.bool)
    mask[:10] = False
    Fm = epi.eight_point(px[0], p2, mask)
    assert float(epi.sampson_distance(px[0][10:], p2[10:], Fm).sqrt().max()) < 1e-6


def test_estimate_fundamental_with_outliers():
    ext, X = _cams(2), _points(150)
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]], dtype=torch.float64)
    px, _ = cam.project_points(X, ext, K.expand(2, 3, 3))
    g = torch.Generator().manual_seed(1)
    p1 = px[0] + torch.randn(150, 2, generator=g, dtype=torch.float64) * 0.3
    p2 = px[1] + torch.randn(150, 2, generator=g, dtype=torch.float64) * 0.3
    p2[:30] += torch.rand(30, 2, generator=g, dtype=torch.float64) * 80 + 20
    F, n, m, r = epi.estimate_fundamental(p1[None], p2[None], max_ransac_iters=256, max_error=2.0, lo_num=32, seed=3)
    d = epi.sampson_distance(p1, p2, F[0]).sqrt()
    assert int(n[0]) >= 115
    assert not bool((m[0, :30] & (d[:30] > 2.0)).any())
    assert float(d[30:].median()) < 0.5


def test_ransac_iterations_values_and_errors():
    # all inliers in a large set -> the textbook (I / n)^s: 0.5^7 = 1/128 at p = 0.99
    assert epi.ransac_iterations(50_000, 100_000, 7, 0.99) == pytest.approx(math.log(0.01) / math.log1p(-1 / 128), rel=1e-3)
    # small sets: samples of distinct points; 20 inliers of 27 points: q = 0.0873 (not 0.122)
    assert epi.ransac_iterations(20, 27, 7, 0.9999) == pytest.approx(100.83, abs=0.01)
    assert epi.ransac_iterations(27, 27, 7, 0.9999) == 1.0
    assert epi.ransac_iterations(6, 27, 7, 0.9999) == math.inf
    ks = [epi.ransac_iterations(i, 100, 7, 0.9999) for i in (90, 70, 50, 30)]
    assert ks == sorted(ks) and ks[0] < 50 < 10_000 < ks[-1]
    for bad in [(20, 27, 7, 1.0), (20, 27, 0, 0.9), (28, 27, 7, 0.9), (3, 5, 7, 0.9)]:
        with pytest.raises(ValueError):
            epi.ransac_iterations(*bad)


def test_ransac_iterations_reach_success_probability_empirically():
    """With k samples of 7 distinct points (as RANSAC draws them), an all-inlier one turns up in
    at least a fraction p of the runs: 20 inliers of 30 points, p = 0.99, 2,000 seeded runs."""
    n, inliers, p = 30, 20, 0.99
    k = math.ceil(epi.ransac_iterations(inliers, n, 7, p))
    rng = np.random.default_rng(0)
    runs = 2000
    keys = rng.random((runs, k, n))
    samples = np.argpartition(keys, 7, axis=2)[..., :7]  # k samples of 7 distinct indices per run
    hit = (samples < inliers).all(axis=2).any(axis=1)
    assert hit.mean() >= p - 3 * math.sqrt(p * (1 - p) / runs)
    # the textbook (I / n)^s bound is too small here: it succeeds clearly less often
    k_textbook = math.ceil(math.log1p(-p) / math.log1p(-((inliers / n) ** 7)))
    assert k_textbook < 0.8 * k
    hit_textbook = (samples[:, :k_textbook] < inliers).all(axis=2).any(axis=1)
    assert hit_textbook.mean() < p - 3 * math.sqrt(p * (1 - p) / runs)


# ------------------------------------------------------------------------------------------ filtering / chunking


def test_filter_points_thresholds_masks_and_angle(split_every_job):
    ext, X = _cams(4), _points(30)
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]], dtype=torch.float64).expand(4, 3, 3)
    px, _ = cam.project_points(X, ext, K)
    px = px.clone()
    px[0, :5] += 3.0  # 4.2 px off in frame 0
    valid, detail = filter_points3d(X, px, ext, K, max_reproj_error=4.0)
    assert not detail[0, :5].any() and detail[0, 5:].all() and valid.all()
    thr = torch.tensor([5.0, 4.0, 4.0, 4.0], dtype=torch.float64)
    _, detail2 = filter_points3d(X, px, ext, K, max_reproj_error=thr)
    assert detail2[0, :5].all()
    obs = torch.ones(4, 30, dtype=torch.bool)
    obs[1:, 7] = False  # only one observation left
    valid3, _ = filter_points3d(X, px, ext, K, obs_mask=obs)
    assert not valid3[7] and valid3[8]
    far = X.clone()
    far[0] = torch.tensor([0.0, 0.0, 400.0], dtype=torch.float64)
    valid4, _ = filter_points3d(far, px, ext, K, max_reproj_error=1e9)
    assert not valid4[0]
    err = reprojection_errors(X, px, ext, K)
    assert err.shape == (4, 30) and float(err[1:].max()) < 1e-9
    # chunks on worker threads: same masks
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        for cap in (0, 4):
            v5, d5 = filter_points3d(X, px, ext, K, max_reproj_error=4.0, max_points_per_chunk=cap)
            assert torch.equal(v5, valid) and torch.equal(d5, detail)
    finally:
        torch.set_num_threads(old)


def test_small_calls_stay_on_one_thread(monkeypatch):
    """The filter and the triangulations run a DTU-sized call's few milliseconds of work on the
    calling thread (worker threads only pay off for jobs of MIN_JOB_SECONDS), and split the same
    call when every job is worth a worker."""
    import vggsfm_ns.geometry.filtering as filt
    import vggsfm_ns.threads as threads

    used = []

    def recording(fn, items, workers=None):
        items = list(items)
        used.append((workers, len(items)))
        return threads.thread_map(fn, items, workers)

    monkeypatch.setattr(filt, "thread_map", recording)
    monkeypatch.setattr(tri, "thread_map", recording)
    ext, X = _cams(6), _points(400)
    uv = _normalized(ext, X)
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]], dtype=torch.float64).expand(6, 3, 3)
    px, _ = cam.project_points(X, ext, K)
    mask = torch.ones(6, 400, dtype=torch.bool)

    def calls():
        used.clear()
        filter_points3d(X, px, ext, K)
        tri.triangulate_tracks_linear(ext, uv, mask)
        tri.triangulate_by_pair(ext, uv, ref=0)
        tri.triangulate_tracks(ext, uv, mask, max_ransac_iters=16, lo_num=6, lo_num_second=3)
        return list(used)

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert [w for w, _ in calls()] == [1, 1, 1, 1]
        monkeypatch.setattr(threads, "MIN_JOB_SECONDS", 0.0)
        split = calls()
        assert all(w == 2 and n >= 2 for w, n in split), split
    finally:
        torch.set_num_threads(old)


def test_valid_frame_mask():
    ext = torch.eye(3, 4, dtype=torch.float64).repeat(4, 1, 1)
    ext[3, 0, 3] = 31.0
    K = torch.eye(3, dtype=torch.float64).repeat(4, 1, 1)
    K[:, 0, 0] = torch.tensor([500.0, 10.0, 500.0, 500.0])
    extra = torch.tensor([[0.1], [0.1], [1.5], [0.1]], dtype=torch.float64)
    ok = valid_frame_mask(K, ext, extra, torch.tensor(640.0, dtype=torch.float64))
    assert ok.tolist() == [True, False, False, False]


def test_chunking():
    assert chunk_size(1000, 8.0, max_items=64) == 64
    assert chunk_size(10, 8.0, max_items=64) == 10
    assert 1 <= chunk_size(10**9, 1e6) < 10**9
    spans = list(chunks(10, 4))
    assert spans == [(0, 4), (4, 8), (8, 10)]


def test_triangulate_by_pair_chunked_and_masked(split_every_job):
    ext, X = _cams(4), _points(60)
    uv = _normalized(ext, X)
    valid = torch.rand(4, 60, generator=torch.Generator().manual_seed(2)) > 0.2
    P, ch, ang = tri.triangulate_by_pair(ext, uv, ref=1, valid=valid)
    for cap, workers in ((7, 1), (0, 3), (7, 3)):
        Pc, chc, angc = tri.triangulate_by_pair(ext, uv, ref=1, valid=valid, max_pairs_per_chunk=cap, num_workers=workers)
        torch.testing.assert_close(P, Pc, equal_nan=True)
        assert torch.equal(ch, chc) and torch.equal(ang, angc)
    use = valid[[0, 2, 3]] & valid[1][None]
    torch.testing.assert_close(P[use], X[None].expand(3, -1, -1)[use], atol=1e-9, rtol=0)
    assert torch.isnan(P[~use]).all() and not ch[~use].any() and ch[use].all()


def test_fundamental_inliers_large_pairs_and_relative_poses():
    from vggsfm_ns.sfm.preliminary import fundamental_inliers, relative_poses

    ext, X = _cams(3), _points(3000)
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]], dtype=torch.float64)
    px, _ = cam.project_points(X, ext, K.expand(3, 3, 3))
    g = torch.Generator().manual_seed(4)
    px = px + torch.randn(px.shape, generator=g, dtype=torch.float64) * 0.3
    out = torch.zeros(3, 3000, dtype=torch.bool)
    out[1:, :300] = True
    px[out] += 25.0 + torch.rand(int(out.sum()), 2, generator=g, dtype=torch.float64) * 50
    obs = torch.ones(3, 3000, dtype=torch.bool)
    old = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 3):  # one RANSAC per frame on the worker threads: same result
            torch.set_num_threads(n)
            runs.append(fundamental_inliers(px, obs, ref=0, max_error=4.0, max_fit_points=1000))  # fitted on a subset
    finally:
        torch.set_num_threads(old)
    (F, inl), (F3, inl3) = runs
    assert torch.equal(F, F3) and torch.equal(inl, inl3)
    assert inl[0].all()
    for i in (1, 2):
        assert inl[i, 300:].float().mean() > 0.99
        assert inl[i, :300].float().mean() < 0.1
    rel, support = relative_poses(F, K.expand(3, 3, 3), px, inl, ref=0)
    T = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    T[:, :3] = ext
    for i in (1, 2):
        gt = (T[i] @ torch.linalg.inv(T[0]))[:3]
        dR = rel[i, :, :3].T @ gt[:, :3]
        ang = torch.rad2deg(torch.acos(((torch.trace(dR) - 1) / 2).clamp(-1, 1)))
        cos_t = float(rel[i, :, 3] @ gt[:, 3] / gt[:, 3].norm())
        assert float(ang) < 0.5 and cos_t > 0.999 and int(support[i]) > 200
    assert torch.equal(rel[0], torch.eye(3, 4, dtype=torch.float64))
