"""Small OpenCV drawing helpers for the visual videos (RGB images, sub-pixel positions)."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

#: Fixed-point bits OpenCV uses for sub-pixel drawing (``shift``).
_SHIFT = 4
_ONE = 1 << _SHIFT

GREEN = (40, 200, 60)
RED = (235, 50, 40)
WHITE = (255, 255, 255)
GREY = (170, 170, 170)


def _fixed(xy: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(xy, dtype=np.float64) * _ONE).astype(np.int64)


def draw_circles(
    img: np.ndarray,
    xy: np.ndarray,
    radius: float,
    colors: np.ndarray,
    thickness: int = -1,
) -> None:
    """Draw circles in place.

    Args:
        img: ``(H, W, 3)`` uint8 RGB canvas.
        xy: ``(N, 2)`` centres, canvas pixel-centre coordinates (sub-pixel).
        radius: in canvas pixels.
        colors: ``(N, 3)`` or ``(3,)`` uint8 RGB.
        thickness: -1 = filled.
    """
    import cv2

    pts = _fixed(xy).reshape(-1, 2)
    cols = np.broadcast_to(np.asarray(colors, dtype=np.int64).reshape(-1, 3), (len(pts), 3))
    r = max(1, int(round(radius * _ONE)))
    h, w = img.shape[:2]
    for (x, y), c in zip(pts.tolist(), cols.tolist()):
        if -radius * _ONE * 2 <= x <= (w + radius * 2) * _ONE and -radius * _ONE * 2 <= y <= (h + radius * 2) * _ONE:
            cv2.circle(img, (x, y), r, tuple(c), thickness, cv2.LINE_AA, _SHIFT)


def draw_segments(img: np.ndarray, a: np.ndarray, b: np.ndarray, colors: np.ndarray, thickness: int = 1) -> None:
    """Draw ``(N, 2)`` -> ``(N, 2)`` line segments in place (canvas pixel-centre coordinates)."""
    import cv2

    pa, pb = _fixed(a).reshape(-1, 2), _fixed(b).reshape(-1, 2)
    cols = np.broadcast_to(np.asarray(colors, dtype=np.int64).reshape(-1, 3), (len(pa), 3))
    for p, q, c in zip(pa.tolist(), pb.tolist(), cols.tolist()):
        cv2.line(img, tuple(p), tuple(q), tuple(c), thickness, cv2.LINE_AA, _SHIFT)


def colormap(values: np.ndarray, vmin: float, vmax: float, name: str = "RdYlGn_r") -> np.ndarray:
    """``(N,)`` values -> ``(N, 3)`` uint8 RGB through a matplotlib colormap, clipped to [vmin, vmax].
    NaN maps to grey."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float64)
    t = np.clip((v - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    rgb = (colormaps[name](np.nan_to_num(t))[..., :3] * 255.0 + 0.5).astype(np.uint8)
    rgb[~np.isfinite(v)] = GREY
    return rgb


def put_header(img: np.ndarray, parts: Sequence[Tuple[str, Tuple[int, int, int]]], unit: float) -> None:
    """Write one line of coloured text parts at the top-left, on a dark translucent band, in place."""
    import cv2

    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.5 * unit, max(1, int(round(unit)))
    pad = max(2, int(round(4 * unit)))
    (_, th), base = cv2.getTextSize("Ag", font, scale, thick)
    band_h = min(img.shape[0], th + base + 2 * pad)
    band = img[:band_h].astype(np.float32)
    img[:band_h] = (band * 0.35).astype(np.uint8)
    x = pad
    for text, color in parts:
        cv2.putText(img, text, (x, pad + th), font, scale, tuple(int(c) for c in color), thick, cv2.LINE_AA)
        x += cv2.getTextSize(text + " ", font, scale, thick)[0][0]


def blend(base: np.ndarray, overlay: np.ndarray, mask: np.ndarray, alpha: float) -> None:
    """``base[mask] = (1 - alpha) * base + alpha * overlay`` in place (uint8 RGB, ``mask (H, W)`` bool)."""
    if not mask.any():
        return
    b = base[mask].astype(np.float32)
    o = overlay[mask].astype(np.float32)
    base[mask] = np.clip((1.0 - alpha) * b + alpha * o + 0.5, 0, 255).astype(np.uint8)


__all__ = ["draw_circles", "draw_segments", "colormap", "put_header", "blend", "GREEN", "RED", "WHITE", "GREY"]
