"""Camera prior from the VGGSfM camera predictor, in the processed frame.

Source: official ``average_camera_prediction`` (``vggsfm/utils/utils.py``, used with
``avg_pose: True``) and ``get_EFP`` (``models/utils.py``); spec §4.3 step 1 and §5.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .conventions import ImageTransform, corner_to_center
from .types import CameraPrior

__all__ = ["average_camera_prediction", "predict_cameras", "predict_cameras_single", "camera_prior_from_normalized"]


def _camera_predictor(model):
    return model.camera_predictor if hasattr(model, "camera_predictor") else model


def _swap_order(q: int, S: int, device) -> torch.Tensor:
    order = torch.arange(S, device=device)
    order[0] = q
    order[q] = 0
    return order


def _average_rotations(R: np.ndarray) -> np.ndarray:
    """``[Q, S, 3, 3]`` -> ``[S, 3, 3]`` float64: mean of scipy quaternions (no sign alignment), normalised."""
    from scipy.spatial.transform import Rotation

    Q, S = R.shape[:2]
    quats = Rotation.from_matrix(R.reshape(Q * S, 3, 3)).as_quat().reshape(Q, S, 4)
    mean = quats.mean(axis=0)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    return Rotation.from_quat(mean).as_matrix()


@torch.no_grad()
def average_camera_prediction(
    images: Optional[torch.Tensor],
    model,
    query_indices: Sequence[int],
    patch_tokens: Optional[torch.Tensor] = None,
    iters: int = 4,
    chunk: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the camera predictor once per query frame (swapped to position 0) and average.

    Each run's cameras are re-expressed relative to frame 0 (``E_i <- E_i E_0^-1``); rotations are
    averaged as scipy quaternions (arithmetic mean, no sign alignment, renormalised), translations
    and normalised focal lengths arithmetically.

    Args:
        images: ``[S, 3, H, W]`` processed frames in [0, 1] (None when ``patch_tokens`` is given).
        model: :class:`~vggsfm_ns.networks.VGGSfMModel` or its ``camera_predictor``.
        query_indices: the query frames (official: the first ``query_frame_num`` of the ranking).
        patch_tokens: precomputed ``camera_predictor.backbone_features(images)``; the DINO backbone
            is per image, so it runs once instead of once per query frame.
        iters: refinement iterations (official 4).
        chunk: tokens processed at once in the attention blocks (memory; None = all).

    Returns:
        ``(R [S, 3, 3] float64, T [S, 3] float32, focal [S, 2] float32)``: OpenCV
        ``cam_from_world`` relative to frame 0 and normalised focal lengths, on the model's device.

    Raises:
        ValueError: if ``query_indices`` is empty or out of range.

    Source: official ``average_camera_prediction(camera_predictor, images, 1, query_indices=...)``.
    """
    cp = _camera_predictor(model)
    if patch_tokens is None:
        patch_tokens = cp.backbone_features(images)
    S = patch_tokens.shape[0]
    qs = [int(q) for q in query_indices]
    if not qs or any(q < 0 or q >= S for q in qs):
        raise ValueError(f"query_indices {qs} invalid for {S} frames")
    device = patch_tokens.device
    rots, trans, focals = [], [], []
    with torch.autocast(device.type, enabled=False):
        for q in qs:
            order = _swap_order(q, S, device)
            out = cp(None, iters=iters, patch_tokens=patch_tokens.index_select(0, order), chunk=chunk)
            R, T = out["R"], out["T"]
            E = torch.eye(4, 4).to(R.dtype).to(device)[None].repeat(S, 1, 1)
            E[:, :3, :3] = R
            E[:, :3, 3] = T
            E = E.index_select(0, order)
            focal = out["focal_length"].index_select(0, order)
            from .geometry.pose_encoding import se3_inverse

            E = torch.bmm(E, se3_inverse(E[0:1]).expand(S, -1, -1))
            rots.append(E[:, :3, :3].clone()[None])
            trans.append(E[:, :3, 3].clone()[None])
            focals.append(focal[None])
    R_all = torch.cat(rots)
    R_avg = torch.from_numpy(_average_rotations(R_all.cpu().numpy())).to(device)
    return R_avg, torch.cat(trans).mean(0), torch.cat(focals).mean(0)


