"""Extra points: depth-guided grid tracks triangulated against fixed cameras land on the surfaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import _depth_scene as ds
from vggsfm_ns.config import ReconstructionConfig
from vggsfm_ns.sfm.extra_points import triangulate_extra_points
from vggsfm_ns.tracks.extra import covisible_neighbours, extra_point_tracks, grid_in_frame, textured
from vggsfm_ns.conventions import resize_transform


def _texture(X: np.ndarray) -> np.ndarray:
    """Rich smooth texture (sum of plane waves with fixed random directions) instead of flat cells."""
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(8, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freqs = rng.uniform(6.0, 16.0, 8)
    phases = rng.uniform(0, 2 * np.pi, (8, 3))
    waves = np.sin((X @ dirs.T) * freqs)  # (N, 8)
    rgb = np.stack([np.sin((X @ dirs.T) * freqs + phases[:, c]).mean(1) for c in range(3)], 1)
    v = 0.5 + 0.35 * rgb + 0.15 * waves.mean(1, keepdims=True)
    return np.clip(v * 255, 0, 255).astype(np.uint8)


@pytest.fixture
def textured_scene(monkeypatch):
    monkeypatch.setattr(ds, "surface_colour", _texture)
    cams = ds.make_cams(6, W=320, H=240, f=280.0, spread=1.0)
    rendered = [ds.render(c) for c in cams]
    depths = [r[0] for r in rendered]
    pts = ds.surface_points(cams, 300, seed=1)
    sfm = ds.build_sfm(cams, pts, depths)
    from vggsfm_ns.types import FrameSet

    frames = FrameSet(names=[f"f{i}.png" for i in range(6)], sizes=np.array([[320, 240]] * 6), paths=[None] * 6,
                      arrays={i: rendered[i][1] for i in range(6)})
    return frames, sfm


def test_grid_and_texture_filter():
    t = resize_transform(200, 100, 100)  # processed 100 x 50
    g = grid_in_frame(t, 10.0)
    assert g.shape == (50, 2) and g[:, 0].min() == pytest.approx(4.5) and g[:, 1].max() == pytest.approx(44.5)
    mask = np.zeros((100, 200), bool)
    mask[:, :100] = True  # left half of the original image is dynamic
    assert (grid_in_frame(t, 10.0, mask)[:, 0] > 49).all()
    flat = np.full((50, 100), 128, np.uint8)
    noisy = flat.copy()
    noisy[:, 50:] = np.random.default_rng(0).integers(0, 255, (50, 50), dtype=np.uint8)
    keep = textured(noisy, g)
    assert keep[g[:, 0] > 55].all() and not keep[g[:, 0] < 45].any()


def test_covisible_neighbours(textured_scene):
    _, sfm = textured_scene
    nb = covisible_neighbours(sfm, 3)
    assert set(nb) == set(range(6)) and all(len(v) == 3 and q not in v for q, v in nb.items())
    inl = sfm.track_inlier_mask.float()
    co = inl @ inl.T
    for q, v in nb.items():
        others = sorted((float(co[q, j]) for j in range(6) if j != q), reverse=True)
        assert [float(co[q, j]) for j in v] == others[:3]


def test_extra_points_land_on_the_surfaces(textured_scene):
    frames, sfm = textured_scene
    cfg = ReconstructionConfig()
    cfg.sfm.extra_pt_pixel_interval = 6
    cfg.sfm.concat_extra_points = True
    cfg.track.max_image_size = 320
    chunks = list(extra_point_tracks(frames, sfm, cfg))
    assert chunks and all(c.num_frames == 6 for c in chunks)
    # every track is seen in its query frame and at least 3 more frames
    for c in chunks:
        assert ((c.vis > 0).sum(0) >= 4).all()
        assert bool((c.vis[c.query_frames, torch.arange(c.num_tracks)] > 0).all())
    out = sfm
    for c in chunks:
        out = triangulate_extra_points(out, c, cfg.sfm, frames=frames)
    extra = out.points3D[out.point_track_ids < 0].numpy()
    assert extra.shape[0] > 10 * sfm.points3D.shape[0], extra.shape  # far denser than the sparse model
    d = ds.surface_distance(extra)
    scale = ds.SCENE_SCALE
    print("extra points", extra.shape[0], "distance to surface: median", np.median(d), "p95", np.percentile(d, 95))
    assert np.median(d) < 1e-3 * scale, f"median distance to the true surface {np.median(d):.2e}"
    assert np.percentile(d, 95) < 5e-3 * scale, f"95th percentile {np.percentile(d, 95):.2e}"
    assert out.reconstruction.num_points3D() == sfm.reconstruction.num_points3D() + extra.shape[0]
    # colours come from the images (query pixels), i.e. the true texture colour of the surface point
    rgb = out.points3D_rgb[out.point_track_ids < 0].numpy().astype(float)
    assert np.median(np.abs(rgb - _texture(extra).astype(float))) < 12
