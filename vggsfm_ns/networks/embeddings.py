"""Positional embeddings and bilinear sampling used by the VGGSfM networks.

Everything here is a pure function of its inputs (plus a small cache of constant grids) and is
written to reproduce the official float32 arithmetic operation for operation, so that the golden
vectors in ``tests/golden/vggsfm`` are matched to rounding.

Sources: official ``vggsfm/models/utils.py`` (``get_2d_sincos_pos_embed``, ``get_2d_embedding``,
``bilinear_sampler``, ``sample_features4d``) and ``minipytorch3d/harmonic_embedding.py``.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "sincos_pos_embed_2d",
    "cached_sincos_pos_embed_2d",
    "flow_embedding_2d",
    "harmonic_embedding",
    "bilinear_sample",
    "sample_features",
]


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``[M]`` float64 positions -> ``[M, dim]`` float64: ``[sin(p w_k) (dim/2), cos(p w_k) (dim/2)]``
    with ``w_k = 10000^(-k / (dim/2))``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    half = dim // 2
    omega = torch.arange(half, dtype=torch.float64)
    omega = omega / (dim / 2.0)
    omega = 1.0 / (10000.0**omega)
    angles = positions[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_size: Union[int, Tuple[int, int]]) -> torch.Tensor:
    """2-D sine-cosine positional embedding of a feature grid.

    Args:
        dim: embedding dimension (even).
        grid_size: ``(H, W)`` of the grid, or one int for a square grid.

    Returns:
        ``[1, dim, H, W]`` float32 (CPU). Channels ``[0, dim/2)`` encode the column index x, channels
        ``[dim/2, dim)`` the row index y; each half is ``[sin (dim/4), cos (dim/4)]``. Computed in
        float64 and rounded to float32 once.

    Raises:
        ValueError: if ``dim`` is not even.

    Source: official ``get_2d_sincos_pos_embed`` (``models/utils.py``).
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else (int(grid_size[0]), int(grid_size[1]))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, xs.reshape(-1)), _sincos_1d(dim // 2, ys.reshape(-1))], dim=1)
    return emb.float().reshape(1, h, w, dim).permute(0, 3, 1, 2)


_PE_CACHE: Dict[Tuple[int, int, int, str], torch.Tensor] = {}


def cached_sincos_pos_embed_2d(dim: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """:func:`sincos_pos_embed_2d` cached per ``(dim, h, w, device)``: ``[1, dim, h, w]`` float32.

    The official tracker recomputes this table in float64 at every iteration; caching it gives the
    same bits for free. The cache keeps at most 8 tables.
    """
    key = (int(dim), int(h), int(w), str(torch.device(device)))
    table = _PE_CACHE.get(key)
    if table is None:
        if len(_PE_CACHE) >= 8:
            _PE_CACHE.pop(next(iter(_PE_CACHE)))
        with torch.no_grad():
            table = sincos_pos_embed_2d(dim, (h, w)).contiguous().to(device)
        _PE_CACHE[key] = table
    return table


def flow_embedding_2d(xy: torch.Tensor, channels: int) -> torch.Tensor:
    """Sinusoidal embedding of 2-D displacements (tracker flow embedding).

    Args:
        xy: ``[B, N, 2]`` float32 (x, y) values, in feature pixels.
        channels: ``C`` (even); ``C/2`` linearly spaced frequencies ``f_j = 2j * 1000 / C``.

    Returns:
        ``[B, N, 2C]`` float32 ``[x-part (C), y-part (C)]``; inside each part, even channels hold
        ``sin(v f_j)`` and odd channels ``cos(v f_j)``.

    Source: official ``get_2d_embedding(xy, C, cat_coords=False)`` (``models/utils.py``).
    """
    B, N, _ = xy.shape
    freqs = (torch.arange(0, channels, 2, device=xy.device, dtype=torch.float32) * (1000.0 / channels)).reshape(1, 1, channels // 2)
    out = torch.empty(B, N, 2, channels // 2, 2, device=xy.device, dtype=torch.float32)
    ax = xy[:, :, 0:1] * freqs
    ay = xy[:, :, 1:2] * freqs
    out[:, :, 0, :, 0] = torch.sin(ax)
    out[:, :, 0, :, 1] = torch.cos(ax)
    out[:, :, 1, :, 0] = torch.sin(ay)
    out[:, :, 1, :, 1] = torch.cos(ay)
    return out.reshape(B, N, 2 * channels)


def harmonic_embedding(x: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """NeRF-style harmonic embedding without the raw input (camera predictor pose embedding).

    Args:
        x: ``[..., D]`` float32.
        n_frequencies: ``K``; frequencies ``2^0 ... 2^(K-1)``.

    Returns:
        ``[..., 2 D K]`` float32: first all sines (index ``d K + k``), then all "cosines" computed
        as ``sin(v 2^k + pi/2)`` in float32, exactly like PyTorch3D's ``HarmonicEmbedding``.

    Source: ``minipytorch3d/harmonic_embedding.py`` (``append_input=False``, ``omega_0=1``).
    """
    freqs = 2.0 ** torch.arange(n_frequencies, dtype=torch.float32, device=x.device)
    phase = torch.tensor([0.0, 0.5 * math.pi], dtype=torch.float32, device=x.device)
    emb = x[..., None] * freqs
    emb = emb[..., None, :, :] + phase[:, None, None]
    return emb.sin().reshape(*x.shape[:-1], -1)


def _normalise_coords(coords: torch.Tensor, sizes) -> torch.Tensor:
    """Pixel (x, y[, ...]) coords -> grid_sample's [-1, 1] (align_corners=True), official arithmetic."""
    scale = torch.tensor([2 / max(s - 1, 1) for s in reversed(sizes)], device=coords.device)
    out = coords * scale
    out -= 1
    return out


def bilinear_sample(image: torch.Tensor, coords: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Bilinear sampling at pixel coordinates (pixel-centre convention, ``align_corners=True``).

    Args:
        image: ``[B, C, H, W]``.
        coords: ``[B, Ho, Wo, 2]`` (x, y) in pixels of ``image``; (0, 0) is the top-left pixel centre.
        padding_mode: ``"border"`` or ``"zeros"`` (as ``grid_sample``).

    Returns:
        ``[B, C, Ho, Wo]``.

    Source: official ``bilinear_sampler`` (``models/utils.py``), 2-D case.
    """
    grid = _normalise_coords(coords, image.shape[2:])
    return F.grid_sample(image, grid, align_corners=True, padding_mode=padding_mode)


def sample_features(fmap: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Sample ``[B, C, H, W]`` features at ``[B, R, 2]`` pixel points -> ``[B, R, C]`` (border padding).

    Source: official ``sample_features4d``.
    """
    B = fmap.shape[0]
    feats = bilinear_sample(fmap, coords.unsqueeze(2))
    return feats.permute(0, 2, 1, 3).reshape(B, -1, feats.shape[1] * feats.shape[3])
