"""SIFT tracks: the matcher against brute force, the conflict-free union-find, the TrackSet contract,
and accuracy against the real ground-truth cameras of DTU scan24."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vggsfm_ns.config import TrackConfig
from vggsfm_ns.conventions import corner_to_center, opengl_c2w_to_opencv_w2c
from vggsfm_ns.errors import InputError
from vggsfm_ns.geometry.epipolar import ransac_iterations
from vggsfm_ns.progress import Stage
from vggsfm_ns.tracks.sift import (
    MAX_RANSAC_ITERATIONS,
    RANSAC_BOUND_MULTIPLIER,
    _conflict_free_components,
    _Features,
    _match_and_verify,
    _match_descriptors,
    _sampson,
    track_sift,
)
from vggsfm_ns.types import FrameSet

# ------------------------------------------------------------------------------------------
# matcher
# ------------------------------------------------------------------------------------------


def _brute_force(d1, d2, ratio, max_dist):
    """Reference: mutual nearest neighbours + ratio + distance test with plain numpy."""
    dist = np.sqrt(np.maximum(2 - 2 * d1 @ d2.T, 0))
    best = dist.argmin(1)
    back = dist.argmin(0)
    srt = np.sort(dist, 1)
    out = set()
    for i, j in enumerate(best):
        if back[j] == i and srt[i, 0] < max_dist and srt[i, 0] < ratio * srt[i, 1]:
            out.add((i, int(j)))
    return out


def _descriptors(seed=0, n_common=300, n1=200, n2=250):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n_common, 128, generator=g) ** 3
    d1 = torch.cat([base + 0.03 * torch.rand(n_common, 128, generator=g), torch.rand(n1, 128, generator=g) ** 3])
    d2 = torch.cat([torch.rand(n2, 128, generator=g) ** 3, base + 0.03 * torch.rand(n_common, 128, generator=g)])
    p1, p2 = torch.randperm(len(d1), generator=g), torch.randperm(len(d2), generator=g)
    return torch.nn.functional.normalize(d1[p1], dim=1), torch.nn.functional.normalize(d2[p2], dim=1)


@pytest.mark.parametrize("bf16", [False, True])
def test_match_descriptors_equals_brute_force(bf16):
    d1, d2 = _descriptors()
    ref = _brute_force(d1.double().numpy(), d2.double().numpy(), 0.8, 0.7)
    m, r = _match_descriptors(d1, d2, 0.8, 0.7, bf16=bf16, block=64, group=16)
    got = set(map(tuple, m.tolist()))
    assert len(ref) >= 250
    if bf16:  # bfloat16 similarities may flip borderline ratio tests
        assert len(got ^ ref) <= 0.01 * len(ref)
    else:
        assert got == ref
    assert r.shape == (len(m),) and (r < 0.8).all()


def test_match_descriptors_guided_band():
    d1, d2 = _descriptors(n_common=200)
    rng = np.random.default_rng(0)
    x1 = torch.from_numpy(rng.uniform(0, 500, (len(d1), 2))).float()
    x2 = torch.from_numpy(rng.uniform(0, 500, (len(d2), 2))).float()
    F = np.array([[0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # pure x-translation: same row
    m, _ = _match_descriptors(d1, d2, 0.8, 0.7, bf16=False, band=(F, x1, x2, 2.0))
    # every guided match lies within the band (Sampson distance of this F = |dy| / sqrt(2))
    dy = (x1[m[:, 0], 1] - x2[m[:, 1], 1]).abs()
    assert (dy <= 2.0 * np.sqrt(2) + 1e-4).all()
    # and equals brute force restricted to the band
    d = np.sqrt(np.maximum(2 - 2 * d1.double().numpy() @ d2.double().numpy().T, 0))
    band = np.abs(x1[:, 1].numpy()[:, None] - x2[:, 1].numpy()[None]) <= 2.0 * np.sqrt(2)
    d[~band] = 10.0
    best, back = d.argmin(1), d.argmin(0)
    srt = np.sort(d, 1)
    ref = {(i, int(j)) for i, j in enumerate(best) if back[j] == i and srt[i, 0] < 0.7 and (srt[i, 0] < 0.8 * srt[i, 1])}
    assert set(map(tuple, m.tolist())) == ref


def test_match_descriptors_empty():
    m, r = _match_descriptors(torch.zeros(0, 128), torch.rand(5, 128), 0.8, 0.7, bf16=False)
    assert m.shape == (0, 2) and r.shape == (0,)


def test_conflict_free_components():
    # nodes: frame 0: 0, 1; frame 1: 2, 3; frame 2: 4, 5
    frame_of = np.array([0, 0, 1, 1, 2, 2])
    # good chain 0-2-4, then a wrong edge 1-2 (would put 0 and 1, both in frame 0, together),
    # then 1-3, 3-5; the wrong edge 4-3 would join two tracks sharing frames 1 and 2
    edges = np.array([[0, 2], [2, 4], [1, 2], [1, 3], [3, 5], [4, 3]])
    comp = _conflict_free_components(6, edges, frame_of)
    assert comp[0] == comp[2] == comp[4]
    assert comp[1] == comp[3] == comp[5]
    assert comp[0] != comp[1]
    # plain connected components would have merged everything
    many = np.arange(70)  # more frames than a 64-bit mask
    comp = _conflict_free_components(70, np.stack([many[:-1], many[1:]], 1), many)
    assert len(set(comp.tolist())) == 1

    # labels are the smallest node of each set
    assert comp[0] == 0 and set(_conflict_free_components(6, edges, frame_of).tolist()) == {0, 1}


def _reference_union_find(num_nodes, edges, frame_of):
    """Ordered union-find over every edge (the definition), as sets of nodes."""
    parent = list(range(num_nodes))
    frames = [{int(f)} for f in frame_of]

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for a, b in edges.tolist():
        ra, rb = find(a), find(b)
        if ra != rb and not frames[ra] & frames[rb]:
            parent[rb] = ra
            frames[ra] |= frames[rb]
    groups = {}
    for n in range(num_nodes):
        groups.setdefault(find(n), set()).add(n)
    return sorted(tuple(sorted(g)) for g in groups.values())


@pytest.mark.parametrize("seed,wrong_ratio", [(0, 0.0), (1, 0.001), (2, 0.004), (3, 0.03)])
def test_conflict_free_components_matches_union_find_over_all_edges(seed, wrong_ratio):
    """Skipping the union-find in conflict-free components gives the same sets as running it
    over every edge in priority order (random match graphs with wrong matches)."""
    rng = np.random.default_rng(seed)
    S, per = 12, 40
    frame_of = np.repeat(np.arange(S), per)
    n = S * per
    # true tracks: keypoint k of every frame; matches along them, plus some wrong matches (from
    # none, where every component is conflict-free, to enough to glue most tracks together)
    a = rng.integers(0, n, 3000)
    b = (frame_of[a] + rng.integers(1, S, a.size)) % S * per + a % per
    wrong = rng.random(a.size) < wrong_ratio
    b[wrong] = rng.integers(0, n, int(wrong.sum()))
    edges = np.stack([a, b], 1)
    edges = edges[frame_of[edges[:, 0]] != frame_of[edges[:, 1]]]
    comp = _conflict_free_components(n, edges, frame_of)
    groups = {}
    for node, c in enumerate(comp.tolist()):
        groups.setdefault(c, set()).add(node)
    assert all(min(g) == c for c, g in groups.items())
    assert sorted(tuple(sorted(g)) for g in groups.values()) == _reference_union_find(n, edges, frame_of)
    # no set holds two keypoints of one frame
    assert all(len({int(frame_of[x]) for x in g}) == len(g) for g in groups.values())


def test_sampson():
    F = np.array([[0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
    x1 = np.array([[10.0, 20.0], [5.0, 5.0]])
    x2 = np.array([[30.0, 20.0], [9.0, 8.0]])
    np.testing.assert_allclose(_sampson(F, x1, x2), [0.0, 3.0 / np.sqrt(2)], atol=1e-9)



def _two_view_features(num_inliers: int, num_outliers: int, seed: int) -> _Features:
    """Two 640x480 frames whose features all match one to one (equal descriptors): the first
    ``num_inliers`` are projections of 3D points (0.3 px noise), the rest random pixels in frame 1."""
    rng = np.random.default_rng(seed)
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    X = np.c_[rng.uniform(-1.5, 1.5, (num_inliers, 2)), rng.uniform(4, 8, num_inliers)]
    a = np.deg2rad(8.0)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    t = np.array([-0.8, 0.05, 0.1])
    x0 = (X / X[:, 2:]) @ K.T
    Y = X @ R.T + t
    x1 = (Y / Y[:, 2:]) @ K.T
    n = num_inliers + num_outliers
    xy0 = np.r_[x0[:, :2], rng.uniform([0, 0], [640, 480], (num_outliers, 2))] + rng.normal(0, 0.3, (n, 2))
    xy1 = np.r_[x1[:, :2], rng.uniform([0, 0], [640, 480], (num_outliers, 2))] + rng.normal(0, 0.3, (n, 2))
    desc = torch.nn.functional.normalize(torch.from_numpy(rng.random((n, 128)) ** 3).float(), dim=1)
    return _Features(
        xy=[xy0.astype(np.float32), xy1.astype(np.float32)],
        scale=[np.ones(n, np.float32)] * 2,
        desc=[desc, desc.clone()],
        sizes=[(640, 480)] * 2,
    )


def test_verification_ransac_bounded_by_min_inliers(monkeypatch):
    """A pair can only be kept with ``min_inliers`` inliers, so its RANSAC stops after the
    samples that would find such a model (times COLMAP's multiplier 3) instead of 10,000: a pair of
    mostly wrong matches is searched briefly and dropped; a pair with just ``min_inliers`` true
    matches among outliers is still verified, over ten seeds."""
    import poselib

    calls = []
    real = poselib.estimate_fundamental

    def spy(x1, x2, opts, bundle):
        calls.append((len(x1), opts["max_iterations"]))
        return real(x1, x2, opts, bundle)

    monkeypatch.setattr(poselib, "estimate_fundamental", spy)
    with Stage(None, "verify") as stage:
        verified, _ = _match_and_verify(_two_view_features(8, 16, 0), [(0, 1)], False, 1.0, 20, 0, stage, guided=False)
    assert verified == {}
    bound = math.ceil(RANSAC_BOUND_MULTIPLIER * ransac_iterations(20, 24, 7, 0.9999))
    assert calls == [(24, max(50, bound))] and bound < 200
    for seed in range(10):
        calls.clear()
        with Stage(None, "verify") as stage:
            verified, fmats = _match_and_verify(_two_view_features(20, 10, seed), [(0, 1)], False, 1.0, 20, seed, stage, guided=False)
        assert calls[0][0] == 30 and calls[0][1] < MAX_RANSAC_ITERATIONS
        m = verified[(0, 1)][0]
        assert len(m) >= 20 and (m[:, 0] == m[:, 1]).all() and (m[:, 0] < 20).sum() >= 19
    # below the 7 matches of a minimal sample a pair is dropped before RANSAC, whatever min_inliers
    calls.clear()
    with Stage(None, "verify") as stage:
        assert _match_and_verify(_two_view_features(6, 0, 0), [(0, 1)], False, 1.0, 5, 0, stage, guided=False)[0] == {}
    assert calls == []

# ------------------------------------------------------------------------------------------
# DTU scan24 (real ground-truth cameras)
# ------------------------------------------------------------------------------------------


def _dtu(root: Path):
    meta = json.loads((root / "transforms.json").read_text())
    frames = meta["frames"]
    paths = [root / f["file_path"] for f in frames]
    fs = FrameSet(names=[p.name for p in paths], sizes=np.array([[f["w"], f["h"]] for f in frames]), paths=paths)
    K, E = [], []
    for f in frames:
        cx, cy = corner_to_center(np.array([f["cx"], f["cy"]]))  # transforms.json: pixel-corner
        K.append(np.array([[f["fl_x"], 0, cx], [0, f["fl_y"], cy], [0, 0, 1.0]]))
        E.append(opengl_c2w_to_opencv_w2c(np.array(f["transform_matrix"])))
    return fs, K, E


def _gt_fundamental(K, E, i, j):
    """F with ``x_j^T F x_i = 0`` from OpenCV world-to-camera extrinsics."""
    R = E[j][:, :3] @ E[i][:, :3].T
    t = E[j][:, 3] - R @ E[i][:, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(K[j]).T @ tx @ R @ np.linalg.inv(K[i])


@pytest.fixture(scope="module")
def dtu_tracks(shared_data):
    root = shared_data / "dtu_scan24"
    if not (root / "transforms.json").exists():
        pytest.skip("dtu_scan24 not in the shared data")
    fs, K, E = _dtu(root)
    t0, c0 = time.perf_counter(), time.process_time()
    ts = track_sift(fs, TrackConfig())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\nSIFT tracks on dtu_scan24 ({len(fs)} x 384^2): {wall:.1f} s wall, {cpu:.1f} s CPU, "
          f"{ts.num_tracks} tracks, {int((ts.vis > 0.05).sum())} observations")
    return fs, K, E, ts


def test_sift_dtu_contract(dtu_tracks):
    fs, _, _, ts = dtu_tracks
    S, N = len(fs), ts.num_tracks
    assert ts.source == "sift" and ts.score is None
    assert ts.tracks.shape == (S, N, 2) and ts.vis.shape == (S, N) and ts.query_frames.shape == (N,)
    assert set(torch.unique(ts.vis).tolist()) <= {0.0, 1.0}
    assert ts.transforms[0].size == (384, 384) and ts.transforms[0].scale == 1.0
    vis = ts.vis > 0.05
    assert (vis[ts.query_frames, torch.arange(N)]).all()  # anchored in its query frame
    assert (vis.sum(0) >= 3).all()
    assert (ts.tracks >= -0.5).all() and (ts.tracks <= 383.5).all()


def test_sift_dtu_epipolar_accuracy_and_coverage(dtu_tracks):
    _, K, E, ts = dtu_tracks
    tr, vis, qf = ts.tracks.numpy().astype(np.float64), ts.vis.numpy() > 0.05, ts.query_frames.numpy()
    S = tr.shape[0]
    d = []
    for f in range(S):
        for q in np.unique(qf):
            c = np.nonzero(vis[f] & (qf == q))[0]
            if f != q and c.size:
                d.append(_sampson(_gt_fundamental(K, E, q, f), tr[q, c], tr[f, c]))
    d = np.concatenate(d)
    counts = vis.sum(1)
    print(f"\nDTU: {d.size} observations vs GT epipolar geometry: {(d < 2).mean() * 100:.2f} % < 2 px, "
          f"{(d < 1).mean() * 100:.2f} % < 1 px, median {np.median(d):.3f} px; "
          f"tracks per frame min {counts.min()} median {int(np.median(counts))}")
    assert d.size > 20000
    assert (d < 2.0).mean() >= 0.95
    assert np.median(d) < 0.5
    assert counts.min() >= 200


# ------------------------------------------------------------------------------------------
# small synthetic sets: order independence, masks, errors
# ------------------------------------------------------------------------------------------


def _subset(shared_data, idx):
    root = shared_data / "dtu_scan24"
    if not (root / "transforms.json").exists():
        pytest.skip("dtu_scan24 not in the shared data")
    fs, K, E = _dtu(root)
    return fs.subset(idx), [K[i] for i in idx], [E[i] for i in idx]


def test_sift_small_set_all_pairs_and_masks(shared_data, tmp_path):
    from PIL import Image

    fs, K, E = _subset(shared_data, [20, 21, 22, 23, 24, 25])
    box = (150, 150, 250, 250)
    masks = []
    for i in range(len(fs)):
        m = np.zeros((384, 384), np.uint8)
        m[box[1] : box[3], box[0] : box[2]] = 255
        Image.fromarray(m).save(tmp_path / f"m{i}.png")
        masks.append(tmp_path / f"m{i}.png")
    fs.mask_paths = masks
    from vggsfm_ns.progress import PipelineObserver

    class Bars(PipelineObserver):
        def __init__(self):
            self.total, self.done = {}, {}

        def stage_started(self, name, total=None):
            self.total[name] = total

        def stage_advanced(self, name, advance=1, note=None):
            self.done[name] = self.done.get(name, 0) + advance

    bars = Bars()
    ts = track_sift(fs, TrackConfig(query_frame_num=2, min_visible=100), observer=bars)
    # progress bars with known totals, filled exactly: 6 frames, then all 15 pairs of 6 frames
    assert bars.total == {"SIFT features": 6, "SIFT matching": 15} and bars.done == bars.total
    tr, vis = ts.tracks.numpy(), ts.vis.numpy() > 0.05
    assert ts.num_tracks > 300
    ix, iy = np.rint(tr[..., 0]), np.rint(tr[..., 1])
    inside = (ix >= box[0]) & (ix < box[2]) & (iy >= box[1]) & (iy < box[3])
    assert not (vis & inside).any()
    qf = ts.query_frames.numpy()
    d = np.concatenate([
        _sampson(_gt_fundamental(K, E, q, f), tr[q, c].astype(np.float64), tr[f, c].astype(np.float64))
        for f in range(len(fs)) for q in np.unique(qf) for c in [np.nonzero(vis[f] & (qf == q))[0]] if f != q and c.size
    ])
    assert (d < 2).mean() >= 0.95


def test_sift_bad_input(shared_data):
    fs, _, _ = _subset(shared_data, [0])
    with pytest.raises(InputError):
        track_sift(fs, TrackConfig())
    fs2, _, _ = _subset(shared_data, [0, 1, 2])
    with pytest.raises(InputError):
        track_sift(fs2, TrackConfig(), query_frames=[7])
    with pytest.raises(InputError, match="sift_partners"):
        track_sift(fs2, TrackConfig(sift_partners=0))
    with pytest.raises(InputError, match="sift_octave_layers"):
        track_sift(fs2, TrackConfig(sift_octave_layers=0))


def test_sift_partners_sets_the_matched_pairs(shared_data, monkeypatch):
    """``sift_partners`` frames per frame are matched (plus the spanning tree), all pairs once a frame
    has that many others."""
    import vggsfm_ns.tracks.sift as sift_mod

    fs, _, _ = _subset(shared_data, list(range(0, 40, 4)))  # 10 frames
    seen = []

    def record(feats, pairs, *args, **kwargs):
        seen.append(list(pairs))
        raise RuntimeError("stop after pair selection")

    monkeypatch.setattr(sift_mod, "_match_and_verify", record)
    for partners in (3, 9):
        with pytest.raises(RuntimeError, match="stop after"):
            track_sift(fs, TrackConfig(sift_partners=partners))
    few, every = seen
    assert len(every) == 45 and len(set(every)) == 45
    degree = np.bincount(np.array(few).ravel(), minlength=10)
    assert degree.min() >= 3 and 15 <= len(few) <= 30 + 9, (degree, len(few))


def _spy_layers(monkeypatch):
    """Record the layers per octave and the feature counts of every extraction pass."""
    import vggsfm_ns.tracks.sift as sift_mod

    calls = []
    extract = sift_mod._extract_all

    def spy(*args, **kwargs):
        feats = extract(*args, **kwargs)
        calls.append((args[5] if len(args) > 5 else kwargs["octave_layers"], feats.counts))
        return feats

    monkeypatch.setattr(sift_mod, "_extract_all", spy)
    return calls


def test_sift_two_octave_layers_fall_back_to_three_when_pairs_do_not_join(shared_data, monkeypatch):
    """cake (8 wide-baseline frames): with 2 layers per octave the verified pairs are three
    disjoint pairs and no track reaches 3 frames, so the tracker extracts and matches again with 3
    layers, and returns exactly the tracks of a 3-layer run. On DTU frames, whose pairs join with 2
    layers, there is one pass with a quarter fewer features."""
    from vggsfm_ns.io.frames import load_frames
    from vggsfm_ns.progress import PipelineObserver

    root = shared_data / "cake" / "images"
    if not root.is_dir():
        pytest.skip("cake not in the shared data")
    cake = load_frames(root)

    class Messages(PipelineObserver):
        def __init__(self):
            self.texts, self.stages = [], []

        def message(self, text, level="info"):
            self.texts.append(text)

        def stage_started(self, name, total=None):
            self.stages.append(name)

    calls = _spy_layers(monkeypatch)
    msgs = Messages()
    cfg = TrackConfig(sift_octave_layers=2, sift_partners=6, sift_small_frame=0, max_image_size=768)
    cheap = track_sift(cake, cfg, observer=msgs)
    assert [c[0] for c in calls] == [2, 3]
    assert msgs.stages == ["SIFT features", "SIFT matching", "SIFT features (3 layers)", "SIFT matching (3 layers)"]
    assert len(msgs.texts) == 1 and "join only 2 of 8 frames" in msgs.texts[0]
    cfg.sift_octave_layers = 3
    full = track_sift(cake, cfg)
    assert [c[0] for c in calls] == [2, 3, 3]
    assert full.num_tracks >= 30 and (full.vis.sum(0) >= 3).all()
    assert torch.equal(cheap.tracks, full.tracks) and torch.equal(cheap.vis, full.vis)

    # DTU: 2 layers join every frame, one pass, fewer features
    fs, _, _ = _subset(shared_data, list(range(0, 20, 2)))
    calls.clear()
    cfg.sift_octave_layers = 2
    two = track_sift(fs, cfg)
    assert [c[0] for c in calls] == [2]
    cfg.sift_octave_layers = 3
    track_sift(fs, cfg)
    ratio = calls[0][1].sum() / calls[1][1].sum()
    assert 0.6 <= ratio <= 0.85, ratio
    assert two.num_tracks >= 300 and (two.vis.sum(0) >= 3).all()


def _sampson_band_reference(d1, d2, x1, x2, F, thr):
    """Brute-force mutual + ratio matching restricted to the Sampson band of ``F``."""
    d = np.sqrt(np.maximum(2 - 2 * d1.double().numpy() @ d2.double().numpy().T, 0))
    h1 = np.concatenate([x1.double().numpy(), np.ones((len(x1), 1))], 1)
    h2 = np.concatenate([x2.double().numpy(), np.ones((len(x2), 1))], 1)
    l2, l1 = h1 @ F.T, h2 @ F
    e = l2 @ h2.T
    den = (l2[:, :2] ** 2).sum(1)[:, None] + (l1[:, :2] ** 2).sum(1)[None]
    d[e * e > thr * thr * den] = 10.0
    best, back = d.argmin(1), d.argmin(0)
    srt = np.sort(d, 1)
    return {
        (i, int(j))
        for i, j in enumerate(best)
        if back[j] == i and srt[i, 0] < 0.7 and srt[i, 0] < 0.8 * srt[i, 1]
    }


@pytest.mark.parametrize("epipole", ["inside", "outside", "forward"])
def test_match_in_band_equals_dense_band(epipole):
    """The blocked band matcher returns exactly the brute-force band-restricted matches for
    general fundamental matrices (epipole inside the image, outside it, forward motion)."""
    d1, d2 = _descriptors(n_common=300)
    rng = np.random.default_rng(3)
    K = np.array([[400.0, 0, 250], [0, 400.0, 250], [0, 0, 1]])
    t = {"inside": [0.1, 0.05, 1.0], "outside": [1.0, 0.3, 0.2], "forward": [0.0, 0.0, 1.0]}[epipole]
    ang = rng.normal(size=3) * 0.05
    import cv2

    R = cv2.Rodrigues(ang)[0]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    Kinv = np.linalg.inv(K)
    F = Kinv.T @ tx @ R @ Kinv
    F /= np.abs(F).max()
    x1 = torch.from_numpy(rng.uniform(0, 500, (len(d1), 2))).float()
    x2 = torch.from_numpy(rng.uniform(0, 500, (len(d2), 2))).float()
    m, _ = _match_descriptors(d1, d2, 0.8, 0.7, bf16=False, band=(F, x1, x2, 4.0))
    ref = _sampson_band_reference(d1, d2, x1, x2, F, 4.0)
    assert len(ref) > 0
    assert set(map(tuple, m.tolist())) == ref
