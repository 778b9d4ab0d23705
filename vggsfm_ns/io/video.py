"""Video decoding with PyAV (no system ffmpeg): the sharpest frame of each interval, written as PNG.

nerfstudio's ``ns-process-data video`` shells out to ``ffmpeg -vf thumbnail`` (the most
*representative* frame per chunk). For structure from motion the sharpest frame matters more, so
:func:`extract_frames` splits the video into ``num_frames_target`` equal intervals of decoded
frames and keeps, in each, the frame with the largest variance of the Laplacian (Pech-Pacheco et
al., "Diatom autofocusing in brightfield microscopy", ICPR 2000), a standard blur measure.
Decoding is a single streaming pass: at most the current frame and the best frame of the current
interval are held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import InputError, OutputError, short_reason
from ..progress import PipelineObserver, Stage
from ..types import FrameSet

#: Longest side (px) of the grey image the sharpness is measured on; larger frames are reduced
#: by an integer factor first (keeps 4K decoding cheap, keeps focus differences visible).
SHARPNESS_MAX_SIDE = 1920


@dataclass(frozen=True)
class VideoInfo:
    """Stream properties read by :func:`probe_video`.

    Attributes:
        num_frames: number of frames (container count, or packets counted by demuxing).
        fps: average frame rate (frames per second), 0 when unknown.
        size: ``(width, height)`` of the decoded frames after applying the rotation metadata.
        rotation: counter-clockwise display rotation in degrees (0, 90, 180, 270).
    """

    num_frames: int
    fps: float
    size: Tuple[int, int]
    rotation: int


#: A video that decodes to fewer than this fraction of the frames its container declares is
#: reported as possibly truncated.
TRUNCATED_FRACTION = 0.95


def _open(video: Path):
    import av

    try:
        container = av.open(str(video))
    except FileNotFoundError:
        raise InputError("video file not found", video) from None
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"cannot open video ({short_reason(e)})", video) from None
    if not container.streams.video:
        container.close()
        raise InputError("file has no video stream", video)
    return container


def _count_frames(video: Path) -> int:
    """Frames in the first video stream: the container's count, else packets counted by demuxing."""
    container = _open(video)
    try:
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if n > 0:
            return n
        for packet in container.demux(stream):
            if packet.size:
                n += 1
        return n
    finally:
        container.close()


def _rotation_k(rotation_ccw_deg: float) -> int:
    """Number of counter-clockwise quarter turns (``np.rot90``'s ``k``) for a display rotation."""
    return int(round(float(rotation_ccw_deg) / 90.0)) % 4


def probe_video(video: Path) -> VideoInfo:
    """Frame count, frame rate, display size and rotation of a video (decodes one frame).

    Raises:
        InputError: if the file cannot be opened, has no video stream or no decodable frame.
    """
    video = Path(video)
    n = _count_frames(video)
    container = _open(video)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        for frame in _decode(container, stream, video):
            k = _rotation_k(getattr(frame, "rotation", 0) or 0)
            w, h = frame.width, frame.height
            if k % 2:
                w, h = h, w
            return VideoInfo(n, fps, (int(w), int(h)), 90 * k)
    finally:
        container.close()
    raise InputError("no decodable video frames", video)


