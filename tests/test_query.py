"""Query frames (official rankings) and query points (ALIKED, SIFT, grid, Shi-Tomasi)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vggsfm_ns.errors import CheckpointError
from vggsfm_ns.query.frames import farthest_point_sampling, rank_by_interval, rank_by_midpoint, select_query_frames
from vggsfm_ns.query.points import detect_query_points, extract_sift, grid_points, spread_subset

# ------------------------------------------------------------------------------------------
# query frames
# ------------------------------------------------------------------------------------------

# Hand-derived from the official definitions (spec §4.1): midpoint = [mid(0, S-1), 0, S-1] then
# breadth-first midpoints of the sub-intervals; interval = 0, k, 2k, ..., 1, 1+k, ...
MIDPOINT = {
    3: [1, 0, 2],
    4: [1, 0, 3, 2],
    5: [2, 0, 4, 1, 3],
    10: [4, 0, 9, 2, 6, 1, 3, 5, 7, 8],
    17: [8, 0, 16, 4, 12, 2, 6, 10, 14, 1, 3, 5, 7, 9, 11, 13, 15],
}
INTERVAL = {  # (S, k) -> order
    (10, 4): [0, 4, 8, 1, 5, 9, 2, 6, 3, 7],
    (7, 4): [0, 4, 1, 5, 2, 6, 3],
    (13, 5): [0, 5, 10, 1, 6, 11, 2, 7, 12, 3, 8, 4, 9],
}


@pytest.mark.parametrize("S", sorted(MIDPOINT))
def test_midpoint_matches_official(S):
    assert rank_by_midpoint(S) == MIDPOINT[S]
    assert select_query_frames(S, 3, "midpoint").tolist() == MIDPOINT[S][:3]


def test_midpoint_small_and_large():
    # the official list repeats frame 0 for S <= 2; ours drops the repeats
    assert rank_by_midpoint(1) == [0]
    assert rank_by_midpoint(2) == [0, 1]
    for S in (50, 64, 301):
        order = rank_by_midpoint(S)
        assert sorted(order) == list(range(S))
        assert order[:3] == [(S - 1) // 2, 0, S - 1]


@pytest.mark.parametrize("key", sorted(INTERVAL))
def test_interval_matches_official(key):
    S, k = key
    assert rank_by_interval(S, k) == INTERVAL[key]


def test_select_query_frames_interval_step():
    # step S // num_query + 1 as in the official pipeline
    assert select_query_frames(10, 3, "interval").tolist() == [0, 4, 8]
    assert select_query_frames(50, 3, "interval").tolist() == [0, 17, 34]
    assert select_query_frames(13, 2, "interval").tolist() == [0, 7]
    assert select_query_frames(2, 5, "interval").tolist() == [0, 1]  # clamped to S
    out = select_query_frames(50, 3)
    assert out.dtype == torch.int64 and out.shape == (3,)


def test_select_query_frames_errors():
    with pytest.raises(ValueError):
        select_query_frames(10, 3, "random")
    with pytest.raises(ValueError):
        select_query_frames(0, 3, "interval")
    with pytest.raises(ValueError, match="camera predictor"):
        select_query_frames(10, 3, "dino")


def test_select_query_frames_dino_delegates(monkeypatch):
    import vggsfm_ns.networks.ranking as ranking

    seen = {}

    def fake_rank(images, camera_predictor):
        seen["shape"] = tuple(images.shape)
        return torch.tensor([5, 2, 7, 0, 1, 3, 4, 6])

    monkeypatch.setattr(ranking, "rank_frames_by_dino", fake_rank)
    out = select_query_frames(8, 3, "dino", images=torch.zeros(8, 3, 16, 16), camera_predictor=object())
    assert out.tolist() == [5, 2, 7]
    assert seen["shape"] == (8, 3, 16, 16)
    with pytest.raises(ValueError):
        select_query_frames(8, 3, "dino", images=torch.zeros(7, 3, 16, 16), camera_predictor=object())


def test_farthest_point_sampling_hops_from_last_pick():
    # 1-D positions 0, 1, 10, 11, 5: from frame 0 the farthest is 3 (at 11), from 3 it is 1 (at 1),
    # from 1 it is 2 (at 10); a min-over-set rule would pick 4 (at 5) third.
    pos = torch.tensor([0.0, 1.0, 10.0, 11.0, 5.0])
    dist = (pos[:, None] - pos[None, :]).abs()
    assert farthest_point_sampling(dist, 5, 0) == [0, 3, 1, 2, 4]
    assert farthest_point_sampling(dist, 2, 4) == [4, 3]
    assert farthest_point_sampling(dist, 9, 0)[:5] == [0, 3, 1, 2, 4]


# ------------------------------------------------------------------------------------------
# query points
# ------------------------------------------------------------------------------------------


def _textured(width=320, height=240, n=900, seed=0) -> torch.Tensor:
    """Random grey blobs on a mid-grey background, ``(3, H, W)`` float in [0, 1]."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.full((height, width), 0.5, np.float32)
    for cx, cy, s, a in zip(rng.uniform(0, width, n), rng.uniform(0, height, n), rng.uniform(1.5, 5, n), rng.uniform(-0.4, 0.4, n)):
        x0, x1 = int(max(0, cx - 4 * s)), int(min(width, cx + 4 * s + 1))
        y0, y1 = int(max(0, cy - 4 * s)), int(min(height, cy + 4 * s + 1))
        img[y0:y1, x0:x1] += a * np.exp(-((xs[y0:y1, x0:x1] - cx) ** 2 + (ys[y0:y1, x0:x1] - cy) ** 2) / (2 * s * s))
    return torch.from_numpy(np.clip(img, 0, 1))[None].expand(3, -1, -1).contiguous()