def camera_prior_from_normalized(R: torch.Tensor, T: torch.Tensor, focal: torch.Tensor, image_transforms: Sequence[ImageTransform]) -> CameraPrior:
    """Normalised cameras -> :class:`~vggsfm_ns.types.CameraPrior` in processed pixels.

    Pixel focal = ``focal * min(W, H) / 2`` clamped to ``[0.2, 5] * min(W, H)`` (official
    ``get_EFP``). The principal point is the frame centre in the pixel-centre convention,
    ``((W - 1) / 2, (H - 1) / 2)``: the official ``(W / 2, H / 2)`` shifted by -0.5 px, because our
    tracks use the pixel-centre convention (``vggsfm_ns.conventions``).

    Args:
        R: ``[S, 3, 3]``, T: ``[S, 3]``, focal: ``[S, 1 or 2]`` from the camera predictor.
        image_transforms: per-frame transforms (all frames share the processed size).

    Raises:
        ValueError: if the frames do not share one processed size.
    """
    from .geometry.pose_encoding import cameras_to_pixel

    sizes = {tuple(t.size) for t in image_transforms}
    if len(sizes) != 1:
        raise ValueError(f"camera prior needs one processed size, got {sorted(sizes)}")
    W, H = next(iter(sizes))
    ext, K = cameras_to_pixel(R, T, focal.float(), (W, H))  # float32 focal as the official get_EFP
    ext, K = ext.double().cpu(), K.double().cpu()
    K[..., :2, 2] = corner_to_center(K[..., :2, 2])  # pixel-centre principal point
    return CameraPrior(extrinsics=ext, intrinsics=K)


@torch.no_grad()
def predict_cameras(
    images: Optional[torch.Tensor],
    model,
    query_indices: Sequence[int],
    image_transforms: Sequence[ImageTransform],
    patch_tokens: Optional[torch.Tensor] = None,
    iters: int = 4,
    chunk: Optional[int] = None,
) -> CameraPrior:
    """The VGGSfM camera prior: :func:`average_camera_prediction` over ``query_indices``, converted
    to pixel extrinsics/intrinsics in the processed frame (:func:`camera_prior_from_normalized`).

    Args:
        images: ``[S, 3, H, W]`` processed frames in [0, 1] on the model's device (None when
            ``patch_tokens`` is given).
        model: :class:`~vggsfm_ns.networks.VGGSfMModel` or its ``camera_predictor``.
        query_indices: query frames; an empty sequence runs the predictor once
            (:func:`predict_cameras_single`).
        image_transforms: the frames' :class:`~vggsfm_ns.conventions.ImageTransform`.
        patch_tokens: precomputed DINO patch tokens of ``images``.
        iters: refinement iterations (official 4).
        chunk: tokens processed at once in the attention blocks (memory; None = all).

    Returns:
        :class:`~vggsfm_ns.types.CameraPrior` (CPU, float64): OpenCV ``cam_from_world`` with frame 0
        the identity (translation scale is arbitrary), pixel-centre intrinsics.

    Source: official ``average_camera_prediction`` + ``get_EFP`` (avg_pose: True).
    """
    if len(query_indices) == 0:
        return predict_cameras_single(images, model, image_transforms, patch_tokens, iters, chunk)
    R, T, focal = average_camera_prediction(images, model, query_indices, patch_tokens, iters, chunk)
    return camera_prior_from_normalized(R, T, focal, image_transforms)


@torch.no_grad()
def predict_cameras_single(
    images: Optional[torch.Tensor],
    model,
    image_transforms: Sequence[ImageTransform],
    patch_tokens: Optional[torch.Tensor] = None,
    iters: int = 4,
    chunk: Optional[int] = None,
) -> CameraPrior:
    """One camera-predictor run with frame 0 as reference (official ``avg_pose: False``).

    Same arguments and result as :func:`predict_cameras`.
    """
    cp = _camera_predictor(model)
    if patch_tokens is None:
        patch_tokens = cp.backbone_features(images)
    with torch.autocast(patch_tokens.device.type, enabled=False):
        out = cp(None, iters=iters, patch_tokens=patch_tokens, chunk=chunk)
    return camera_prior_from_normalized(out["R"], out["T"], out["focal_length"], image_transforms)
