"""The VGGSfM v2 track predictor: coarse iterative tracker, fine patch refinement, score.

Module and parameter names follow the official checkpoint (``track_predictor.coarse_fnet``,
``coarse_predictor.updateformer.time_blocks.0.attn.in_proj_weight``, ``virual_tracks`` [sic] ...).

Inference is organised for memory rather than for training:

* the coarse feature maps are computed once per image set (:meth:`TrackerPredictor.process_images_to_fmaps`)
  in frame chunks;
* the correlation volumes (official ``CorrBlock``: every track against every pixel of every
  level) exist only for one slice of tracks and one level at a time, and the pyramid is built once
  and shared by all query frames (the query-frame swap is done by indexing the small per-track
  tensors, not by copying the maps). The optional ``"local"`` mode correlates only the
  (2r+2)^2 integer neighbourhood of each track and interpolates (same function, O(r^2) instead of
  O(HW) memory per track, but a memory-bound gather that is slower than the GEMM on CPU);
* every per-token stage (correlation, token assembly, transformer blocks, fine patches) is chunked
  so that peak memory follows ``chunk`` (tokens = track x frame pairs processed at once), while the
  result is the same as one unchunked call (all tracks of a call still attend to each other through
  the virtual tracks, unlike the official point chunking; chunks never go below ``MIN_ROWS`` rows,
  so the same BLAS kernels run and the results are identical);
* the 2-D positional-embedding table is cached and sampled once per call (the official code
  recomputes it in float64 at every iteration).

``set_exact(model, True)`` (``vggsfm_ns.networks.blocks.set_exact``) switches to the bit-exact
official arithmetic (``nn.MultiheadAttention`` with attention weights, dense correlation, no
chunking); the golden tests use it for the chaotic full-iteration outputs.

Sources: official ``vggsfm/models/track_predictor.py``, ``track_modules/base_track_predictor.py``,
``track_modules/blocks.py`` (``EfficientUpdateFormer``, ``CorrBlock``),
``track_modules/refine_track.py`` (``refine_track``, ``compute_score_fn``); paper Sec. 3.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import MIN_ROWS, AttnBlock, BasicEncoder, CrossAttnBlock, ShallowEncoder, spans
from .embeddings import bilinear_sample, cached_sincos_pos_embed_2d, flow_embedding_2d, sample_features

__all__ = [
    "UpdateFormer",
    "CorrPyramid",
    "BaseTrackerPredictor",
    "TrackerPredictor",
    "refine_tracks",
    "extract_patches",
    "fine_score",
]


#: The attention blocks hold ~10x less memory per token than the correlation volumes and the fine
#: patches, and run much faster on large matrices (CPU GEMMs lose ~25-70% on 1k-row slices), so they
#: are chunked this many times more coarsely than ``chunk``.
ATTN_CHUNK_FACTOR = 8


def _spans(n: int, size: Optional[int], rows_per_item: int = 1):
    """Pieces of ``range(n)`` of about ``size`` items, each with at least ``MIN_ROWS`` token rows."""
    return spans(n, size, -(-MIN_ROWS // max(1, rows_per_item)))


class UpdateFormer(nn.Module):
    """Transformer that predicts coordinate and feature updates of all tracks.

    Tokens ``[B, N, T, input_dim]`` (track n, frame t) -> ``[B, N, T, output_dim]``. Each layer runs
    time attention over the T frames of every track, then (when ``add_space_attn``) per frame:
    virtual tracks attend to the point tokens, virtual tracks self-attend, points attend to the
    virtual tracks. 64 learned virtual tracks (parameter ``virual_tracks``, official spelling).

    Source: official ``EfficientUpdateFormer`` (``track_modules/blocks.py``), CoTracker design.
    """

    def __init__(
        self,
        space_depth: int = 6,
        time_depth: int = 6,
        input_dim: int = 320,
        hidden_size: int = 384,
        num_heads: int = 8,
        output_dim: int = 130,
        mlp_ratio: float = 4.0,
        add_space_attn: bool = True,
        num_virtual_tracks: int = 64,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.add_space_attn = add_space_attn
        self.num_virtual_tracks = num_virtual_tracks
        self.input_transform = nn.Linear(input_dim, hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim)
        if add_space_attn:
            self.virual_tracks = nn.Parameter(torch.zeros(1, num_virtual_tracks, 1, hidden_size))
        else:
            self.virual_tracks = None
        self.time_blocks = nn.ModuleList([AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(time_depth)])
        if add_space_attn:
            self.space_virtual_blocks = nn.ModuleList([AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)])
            self.space_point2virtual_blocks = nn.ModuleList(
                [CrossAttnBlock(hidden_size, hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)]
            )
            self.space_virtual2point_blocks = nn.ModuleList(
                [CrossAttnBlock(hidden_size, hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)]
            )
        self.exact = False

    def forward(self, x: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        """``[B, N, T, input_dim]`` -> ``[B, N, T, output_dim]`` (``chunk``: tokens per slice)."""
        return self.run(self.input_transform(x), chunk)

    def run(self, tokens: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        """Transformer on already projected tokens ``[B, N, T, hidden]`` -> ``[B, N, T, output_dim]``."""
        if self.exact:
            chunk = None
        init_tokens = tokens
        B, N, T, C = tokens.shape
        V = self.num_virtual_tracks if self.add_space_attn else 0
        if V:
            tokens = torch.cat([tokens, self.virual_tracks.repeat(B, 1, T, 1).to(tokens.dtype)], dim=1)
        Np = N + V
        frame_chunk = None if chunk is None else max(1, chunk // Np)
        every = len(self.time_blocks) // len(self.space_virtual_blocks) if V else 0
        j = 0
        for i, block in enumerate(self.time_blocks):
            time_tokens = block(tokens.contiguous().view(B * Np, T, C), chunk=chunk)
            tokens = time_tokens.view(B, Np, T, C)
            del time_tokens
            if V and i % every == 0:
                space = tokens.permute(0, 2, 1, 3).contiguous().view(B * T, Np, C)
                del tokens
                out = space if chunk is not None else None
                for f0, f1 in _spans(B * T, frame_chunk, N):
                    sl = space[f0:f1]
                    points, virtual = sl[:, :N], sl[:, N:]
                    virtual = self.space_virtual2point_blocks[j](virtual, points)
                    virtual = self.space_virtual_blocks[j](virtual)
                    points = self.space_point2virtual_blocks[j](points, virtual)
                    if out is None:
                        out = torch.cat([points, virtual], dim=1)
                    else:  # in place: each frame slice is read completely before it is written
                        out[f0:f1, :N] = points
                        out[f0:f1, N:] = virtual
                    del points, virtual
                tokens = out.view(B, T, Np, C).permute(0, 2, 1, 3)
                del space, out
                j += 1
        if V:
            tokens = tokens[:, :N]
        tokens = tokens + init_tokens
        return self.flow_head(tokens)


class CorrPyramid:
    """Multi-level correlation sampler around each track (official ``CorrBlock`` semantics).

    Level 0 is ``fmaps``; level l+1 is ``avg_pool2d(2, 2)`` of level l. For a track feature ``f``
    and coordinates ``(x, y)`` (feature pixels of level 0), level l contributes the
    ``(2r+1)^2`` values ``bilinear(corr_l, x/2^l + a - r, y/2^l + b - r)`` with
    ``corr_l = f . fmap_l / sqrt(C)`` and zero padding, flattened with the x offset ``a`` slowest.

    Args:
        fmaps: ``[B, S, C, H, W]`` feature maps.
        num_levels, radius: pyramid depth and sampling radius r.
        mode: ``"dense"`` (official: correlate with every pixel, then ``grid_sample``) or
            ``"local"`` (correlate only the (2r+2)^2 integer neighbourhood and interpolate;
            same function, O(r^2) instead of O(HW) memory per track).
    """

    def __init__(self, fmaps: torch.Tensor, num_levels: int, radius: int, mode: str = "dense"):
        if mode not in ("dense", "local"):
            raise ValueError(f"unknown correlation mode {mode!r}")
        B, S, C, H, W = fmaps.shape
        self.B, self.S, self.C = B, S, C
        self.radius = radius
        self.mode = mode
        self.levels: List[torch.Tensor] = [fmaps]
        cur = fmaps
        for _ in range(num_levels - 1):
            _, _, _, h, w = cur.shape
            pooled = F.avg_pool2d(cur.reshape(B * S, C, h, w), 2, stride=2)
            cur = pooled.reshape(B, S, C, pooled.shape[-2], pooled.shape[-1])
            self.levels.append(cur)
        self._tables: Optional[List[torch.Tensor]] = None
        self._scale = torch.sqrt(torch.tensor(C).float())  # 0-dim CPU tensor: usable on any device

    # -- dense (official) -------------------------------------------------------------------
    def _sample_dense(self, feats: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        B, S, N, _ = coords.shape
        r = self.radius
        d = torch.linspace(-r, r, 2 * r + 1)
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1).to(coords.device).view(1, 2 * r + 1, 2 * r + 1, 2)
        out = []
        for i, fmap in enumerate(self.levels):
            H, W = fmap.shape[-2:]
            corr = torch.matmul(feats, fmap.view(B, S, self.C, H * W))
            corr = corr.view(B, S, N, H, W).div_(self._scale)  # in place: same bits, half the peak
            pts = coords.reshape(B * S * N, 1, 1, 2) / 2**i + delta
            out.append(bilinear_sample(corr.reshape(B * S * N, 1, H, W), pts, padding_mode="zeros").view(B, S, N, -1))
            del corr
        return torch.cat(out, dim=-1)

    # -- local (memory-light) ----------------------------------------------------------------
    def _build_tables(self) -> List[torch.Tensor]:
        tables = []
        for fmap in self.levels:
            B, S, C, H, W = fmap.shape
            t = fmap.reshape(B * S, C, H * W).transpose(1, 2)
            t = torch.cat([t, t.new_zeros(B * S, 1, C)], dim=1)  # row H*W = zero padding
            tables.append(t.reshape(B * S * (H * W + 1), C))
        return tables

    def _sample_local(self, feats: torch.Tensor, coords: torch.Tensor, frame_map: Optional[torch.Tensor]) -> torch.Tensor:
        if self._tables is None:
            self._tables = self._build_tables()
        B, S, N, _ = coords.shape
        r = self.radius
        k = 2 * r + 2
        dev = coords.device
        offs = torch.arange(-r, r + 2, device=dev)
        if frame_map is None:
            frame = torch.arange(B * S, device=dev)
        else:
            frame = (torch.arange(B, device=dev)[:, None] * self.S + frame_map.to(dev)[None, :]).reshape(-1)
        frame = frame.view(B * S, 1, 1, 1)
        f = feats.reshape(B * S * N, self.C, 1)
        out = []
        for i, (fmap, table) in enumerate(zip(self.levels, self._tables)):
            H, W = fmap.shape[-2:]
            c = coords.reshape(B * S, N, 2) / 2**i
            base = torch.floor(c)
            frac = c - base
            base = base.long()
            xs = base[..., 0, None] + offs  # [BS, N, k]
            ys = base[..., 1, None] + offs
            valid = ((xs >= 0) & (xs < W))[:, :, None, :] & ((ys >= 0) & (ys < H))[:, :, :, None]
            idx = ys[:, :, :, None] * W + xs[:, :, None, :]  # [BS, N, k(y), k(x)]
            idx = torch.where(valid, idx, torch.full_like(idx, H * W)) + frame * (H * W + 1)
            win = table[idx.reshape(-1)].view(B * S * N, k * k, self.C)
            corr = torch.bmm(win, f.to(win.dtype)).view(B * S, N, k, k) / self._scale
            del win
            fx = frac[..., 0, None, None].to(corr.dtype)
            fy = frac[..., 1, None, None].to(corr.dtype)
            top = corr[:, :, :-1, :-1] * (1 - fx) + corr[:, :, :-1, 1:] * fx
            bot = corr[:, :, 1:, :-1] * (1 - fx) + corr[:, :, 1:, 1:] * fx
            val = top * (1 - fy) + bot * fy  # [BS, N, y, x]
            out.append(val.transpose(-1, -2).reshape(B, S, N, -1))
        return torch.cat(out, dim=-1)

    def sample(self, feats: torch.Tensor, coords: torch.Tensor, frame_map: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Correlation features.

        Args:
            feats: ``[B, S, N, C]`` track features (any strides).
            coords: ``[B, S, N, 2]`` (x, y) in level-0 feature pixels.
            frame_map: ``[S]`` int64 permutation, logical frame s reads pyramid frame
                ``frame_map[s]`` (lets one pyramid serve every query-frame order without copying
                the maps).

        Returns:
            ``[B, S, N, num_levels * (2r+1)^2]``.
        """
        if self.mode == "dense":
            if frame_map is None:
                return self._sample_dense(feats, coords)
            # work in the pyramid's frame order (cheap copies of the small per-track tensors)
            frame_map = frame_map.to(feats.device)
            inv = torch.argsort(frame_map)
            out = self._sample_dense(feats.index_select(1, inv), coords.index_select(1, inv))
            return out.index_select(1, frame_map)
        return self._sample_local(feats, coords, frame_map)