def _quadrant_counts(pts: torch.Tensor, width: int, height: int):
    left, top = pts[:, 0] < width / 2, pts[:, 1] < height / 2
    return [int((left & top).sum()), int((~left & top).sum()), int((left & ~top).sum()), int((~left & ~top).sum())]


@pytest.mark.parametrize("method,max_points", [("sift", 300), ("gftt", 300), ("grid", 300), ("sift+gftt+grid", 500)])
def test_query_points_count_mask_spread(method, max_points):
    img = _textured()
    invalid = torch.zeros(240, 320, dtype=torch.bool)
    invalid[60:180, 100:220] = True  # a dynamic object in the middle
    pts = detect_query_points(img, method, max_points, invalid_mask=invalid, seed=3)
    assert pts.dtype == torch.float32 and pts.ndim == 2 and pts.shape[1] == 2
    assert 0.5 * max_points <= pts.shape[0] <= max_points
    ix, iy = pts[:, 0].round().long(), pts[:, 1].round().long()
    assert (ix >= 0).all() and (ix < 320).all() and (iy >= 0).all() and (iy < 240).all()
    assert not invalid[iy, ix].any()
    counts = _quadrant_counts(pts, 320, 240)
    assert min(counts) >= 0.1 * pts.shape[0], counts
    # deterministic for a seed
    assert torch.equal(pts, detect_query_points(img, method, max_points, invalid_mask=invalid, seed=3))


def test_query_points_capped_random_subset_is_seeded():
    img = _textured()
    a = detect_query_points(img, "sift+gftt", 100, seed=0)
    b = detect_query_points(img, "sift+gftt", 100, seed=1)
    assert a.shape == (100, 2) and b.shape == (100, 2)
    assert not torch.equal(a, b)


def test_spread_subset_keeps_sparse_regions():
    rng = np.random.default_rng(0)
    dense = torch.from_numpy(rng.uniform(0, 40, (2000, 2))).float()  # a cluster in one corner
    sparse = torch.from_numpy(np.stack(np.meshgrid(np.arange(20, 320, 40), np.arange(15, 240, 30)), -1).reshape(-1, 2)).float()
    pts = torch.cat([dense, sparse])
    out = spread_subset(pts, 320, 240, 120, seed=0)
    assert out.shape == (120, 2)
    kept_sparse = sum(bool((out == p).all(1).any()) for p in sparse)
    assert kept_sparse >= 0.9 * len(sparse)  # a plain random subset would keep ~6 % of them
    assert spread_subset(pts, 320, 240, 5000).shape == pts.shape


