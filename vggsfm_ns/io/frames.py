"""Loading the user's input (a folder of images or a video file) as a :class:`~vggsfm_ns.types.FrameSet`.

Entry point: :func:`load_frames`. Folders are read lazily (only headers are parsed up front; every
file is decoded once at low cost to catch truncated images early). Videos are decoded with PyAV
(:mod:`vggsfm_ns.io.video`) into PNG frames under a work directory.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..progress import PipelineObserver, Stage
from ..threads import io_workers
from ..types import FrameSet
from .atomic import process_temp_dir
from .images import IMAGE_EXTENSIONS, image_info

#: The fewest frames a reconstruction can use.
MIN_FRAMES = 3


def natural_key(name: str):
    """Sort key that orders embedded numbers numerically (``img2`` before ``img10``); for zero-padded
    names it equals plain name order."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name)] + [(2, 0, name)]


def list_images(folder: Path) -> List[Path]:
    """Image files directly inside ``folder`` (hidden files skipped), in natural name order."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


def load_frames(
    source: Path,
    masks: Optional[Path] = None,
    num_frames_target: int = 300,
    work_dir: Optional[Path] = None,
    observer: Optional[PipelineObserver] = None,
) -> FrameSet:
    """Load the input of a reconstruction.

    Args:
        source: a folder of images (any order; sorted by name, numbers compared numerically) or a
            video file (any container/codec PyAV/FFmpeg decodes).
        masks: optional folder of dynamic-object masks, matched to frames by file name or stem
            (``a.jpg`` <- ``a.jpg``, ``a.png``, ``a.jpg.png``...). VGGSfM convention: non-zero = dynamic
            pixel, ignored by tracking. Frames without a mask file get none. For a video, masks are
            matched to the extracted frame names (``frame_00001.png``...).
        num_frames_target: for videos, how many frames to extract (the sharpest frame of each of
            ``num_frames_target`` equal intervals; all frames when the video is shorter).
        work_dir: where extracted video frames are written (``work_dir/frames``). Default: a new
            temporary directory removed when the process exits (:func:`~vggsfm_ns.io.atomic.process_temp_dir`).
        observer: progress reporting (stages ``frames``/``video``) and warnings (e.g. frames without a mask).

    Returns:
        :class:`FrameSet` with original file names (videos: ``frame_00001.png``...), oriented sizes
        ``(S, 2)`` (width, height), ``exif_focal_px`` where EXIF has a focal length, ``ordered=True``
        for videos, ``source`` = the input path. Frames are read lazily by ``FrameSet.image``.

    Raises:
        InputError: a one-line message naming the path: missing input, empty folder, no images,
            an unreadable or truncated image, a video without decodable frames, fewer than
            ``MIN_FRAMES`` frames, a missing mask folder, or a mask whose size differs from its frame.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise InputError("input not found", source)
    if source.is_dir():
        frames = _load_folder(source, observer)
    elif source.is_file():
        if source.suffix.lower() in IMAGE_EXTENSIONS:
            raise InputError("is a single image; give a folder of images or a video file", source)
        from .video import extract_frames

        if work_dir is None:
            work_dir = process_temp_dir("vggsfm_ns_frames_")
        frames = extract_frames(source, Path(work_dir) / "frames", num_frames_target, observer=observer)
    else:
        raise InputError("is neither a folder nor a file", source)
    if len(frames) < MIN_FRAMES:
        raise InputError(f"only {len(frames)} frame(s); a reconstruction needs at least {MIN_FRAMES}", source)
    if masks is not None:
        frames.mask_paths = match_masks(frames.names, Path(masks).expanduser(), frames.sizes)
        missing = [n for n, m in zip(frames.names, frames.mask_paths) if m is None]
        if missing and observer is not None:
            observer.message(
                f"masks: {len(frames) - len(missing)} of {len(frames)} frames have a mask; the others (e.g. "
                f"{missing[0]}) are used whole",
                "warning",
            )
    return frames


