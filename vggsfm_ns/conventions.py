"""Conventions shared by every stage: pixel coordinates, image frames, camera axes, image normalisation.

One concept, one place. Every module that converts between coordinate systems imports from here.

Pixel coordinates
-----------------
Two conventions are in use in this field and both appear in this package:

* **pixel-centre** (``"center"``): the centre of the top-left pixel is ``(0, 0)``. This is what the
  VGGSfM networks, ``grid_sample(align_corners=True)``, OpenCV's KLT and every internal track tensor
  use. ``tracks (S, N, 2)`` are always ``(x = column, y = row)`` in this convention.
* **pixel-corner** (``"corner"``): the top-left *corner* of the top-left pixel is ``(0, 0)``, so the
  centre of that pixel is ``(0.5, 0.5)``. COLMAP (``Point2D.xy``, principal points), pycolmap's SIFT
  keypoints and nerfstudio (``cx``, ``cy`` in ``transforms.json``) use it.

:func:`center_to_corner` / :func:`corner_to_center` convert between them (a shift of 0.5 px). The
official VGGSfM writes its tracks into COLMAP without this shift; we apply it, so our COLMAP models
and ``transforms.json`` are consistent with nerfstudio's ray generation.

Processed frame
---------------
Networks and trackers run on a *processed* copy of each image. :class:`ImageTransform` records how a
frame's original pixels map to it: the original image is padded by ``pad`` pixels on the left/top
(VGGSfM's centred square crop with black borders) and then scaled by ``scale``. In the corner
convention the map is exactly ``x_proc = (x_orig + pad_x) * scale``.

Camera axes
-----------
* **OpenCV / COLMAP** camera axes: x right, y down, z forward (the camera looks down +z).
  ``extrinsics (S, 3, 4)`` and ``cam_from_world`` are world-to-camera in this convention.
* **OpenGL / nerfstudio / Blender** camera axes: x right, y up, camera looks down -z.
  ``transform_matrix`` in ``transforms.json`` is camera-to-world in this convention.

:func:`opencv_w2c_to_opengl_c2w` and :func:`opengl_c2w_to_opencv_w2c` are the only conversions.

Saved world and depth unit
--------------------------
``transforms.json`` and ``sparse_pc.ply`` are in nerfstudio's *saved world*: the COLMAP world mapped by
:data:`APPLIED_TRANSFORM` (recorded in the file as ``applied_transform``); a COLMAP dataset without
that key is read with nerfstudio's older assumption :data:`LEGACY_APPLIED_TRANSFORM`. Depth PNGs hold
``depth / DEPTH_UNIT_SCALE_FACTOR`` (:data:`DEPTH_UNIT_SCALE_FACTOR`).

Image normalisation
-------------------
Tracker inputs are RGB in [0, 1] with no mean/std normalisation (official ``DemoLoader``). DINOv2
(camera predictor, query-frame ranking) and Depth-Anything-V2 use :func:`imagenet_normalize`
(:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]
PixelConvention = Literal["center", "corner"]

#: ImageNet RGB mean used by DINOv2 (camera predictor, DINO query-frame ranking).
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet RGB standard deviation used by DINOv2.
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Side of the square frame the VGGSfM networks run on (official ``img_size``).
VGGSFM_IMG_SIZE: int = 1024


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` with the ImageNet RGB statistics (DINOv2, Depth-Anything-V2 inputs).

    Args:
        images: ``[..., 3, H, W]`` float RGB in [0, 1], any device.

    Returns:
        ``[..., 3, H, W]`` normalised images on the same device (float32 for float32 or
        lower-precision input; float64 stays float64).

    Source: the official ``_resnet_normalize_image`` (camera predictor) and Depth-Anything-V2's
    ``NormalizeImage`` transform: both use :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=images.device).view(3, 1, 1)
    return (images - mean) / std


#: Per-axis flip between OpenCV and OpenGL camera axes (diag(1, -1, -1)).
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0])

#: COLMAP world -> nerfstudio saved world, 3x4 (nerfstudio ``colmap_to_json``: rows (x, z, -y)),
#: written to ``transforms.json`` as ``applied_transform``.
APPLIED_TRANSFORM = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
#: What nerfstudio assumes for a COLMAP dataset whose ``transforms.json`` has no
#: ``applied_transform`` (``nerfstudio_dataparser.py``), 3x4.
LEGACY_APPLIED_TRANSFORM = np.array([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])
#: 16-bit depth PNG value * this = z-depth in the units of ``transform_matrix`` (millimetres of scene
#: units; nerfstudio's default ``depth_unit_scale_factor`` too). ``transforms.json`` also records it
#: as ``vggsfm_depth_unit_scale_factor``.
DEPTH_UNIT_SCALE_FACTOR = 1e-3


def center_to_corner(xy: ArrayLike) -> ArrayLike:
    """Convert pixel-centre coordinates to pixel-corner (COLMAP / nerfstudio) coordinates.

    Args:
        xy: ``[..., 2]`` pixel coordinates, centre of the top-left pixel at (0, 0).

    Returns:
        ``[..., 2]`` same dtype, centre of the top-left pixel at (0.5, 0.5).
    """
    return xy + 0.5


def corner_to_center(xy: ArrayLike) -> ArrayLike:
    """Inverse of :func:`center_to_corner`. ``[..., 2]`` -> ``[..., 2]``."""
    return xy - 0.5


@dataclass(frozen=True)
class ImageTransform:
    """How a frame's original pixels map into the processed frame a tracker or network sees.

    Corner convention: ``x_proc = (x_orig + pad[0]) * scale``, ``y_proc = (y_orig + pad[1]) * scale``.

    Attributes:
        orig_size: ``(width, height)`` of the original image in pixels.
        size: ``(width, height)`` of the processed frame in pixels.
        scale: processed pixels per original pixel.
        pad: ``(pad_x, pad_y)`` original pixels of padding added on the left and top (0 when the
            frame is only resized; positive for VGGSfM's centred square).

    Source: official ``pad_and_resize_image`` / ``calculate_crop_parameters`` (``crop_params``),
    expressed as a single affine map.
    """

    orig_size: Tuple[int, int]
    size: Tuple[int, int]
    scale: float
    pad: Tuple[float, float] = (0.0, 0.0)

    def orig_to_proc(self, xy: ArrayLike, convention: PixelConvention = "center") -> ArrayLike:
        """Map ``[..., 2]`` original-image pixels to processed-frame pixels (same convention)."""
        if convention == "center":
            return corner_to_center(self.orig_to_proc(center_to_corner(xy), "corner"))
        out = xy + _like(xy, self.pad)
        return out * self.scale

    def proc_to_orig(self, xy: ArrayLike, convention: PixelConvention = "center") -> ArrayLike:
        """Map ``[..., 2]`` processed-frame pixels back to original-image pixels (same convention)."""
        if convention == "center":
            return corner_to_center(self.proc_to_orig(center_to_corner(xy), "corner"))
        return xy / self.scale - _like(xy, self.pad)

    def content_box(self) -> Tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the real image content in the processed frame, corner convention.

        Outside this box the processed frame holds padding (official ``bound_bboxes``).
        """
        x0, y0 = self.pad[0] * self.scale, self.pad[1] * self.scale
        return (x0, y0, x0 + self.orig_size[0] * self.scale, y0 + self.orig_size[1] * self.scale)

    def focal_to_orig(self, focal_proc: float) -> float:
        """Convert a focal length in processed pixels to original pixels."""
        return focal_proc / self.scale


def _like(xy: ArrayLike, values: Sequence[float]) -> ArrayLike:
    if isinstance(xy, torch.Tensor):
        return torch.as_tensor(values, dtype=xy.dtype, device=xy.device)
    return np.asarray(values, dtype=np.asarray(xy).dtype if np.asarray(xy).dtype.kind == "f" else np.float64)


def square_pad_transform(width: int, height: int, img_size: int = VGGSFM_IMG_SIZE) -> ImageTransform:
    """The VGGSfM preprocessing: centre the image in a black ``L x L`` square (``L = max(w, h)``),
    then resize that square to ``img_size x img_size``.

    Args:
        width, height: original image size in pixels.
        img_size: side of the processed square (official default 1024).

    Returns:
        The :class:`ImageTransform`. The padding is ``((L - w) // 2, (L - h) // 2)`` as in the
        official ``pad_and_resize_image`` (its crop box starts at ``(w - L) // 2``, a negative
        offset that becomes left/top padding).

    Raises:
        ValueError: if a size is not positive.
    """
    if width <= 0 or height <= 0 or img_size <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height} -> {img_size}")
    side = max(width, height)
    pad = (float(-((width - side) // 2)), float(-((height - side) // 2)))
    return ImageTransform((width, height), (img_size, img_size), img_size / side, pad)


def resize_transform(width: int, height: int, max_size: int) -> ImageTransform:
    """Resize (never upscale) so that the longer side is at most ``max_size``; no padding.

    The processed size is rounded to whole pixels; ``scale`` is the exact ratio used on the longer
    side. Used by the weight-free trackers (KLT, SIFT) that do not need a square input.

    Raises:
        ValueError: if a size is not positive.
    """
    if width <= 0 or height <= 0 or max_size <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height} -> {max_size}")
    scale = min(1.0, max_size / max(width, height))
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    return ImageTransform((width, height), size, scale, (0.0, 0.0))


def opencv_w2c_to_opengl_c2w(extrinsics: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera ``[..., 3, 4]`` -> OpenGL camera-to-world ``[..., 4, 4]`` (float64).

    The camera axes are flipped (y and z negated); the world frame is unchanged.
    """
    ext = np.asarray(extrinsics, dtype=np.float64)
    R, t = ext[..., :3, :3], ext[..., :3, 3]
    Rt = np.swapaxes(R, -1, -2)
    c2w = np.zeros(ext.shape[:-2] + (4, 4))
    c2w[..., :3, :3] = Rt @ OPENCV_TO_OPENGL
    c2w[..., :3, 3] = -(Rt @ t[..., None])[..., 0]
    c2w[..., 3, 3] = 1.0
    return c2w


def opengl_c2w_to_opencv_w2c(c2w: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world ``[..., 3 or 4, 4]`` -> OpenCV world-to-camera ``[..., 3, 4]`` (float64)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    R = c2w[..., :3, :3] @ OPENCV_TO_OPENGL
    t = c2w[..., :3, 3]
    Rt = np.swapaxes(R, -1, -2)
    out = np.zeros(c2w.shape[:-2] + (3, 4))
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ t[..., None])[..., 0]
    return out


def default_focal(width: float, height: float) -> float:
    """The focal length (pixels) assumed when nothing better is known: ``max(W, H)``.

    Same guess as the official ``estimate_preliminary_cameras`` (and a ~53 degree field of view on
    the longer side), used to seed bundle adjustment when no camera predictor or EXIF prior exists.
    """
    return float(max(width, height))
