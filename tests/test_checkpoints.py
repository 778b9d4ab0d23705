"""Checkpoint resolution and reading (no network: offline mode or local files only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vggsfm_ns import checkpoints as ck
from vggsfm_ns.errors import CheckpointError


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """Empty HF and torch-hub caches under tmp, offline mode on."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def _place_in_hf_cache(root: Path, payload: dict, rev: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    repo = root / "hf" / "hub" / "models--facebook--VGGSfM"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    path = snap / ck.VGGSFM_FILENAME
    torch.save(payload, path)
    return path


def test_local_file(tmp_path, offline_env):
    path = tmp_path / "my.bin"
    torch.save({"a.weight": torch.ones(2)}, path)
    assert ck.find_checkpoint(path) == path
    assert ck.resolve_checkpoint(path) == path
    sd = ck.load_state_dict(path)
    assert torch.equal(sd["a.weight"], torch.ones(2))


def test_hf_cache_layout(offline_env):
    cached = _place_in_hf_cache(offline_env, {"w": torch.arange(3.0)})
    found = ck.find_checkpoint()
    assert found is not None and found.resolve() == cached.resolve()
    assert ck.resolve_checkpoint().resolve() == cached.resolve()
    assert torch.equal(ck.load_state_dict(found)["w"], torch.arange(3.0))


def test_torch_hub_fallback_location(offline_env):
    p = offline_env / "torch" / "hub" / "checkpoints" / ck.VGGSFM_FILENAME
    p.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, p)
    assert ck.find_checkpoint() == p


def test_missing_checkpoint_message(offline_env):
    assert ck.find_checkpoint() is None
    with pytest.raises(CheckpointError) as e:
        ck.resolve_checkpoint()
    msg = str(e.value)
    assert ck.VGGSFM_URL in msg and "--checkpoint" in msg and "\n" not in msg


def test_missing_explicit_path(offline_env):
    missing = offline_env / "nope" / "vggsfm_v2_0_0.bin"
    _place_in_hf_cache(offline_env, {"w": torch.zeros(1)})  # a cached copy must not be used instead
    assert ck.find_checkpoint(missing) is None
    with pytest.raises(CheckpointError) as e:
        ck.resolve_checkpoint(missing)
    msg = str(e.value)
    assert str(missing) in msg and ck.VGGSFM_URL in msg and "--checkpoint" in msg


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "vggsfm_v2_0_0.bin"
    if content is None:  # truncated real checkpoint
        torch.save({"w": torch.randn(1000)}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        ck.load_state_dict(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "x.bin"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="state dict"):
        ck.load_state_dict(path)


def test_safetensors_and_wrapper(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(3)}, str(path))
    assert torch.equal(ck.load_state_dict(path)["a"], torch.ones(3))
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"b": torch.zeros(2)}}, wrapped)
    assert list(ck.load_state_dict(wrapped)) == ["b"]


def test_from_checkpoint_corrupt_names_file(tmp_path):
    from vggsfm_ns.networks import VGGSfMModel

    path = tmp_path / "vggsfm_v2_0_0.bin"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError) as e:
        VGGSfMModel.from_checkpoint(path)
    assert str(path) in str(e.value)
    other = tmp_path / "other.bin"
    torch.save({"w": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError) as e:
        VGGSfMModel.from_checkpoint(other)
    assert str(other) in str(e.value) and "VGGSfM" in str(e.value)


def test_resolve_url_file(offline_env, tmp_path):
    url = "https://github.com/Shiaoming/ALIKED/raw/main/models/aliked-n16.pth"
    explicit = tmp_path / "aliked.pth"
    explicit.write_bytes(b"x")
    assert ck.resolve_url_file(url, explicit) == explicit
    with pytest.raises(CheckpointError) as e:
        ck.resolve_url_file(url, tmp_path / "missing.pth")
    assert url in str(e.value)
    with pytest.raises(CheckpointError) as e:  # offline and not cached
        ck.resolve_url_file(url)
    assert url in str(e.value) and "aliked-n16.pth" in str(e.value)
    cached = offline_env / "torch" / "hub" / "checkpoints" / "aliked-n16.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"y")
    assert ck.resolve_url_file(url) == cached
    assert ck.resolve_url_file(url, filename="aliked-n16.pth") == cached


def test_offline_flags(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VGGSFM_NS_OFFLINE", raising=False)
    assert not ck.is_offline()
    monkeypatch.setenv("VGGSFM_NS_OFFLINE", "1")
    assert ck.is_offline()