def _load_folder(folder: Path, observer: Optional[PipelineObserver]) -> FrameSet:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputError("folder is empty", folder)
    files = list_images(folder)
    if not files:
        sub = folder / "images"
        hint = f" (did you mean {sub}?)" if sub.is_dir() else ""
        exts = " ".join(IMAGE_EXTENSIONS)
        raise InputError(f"no images found (looked for {exts}){hint}", folder)
    sizes, focals, bad = [], [], []

    def check(path: Path):
        try:
            return image_info(path, check_decode=True)
        except InputError as e:
            return e

    # headers and decode checks in parallel (Pillow releases the GIL while decoding); every bad file
    # is collected, so that one run names them all
    with Stage(observer, "frames", total=len(files)) as st, ThreadPoolExecutor(io_workers()) as ex:
        for info in ex.map(check, files):
            if isinstance(info, InputError):
                bad.append(info)
            else:
                sizes.append(info.size)
                focals.append(info.exif_focal_px)
            st.advance()
    if len(bad) == 1:
        raise bad[0]
    if bad:
        shown = "; ".join(str(e) for e in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise InputError(f"{len(bad)} unreadable images (remove or fix them): {shown}{more}", folder)
    return FrameSet(
        names=[p.name for p in files],
        sizes=np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
        paths=list(files),
        exif_focal_px=focals,
        ordered=False,
        source=folder,
    )


def match_masks(names: Sequence[str], mask_dir: Path, sizes: Optional[np.ndarray] = None) -> List[Optional[Path]]:
    """Match mask files to frame names.

    A frame ``a.jpg`` takes, in this order, ``a.jpg``, ``a.jpg.png``, ``a.png`` or any ``a.<image ext>``
    from ``mask_dir``.

    Args:
        names: frame file names.
        mask_dir: folder of masks.
        sizes: optional ``(S, 2)`` frame sizes; when given, each matched mask's size is checked.

    Returns:
        One path (or None) per frame.

    Raises:
        InputError: if ``mask_dir`` is not a folder, holds no image files, matches no frame, or a
            mask's size differs from its frame.
    """
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise InputError("mask folder not found", mask_dir)
    files = list_images(mask_dir)
    if not files:
        raise InputError("mask folder holds no image files", mask_dir)
    by_name: Dict[str, Path] = {p.name: p for p in files}
    by_stem: Dict[str, Path] = {}
    for p in files:
        by_stem.setdefault(p.stem, p)
    out: List[Optional[Path]] = []
    for n in names:
        m = by_name.get(n) or by_name.get(n + ".png") or by_name.get(Path(n).stem + ".png") or by_stem.get(Path(n).stem)
        out.append(m)
    if not any(m is not None for m in out):
        raise InputError(f"no mask file matches any frame name (e.g. {names[0]})", mask_dir)
    if sizes is not None:
        for i, m in enumerate(out):
            if m is None:
                continue
            info = image_info(m, check_decode=False)
            w, h = (int(v) for v in sizes[i])
            if info.size != (w, h):
                raise InputError(f"mask is {info.size[0]}x{info.size[1]} but frame {names[i]} is {w}x{h}", m)
    return out


def check_uniform_size(frames: FrameSet, why: str = "--shared-camera needs all frames to have one size") -> None:
    """Raise unless every frame has the same size.

    Raises:
        InputError: naming the first frame whose size differs from the first frame's, and ``why``.
    """
    sizes = np.asarray(frames.sizes).reshape(-1, 2)
    if len(sizes) == 0:
        return
    diff = np.nonzero(np.any(sizes != sizes[0], axis=1))[0]
    if len(diff):
        i = int(diff[0])
        n_sizes = len({tuple(s) for s in sizes.tolist()})
        where = frames.paths[i] or frames.names[i]
        raise InputError(
            f"is {sizes[i][0]}x{sizes[i][1]} but {frames.names[0]} is {sizes[0][0]}x{sizes[0][1]} "
            f"({n_sizes} different sizes); {why}",
            where,
        )
