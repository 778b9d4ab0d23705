"""Reading images and masks (EXIF orientation, grayscale/RGBA/16-bit normalised to 8-bit RGB)."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError, OutputError, short_reason

#: File extensions recognised as images (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


#: Default budget (MiB) of :func:`decoded_image_cache`; the environment variable
#: ``VGGSFM_NS_IMAGE_CACHE_MB`` overrides it (0 turns the cache off).
IMAGE_CACHE_MB = 512


class _DecodedImages:
    """Decoded RGB8 images of one run, keyed by file identity, filled until a byte budget.

    No eviction: a run reads its frames in the same order several times (header check, features,
    point colours, export), and for such scans keeping the first frames beats LRU, which would
    evict each frame just before it is read again.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.images: Dict[Tuple[str, int, int], np.ndarray] = {}
        self.lock = threading.Lock()

    @staticmethod
    def key(path: Path) -> Optional[Tuple[str, int, int]]:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (os.path.abspath(path), int(st.st_mtime_ns), int(st.st_size))

    def get(self, key) -> Optional[np.ndarray]:
        with self.lock:
            a = self.images.get(key)
        return None if a is None else a.copy()

    def put(self, key, image: np.ndarray) -> None:
        with self.lock:
            if key in self.images or self.nbytes + image.nbytes > self.max_bytes:
                return
            a = image.copy()
            a.flags.writeable = False
            self.images[key] = a
            self.nbytes += a.nbytes


_ACTIVE: Optional[_DecodedImages] = None
_ACTIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def decoded_image_cache(max_mb: Optional[float] = None) -> Iterator[None]:
    """Keep decoded images in memory while the block runs, so each file is decoded once.

    Inside the block :func:`read_image` (and the decode check of :func:`image_info` for formats it
    decodes fully) store their result, up to ``max_mb`` MiB (default
    ``$VGGSFM_NS_IMAGE_CACHE_MB`` or :data:`IMAGE_CACHE_MB`); later reads of the same unchanged
    file (same absolute path, modification time and size) get a copy instead of decoding again.
    Nested blocks share the outermost cache; everything is released when it ends.

    Args:
        max_mb: budget in MiB; 0 disables the cache.

    Raises:
        ValueError: if ``$VGGSFM_NS_IMAGE_CACHE_MB`` is set but not a number.
    """
    global _ACTIVE
    if max_mb is None:
        env = os.environ.get("VGGSFM_NS_IMAGE_CACHE_MB")
        try:
            max_mb = float(env) if env not in (None, "") else float(IMAGE_CACHE_MB)
        except ValueError:
            raise ValueError(f"VGGSFM_NS_IMAGE_CACHE_MB must be a number of MiB, got {env!r}") from None
    with _ACTIVE_LOCK:
        outer = _ACTIVE is not None
        if not outer and max_mb > 0:
            _ACTIVE = _DecodedImages(int(max_mb * 2**20))
    try:
        yield
    finally:
        if not outer:
            with _ACTIVE_LOCK:
                _ACTIVE = None


