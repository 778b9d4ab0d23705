"""Turning frames into the processed tensors trackers and networks consume.

Source: official ``DemoLoader`` / ``pad_and_resize_image`` (centred black-padded square, antialiased
bilinear resize, values clamped to [0, 1], no mean/std normalisation).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .conventions import ImageTransform, resize_transform, square_pad_transform
from .types import FrameSet


def apply_transform(image: np.ndarray, transform: ImageTransform) -> torch.Tensor:
    """Warp one original image into its processed frame.

    Args:
        image: ``(H, W, C)`` uint8 (or ``(H, W)`` bool/uint8 mask) in original resolution.
        transform: the frame's :class:`ImageTransform` (padding, then scaling).

    Returns:
        ``(C, H', W')`` float32 in [0, 1] (``C = 1`` for a 2-D input), ``(W', H') = transform.size``.
        Padding is black (0). Resizing is bilinear with antialiasing, like torchvision's ``Resize``.

    Raises:
        ValueError: if the image size does not match ``transform.orig_size``.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w = arr.shape[:2]
    if (w, h) != tuple(transform.orig_size):
        raise ValueError(f"image is {w}x{h} but the transform expects {transform.orig_size}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()
    if arr.dtype == np.uint8:
        x = x / 255.0
    px, py = int(round(transform.pad[0])), int(round(transform.pad[1]))
    if px or py:
        side_w = int(round(transform.size[0] / transform.scale))
        side_h = int(round(transform.size[1] / transform.scale))
        x = F.pad(x, (px, max(0, side_w - w - px), py, max(0, side_h - h - py)))
    out_w, out_h = transform.size
    if (x.shape[2], x.shape[1]) != (out_w, out_h):
        x = F.interpolate(x[None], size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp_(0.0, 1.0)


def square_transforms(frames: FrameSet, img_size: int) -> List[ImageTransform]:
    """VGGSfM square transforms (:func:`~vggsfm_ns.conventions.square_pad_transform`) for every frame."""
    return [square_pad_transform(int(w), int(h), img_size) for w, h in frames.sizes]


def resize_transforms(frames: FrameSet, max_size: int) -> List[ImageTransform]:
    """Resize-only transforms (:func:`~vggsfm_ns.conventions.resize_transform`) for every frame."""
    return [resize_transform(int(w), int(h), max_size) for w, h in frames.sizes]


def load_processed(
    frames: FrameSet,
    transforms: Sequence[ImageTransform],
    indices: Optional[Sequence[int]] = None,
    on_frame: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """Load and warp frames into one tensor.

    Args:
        frames: the frame set.
        transforms: one transform per frame of ``frames``; all selected ones must share ``size``.
        indices: frames to load (default: all), in output order.
        on_frame: called with each frame index after it is loaded (progress bars).

    Returns:
        ``(S, 3, H, W)`` float32 RGB in [0, 1].

    Raises:
        ValueError: if the selected transforms do not share one processed size.
        vggsfm_ns.errors.InputError: if a frame cannot be decoded.
    """
    idx = list(range(len(frames))) if indices is None else [int(i) for i in indices]
    sizes = {tuple(transforms[i].size) for i in idx}
    if len(sizes) > 1:
        raise ValueError(f"frames have different processed sizes {sorted(sizes)}; stack them separately")
    out = []
    for i in idx:
        out.append(apply_transform(frames.image(i), transforms[i]))
        if on_frame is not None:
            on_frame(i)
    return torch.stack(out, 0)


def load_processed_masks(frames: FrameSet, transforms: Sequence[ImageTransform], indices: Optional[Sequence[int]] = None) -> Optional[torch.Tensor]:
    """Dynamic-object masks warped like :func:`load_processed`: ``(S, H, W)`` bool (True = drop), or None.

    Padding counts as "drop". Frames without a mask are all False inside the content box.
    """
    if not frames.has_masks:
        return None
    idx = list(range(len(frames))) if indices is None else [int(i) for i in indices]
    out = []
    for i in idx:
        m = frames.mask(i)
        if m is None:
            m = np.zeros((int(frames.sizes[i][1]), int(frames.sizes[i][0])), bool)
        w = apply_transform(m.astype(np.float32), transforms[i])[0] > 0.5
        x0, y0, x1, y1 = transforms[i].content_box()
        ys = torch.arange(w.shape[0])[:, None] + 0.5
        xs = torch.arange(w.shape[1])[None, :] + 0.5
        outside = (xs < x0) | (xs > x1) | (ys < y0) | (ys > y1)
        out.append(w | outside)
    return torch.stack(out, 0)
