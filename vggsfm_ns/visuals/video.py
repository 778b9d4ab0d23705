"""Video encoding (PyAV) and the frame layout shared by the visual videos.

Every frame of a video is drawn on one canvas: the original image scaled by a common factor (so the
longer side of the largest frame fits ``max_size``) and centred, black around it (like the official
reprojection video, which centre-pads smaller frames). Canvas sides are even, as H.264 with 4:2:0
chroma needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ..conventions import ArrayLike, corner_to_center

#: Codecs tried in order: H.264 through libx264, any other H.264 encoder, then MPEG-4 part 2.
CODEC_PREFERENCE = ("libx264", "h264", "mpeg4")


def pick_codec(preference: Sequence[str] = CODEC_PREFERENCE) -> str:
    """The first encoder of ``preference`` that this PyAV/FFmpeg build has.

    Raises:
        RuntimeError: none of them is available.
    """
    import av

    for name in preference:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # PyAV raises UnknownCodecError / ValueError depending on version
            continue
    raise RuntimeError(f"no video encoder among {list(preference)} in this PyAV build")


class VideoWriter:
    """Write RGB frames to an MP4 with PyAV.

    Args:
        path: output ``.mp4``.
        size: ``(width, height)``; both must be even.
        fps: frames per second.
        codec: encoder name (default: :func:`pick_codec`).

    Use as a context manager; :meth:`write` takes ``(H, W, 3)`` uint8 RGB. When the block raises
    (or is interrupted), the file is closed and deleted: a truncated video is never left behind.

    Raises:
        ValueError: odd or non-positive size.
        RuntimeError: no usable encoder (:func:`pick_codec`).
    """

    def __init__(self, path: Path, size: Tuple[int, int], fps: float = 10.0, codec: Optional[str] = None):
        import av

        w, h = int(size[0]), int(size[1])
        if w % 2 or h % 2 or w <= 0 or h <= 0:
            raise ValueError(f"video size must be positive and even, got {w}x{h}")
        self.path = Path(path)
        self.size = (w, h)
        self.codec = codec or pick_codec()
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(self.codec, rate=Fraction(fps).limit_denominator(1000))
        self._stream.width, self._stream.height = w, h
        self._stream.pix_fmt = "yuv420p"
        if self.codec == "libx264":
            self._stream.options = {"crf": "20", "preset": "veryfast"}
        elif self.codec == "mpeg4":
            self._stream.bit_rate = int(max(2_000_000, 8 * w * h))
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 RGB frame of the writer's size.

        Raises:
            ValueError: the frame does not have the writer's size.
        """
        import av

        if rgb.shape != (self.size[1], self.size[0], 3):
            raise ValueError(f"frame is {rgb.shape}, expected {(self.size[1], self.size[0], 3)}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file (called by ``__exit__``)."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the original exception is the one to report
            pass
        self.path.unlink(missing_ok=True)


def _even(x: float) -> int:
    return max(2, int(math.ceil(x / 2.0)) * 2)


@dataclass
class CanvasLayout:
    """Where each frame sits on the common video canvas.

    Attributes:
        size: canvas ``(width, height)``, even.
        scale: canvas pixels per original pixel (same for every frame, at most 1).
        frame_sizes: ``(S, 2)`` original ``(width, height)`` per frame.
    """

    size: Tuple[int, int]
    scale: float
    frame_sizes: np.ndarray

    @staticmethod
    def fit(frame_sizes: np.ndarray, max_size: int = 1280) -> "CanvasLayout":
        """Layout for frames of ``(S, 2)`` sizes, the longer canvas side at most ``max_size`` (+1 for
        evenness); frames are never upscaled."""
        sizes = np.asarray(frame_sizes, dtype=np.int64).reshape(-1, 2)
        big = sizes.max(axis=0)
        scale = min(1.0, float(max_size) / float(big.max()))
        return CanvasLayout((_even(big[0] * scale), _even(big[1] * scale)), scale, sizes)

    def content_box(self, i: int) -> Tuple[int, int, int, int]:
        """``(x0, y0, w, h)`` of frame ``i``'s scaled image on the canvas (whole pixels)."""
        w, h = self.frame_sizes[i]
        rw, rh = max(1, int(round(w * self.scale))), max(1, int(round(h * self.scale)))
        return ((self.size[0] - rw) // 2, (self.size[1] - rh) // 2, rw, rh)

    def place(self, i: int, image: np.ndarray) -> np.ndarray:
        """Frame ``i``'s ``(H, W, 3)`` uint8 image scaled and centred on a black canvas."""
        import cv2

        x0, y0, rw, rh = self.content_box(i)
        canvas = np.zeros((self.size[1], self.size[0], 3), np.uint8)
        img = image if (image.shape[1], image.shape[0]) == (rw, rh) else cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA)
        canvas[y0 : y0 + rh, x0 : x0 + rw] = img[..., :3]
        return canvas

    def to_canvas(self, i: int, xy_corner: ArrayLike) -> np.ndarray:
        """Original pixels of frame ``i`` (corner convention, ``[..., 2]``) -> canvas pixel-centre
        coordinates (what OpenCV drawing uses), float64."""
        x0, y0, rw, rh = self.content_box(i)
        w, h = self.frame_sizes[i]
        xy = np.asarray(xy_corner, dtype=np.float64)
        return corner_to_center(np.stack([xy[..., 0] * (rw / w) + x0, xy[..., 1] * (rh / h) + y0], -1))

    @property
    def draw_unit(self) -> float:
        """A size unit for markers and text that grows with the canvas (1.0 at 720 px high)."""
        return max(0.35, self.size[1] / 720.0)
