"""The pipeline's decisions: tracker choice, mode choice, device, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vggsfm_ns.api import MIN_FRAMES, choose_mode, choose_tracker, reconstruct, resolve_device
from vggsfm_ns.config import ReconstructionConfig, preset
from vggsfm_ns.errors import CheckpointError, InputError
from vggsfm_ns.types import FrameSet


def _frames(n: int, ordered: bool, sizes=None) -> FrameSet:
    sizes = sizes or [(64, 48)] * n
    arrays = {i: np.zeros((h, w, 3), np.uint8) for i, (w, h) in enumerate(sizes)}
    return FrameSet(names=[f"f{i:03d}.png" for i in range(n)], sizes=sizes, paths=[None] * n, arrays=arrays, ordered=ordered)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_auto_tracker_falls_back_by_input_kind(empty_hf_cache):
    cfg = ReconstructionConfig()
    video = choose_tracker(cfg, _frames(5, ordered=True))
    images = choose_tracker(cfg, _frames(5, ordered=False))
    assert (video.name, images.name) == ("klt", "sift")
    assert video.checkpoint is None and "no VGGSfM checkpoint" in video.reason and "--checkpoint" in video.reason


def test_auto_tracker_uses_cached_checkpoint(empty_hf_cache):
    snap = empty_hf_cache / "hf" / "models--facebook--VGGSfM" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "vggsfm_v2_0_0.bin").write_bytes(b"x")
    refs = empty_hf_cache / "hf" / "models--facebook--VGGSfM" / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    choice = choose_tracker(ReconstructionConfig(), _frames(5, ordered=True))
    assert choice.name == "vggsfm" and choice.checkpoint == snap / "vggsfm_v2_0_0.bin"


def test_explicit_checkpoint_missing_is_an_error_not_a_fallback(empty_hf_cache):
    cfg = ReconstructionConfig()
    cfg.track.checkpoint = empty_hf_cache / "nope.bin"
    with pytest.raises(CheckpointError, match="nope.bin"):
        choose_tracker(cfg, _frames(5, ordered=False))
    cfg = ReconstructionConfig()
    cfg.track.tracker = "vggsfm"
    with pytest.raises(CheckpointError, match="huggingface.co/facebook/VGGSfM"):
        choose_tracker(cfg, _frames(5, ordered=False))


def test_explicit_weight_free_tracker_and_unknown_name(empty_hf_cache):
    cfg = ReconstructionConfig()
    cfg.track.tracker = "klt"
    assert choose_tracker(cfg, _frames(5, ordered=False)).name == "klt"
    cfg.track.tracker = "superglue"
    with pytest.raises(InputError, match="superglue"):
        choose_tracker(cfg, _frames(5, ordered=False))


def test_mode_auto_threshold():
    cfg = ReconstructionConfig()
    n = cfg.video.auto_min_frames
    assert choose_mode(cfg, _frames(n, ordered=True)) == "sparse"
    assert choose_mode(cfg, _frames(n + 1, ordered=True)) == "video"
    assert choose_mode(cfg, _frames(n + 1, ordered=False)) == "sparse"
    assert choose_mode(preset("video"), _frames(10, ordered=False)) == "video"
    cfg.mode = "sparse"
    assert choose_mode(cfg, _frames(n + 1, ordered=True)) == "sparse"
    cfg.mode = "fast"
    with pytest.raises(InputError):
        choose_mode(cfg, _frames(5, ordered=True))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError):
        resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            resolve_device("cuda")


def test_reconstruct_refuses_too_few_frames_and_shared_camera_with_mixed_sizes(empty_hf_cache):
    with pytest.raises(InputError, match=f"at least {MIN_FRAMES}"):
        reconstruct(_frames(MIN_FRAMES - 1, ordered=False))
    cfg = ReconstructionConfig()
    cfg.camera.shared_camera = True
    # the frame that differs is named, with both sizes (io.frames.check_uniform_size)
    with pytest.raises(InputError, match=r"is 48x64 but .* is 64x48 \(2 different sizes\); --shared-camera needs all frames to have one size"):
        reconstruct(_frames(4, ordered=False, sizes=[(64, 48), (64, 48), (48, 64), (64, 48)]), cfg)


def test_missing_depth_model_fails_before_the_sfm(empty_hf_cache, monkeypatch):
    """--dense-depth with a model that is not there: CheckpointError before any tracking."""
    import vggsfm_ns.api as api_mod

    ran = []
    monkeypatch.setattr(api_mod, "_run_tracker", lambda *a, **k: ran.append(1))
    for name in (str(empty_hf_cache / "no_such_dir"), "depth-anything/Depth-Anything-V2-Nonexistent-hf"):
        cfg = preset("dense")
        cfg.track.tracker = "sift"
        cfg.depth.depth_model = name
        with pytest.raises(CheckpointError, match="depth model"):
            reconstruct(_frames(4, ordered=False), cfg)
    assert ran == []