def read_image(path: Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB, EXIF orientation applied.

    Grayscale is replicated to 3 channels, alpha is dropped, 16-bit data is scaled to 8 bits.
    Inside :func:`decoded_image_cache` a file is decoded once; the caller always gets its own,
    writable array.

    Raises:
        InputError: naming the file, if it is missing, unreadable or truncated.
    """
    path = Path(path)
    cache = _ACTIVE
    key = cache.key(path) if cache is not None else None
    if key is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit
    try:
        with Image.open(path) as im:
            im.load()
            rgb = _to_rgb8(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot decode image ({e})", path) from None
    if key is not None:
        cache.put(key, rgb)
    return rgb


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
    return np.array(im.convert("RGB"))  # a writable copy (PIL's buffer is read-only)


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


# --------------------------------------------------------------------------------------------
# Header-level information (size, orientation, EXIF focal length) without decoding pixels.
# --------------------------------------------------------------------------------------------

#: EXIF tag ids used below (EXIF 2.32 / CIPA DC-008).
_TAG_ORIENTATION = 0x0112
_TAG_EXIF_IFD = 0x8769
_TAG_FOCAL_LENGTH = 0x920A
_TAG_FOCAL_PLANE_X_RES = 0xA20E
_TAG_FOCAL_PLANE_RES_UNIT = 0xA210
_TAG_FOCAL_35MM = 0xA405
_TAG_PIXEL_X_DIM = 0xA002

#: Millimetres per FocalPlaneResolutionUnit (2 = inch, 3 = centimetre, 4 = millimetre, 5 = micrometre).
_RES_UNIT_MM = {1: 25.4, 2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}

#: Diagonal of a 36 x 24 mm frame: the reference of ``FocalLengthIn35mmFilm`` (CIPA DC-008 defines the
#: 35 mm equivalent through the diagonal of the field of view).
_DIAG_35MM = float(np.hypot(36.0, 24.0))


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`image_info` learns from an image header.

    Attributes:
        size: ``(width, height)`` in pixels **after** EXIF orientation (what :func:`read_image` returns).
        orientation: EXIF orientation tag (1..8; 1 = as stored, also used when the tag is absent).
        mode: PIL mode of the stored pixels (``"RGB"``, ``"L"``, ``"RGBA"``, ``"I;16"``...).
        format: PIL format name (``"JPEG"``, ``"PNG"``...).
        exif_focal_px: focal length in pixels of the oriented image, from EXIF, or None.
    """

    size: Tuple[int, int]
    orientation: int
    mode: str
    format: str
    exif_focal_px: Optional[float]

    @property
    def is_plain_rgb8(self) -> bool:
        """True when the stored bytes already are what :func:`read_image` returns (8-bit RGB, upright),
        so the file can be copied as it is into a dataset."""
        return self.orientation == 1 and self.mode == "RGB"


def image_info(path: Path, check_decode: bool = True) -> ImageInfo:
    """Read an image's header: oriented size, EXIF orientation, pixel mode and EXIF focal length.

    Args:
        path: image file.
        check_decode: also decode the pixel data once to detect truncated or corrupt files (JPEGs
            are decoded at 1/8 scale with libjpeg's DCT scaling, which still reads every byte of the
            entropy-coded data, so this is cheap). Other formats are decoded fully; inside
            :func:`decoded_image_cache` their pixels are kept for :func:`read_image`.

    Returns:
        :class:`ImageInfo`.

    Raises:
        InputError: naming the file, if it is missing, not an image, truncated or corrupt.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            mode, fmt = im.mode, (im.format or "")
            exif = im.getexif()
            orientation = int(exif.get(_TAG_ORIENTATION, 1) or 1)
            if orientation not in range(1, 9):
                orientation = 1
            focal = _exif_focal_px(exif, w, h)
            if check_decode:
                if fmt == "JPEG":
                    im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                im.load()
                cache = _ACTIVE
                if cache is not None and fmt != "JPEG":
                    # fully decoded anyway: keep the pixels for the reads that follow
                    key = cache.key(path)
                    if key is not None:
                        cache.put(key, _to_rgb8(ImageOps.exif_transpose(im)))
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot decode image ({short_reason(e)})", path) from None
    except Image.DecompressionBombError as e:  # pragma: no cover - exotic
        raise InputError(f"image too large ({short_reason(e)})", path) from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return ImageInfo((int(w), int(h)), orientation, mode, fmt, focal)


def _rational(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def _exif_focal_px(exif: "Image.Exif", stored_w: int, stored_h: int) -> Optional[float]:
    """Focal length in pixels from EXIF (see :func:`exif_focal_px_from_tags`)."""
    try:
        ifd = dict(exif.get_ifd(_TAG_EXIF_IFD))
    except Exception:  # noqa: BLE001 - malformed EXIF must never stop a run
        return None
    # Some writers put the tags in IFD0.
    for tag in (_TAG_FOCAL_LENGTH, _TAG_FOCAL_PLANE_X_RES, _TAG_FOCAL_PLANE_RES_UNIT, _TAG_FOCAL_35MM, _TAG_PIXEL_X_DIM):
        if tag not in ifd and tag in exif:
            ifd[tag] = exif[tag]
    return exif_focal_px_from_tags(ifd, stored_w, stored_h)


def exif_focal_px_from_tags(tags: Dict[int, object], stored_w: int, stored_h: int) -> Optional[float]:
    """Focal length in pixels from EXIF tags.

    Two sources, in this order (the first is physical, the second a camera-reported equivalent):

    1. ``FocalLength`` (mm) x ``FocalPlaneXResolution`` (pixels per ``FocalPlaneResolutionUnit``),
       rescaled by ``stored_w / PixelXDimension`` when the image was resized after capture.
    2. ``FocalLengthIn35mmFilm`` (mm): ``f_px = f35 / 43.27 * hypot(w, h)`` (the 35 mm equivalent is
       defined on the frame diagonal, CIPA DC-008; for a 3:2 image this equals COLMAP's
       ``f35 / 36 * max(w, h)``).

    Args:
        tags: EXIF tag id -> value (the EXIF sub-IFD merged with IFD0).
        stored_w, stored_h: size of the stored (not yet oriented) pixel array. Pixels are assumed
            square, so the focal length in pixels does not depend on the orientation.

    Returns:
        Focal length in pixels, or None when EXIF has neither source or the values are implausible
        (outside ``[0.1, 30] * max(w, h)``, the range the back end accepts).
    """
    f_px: Optional[float] = None
    f_mm = _rational(tags.get(_TAG_FOCAL_LENGTH))
    xres = _rational(tags.get(_TAG_FOCAL_PLANE_X_RES))
    if f_mm is not None and xres is not None:
        unit = int(tags.get(_TAG_FOCAL_PLANE_RES_UNIT, 2) or 2)
        mm_per_unit = _RES_UNIT_MM.get(unit)
        if mm_per_unit is not None:
            f_px = f_mm * xres / mm_per_unit
            full_w = _rational(tags.get(_TAG_PIXEL_X_DIM))
            if full_w is not None and abs(full_w - stored_w) > 0.5:
                f_px *= stored_w / full_w
    if f_px is None:
        f35 = _rational(tags.get(_TAG_FOCAL_35MM))
        if f35 is not None:
            f_px = f35 / _DIAG_35MM * float(np.hypot(stored_w, stored_h))
    if f_px is None:
        return None
    longest = float(max(stored_w, stored_h))
    if not (0.1 * longest <= f_px <= 30.0 * longest):
        return None
    return float(f_px)


def write_image(path: Path, image: np.ndarray, quality: int = 95) -> None:
    """Encode ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` uint8) to ``path``; the format follows the suffix.

    PNG and JPEG go through OpenCV (about twice as fast as Pillow here); PNG uses a fast compression
    level, JPEG ``quality`` with 4:4:4 chroma above 90. Other formats use Pillow. No EXIF is
    written, so the result is upright for every reader.

    Raises:
        OutputError: naming the file, if it cannot be written.
    """
    path = Path(path)
    arr = np.ascontiguousarray(image)
    suffix = path.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg") and arr.dtype == np.uint8 and arr.ndim in (2, 3):
        import cv2

        if suffix == ".png":
            params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
        else:
            params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
            if quality > 90 and hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
                params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        bgr = arr[..., ::-1] if arr.ndim == 3 else arr
        if not cv2.imwrite(str(path), np.ascontiguousarray(bgr), params):
            raise OutputError("cannot write image", path)
        return
    try:
        _save(Image.fromarray(arr), path, quality)
    except OSError as e:
        raise OutputError(f"cannot write image ({short_reason(e)})", path) from None


def _save(im: Image.Image, path: Path, quality: int = 95) -> None:
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        im.save(path, format="JPEG", quality=quality, subsampling=0 if quality > 90 else 2)
    elif suffix == ".png":
        im.save(path, format="PNG", compress_level=1)
    elif suffix == ".webp":
        im.save(path, format="WEBP", quality=quality)
    else:
        im.save(path)


def write_downscales(image: np.ndarray, names_by_factor: Dict[int, Path], quality: int = 95, nearest: bool = False) -> None:
    """Write downscaled copies of one image, nerfstudio style.

    Args:
        image: ``(H, W, 3)`` or ``(H, W)`` uint8 at full resolution.
        names_by_factor: downscale factor (2, 4, 8...) -> output file.
        quality: JPEG/WebP quality.
        nearest: nearest-neighbour resampling (masks: pixel ``(i, j)`` takes source ``(f*i, f*j)``);
            otherwise area averaging (OpenCV ``INTER_AREA``).

    The size at factor ``f`` is ``(W // f, H // f)`` (at least 1 px), the rounding nerfstudio's
    ``Cameras.rescale_output_resolution`` uses, so the dataparser's intrinsics match the pixels.
    Each level is computed from the previous one (exact for power-of-two factors).
    """
    import cv2

    if not names_by_factor:
        return
    h, w = image.shape[:2]
    cur, cur_f = np.ascontiguousarray(image), 1
    for f in sorted(names_by_factor):
        size = (max(1, w // f), max(1, h // f))
        if nearest:
            out = np.ascontiguousarray(image[::f, ::f][: size[1], : size[0]])
        else:
            src = cur if f % cur_f == 0 else image
            out = cv2.resize(src, size, interpolation=cv2.INTER_AREA)
            cur, cur_f = out, f
        write_image(Path(names_by_factor[f]), out, quality)
