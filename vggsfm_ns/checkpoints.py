"""Finding, downloading and reading model weights (VGGSfM, and URL-distributed weights such as ALIKED).

Nothing here touches the network unless a download is the only way left and offline mode is off.
Offline mode: ``HF_HUB_OFFLINE=1`` (Hugging Face's switch) or ``VGGSFM_NS_OFFLINE=1``.

Where the VGGSfM checkpoint is looked for, in order:

1. an explicit path (``--checkpoint``);
2. the Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``):
   ``models--facebook--VGGSfM/snapshots/<rev>/vggsfm_v2_0_0.bin``;
3. torch hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``), where the official
   fallback ``load_state_dict_from_url`` stores it;
4. ``hf_hub_download`` (only in :func:`resolve_checkpoint`, never offline).

Source: official ``VGGSfM.from_pretrained`` / ``VGGSfMRunner.build_vggsfm_model`` (spec §1, §7).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Union
from urllib.parse import urlparse

import torch

from .errors import CheckpointError, short_reason

__all__ = [
    "VGGSFM_REPO_ID",
    "VGGSFM_FILENAME",
    "VGGSFM_URL",
    "is_offline",
    "find_checkpoint",
    "resolve_checkpoint",
    "load_state_dict",
    "resolve_url_file",
]

VGGSFM_REPO_ID = "facebook/VGGSfM"
VGGSFM_FILENAME = "vggsfm_v2_0_0.bin"
VGGSFM_URL = f"https://huggingface.co/{VGGSFM_REPO_ID}/resolve/main/{VGGSFM_FILENAME}"

_TRUE = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``VGGSFM_NS_OFFLINE`` is set to a true value."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "VGGSFM_NS_OFFLINE"))


def _hf_cache_dir() -> Optional[str]:
    """The Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None  # huggingface_hub's default


def _torch_hub_file(filename: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def find_checkpoint(path: Optional[Union[str, Path]] = None, repo_id: str = VGGSFM_REPO_ID, filename: str = VGGSFM_FILENAME) -> Optional[Path]:
    """Locate the VGGSfM checkpoint without any network access.

    Args:
        path: explicit checkpoint file. When given, it is the only candidate (returned if it is a
            file, else None: a wrong ``--checkpoint`` must not silently fall back to a cached copy).
        repo_id, filename: the Hugging Face repository and file.

    Returns:
        The checkpoint path, or None (used by ``--tracker auto`` to choose a weight-free tracker).
    """
    if path is not None:
        p = Path(path).expanduser()
        return p if p.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, filename, cache_dir=_hf_cache_dir())
    except Exception:  # a broken cache is the same as no cache
        cached = None
    if isinstance(cached, (str, Path)) and Path(cached).is_file():
        return Path(cached)
    p = _torch_hub_file(filename)
    return p if p.is_file() else None


def resolve_checkpoint(path: Optional[Union[str, Path]] = None, repo_id: str = VGGSFM_REPO_ID, filename: str = VGGSFM_FILENAME) -> Path:
    """Find the VGGSfM checkpoint, downloading it from Hugging Face when allowed.

    Args:
        path: explicit checkpoint file (``--checkpoint``).
        repo_id, filename: the Hugging Face repository and file.

    Returns:
        Path of an existing file.

    Raises:
        CheckpointError: explicit file missing; not cached and offline; download failed. The
            one-line message names the URL to fetch and where to put it (``--checkpoint``).
    """
    found = find_checkpoint(path, repo_id, filename)
    if found is not None:
        return found
    url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
    if path is not None:
        raise CheckpointError(f"checkpoint file not found; download {url} and pass its path with --checkpoint", Path(path).expanduser())
    hint = f"download {url} and pass it with --checkpoint /path/to/{filename} (or run: hf download {repo_id} {filename})"
    if is_offline():
        raise CheckpointError(f"{filename} is not in the Hugging Face cache and offline mode is on; {hint}")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=repo_id, filename=filename, cache_dir=_hf_cache_dir()))
    except Exception as e:
        raise CheckpointError(f"could not download {filename} ({type(e).__name__}: {short_reason(e)}); {hint}") from None


def load_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read a checkpoint into a CPU ``state_dict`` safely.

    ``.safetensors`` files are read with safetensors; everything else with
    ``torch.load(map_location="cpu", weights_only=True)`` (no pickle code execution). A
    ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped.

    Raises:
        CheckpointError: missing, truncated, corrupt or non-state-dict file (names the file).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError("checkpoint file not found", p)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint ({type(e).__name__}: {short_reason(e)}); the file is corrupt or truncated, delete it and download it again",
            p,
        ) from None
    if isinstance(sd, dict):
        for wrapper in ("state_dict", "model"):
            if wrapper in sd and isinstance(sd[wrapper], dict):
                sd = sd[wrapper]
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError("not a model state dict (expected a mapping of parameter names to tensors)", p)
    return dict(sd)


def resolve_url_file(url: str, path: Optional[Union[str, Path]] = None, filename: Optional[str] = None) -> Path:
    """Locate weights distributed by URL (e.g. ALIKED ``aliked-n16.pth``), downloading if allowed.

    Order: the explicit ``path``; ``torch.hub.get_dir()/checkpoints/<filename>`` (where
    ``torch.hub.load_state_dict_from_url`` keeps it); ``torch.hub.download_url_to_file`` into that
    folder, unless offline mode is on.

    Args:
        url: download URL.
        path: explicit file (must exist).
        filename: cache file name (default: the URL's last path component).

    Returns:
        Path of an existing file.

    Raises:
        CheckpointError: explicit file missing, not cached while offline, or download failed; the
            message names the URL and the expected location.
    """
    name = filename or Path(urlparse(url).path).name
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        raise CheckpointError(f"weights file not found; download {url} and pass its path", p)
    target = _torch_hub_file(name)
    if target.is_file():
        return target
    if is_offline():
        raise CheckpointError(f"{name} is not cached and offline mode is on; download {url} to {target}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as e:
        raise CheckpointError(f"could not download {url} ({type(e).__name__}); download it manually to {target}") from None
    return target
