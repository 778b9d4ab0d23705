"""Depth-Anything-V2 monocular depth through Hugging Face ``transformers``.

The official VGGSfM builds Depth-Anything-V2 ViT-L from a user-cloned repository and its ``.pth``
weights (``build_monocular_depth_model``, spec §4.8). We load the same network from the Hugging Face
port instead (``depth-anything/Depth-Anything-V2-Large-hf``, ``DepthAnythingForDepthEstimation``):
no repository is cloned at run time, weights live in the Hugging Face cache, ``HF_HUB_OFFLINE=1``
works once they are cached, and any local ``save_pretrained`` directory is accepted.

Pre-processing reproduces the official ``infer_image(image, input_size)`` with
``input_size = min(1024, max(h, w))`` (``extract_dense_depth_maps``), done in torch:

1. RGB ``uint8`` -> float in [0, 1];
2. bicubic resize (no anti-aliasing, like ``cv2.INTER_CUBIC``) to :func:`processing_size`: the
   aspect ratio is kept and *both* sides are at least ``input_size`` ("lower bound"), each side
   rounded to a multiple of the patch size (14) and rounded up when rounding would go below
   ``input_size``;
3. ImageNet mean/std normalisation (:data:`vggsfm_ns.conventions.IMAGENET_MEAN` / ``IMAGENET_STD``);
4. the network's output is resized back to the input size with bilinear interpolation
   (``align_corners=True``, as the official ``infer_image``).

The output is *relative inverse depth* (disparity, larger = closer, 0 where the network predicts
nothing such as sky), defined up to an unknown scale and shift per image; see
:mod:`vggsfm_ns.depth.align`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import is_offline
from ..conventions import imagenet_normalize
from ..devices import resolve_device
from ..errors import CheckpointError, InputError, short_reason


#: Hugging Face id of the network the official pipeline uses (Depth-Anything-V2 ViT-L).
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Large-hf"

#: Official cap on ``input_size`` (``min(1024, max(h, w))`` in ``extract_dense_depth_maps``).
MAX_INPUT_SIZE = 1024

DeviceLike = Union[str, torch.device, None]


def _multiple(x: float, multiple: int, min_val: int) -> int:
    """Round ``x`` to a multiple of ``multiple``; round up instead when that would go below ``min_val``."""
    y = int(round(x / multiple)) * multiple
    if y < min_val:
        y = int(math.ceil(x / multiple)) * multiple
    return max(y, multiple)


def processing_size(height: int, width: int, input_size: Optional[int] = None, multiple: int = 14) -> Tuple[int, int]:
    """Size ``(h', w')`` of the frame the network sees for an ``height x width`` image.

    The official Depth-Anything-V2 ``Resize`` in "lower_bound" mode with ``keep_aspect_ratio`` and
    ``ensure_multiple_of=14``: the image is scaled by ``max(input_size / h, input_size / w)`` so
    that the shorter side reaches ``input_size``; each side is then rounded to a multiple of 14 and
    rounded up where plain rounding would fall below ``input_size``.

    Args:
        height, width: input image size in pixels.
        input_size: target of the shorter side; default ``min(1024, max(height, width))`` (official).
        multiple: patch size of the ViT backbone.

    Returns:
        ``(h', w')`` in pixels, both multiples of ``multiple``.

    Raises:
        InputError: if a size is not positive.

    Example: 1920x1080 (h x w, a portrait phone frame) -> (1820, 1036); 384x384 -> (392, 392).
    """
    if height <= 0 or width <= 0:
        raise InputError(f"depth model input must have a positive size, got {width}x{height}")
    if input_size is None:
        input_size = min(MAX_INPUT_SIZE, max(height, width))
    scale = max(input_size / height, input_size / width)
    return _multiple(scale * height, multiple, input_size), _multiple(scale * width, multiple, input_size)


class DepthModel:
    """A loaded Depth-Anything(-V2) network that predicts relative inverse depth for one image.

    Attributes:
        model_id: the Hugging Face id or local directory it was loaded from.
        device: torch device the network runs on.
        input_size: fixed shorter-side target, or None for the official ``min(1024, max(h, w))``.
        metric: True for a metric-depth checkpoint (its depth is inverted into disparity).

    Source: official ``extract_dense_depth_maps`` + Depth-Anything-V2 ``infer_image``.
    """

    def __init__(self, network: torch.nn.Module, model_id: str, device: DeviceLike = None, input_size: Optional[int] = None):
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        self.model_id = str(model_id)
        self.input_size = input_size
        cfg = getattr(network, "config", None)
        self.patch_size = int(getattr(cfg, "patch_size", 14) or 14)
        self.metric = getattr(cfg, "depth_estimation_type", "relative") == "metric"

    def to(self, device: DeviceLike) -> "DepthModel":
        """Move the network to ``device`` (``"auto"``/None: CUDA when available); returns self.

        Raises:
            InputError: unknown device, or CUDA asked on a machine without it.
        """
        self.device = resolve_device(device)
        self.network = self.network.to(self.device)
        return self

    def processing_size(self, height: int, width: int) -> Tuple[int, int]:
        """``(h', w')`` the network runs at for an ``height x width`` image (see :func:`processing_size`)."""
        return processing_size(height, width, self.input_size, self.patch_size)

    @torch.inference_mode()
    def predict(self, image: np.ndarray) -> np.ndarray:
        """Relative inverse depth of one image.

        Args:
            image: ``(H, W, 3)`` uint8 RGB, original resolution.

        Returns:
            ``(H, W)`` float32 disparity (relative inverse depth, >= 0, larger = closer; 0 where
            the network predicts nothing) at the input resolution. Metric checkpoints are inverted
            (``1 / depth``) so the output is always inverse depth.

        Raises:
            InputError: if ``image`` is not ``(H, W, 3)`` uint8.
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"depth model expects an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        ph, pw = self.processing_size(h, w)
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        x = x.permute(2, 0, 1)[None].float().div_(255.0)
        if (ph, pw) != (h, w):
            x = F.interpolate(x, size=(ph, pw), mode="bicubic", align_corners=False)
        x = imagenet_normalize(x)
        out = self.network(pixel_values=x).predicted_depth  # (1, ph, pw)
        out = out.float()
        if self.metric:
            out = torch.where(out > 0, 1.0 / out.clamp_min(1e-8), torch.zeros_like(out))
        out = F.interpolate(out[:, None], size=(h, w), mode="bilinear", align_corners=True)[0, 0]
        return out.clamp_min_(0.0).cpu().numpy().astype(np.float32, copy=False)


