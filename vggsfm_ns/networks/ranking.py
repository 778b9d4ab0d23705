"""Query-frame ranking by DINOv2 similarity (the official default query-frame selection).

Source: official ``generate_rank_by_dino`` and ``farthest_point_sampling`` (``vggsfm/utils/utils.py``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..query.frames import farthest_point_sampling

__all__ = ["rank_frames_by_dino", "rank_from_patch_tokens"]


def rank_from_patch_tokens(patch_tokens: torch.Tensor) -> torch.Tensor:
    """Frame order from DINO patch tokens.

    Each channel is L2-normalised over the patches of its frame; the frame similarity is the mean
    over patches of the channel dot products. The first frame is the one most similar to all others
    (largest row sum, diagonal excluded); then :func:`~vggsfm_ns.query.frames.farthest_point_sampling`
    repeatedly takes the frame farthest (``100 - similarity``) from the *last* chosen frame among
    those not chosen yet.

    Args:
        patch_tokens: ``[S, P, C]`` float ``x_norm_patchtokens``.

    Returns:
        ``[S]`` int64 permutation of ``range(S)``. In exact ties the official code could repeat the
        first frame; here already chosen frames are never chosen again, so the result is always a
        permutation (identical to the official order whenever that one has no repetition).
    """
    S = patch_tokens.shape[0]
    feat = F.normalize(patch_tokens.float(), p=2, dim=1).permute(1, 0, 2)
    sim = torch.bmm(feat, feat.transpose(-1, -2)).mean(dim=0)
    dist = (100 - sim.clone()).clamp(min=0)
    sim.fill_diagonal_(-100)
    first = int(torch.argmax(sim.sum(dim=1)).item())
    return torch.tensor(farthest_point_sampling(dist, S, start=first), dtype=torch.long)


@torch.no_grad()
def rank_frames_by_dino(images: torch.Tensor, camera_predictor, patch_tokens: Optional[torch.Tensor] = None, frame_chunk: int = 16) -> torch.Tensor:
    """Rank frames for use as query frames (most central first, then farthest-point order).

    Args:
        images: ``[S, 3, H, W]`` RGB in [0, 1] (the processed square frames), any device.
        camera_predictor: :class:`~vggsfm_ns.networks.camera.CameraPredictor` (its DINOv2 backbone).
        patch_tokens: precomputed ``camera_predictor.backbone_features(images)`` (reused, e.g. by
            the camera prediction); computed when None.
        frame_chunk: images per backbone call.

    Returns:
        ``[S]`` int64 CPU tensor, a permutation of ``range(S)``; take the first ``k`` as query frames.

    Source: official ``generate_rank_by_dino(images, camera_predictor, S)``: images resized to 336
    (bilinear, ``align_corners=True``), ImageNet-normalised, DINOv2 ``x_norm_patchtokens``.
    """
    if patch_tokens is None:
        rgbs = images
        out = []
        for f0 in range(0, rgbs.shape[0], frame_chunk):
            x = F.interpolate(rgbs[f0 : f0 + frame_chunk], (camera_predictor.down_size, camera_predictor.down_size), mode="bilinear", align_corners=True)
            out.append(camera_predictor.backbone_features(x, frame_chunk=None))
        patch_tokens = torch.cat(out, 0)
    return rank_from_patch_tokens(patch_tokens)
