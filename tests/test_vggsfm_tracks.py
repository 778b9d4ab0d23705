"""The learned track source on a few real frames (deterministic weights, CPU, small frames).

The weights are the golden-test pseudo-random ones, so the tracks are not meaningful; the tests
check the contract: shapes, query frames, pinning of every track to its query point, invisibility
outside the content box, and that memory chunking does not change the result.
"""

from __future__ import annotations

from typing import List

import pytest
import torch
from _vggsfm_golden import golden_model
from PIL import Image

from vggsfm_ns.config import TrackConfig
from vggsfm_ns.tracks.vggsfm import content_ranges, track_vggsfm
from vggsfm_ns.types import FrameSet

IMG = 128  # smallest size the 5-level coarse pyramid accepts


@pytest.fixture(scope="module")
def frames(shared_data) -> FrameSet:
    paths = sorted((shared_data / "kitchen" / "images").glob("*.png"))[:4]
    assert len(paths) == 4
    sizes = [Image.open(p).size for p in paths]
    return FrameSet(names=[p.name for p in paths], sizes=sizes, paths=paths, source=paths[0].parent)


class RandomDetector:
    """Random valid pixels with sub-pixel offsets; records the invalid masks it was given."""

    def __init__(self):
        self.masks: List[torch.Tensor] = []

    def __call__(self, image, invalid, max_points):
        self.masks.append(invalid.clone())
        ys, xs = torch.nonzero(~invalid, as_tuple=True)
        g = torch.Generator().manual_seed(len(self.masks))
        idx = torch.randperm(len(xs), generator=g)[:max_points]
        off = torch.rand(len(idx), 2, generator=g) * 0.8 - 0.4
        return torch.stack([xs[idx], ys[idx]], 1).float() + off


def _cfg(**kw) -> TrackConfig:
    base = dict(img_size=IMG, max_query_pts=12, query_frame_num=2, complement_nonvisible=False, min_visible=1)
    base.update(kw)
    return TrackConfig(**base)


def _run(frames, cfg, **kw):
    det = RandomDetector()
    args = dict(predict_camera=False, detector=det, coarse_iters=2, fine_iters=2)
    args.update(kw)
    ts, prior = track_vggsfm(frames, golden_model(), cfg, torch.device("cpu"), **args)
    return ts, prior, det


def test_track_vggsfm_contract(frames):
    cfg = _cfg()
    ts, prior, det = _run(frames, cfg, query_frames=[2, 0], coarse_iters=1, fine_iters=1)
    S = len(frames)
    N = cfg.max_query_pts * 2
    assert prior is None
    assert ts.source == "vggsfm"
    assert ts.tracks.shape == (S, N, 2) and ts.vis.shape == (S, N) and ts.score.shape == (S, N)
    assert ts.tracks.dtype == torch.float32 and ts.query_frames.dtype == torch.int64
    assert ts.query_frames.tolist() == [2] * cfg.max_query_pts + [0] * cfg.max_query_pts
    assert len(ts.transforms) == S and all(t.size == (IMG, IMG) for t in ts.transforms)
    # every track sits on its query point in its query frame (the detector's output order is kept)
    n = ts.tracks.shape[1]
    own = ts.tracks[ts.query_frames, torch.arange(n)]
    # regenerate the detector outputs from the recorded masks
    ref = RandomDetector()
    pts = torch.cat([ref(None, m, cfg.max_query_pts) for m in det.masks])
    err = (own - pts).abs().max().item()
    assert err <= 1e-4, f"query-frame positions differ from the query points by {err:.3g} px"
    # the score of the query frame is 1 (official) and vis is a probability
    assert torch.equal(ts.score[ts.query_frames, torch.arange(n)], torch.ones(n))
    assert ((ts.vis >= 0) & (ts.vis <= 1)).all()
    # no query point in the padding (+4 px official margin): kitchen is landscape, padded on y
    r = content_ranges(ts.transforms)
    for m, q in zip(det.masks, [2, 0]):
        ys = torch.arange(IMG, dtype=torch.float32)
        outside_rows = (ys < r[q, 1]) | (ys > r[q, 3])
        assert outside_rows.any() and m[outside_rows].all() and not m[~outside_rows].all()
    # tracks outside a frame's content box are invisible
    x, y = ts.tracks[..., 0], ts.tracks[..., 1]
    outside = (x < r[:, 0:1]) | (x > r[:, 2:3]) | (y < r[:, 1:2]) | (y > r[:, 3:4])
    assert (ts.vis[outside] == 0).all()


