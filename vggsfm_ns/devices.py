"""The one place a torch device is chosen (``--device``): the learned tracker, the camera
predictor and the depth model run on the device :func:`resolve_device` returns. How many CPU
threads the CPU work uses is :mod:`vggsfm_ns.threads`' policy.
"""

from __future__ import annotations

from typing import Union

import torch

from .errors import InputError


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``"auto"`` or None → CUDA when available, else CPU; anything else is passed to :class:`torch.device`.

    Used by the pipeline (:func:`vggsfm_ns.api.reconstruct`) and the depth model.

    Raises:
        InputError: for an unknown device string or CUDA asked on a machine without it.

    Source: replaces the official pipeline's fixed CUDA device (spec §4.2: e.g. the query-point
    extractors are moved to CUDA on every call).
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except RuntimeError as e:
        raise InputError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked but CUDA is not available")
    return dev


__all__ = ["resolve_device"]