def load_depth_model(model: str = DEFAULT_DEPTH_MODEL, device: DeviceLike = None, input_size: Optional[int] = None) -> DepthModel:
    """Load a Depth-Anything(-V2) network from the Hugging Face cache / Hub or a local directory.

    Args:
        model: a Hugging Face id (``depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf``; the
            official pipeline uses Large) or a directory written by ``save_pretrained`` (any
            ``DepthAnythingConfig``, also a tiny random one for tests). A cached id is loaded
            without touching the network; otherwise it is downloaded unless ``HF_HUB_OFFLINE=1``.
        device: torch device; None or ``"auto"``: CUDA when available, else CPU.
        input_size: override of the official shorter-side target ``min(1024, max(h, w))``.

    Returns:
        A :class:`DepthModel` in eval mode, float32 weights.

    Raises:
        CheckpointError: naming the model and how to get it, when the directory does not exist, the
            id is neither cached nor downloadable, the files are not a Depth-Anything checkpoint, or
            weights are missing.

    Source: replaces the official ``build_monocular_depth_model`` (ViT-L, ``torch.hub`` download
    of ``depth_anything_v2_vitl.pth``) with the ``transformers`` port of the same network.
    """
    from transformers import AutoConfig, DepthAnythingForDepthEstimation
    from transformers.utils import logging as hf_logging

    model = str(model)
    local = Path(model).expanduser()
    is_local = local.is_dir()
    if not is_local and (model.startswith((".", "/", "~")) or model.count("/") != 1):
        raise CheckpointError(
            f"depth model {model!r} is not a directory and not a Hugging Face id (owner/name); pass "
            f"e.g. {DEFAULT_DEPTH_MODEL} or a folder written by save_pretrained"
        )
    src = str(local) if is_local else model
    how = (
        f"download it once with `hf download {model}` (or run without HF_HUB_OFFLINE on a machine "
        f"with internet access), or pass --depth-model DIR with a folder written by save_pretrained"
    )

    def _load(local_only: bool):
        config = AutoConfig.from_pretrained(src, local_files_only=local_only)
        if getattr(config, "model_type", None) != "depth_anything":
            raise CheckpointError(
                f"depth model {model!r} is a {getattr(config, 'model_type', '?')!r} checkpoint, not Depth-Anything "
                f"(expected model_type 'depth_anything', e.g. {DEFAULT_DEPTH_MODEL})"
            )
        return DepthAnythingForDepthEstimation.from_pretrained(
            src, config=config, local_files_only=local_only, output_loading_info=True
        )

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        try:
            net, info = _load(local_only=True)
        except CheckpointError:
            raise
        except (OSError, ValueError, EnvironmentError) as first:
            if is_local:
                raise CheckpointError(f"cannot load depth model from directory {src} ({short_reason(first)})") from None
            from huggingface_hub import constants as hf_constants

            if is_offline() or bool(getattr(hf_constants, "HF_HUB_OFFLINE", False)):
                raise CheckpointError(
                    f"depth model {model!r} is not in the Hugging Face cache and offline mode is set "
                    f"(HF_HUB_OFFLINE / VGGSFM_NS_OFFLINE); {how}"
                ) from None
            try:
                net, info = _load(local_only=False)
            except CheckpointError:
                raise
            except Exception as second:  # network errors come in many types (httpx, requests, OSError)
                raise CheckpointError(
                    f"depth model {model!r} is not cached and could not be downloaded ({short_reason(second)}); {how}"
                ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = list(info.get("missing_keys", []) or [])
    if missing:
        raise CheckpointError(
            f"depth model {model!r}: {len(missing)} weights missing from the checkpoint (e.g. {missing[0]}); "
            f"the files do not match their config"
        )
    net = net.float()
    return DepthModel(net, src, device=device, input_size=input_size)


__all__ = ["DepthModel", "load_depth_model", "processing_size", "DEFAULT_DEPTH_MODEL", "MAX_INPUT_SIZE"]