def test_content_box_visibility_rule():
    """Tracks outside the content box (minus the 4 px margin on padded sides) get vis 0."""
    from vggsfm_ns.conventions import square_pad_transform
    from vggsfm_ns.tracks.vggsfm import _Runner

    S, N = 3, 5
    tf = square_pad_transform(200, 100, 100)  # 100x50 content centred in a 100x100 square: rows 25..74
    ranges = content_ranges([tf] * S)
    assert ranges[0].tolist() == [-0.5, 25 + 4 - 0.5, 99.5, 75 - 4 - 0.5]
    ys = torch.tensor([10.0, 28.4, 28.6, 70.4, 70.6])
    tracks = torch.stack([torch.full((N,), 50.0), ys], -1).expand(S, N, 2).clone()

    class FakeTracker:
        def __call__(self, images, pts, **kw):
            order = kw["frame_order"]
            t = tracks.index_select(0, order)[None]  # logical order, like the network
            return t, t, torch.ones(1, S, N), torch.ones(1, S, N)

    cfg = _cfg()
    runner = _Runner(FakeTracker(), torch.zeros(1, S, 3, 100, 100), None, None, ranges, None, cfg, None, 10**6, torch.device("cpu"), (1, 1))
    tr, vis, score = runner.track(1, torch.zeros(N, 2), seed=0)
    assert torch.equal(tr, tracks)
    assert vis[0].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]


def test_track_vggsfm_chunking_identical(frames, monkeypatch):
    from vggsfm_ns.networks.blocks import AttnBlock

    calls = []
    orig = AttnBlock._forward

    def counting(self, x):
        calls.append(x.shape[0])
        return orig(self, x)

    monkeypatch.setattr(AttnBlock, "_forward", counting)
    cfg = _cfg(max_query_pts=40)
    a, _, _ = _run(frames, cfg, query_frames=[1], coarse_iters=1, fine_iters=1)
    n_unchunked = len(calls)
    b, _, _ = _run(frames, cfg, query_frames=[1], chunk_tokens=8, coarse_iters=1, fine_iters=1)
    assert len(calls) - n_unchunked > 2 * n_unchunked, "the chunked run did not split the attention blocks"
    for name in ("tracks", "vis", "score"):
        d = (getattr(a, name) - getattr(b, name)).abs().max().item()
        assert d == 0.0, f"chunked {name} differ from unchunked by {d}"


def test_track_vggsfm_split_calls_keep_order(frames):
    """Oversized calls are split into independent groups (official chunking); order is restored."""
    cfg = _cfg(max_query_pts=8)
    ts, _, det = _run(frames, cfg, query_frames=[3], call_tokens=4 * 5, coarse_iters=1, fine_iters=1)
    pts = RandomDetector()(None, det.masks[0], cfg.max_query_pts)
    err = (ts.tracks[3] - pts).abs().max().item()
    assert ts.tracks.shape == (4, 8, 2) and err <= 1e-4


def test_track_vggsfm_complement_pass(frames):
    """Every frame below ``min_visible``: one extra query frame, then a final trial on all of them."""
    cfg = _cfg(max_query_pts=6, complement_nonvisible=True, min_visible=10**6)
    ts, _, det = _run(frames, cfg, query_frames=[0], coarse_iters=1, fine_iters=1)
    counts = torch.bincount(ts.query_frames, minlength=4).tolist()
    # initial query 0 (6 pts), complement query 0 (6), final trial on 0..3 with half the points (3 each)
    assert counts == [6 + 6 + 3, 3, 3, 3], counts


def test_track_vggsfm_too_few_frames(frames):
    from vggsfm_ns.errors import InputError

    with pytest.raises(InputError):
        track_vggsfm(frames.subset([0]), golden_model(), _cfg(), torch.device("cpu"), detector=RandomDetector())


@pytest.mark.slow
def test_track_vggsfm_default_path(frames):
    """DINO ranking, averaged camera prior and the project's query-point detector (grid)."""
    from vggsfm_ns.networks import rank_frames_by_dino

    cfg = _cfg(query_method="grid", max_query_pts=16, complement_nonvisible=False)
    ts, prior = track_vggsfm(frames, golden_model(), cfg, torch.device("cpu"), coarse_iters=1, fine_iters=1)
    S = len(frames)
    assert prior is not None and prior.extrinsics.shape == (S, 3, 4) and prior.intrinsics.shape == (S, 3, 3)
    assert torch.allclose(prior.extrinsics[0], torch.eye(3, 4, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(prior.intrinsics[:, 0, 2], torch.full((S,), (IMG - 1) / 2, dtype=torch.float64))
    from vggsfm_ns import preprocess

    images = preprocess.load_processed(frames, preprocess.square_transforms(frames, IMG))
    expected = rank_frames_by_dino(images, golden_model().camera_predictor)[: cfg.query_frame_num]
    assert sorted(set(ts.query_frames.tolist())) == sorted(expected.tolist())
    assert torch.unique_consecutive(ts.query_frames).tolist() == expected.tolist()
