"""Strict loading of official-layout state dicts into :class:`VGGSfMModel` (manifest in the golden folder)."""

from __future__ import annotations

import json

import pytest
import torch
from _vggsfm_golden import golden_model, manifest_path

from vggsfm_ns.errors import CheckpointError
from vggsfm_ns.networks import VGGSfMModel, deterministic_state_dict
from vggsfm_ns.networks.deterministic import deterministic_tensor, weight_rule


@pytest.fixture(scope="module")
def manifest():
    return json.loads(manifest_path().read_text())


def test_golden_generator_matches_manifest(manifest):
    bad = []
    for e in manifest["entries"]:
        t = deterministic_tensor(e["key"], e["shape"])
        s = float(t.double().sum())
        if abs(s - e["det_sum"]) > 1e-9 * max(1.0, abs(e["det_sum"])) or t.flatten()[:4].tolist() != e["det_first4"]:
            bad.append(e["key"])
    assert not bad, f"{len(bad)} entries differ from the manifest's det_sum/det_first4, e.g. {bad[:3]}"
    rules = {e["det_rule"] for e in manifest["entries"]}
    norm_keys = [e["key"] for e in manifest["entries"] if weight_rule(e["key"], e["shape"]) == "norm_weight"]
    assert len(norm_keys) == sum(1 for e in manifest["entries"] if e["det_rule"].startswith("1+")), rules


def test_golden_strict_load_keys_shapes_dtypes(manifest):
    entries = manifest["entries"]
    sd = deterministic_state_dict(manifest)
    with torch.device("meta"):
        model = VGGSfMModel()
    result = model.load_state_dict(sd, strict=False, assign=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    ours = model.state_dict()
    assert list(ours.keys()) == [e["key"] for e in entries]
    for e in entries:
        t = ours[e["key"]]
        assert list(t.shape) == e["shape"], e["key"]
        assert str(t.dtype).replace("torch.", "") == e["dtype"], e["key"]
    assert sum(t.numel() for t in ours.values()) == manifest["summary"]["total_params"]
    assert len(ours) == manifest["summary"]["total_entries"]
    # the saved fused qkv is exactly what was loaded
    key = "camera_predictor.backbone.blocks.3.attn.qkv.weight"
    assert torch.equal(ours[key], sd[key])
    # strict load into a regular model works too
    golden_model().load_state_dict(sd, strict=True)


def test_state_dict_roundtrip(manifest):
    model = golden_model()
    sd = model.state_dict()
    again = VGGSfMModel.from_state_dict(sd)
    for k, v in again.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_strict_load_errors(manifest):
    sd = deterministic_state_dict(manifest)
    missing = dict(sd)
    del missing["camera_predictor.backbone.blocks.0.attn.qkv.weight"]
    with pytest.raises(CheckpointError, match="qkv"):
        VGGSfMModel.from_state_dict(missing)
    extra = dict(sd)
    extra["track_predictor.bogus.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="bogus"):
        VGGSfMModel.from_state_dict(extra)
    wrong = dict(sd)
    wrong["track_predictor.coarse_fnet.conv1.weight"] = torch.zeros(1, 2, 3)
    with pytest.raises(CheckpointError, match="conv1"):
        VGGSfMModel.from_state_dict(wrong)


def test_missing_keys_reported_with_hub_names():
    with torch.device("meta"):
        model = VGGSfMModel()
    res = model.load_state_dict({}, strict=False, assign=True)
    assert "camera_predictor.backbone.blocks.0.attn.qkv.weight" in res.missing_keys
    assert not any(".hf." in k for k in res.missing_keys)
    assert len(res.missing_keys) == len(model.state_dict())


def test_model_has_no_buffers_and_frozen_params():
    model = golden_model()
    assert len(list(model.buffers())) == 0
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training
    assert sum(1 for _ in model.triangulator.parameters()) == 0


@pytest.mark.slow
def test_from_checkpoint_roundtrip(tmp_path, manifest):
    sd = deterministic_state_dict(manifest)
    path = tmp_path / "vggsfm_v2_0_0.bin"
    torch.save(sd, path)
    model = VGGSfMModel.from_checkpoint(path)
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in sd.items())