def _decode(container, stream, video: Path, stats: Optional[dict] = None):
    """Yield decoded frames, skipping packets the decoder rejects (counted in ``stats['bad']``)."""
    import av

    stream.thread_type = "AUTO"
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.EOFError:
            return
        except (av.error.FFmpegError, ValueError):
            if stats is not None:
                stats["bad"] = stats.get("bad", 0) + 1
            continue
        for f in frames:
            yield f


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian of a ``(H, W)`` uint8 grey image (higher = sharper).

    Frames with a longer side above :data:`SHARPNESS_MAX_SIDE` are first reduced by an integer
    factor (area averaging).
    """
    import cv2

    h, w = gray.shape[:2]
    f = int(np.ceil(max(h, w) / SHARPNESS_MAX_SIDE))
    if f > 1:
        gray = cv2.resize(gray, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def interval_of(index: int, num_frames: int, num_intervals: int) -> int:
    """Interval (0-based) of frame ``index`` when ``num_frames`` frames are split into
    ``num_intervals`` equal, contiguous intervals (frames past ``num_frames`` join the last one)."""
    if num_frames <= num_intervals:
        return index
    return min(num_intervals - 1, index * num_intervals // num_frames)


def extract_frames(
    video: Path,
    out_dir: Path,
    num_frames_target: int,
    observer: Optional[PipelineObserver] = None,
) -> FrameSet:
    """Decode a video and write the sharpest frame of each interval as PNG.

    Args:
        video: video file (any container and codec FFmpeg, as bundled by PyAV, decodes).
        out_dir: folder for ``frame_00001.png``, ``frame_00002.png``... (created; existing files
            with the same names are replaced, others are left alone).
        num_frames_target: number of frames to keep. The decoded frames are split into this many
            equal intervals and the sharpest frame (variance of the Laplacian) of each is kept, in
            temporal order. A video with fewer frames yields all of them; ``<= 0`` keeps all frames.
        observer: progress reporting (stage ``video``, one step per decoded frame) and warnings
            (corrupt packets skipped; fewer frames decoded than the container declares).

    Returns:
        An ordered :class:`FrameSet` (``ordered=True``, ``source=video``) whose frames are the PNGs.
        Frames are upright: the stream's display rotation (phone videos) is applied, so sizes are
        display sizes.

    Raises:
        InputError: if the file cannot be opened, has no video stream, or no frame decodes.
        OutputError: if an extracted frame cannot be written.
    """
    import cv2

    video = Path(video)
    out_dir = Path(out_dir)
    n_total = _count_frames(video)
    declared = n_total
    target = int(num_frames_target)
    if target <= 0 or (n_total > 0 and target > n_total):
        target = max(n_total, 1) if target > 0 else 10**12
    if n_total <= 0:
        n_total = target  # unknown length: one frame per interval until the stream ends

    out_dir.mkdir(parents=True, exist_ok=True)
    names: List[str] = []
    paths: List[Optional[Path]] = []
    sizes: List[Tuple[int, int]] = []
    best = None  # (score, frame)
    current = -1
    stats: dict = {}

    def flush() -> None:
        nonlocal best
        if best is None:
            return
        frame = best[1]
        rgb = frame.to_ndarray(format="rgb24")
        k = _rotation_k(getattr(frame, "rotation", 0) or 0)
        if k:
            rgb = np.ascontiguousarray(np.rot90(rgb, k))
        name = f"frame_{len(names) + 1:05d}.png"
        path = out_dir / name
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise OutputError("cannot write extracted frame", path)
        names.append(name)
        paths.append(path)
        sizes.append((rgb.shape[1], rgb.shape[0]))
        best = None

    container = _open(video)
    decoded = 0
    try:
        stream = container.streams.video[0]
        with Stage(observer, "video", total=n_total) as st:
            pending = 0
            for frame in _decode(container, stream, video, stats):
                k = interval_of(decoded, n_total, target)
                if k != current:
                    flush()
                    current = k
                score = sharpness(frame.to_ndarray(format="gray"))
                if best is None or score > best[0]:
                    best = (score, frame)
                decoded += 1
                pending += 1
                if pending >= 8:
                    st.advance(pending)
                    pending = 0
            flush()
            if pending:
                st.advance(pending)
    finally:
        container.close()
    if not names:
        bad = stats.get("bad", 0)
        raise InputError("no decodable video frames" + (f" ({bad} corrupt packets)" if bad else ""), video)
    if observer is not None and stats.get("bad"):
        observer.message(f"{video.name}: skipped {stats['bad']} corrupt video packets", "warning")
    if observer is not None and declared > 0 and decoded < TRUNCATED_FRACTION * declared:
        observer.message(
            f"{video.name}: decoding stopped after {decoded} of the {declared} frames the file declares "
            f"(truncated or damaged file?); {len(names)} frames were extracted from the part that decodes",
            "warning",
        )
    return FrameSet(
        names=names,
        sizes=np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
        paths=paths,
        ordered=True,
        source=video,
    )