@dataclass
class _TrackContext:
    """Per-call constants of :class:`BaseTrackerPredictor` (see :meth:`BaseTrackerPredictor.prepare`)."""

    query_coords: torch.Tensor  # [B, N, 2] feature units
    query_feat: torch.Tensor  # [B, N, C]
    pos_embed: torch.Tensor  # [B, N, D]
    pyramid: CorrPyramid
    down_ratio: int
    frame_map: Optional[torch.Tensor] = None


class BaseTrackerPredictor(nn.Module):
    """Iterative track refinement (coarse tracker, and the fine tracker with ``fine=True``).

    Query points are on frame 0 of ``fmaps``; every iteration correlates the current track
    features around the current coordinates, builds tokens
    ``[flow-embedding (latent), flow (2), correlations, track features (latent), zero padding]`` plus
    a sampled 2-D sin-cos embedding of the query location, runs :class:`UpdateFormer`, and updates
    coordinates and features (frame 0 stays pinned to the query).

    Source: official ``BaseTrackerPredictor`` (``track_modules/base_track_predictor.py``).
    """

    def __init__(
        self,
        stride: int = 4,
        corr_levels: int = 5,
        corr_radius: int = 4,
        latent_dim: int = 128,
        hidden_size: int = 384,
        use_spaceatt: bool = True,
        depth: int = 6,
        fine: bool = False,
    ):
        super().__init__()
        self.stride = stride
        self.latent_dim = latent_dim
        self.corr_levels = corr_levels
        self.corr_radius = corr_radius
        self.fine = fine
        self.flows_emb_dim = latent_dim // 2
        dim = corr_levels * (2 * corr_radius + 1) ** 2 + latent_dim * 2
        if fine:
            dim += 4 if dim % 2 == 0 else 5  # official legacy rule
        else:
            dim += (4 - dim % 4) % 4
        self.transformer_dim = dim
        self.updateformer = UpdateFormer(
            space_depth=depth if use_spaceatt else 0,
            time_depth=depth,
            input_dim=dim,
            hidden_size=hidden_size,
            output_dim=latent_dim + 2,
            mlp_ratio=4.0,
            add_space_attn=use_spaceatt,
        )
        self.norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        if not fine:
            self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        self.exact = False
        self.corr_mode = "dense"
        """``"dense"`` (default; chunked per track slice, fastest on CPU and GPU) or ``"local"``
        (memory-light for very large feature maps) correlation, see :class:`CorrPyramid`."""

    def build_pyramid(self, fmaps: torch.Tensor) -> CorrPyramid:
        """The correlation pyramid of ``fmaps`` ``[B, S, C, HH, WW]`` in this predictor's mode; it
        can be built once and shared by calls with different frame orders."""
        mode = "dense" if (self.exact or self.fine) else self.corr_mode
        return CorrPyramid(fmaps, self.corr_levels, self.corr_radius, mode)

    def prepare(
        self,
        query_points: torch.Tensor,
        fmaps: torch.Tensor,
        down_ratio: int = 1,
        frame_order: Optional[torch.Tensor] = None,
        pyramid: Optional[CorrPyramid] = None,
    ) -> _TrackContext:
        """Per-call constants: scaled queries, query features, sampled pos-embedding, pyramid.

        Args:
            query_points: ``[B, N, 2]`` pixels of (logical) frame 0, pixel-centre.
            fmaps: ``[B, S, C, HH, WW]`` in source order.
            down_ratio: extra image downsampling before the feature net (coarse: 2).
            frame_order: ``[S]`` int64; logical frame s is source frame ``frame_order[s]``
                (the official query-frame swap without copying the maps). None = identity.
            pyramid: a prebuilt :meth:`build_pyramid` of ``fmaps`` to reuse.
        """
        B, S, C, HH, WW = fmaps.shape
        if frame_order is not None:
            frame_order = frame_order.to(fmaps.device)
            if bool((frame_order == torch.arange(S, device=fmaps.device)).all()):
                frame_order = None
        if frame_order is not None and (self.exact or self.fine):
            # official arithmetic: reorder the maps themselves (a copy), as predict_tracks does
            fmaps = fmaps.index_select(1, frame_order)
            frame_order, pyramid = None, None
        if down_ratio > 1:
            query_points = query_points / float(down_ratio)
        query_points = query_points / float(self.stride)
        first = 0 if frame_order is None else int(frame_order[0])
        query_feat = sample_features(fmaps[:, first], query_points)
        table = cached_sincos_pos_embed_2d(self.transformer_dim, HH, WW, fmaps.device)
        pos = sample_features(table.expand(B, -1, -1, -1), query_points)
        if pyramid is None:
            pyramid = self.build_pyramid(fmaps)
        return _TrackContext(query_points, query_feat, pos, pyramid, down_ratio, frame_order)

    def _tokens(self, ctx: _TrackContext, coords: torch.Tensor, track_feats: torch.Tensor) -> torch.Tensor:
        """Transformer input ``[B, n, S, D]`` for a slice of tracks (coords/feats ``[B, S, n, .]``)."""
        B, S, n, _ = coords.shape
        fcorrs = ctx.pyramid.sample(track_feats, coords, ctx.frame_map)
        K = fcorrs.shape[3]
        fcorrs = fcorrs.permute(0, 2, 1, 3).reshape(B * n, S, K)
        flows = (coords - coords[:, 0:1]).permute(0, 2, 1, 3).reshape(B * n, S, 2)
        flow_emb = flow_embedding_2d(flows, self.flows_emb_dim)
        feats = track_feats.permute(0, 2, 1, 3).reshape(B * n, S, self.latent_dim)
        parts = [flow_emb, flows, fcorrs.to(flow_emb.dtype), feats.to(flow_emb.dtype)]
        pad = self.transformer_dim - (flow_emb.shape[2] + 2 + K + self.latent_dim)
        if pad > 0:
            parts.append(flow_emb.new_zeros(B * n, S, pad))
        return parts

    def step(
        self,
        ctx: _TrackContext,
        coords: torch.Tensor,
        track_feats: torch.Tensor,
        chunk: Optional[int] = None,
        return_io: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """One refinement iteration.

        Args:
            ctx: from :meth:`prepare`.
            coords: ``[B, S, N, 2]`` current coordinates (feature units).
            track_feats: ``[B, S, N, C]`` current track features.
            chunk: tokens (track x frame) processed at once by the correlation and token assembly
                (the attention blocks use ``ATTN_CHUNK_FACTOR`` times more); None = all.
            return_io: also return the transformer input ``"input"`` ``[B, N, S, D]``.

        Returns:
            ``(coords [B, S, N, 2], track_feats [B, S, N, C], extras)`` with ``extras["delta"]``
            ``[B, N, S, C + 2]`` (transformer output) and optionally ``extras["input"]``.
        """
        B, S, N, _ = coords.shape
        C = self.latent_dim
        uf = self.updateformer
        if self.exact:
            chunk = None
        point_chunk = None if chunk is None else max(1, chunk // S)
        extras: Dict[str, torch.Tensor] = {}
        pieces = _spans(N, point_chunk, S)
        inputs = []
        tokens = None
        for n0, n1 in pieces:
            parts = self._tokens(ctx, coords[:, :, n0:n1], track_feats[:, :, n0:n1])
            x = torch.cat(parts, dim=2) + ctx.pos_embed[:, n0:n1].reshape(B * (n1 - n0), 1, -1)
            x = x.view(B, n1 - n0, S, -1)
            if return_io:
                inputs.append(x)
            if len(pieces) == 1:
                tokens = uf.input_transform(x)
            else:
                t = uf.input_transform(x)
                if tokens is None:
                    tokens = t.new_empty(B, N, S, t.shape[-1])
                tokens[:, n0:n1] = t
            del x, parts
        if return_io:
            extras["input"] = torch.cat(inputs, dim=1)
        delta = uf.run(tokens, None if chunk is None else chunk * ATTN_CHUNK_FACTOR)
        del tokens
        extras["delta"] = delta
        delta = delta.reshape(B * N, S, C + 2)
        feats_ = track_feats.permute(0, 2, 1, 3).reshape(B * N * S, C)
        dfeat = delta[:, :, 2:].reshape(B * N * S, C)
        feats_ = self.ffeat_updater(self.norm(dfeat)) + feats_
        new_feats = feats_.reshape(B, N, S, C).permute(0, 2, 1, 3)
        new_coords = coords + delta[:, :, :2].reshape(B, N, S, 2).permute(0, 2, 1, 3)
        new_coords[:, 0] = ctx.query_coords
        return new_coords, new_feats, extras

    def initial_state(self, ctx: _TrackContext, S: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(coords [B, S, N, 2], track_feats [B, S, N, C])`` before the first iteration."""
        B, N, _ = ctx.query_coords.shape
        coords = ctx.query_coords.reshape(B, 1, N, 2).repeat(1, S, 1, 1)
        feats = ctx.query_feat.unsqueeze(1).repeat(1, S, 1, 1)
        return coords, feats

    def visibility(self, track_feats: torch.Tensor) -> torch.Tensor:
        """``[B, S, N, C]`` track features -> ``[B, S, N]`` sigmoid visibility (coarse only)."""
        B, S, N, C = track_feats.shape
        return torch.sigmoid(self.vis_predictor(track_feats.reshape(B * S * N, C)).reshape(B, S, N))

    def forward(
        self,
        query_points: torch.Tensor,
        fmaps: torch.Tensor,
        iters: int = 4,
        return_feat: bool = False,
        down_ratio: int = 1,
        chunk: Optional[int] = None,
        return_all: bool = True,
        frame_order: Optional[torch.Tensor] = None,
        pyramid: Optional[CorrPyramid] = None,
    ):
        """Track ``query_points`` (on frame 0) through all frames of ``fmaps``.

        Args:
            query_points: ``[B, N, 2]`` pixel (x, y) on frame 0, pixel-centre convention.
            fmaps: ``[B, S, C, HH, WW]``.
            iters: refinement iterations.
            return_feat: also return the final track features and the query features.
            down_ratio: image downsampling before the feature net (coarse tracker: 2).
            chunk: tokens processed at once (memory bound); None = all.
            return_all: keep the prediction of every iteration (else only the last).
            frame_order, pyramid: see :meth:`prepare` (outputs are in the logical order).

        Returns:
            ``(coord_preds, vis)`` or ``(coord_preds, vis, track_feats, query_feat)``:
            ``coord_preds`` list of ``[B, S, N, 2]`` pixels (x ``stride * down_ratio``),
            ``vis`` ``[B, S, N]`` in (0, 1) (None for the fine tracker), ``track_feats``
            ``[B, S, N, C]``, ``query_feat`` ``[B, N, C]``.
        """
        S = fmaps.shape[1]
        ctx = self.prepare(query_points, fmaps, down_ratio, frame_order, pyramid)
        coords, feats = self.initial_state(ctx, S)
        scale = self.stride * down_ratio if down_ratio > 1 else self.stride
        preds = []
        for _ in range(iters):
            coords, feats, _ = self.step(ctx, coords, feats, chunk)
            if return_all or not preds:
                preds.append(coords * scale)
            else:
                preds[0] = coords * scale
        vis = None if self.fine else self.visibility(feats)
        if return_feat:
            return preds, vis, feats, ctx.query_feat
        return preds, vis


def extract_patches(images: torch.Tensor, topleft: torch.Tensor, psize: int, frame_order: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cut ``psize x psize`` patches (integer top-left, no interpolation).

    Args:
        images: ``[B, S, 3, H, W]`` (source order).
        topleft: ``[B, S, n, 2]`` int (x, y), already clamped into the image, logical frame order.
        psize: patch side.
        frame_order: ``[S]`` logical -> source frame index (None = identity).

    Returns:
        ``[B * S * n, 3, psize, psize]`` (row index ``(b S + s) n + i``).
    """
    B, S, Cin, H, W = images.shape
    n = topleft.shape[2]
    content = images.reshape(B * S, Cin, H, W).unfold(2, psize, 1).unfold(3, psize, 1)
    tl = topleft.reshape(B * S, n, 2)
    if frame_order is None:
        frame = torch.arange(B * S, device=images.device)
    else:
        frame = (torch.arange(B, device=images.device)[:, None] * S + frame_order.to(images.device)[None, :]).reshape(-1)
    frame = frame[:, None].expand(-1, n)
    return content[frame, :, tl[..., 1], tl[..., 0]].reshape(B * S * n, Cin, psize, psize)


def fine_score(
    query_feat: torch.Tensor,
    fine_rel: torch.Tensor,
    ref_patch_feat: torch.Tensor,
    sradius: int = 2,
) -> torch.Tensor:
    """Track confidence score of the official fine stage (``compute_score_fn``), B = 1.

    The score of a track in frame s >= 1 is the sum of the x and y standard deviations of the
    ``softmax(q . f / sqrt(C))`` heatmap over a ``(2 sradius + 1)^2`` window of patch features, on a
    [-1, 1]^2 grid (a sharper match gives a smaller value); frame 0 gets 1.

    Faithful to the official code, including two of its indexing quirks (reproduced so the
    scores equal the official ones):

    * every window is read from the patch features of frame 0 / track 0 (the batch index used is
      the batch number, 0), at the window position derived from the fine prediction;
    * the window positions are flattened in (track, frame) order and then read back in
      (frame, track) order.

    Args:
        query_feat: ``[N, C]`` fine query features (frame 0).
        fine_rel: ``[N, S, 2]`` fine predictions in patch coordinates (before adding the top-left).
        ref_patch_feat: ``[C, P, P]`` fine features of the frame-0 patch of track 0.
        sradius: window radius.

    Returns:
        ``[1, S, N]`` float32 scores.

    Source: official ``compute_score_fn`` (``track_modules/refine_track.py``).
    """
    N, S, _ = fine_rel.shape
    C, P, _ = ref_patch_feat.shape
    ssize = 2 * sradius + 1
    if S < 2:
        return torch.ones(1, S, N, device=fine_rel.device, dtype=torch.float32)
    tl = (fine_rel.floor().int() - sradius).clamp(0, P - ssize).reshape(N * S, 2)
    tl = tl.reshape(S, N, 2)[1:].reshape((S - 1) * N, 2)
    windows = ref_patch_feat.unfold(1, ssize, 1).unfold(2, ssize, 1)  # [C, P', P', ssize, ssize]
    ref = windows[:, tl[:, 1], tl[:, 0]]  # [C, M, ssize, ssize]
    ref = ref.permute(1, 0, 2, 3).reshape((S - 1) * N, C, ssize * ssize)
    q = query_feat.reshape(1, N, C).unsqueeze(1).expand(-1, S - 1, -1, -1).reshape((S - 1) * N, C)
    sim = torch.einsum("mc,mcr->mr", q.to(ref.dtype), ref)
    heat = torch.softmax((1.0 / C**0.5) * sim, dim=1)
    lin = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], device=heat.device, dtype=heat.dtype) if ssize == 5 else torch.linspace(-1, 1, ssize, device=heat.device, dtype=heat.dtype)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    pos_x, pos_y = gx.reshape(-1), gy.reshape(-1)
    flat = heat.reshape(1, -1, ssize * ssize)
    ey = torch.sum(pos_y * flat, -1, keepdim=True)
    ex = torch.sum(pos_x * flat, -1, keepdim=True)
    mean = torch.cat([ex, ey], -1)[0]
    grid = torch.stack([gx, gy], dim=-1).reshape(1, -1, 2)
    var = torch.sum(grid**2 * heat.view(-1, ssize * ssize, 1), dim=1) - mean**2
    std = torch.sum(torch.sqrt(torch.clamp(var, min=1e-10)), -1)
    score = std.reshape(1, S - 1, N).float()
    return torch.cat([torch.ones_like(score[:, 0:1]), score], dim=1)


def refine_tracks(
    images: torch.Tensor,
    fine_fnet: ShallowEncoder,
    fine_predictor: BaseTrackerPredictor,
    coarse_pred: torch.Tensor,
    compute_score: bool = True,
    pradius: int = 15,
    sradius: int = 2,
    fine_iters: int = 6,
    chunk: Optional[int] = None,
    return_extras: bool = False,
    frame_order: Optional[torch.Tensor] = None,
):
    """Fine (sub-pixel) refinement of coarse tracks on 31x31 image patches.

    Patches are cut at ``floor(coarse) - pradius`` (clamped into the image), encoded by
    ``fine_fnet``, and tracked by ``fine_predictor`` (one query per track at the fractional part of
    the frame-0 coarse position). Results are the patch predictions plus the *unclamped* top-left;
    frame 0 is reset to the query points.

    Args:
        images: ``[B, S, 3, H, W]`` in [0, 1] (B must be 1 when ``compute_score``).
        fine_fnet, fine_predictor: the fine modules.
        coarse_pred: ``[B, S, N, 2]`` pixels; frame 0 = query points.
        compute_score: also compute :func:`fine_score`.
        pradius, sradius, fine_iters: official defaults 15, 2, 6.
        chunk: tokens (track x frame) processed at once; tracks are independent here, so chunking
            does not change the result.
        frame_order: ``[S]`` logical -> source frame index of ``images`` (``coarse_pred`` is in
            the logical order); None = identity.
        return_extras: also return a dict with the per-iteration patch predictions
            (``"fine_preds"``, list of ``[B N, S, 1, 2]``), ``"query_feat"`` ``[B N, 1, C]`` and
            ``"patches"`` / ``"patch_feat"`` of the first chunk (tests).

    Returns:
        ``(refined [B, S, N, 2], score [B, S, N] or None)`` (+ extras).

    Raises:
        ValueError: if ``compute_score`` and B != 1.

    Source: official ``refine_track`` (``track_modules/refine_track.py``), paper Sec. 3.2.
    """
    B, S, N, _ = coarse_pred.shape
    H, W = images.shape[-2:]
    if compute_score and B != 1:
        raise ValueError("refine_tracks: the score is defined for B = 1 only")
    psize = 2 * pradius + 1
    track_int = coarse_pred.floor().int()
    track_frac = coarse_pred - track_int
    topleft_bsn = track_int - pradius
    tl = topleft_bsn.clone()
    tl[..., 0] = tl[..., 0].clamp(0, W - psize)
    tl[..., 1] = tl[..., 1].clamp(0, H - psize)
    track_chunk = None if chunk is None else max(1, chunk // S)
    fine_rel, query_feats, all_preds = [], [], []
    ref_patch = None
    extras: Dict[str, object] = {}
    for n0, n1 in _spans(N, track_chunk, S):
        n = n1 - n0
        patches = extract_patches(images, tl[:, :, n0:n1].contiguous(), psize, frame_order)
        feat = fine_fnet(patches.to(images.dtype))
        Cf = feat.shape[1]
        feat = feat.reshape(B, S, n, Cf, psize, psize).permute(0, 2, 1, 3, 4, 5).reshape(B * n, S, Cf, psize, psize)
        if ref_patch is None:
            ref_patch = feat[0, 0].clone()
        if return_extras and "patches" not in extras:
            extras["patches"], extras["patch_feat"] = patches, feat
        del patches
        pqp = (track_frac[:, 0, n0:n1] + pradius).reshape(B * n, 1, 2)
        preds, _, _, qfeat = fine_predictor(pqp, feat, iters=fine_iters, return_feat=True, return_all=return_extras)
        del feat
        fine_rel.append(preds[-1].reshape(B, n, S, 2))
        query_feats.append(qfeat.reshape(B, n, Cf))
        if return_extras:
            all_preds.append(preds)
    rel = torch.cat(fine_rel, dim=1)  # [B, N, S, 2]
    refined = rel.permute(0, 2, 1, 3) + topleft_bsn
    refined[:, 0] = coarse_pred[:, 0]
    score = None
    if compute_score:
        score = fine_score(torch.cat(query_feats, 1)[0], rel[0], ref_patch, sradius)
    if not return_extras:
        return refined, score
    extras["query_feat"] = torch.cat(query_feats, 1).reshape(B * N, 1, -1)
    extras["fine_preds"] = [torch.cat([p[i].reshape(B, -1, S, 1, 2) for p in all_preds], 1).reshape(B * N, S, 1, 2) for i in range(len(all_preds[0]))]
    return refined, score, extras


class TrackerPredictor(nn.Module):
    """The VGGSfM v2 track predictor (coarse + fine).

    Submodules (checkpoint names): ``coarse_fnet`` (:class:`BasicEncoder`, 128 ch, stride 4, run on
    the images downsampled x2 -> total stride 8), ``coarse_predictor`` (stride 4, 5 levels, radius 4,
    latent 128, hidden 384, depth 6, space attention), ``fine_fnet`` (:class:`ShallowEncoder`, 32 ch)
    and ``fine_predictor`` (stride 1, 3 levels, radius 3, latent 32, hidden 256, depth 4, fine).

    Source: official ``TrackerPredictor`` (``models/track_predictor.py``) with ``cfgs/demo.yaml``.
    """

    def __init__(self):
        super().__init__()
        self.coarse_down_ratio = 2
        self.coarse_fnet = BasicEncoder(3, 128, stride=4)
        self.coarse_predictor = BaseTrackerPredictor(stride=4, corr_levels=5, corr_radius=4, latent_dim=128, hidden_size=384, use_spaceatt=True, depth=6, fine=False)
        self.fine_fnet = ShallowEncoder(3, 32, stride=1)
        self.fine_predictor = BaseTrackerPredictor(stride=1, corr_levels=3, corr_radius=3, latent_dim=32, hidden_size=256, use_spaceatt=False, depth=4, fine=True)

    @torch.no_grad()
    def process_images_to_fmaps(self, images: torch.Tensor, frame_chunk: Optional[int] = None) -> torch.Tensor:
        """Coarse feature maps, computed once per image set and reused for every query frame.

        Args:
            images: ``[B, S, 3, H, W]`` RGB in [0, 1] (square, H >= 128).
            frame_chunk: frames encoded at once (memory); None = all. Frames are independent.

        Returns:
            ``[B, S, 128, H // 8, W // 8]`` float32.

        Source: official ``TrackerPredictor.process_images_to_fmaps`` (x0.5 bilinear
        ``align_corners=True`` downsampling, then ``BasicEncoder``).
        """
        B, S, Cin, H, W = images.shape
        flat = images.reshape(B * S, Cin, H, W)
        out = None
        for f0, f1 in spans(B * S, frame_chunk):
            x = flat[f0:f1]
            if self.coarse_down_ratio > 1:
                x = F.interpolate(x, scale_factor=1 / self.coarse_down_ratio, mode="bilinear", align_corners=True)
            fm = self.coarse_fnet(x)
            if out is None:
                if f1 == B * S:
                    out = fm
                    break
                out = fm.new_empty((B * S,) + fm.shape[1:])
            out[f0:f1] = fm
        return out.reshape(B, S, out.shape[1], out.shape[2], out.shape[3])

    def build_pyramid(self, fmaps: torch.Tensor) -> CorrPyramid:
        """Coarse correlation pyramid of ``fmaps``, to share between calls (see ``frame_order``)."""
        return self.coarse_predictor.build_pyramid(fmaps)

    @torch.no_grad()
    def forward(
        self,
        images: torch.Tensor,
        query_points: torch.Tensor,
        fmaps: Optional[torch.Tensor] = None,
        coarse_iters: int = 6,
        fine_tracking: bool = True,
        fine_iters: int = 6,
        chunk: Optional[int] = None,
        frame_order: Optional[torch.Tensor] = None,
        pyramid: Optional[CorrPyramid] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Track query points of (logical) frame 0 through all frames.

        Args:
            images: ``[1, S, 3, H, W]`` RGB in [0, 1], square, in source order.
            query_points: ``[1, N, 2]`` pixel (x, y) on logical frame 0 (pixel-centre convention).
            fmaps: precomputed :meth:`process_images_to_fmaps` output (source order).
            coarse_iters, fine_iters: iterations (official 6 and 6).
            fine_tracking: run the fine stage (else fine = coarse and score = 1).
            chunk: tokens (track x frame) processed at once; None = all. The result does not depend
                on it.
            frame_order: ``[S]`` int64 permutation, logical frame s = source frame ``frame_order[s]``
                (the official swap of the query frame to position 0, done by indexing instead of
                copying images and maps). None = identity.
            pyramid: :meth:`build_pyramid` of ``fmaps``, reused across calls.

        Returns:
            ``(fine_tracks [1, S, N, 2], coarse_tracks [1, S, N, 2], vis [1, S, N], score [1, S, N])``
            in the logical frame order, pixels of ``images``; logical frame 0 of both track tensors
            equals ``query_points``.

        Source: official ``TrackerPredictor.forward`` (+ the swap of ``predict_tracks``).
        """
        if fmaps is None:
            fmaps = self.process_images_to_fmaps(images, frame_chunk=8)
        if frame_order is not None and self.coarse_predictor.exact:
            frame_order = frame_order.to(images.device)
            images = images.index_select(1, frame_order)
            fmaps = fmaps.index_select(1, frame_order)
            frame_order, pyramid = None, None
        preds, vis = self.coarse_predictor(
            query_points, fmaps, iters=coarse_iters, down_ratio=self.coarse_down_ratio, chunk=chunk, return_all=False, frame_order=frame_order, pyramid=pyramid
        )
        coarse = preds[-1]
        if fine_tracking:
            fine, score = refine_tracks(images, self.fine_fnet, self.fine_predictor, coarse, compute_score=True, fine_iters=fine_iters, chunk=chunk, frame_order=frame_order)
        else:
            fine, score = coarse, torch.ones_like(vis)
        return fine, coarse, vis, score