def test_grid_points_cover_frame():
    g = grid_points(320, 240, 300)
    assert g.shape[0] <= 300 and g.shape[0] >= 250
    assert g[:, 0].min() > 0 and g[:, 0].max() < 319 and g[:, 1].min() > 0 and g[:, 1].max() < 239
    xs = torch.unique(g[:, 0])
    assert torch.allclose(xs[1:] - xs[:-1], (xs[1:] - xs[:-1]).mean().expand(len(xs) - 1), atol=1e-3)


@pytest.mark.parametrize("backend", ["opencv", "pycolmap"])
@pytest.mark.parametrize("upscale", [1.0, 1.5])
def test_sift_keypoints_are_pixel_centre(backend, upscale):
    """A dark Gaussian blob centred at a known sub-pixel position (pixel-centre convention)."""
    H = W = 160
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    for cx, cy in [(80.0, 80.0), (70.3, 90.6)]:
        img = 1.0 - 0.8 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 4.0**2))
        gray = (img * 255 + 0.5).astype(np.uint8)
        xy, scale, desc = extract_sift(gray, 64, backend=backend, upscale=upscale)
        assert xy.dtype == np.float32 and desc.shape == (len(xy), 128)
        np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
        d = np.hypot(xy[:, 0] - cx, xy[:, 1] - cy)
        assert d.min() < 0.12, (backend, upscale, xy[d.argmin()], (cx, cy))


def _random_aliked_weights(path):
    from kornia.feature import ALIKED

    torch.manual_seed(0)
    model = ALIKED("aliked-n16")
    torch.save(model.state_dict(), path)
    return path


def test_aliked_from_local_weights(tmp_path):
    weights = _random_aliked_weights(tmp_path / "aliked-n16.pth")
    img = _textured(128, 96, n=200)
    invalid = torch.zeros(96, 128, dtype=torch.bool)
    invalid[:, :40] = True
    pts = detect_query_points(img, "aliked", 150, invalid_mask=invalid, aliked_weights=weights)
    assert 10 <= pts.shape[0] <= 150
    assert (pts[:, 0] >= 39.5).all()  # nothing in the invalid columns
    assert (pts[:, 0] <= 127).all() and (pts[:, 1] >= 0).all() and (pts[:, 1] <= 95).all()
    both = detect_query_points(img, "aliked+grid", 150, aliked_weights=weights)
    assert both.shape[0] == 150


def test_aliked_weight_errors(tmp_path):
    img = _textured(64, 64, n=50)
    with pytest.raises(CheckpointError):
        detect_query_points(img, "aliked", 100, aliked_weights=tmp_path / "missing.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="aliked-n16"):
        detect_query_points(img, "aliked", 100, aliked_weights=tmp_path / "wrong.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        detect_query_points(img, "aliked", 100, aliked_weights=tmp_path / "garbage.pth")


def test_query_point_errors():
    img = _textured(64, 48, n=40)
    with pytest.raises(ValueError, match="unknown query method"):
        detect_query_points(img, "superpoint", 100)
    # one rule for the CLI's early check and the detector: aliases and spaces are fine
    from vggsfm_ns.config import unknown_query_methods

    assert unknown_query_methods("sift + shi-tomasi") == [] and unknown_query_methods("sift+grd+x") == ["grd", "x"]
    assert torch.equal(detect_query_points(img, "shi-tomasi", 50), detect_query_points(img, "gftt", 50))
    with pytest.raises(ValueError):
        detect_query_points(img, "sift", 100, invalid_mask=torch.zeros(10, 10, dtype=torch.bool))
    with pytest.raises(ValueError):
        detect_query_points(img[0], "sift", 100)
