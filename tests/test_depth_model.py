"""Depth-Anything-V2 wrapper: loading (local save_pretrained dirs, HF ids offline), pre-processing
size rule, prediction shape; and the depth stage end to end with a tiny random network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vggsfm_ns.config import DepthConfig
from vggsfm_ns.errors import CheckpointError, InputError


def tiny_depth_anything(path, metric: bool = False):
    """Save a tiny randomly initialised Depth-Anything(-V2) network (DINOv2 backbone) to ``path``."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    backbone = Dinov2Config(
        image_size=56,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    cfg = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="metric" if metric else "relative",
        max_depth=20 if metric else 1,
    )
    DepthAnythingForDepthEstimation(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_depth_anything(tmp_path_factory.mktemp("tiny_da") / "model")


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((1920, 1080), (1820, 1036)),  # statue / fox portrait: shorter side 1080 -> 1036 (>= 1024)
        ((1039, 1558), (1036, 1540)),  # kitchen
        ((384, 384), (392, 392)),  # dtu: input_size 384 -> 27.4 patches, rounded up to 28
        ((48, 64), (70, 84)),  # small image: upscaled so the shorter side reaches max(h, w)
    ],
)
def test_processing_size_official_rule(hw, expected):
    from vggsfm_ns.depth.model import processing_size

    assert processing_size(*hw) == expected
    assert all(v % 14 == 0 for v in processing_size(*hw))


def test_tiny_model_predicts_input_size_on_cpu(tiny_dir):
    from vggsfm_ns.depth.model import load_depth_model

    model = load_depth_model(str(tiny_dir), device="cpu")
    assert model.device.type == "cpu"
    seen = []
    orig = model.network.forward

    def spy(*a, **k):
        seen.append(tuple(k["pixel_values"].shape))
        return orig(*a, **k)

    model.network.forward = spy
    rng = np.random.default_rng(0)
    for h, w in [(37, 53), (60, 45)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        disp = model.predict(img)
        assert disp.shape == (h, w) and disp.dtype == np.float32
        assert np.isfinite(disp).all() and (disp >= 0).all()
    # the network ran at the official lower-bound size, multiples of 14
    assert seen == [(1, 3) + model.processing_size(37, 53), (1, 3) + model.processing_size(60, 45)]
    assert seen[0][2:] == (56, 70)
    # deterministic
    img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(model.predict(img), model.predict(img))
    with pytest.raises(InputError):
        model.predict(np.zeros((10, 10), np.uint8))


def test_metric_checkpoint_is_inverted(tmp_path):
    import torch

    from vggsfm_ns.depth.model import load_depth_model

    model = load_depth_model(str(tiny_depth_anything(tmp_path / "metric", metric=True)), device="cpu")
    assert model.metric
    img = np.random.default_rng(1).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    x = torch.nn.functional.interpolate(x, size=model.processing_size(28, 28), mode="bicubic", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        depth = model.network(pixel_values=(x - mean) / std).predicted_depth[0]
    # processing size of 28x28 is 28x28, so no output resize: disparity = 1 / metric depth
    assert tuple(depth.shape) == (28, 28)
    disp = model.predict(img)
    valid = depth.numpy() > 1e-6
    np.testing.assert_allclose(disp[valid], 1.0 / depth.numpy()[valid], rtol=1e-4)


def test_missing_model_id_offline_gives_checkpoint_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hfc

    from vggsfm_ns.depth.model import load_depth_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    name = "depth-anything/Depth-Anything-V2-Nonexistent-hf"
    with pytest.raises(CheckpointError) as e:
        load_depth_model(name, device="cpu")
    msg = str(e.value)
    assert name in msg and "`hf download" in msg and "HF_HUB_OFFLINE" in msg


def test_vggsfm_offline_variable_stops_the_depth_download(monkeypatch):
    """``VGGSFM_NS_OFFLINE=1`` alone (README) keeps the depth model from trying the hub."""
    import huggingface_hub.constants as hfc

    from vggsfm_ns.depth.model import load_depth_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("VGGSFM_NS_OFFLINE", "1")
    name = "depth-anything/Depth-Anything-V2-Nonexistent-hf"
    with pytest.raises(CheckpointError, match="offline mode is set") as e:
        load_depth_model(name, device="cpu")
    assert "could not be downloaded" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_depth_model_on_missing_cuda_is_input_error(tiny_dir):
    from vggsfm_ns.depth.model import load_depth_model

    with pytest.raises(InputError, match="CUDA is not available"):
        load_depth_model(str(tiny_dir), device="cuda")


def test_bad_local_directories_give_checkpoint_error(tmp_path, tiny_dir):
    from transformers import Dinov2Config

    from vggsfm_ns.depth.model import load_depth_model

    with pytest.raises(CheckpointError, match="not a directory"):
        load_depth_model(str(tmp_path / "does_not_exist"), device="cpu")
    # config only, no weights
    only_cfg = tmp_path / "only_config"
    only_cfg.mkdir()
    (only_cfg / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="cannot load"):
        load_depth_model(str(only_cfg), device="cpu")
    # a checkpoint of another architecture
    other = tmp_path / "dinov2"
    Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(other)
    with pytest.raises(CheckpointError, match="not Depth-Anything"):
        load_depth_model(str(other), device="cpu")
    # weights that do not match the config
    bad = tmp_path / "mismatch"
    bad.mkdir()
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["backbone_config"]["num_hidden_layers"] = 6
    cfg["backbone_config"]["out_indices"] = [3, 4, 5, 6]
    cfg["backbone_config"].pop("out_features", None)
    cfg["backbone_config"].pop("stage_names", None)
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes((tiny_dir / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="missing"):
        load_depth_model(str(bad), device="cpu")


def test_estimate_depth_with_tiny_network(tiny_dir, tmp_path):
    """The stage runs end to end with a real (tiny, random) network: one map per registered frame,
    of the image's size, finite and non-negative, stored on disk when a work_dir is given."""
    from _depth_scene import make_depth_scene

    from vggsfm_ns.depth.estimate import estimate_depth

    cams, depths, images, frames, sfm = make_depth_scene(n_cams=3, n_points=200, W=64, H=48)
    res = estimate_depth(frames, sfm, DepthConfig(dense_depth=True, depth_model=str(tiny_dir)), device="cpu", work_dir=tmp_path)
    assert [fd.frame for fd in res.frames] == [0, 1, 2]
    for fd in res.frames:
        d = fd.load_depth()
        assert fd.depth is None and fd.path is not None and fd.path.is_file()
        assert d.shape == (48, 64) and d.dtype == np.float32
        assert np.isfinite(d).all() and (d >= 0).all()
        assert fd.num_sparse > 0
        if not fd.accepted:
            assert (d == 0).all()
    assert res.model_id == str(tiny_dir)
