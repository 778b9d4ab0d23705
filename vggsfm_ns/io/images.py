"""Reading images and masks (EXIF orientation, grayscale/RGBA/16-bit normalised to 8-bit RGB)."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError

#: File extensions recognised as images (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB, EXIF orientation applied.

    Grayscale is replicated to 3 channels, alpha is dropped, 16-bit data is scaled to 8 bits.

    Raises:
        InputError: naming the file, if it is missing, unreadable or truncated.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb8(im)
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot decode image ({e})", path) from None


def _to_rgb8(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im).astype(np.float64)
        peak = 65535.0 if a.max() > 255 else 255.0
        a = np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode == "F":
        a = np.asarray(im)
        a = np.clip(a / max(float(a.max()), 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(np.asarray(im.convert("RGB")))


def read_mask(path: Path, size: Tuple[int, int]) -> np.ndarray:
    """Read a dynamic-object mask as ``(H, W)`` bool, True = dynamic pixel to drop (VGGSfM convention).

    Args:
        path: mask file (any image format; non-zero pixels are dynamic).
        size: expected ``(width, height)`` of the frame it belongs to.

    Raises:
        InputError: naming the file, if unreadable or of a different size than its frame.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            a = np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise InputError("mask file not found", path) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot decode mask ({e})", path) from None
    if (a.shape[1], a.shape[0]) != tuple(size):
        raise InputError(f"mask is {a.shape[1]}x{a.shape[0]} but its image is {size[0]}x{size[1]}", path)
    return a > 0
