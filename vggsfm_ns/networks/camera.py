"""The VGGSfM v2 camera predictor and its DINOv2 (ViT-B/14 + 4 registers) backbone.

The backbone is ``transformers.Dinov2WithRegistersModel`` built from a configuration written in
code (no hub, no download). Its ``state_dict`` is presented under the DINOv2 torch-hub names the
official checkpoint uses (``camera_predictor.backbone.blocks.0.attn.qkv.weight`` ...), so the
official ``vggsfm_v2_0_0.bin`` loads with ``strict=True`` into our top-level model and our
``state_dict()`` has exactly the official keys (see :class:`DinoBackbone`).

Sources: official ``vggsfm/models/camera_predictor.py`` (``CameraPredictor``); DINOv2 hub
``dinov2_vitb14_reg`` (facebookresearch/dinov2); ``shared/notes/dinov2_backbone.md`` for the
transformers equivalence (bit-identical with SDPA attention).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conventions import imagenet_normalize
from .blocks import AttnBlock, CrossAttnBlock, Mlp
from .embeddings import cached_sincos_pos_embed_2d, harmonic_embedding

__all__ = ["DinoBackbone", "CameraPredictor"]


def _dinov2_config():
    from transformers import Dinov2WithRegistersConfig

    return Dinov2WithRegistersConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        num_channels=3,
        num_register_tokens=4,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=False,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layerscale_value=1.0,
    )


class DinoBackbone(nn.Module):
    """DINOv2 ViT-B/14 with 4 register tokens, exposing the torch-hub parameter names.

    ``forward(x [B, 3, 14h, 14w] ImageNet-normalised) -> [B, h w, 768]`` = ``x_norm_patchtokens``
    (final LayerNorm, patch tokens in row-major order). The positional embedding (37 x 37 grid) is
    resized with bicubic antialiased interpolation like the hub ``_reg`` models.

    State-dict keys are the hub names (176 entries): ``cls_token``, ``pos_embed``,
    ``register_tokens``, ``mask_token``, ``patch_embed.proj.*``, ``blocks.N.{norm1, attn.qkv,
    attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm.*``. The fused ``qkv``
    weights are split by rows into transformers' q/k/v projections when loading and concatenated
    back when saving. Both transformers 5.x and 4.x attribute names are handled.
    """

    def __init__(self):
        super().__init__()
        from transformers import Dinov2WithRegistersModel

        self.hf = Dinov2WithRegistersModel(_dinov2_config())
        self.hf.eval()
        hf_keys = list(self.hf.state_dict().keys())
        self._qkv_names, self._proj_name = self._attention_names(hf_keys)
        self._num_blocks = self.hf.config.num_hidden_layers
        self.register_state_dict_post_hook(_backbone_state_dict_hook)
        self.register_load_state_dict_pre_hook(_backbone_load_pre_hook)
        self.register_load_state_dict_post_hook(_backbone_load_post_hook)

    @staticmethod
    def _attention_names(hf_keys: List[str]) -> Tuple[Tuple[str, str, str], str]:
        if "encoder.layer.0.attention.q_proj.weight" in hf_keys:
            return ("attention.q_proj", "attention.k_proj", "attention.v_proj"), "attention.o_proj"
        if "encoder.layer.0.attention.attention.query.weight" in hf_keys:
            return ("attention.attention.query", "attention.attention.key", "attention.attention.value"), "attention.output.dense"
        raise RuntimeError("unsupported transformers Dinov2WithRegistersModel layout")

    # -- name mapping ------------------------------------------------------------------------------
    def hub_to_hf(self) -> Dict[str, List[str]]:
        """Hub key -> list of transformers keys (3 for the fused qkv, else 1), in hub order."""
        m: Dict[str, List[str]] = {
            "cls_token": ["embeddings.cls_token"],
            "pos_embed": ["embeddings.position_embeddings"],
            "register_tokens": ["embeddings.register_tokens"],
            "mask_token": ["embeddings.mask_token"],
            "patch_embed.proj.weight": ["embeddings.patch_embeddings.projection.weight"],
            "patch_embed.proj.bias": ["embeddings.patch_embeddings.projection.bias"],
        }
        q, k, v = self._qkv_names
        for n in range(self._num_blocks):
            h, l = f"blocks.{n}.", f"encoder.layer.{n}."
            for p in ("weight", "bias"):
                m[h + "norm1." + p] = [l + "norm1." + p]
            for p in ("weight", "bias"):
                m[h + "attn.qkv." + p] = [l + q + "." + p, l + k + "." + p, l + v + "." + p]
            for p in ("weight", "bias"):
                m[h + "attn.proj." + p] = [l + self._proj_name + "." + p]
            m[h + "ls1.gamma"] = [l + "layer_scale1.lambda1"]
            for p in ("weight", "bias"):
                m[h + "norm2." + p] = [l + "norm2." + p]
            for fc in ("fc1", "fc2"):
                for p in ("weight", "bias"):
                    m[h + f"mlp.{fc}." + p] = [l + f"mlp.{fc}." + p]
            m[h + "ls2.gamma"] = [l + "layer_scale2.lambda1"]
        m["norm.weight"] = ["layernorm.weight"]
        m["norm.bias"] = ["layernorm.bias"]
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` ImageNet-normalised images (H, W multiples of 14) -> patch tokens
        ``[B, (H / 14) (W / 14), 768]`` after the final layer norm (class and register tokens dropped),
        as the official ``forward_features(...)["x_norm_patchtokens"]``."""
        out = self.hf(pixel_values=x)
        return out.last_hidden_state[:, 1 + self.hf.config.num_register_tokens :]


def _backbone_state_dict_hook(module: DinoBackbone, state_dict, prefix, local_metadata) -> None:
    hf_prefix = prefix + "hf."
    for hub, hfs in module.hub_to_hf().items():
        tensors = [state_dict.pop(hf_prefix + k) for k in hfs]
        state_dict[prefix + hub] = tensors[0] if len(tensors) == 1 else torch.cat([t.detach() for t in tensors], 0)


def _backbone_load_pre_hook(module: DinoBackbone, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
    hf_prefix = prefix + "hf."
    for hub, hfs in module.hub_to_hf().items():
        key = prefix + hub
        if key not in state_dict:
            continue
        value = state_dict.pop(key)
        if len(hfs) == 1:
            state_dict[hf_prefix + hfs[0]] = value
            continue
        if value.shape[0] % 3:
            error_msgs.append(f"size mismatch for {key}: fused qkv with {value.shape[0]} rows")
            continue
        for name, part in zip(hfs, value.chunk(3, dim=0)):
            state_dict[hf_prefix + name] = part


def _backbone_load_post_hook(module: DinoBackbone, incompatible) -> None:
    """Report missing backbone keys under their hub names (qkv once)."""
    inverse = {}
    for hub, hfs in module.hub_to_hf().items():
        for k in hfs:
            inverse[k] = hub
    fixed = []
    for key in incompatible.missing_keys:
        if ".hf." in key or key.startswith("hf."):
            head, _, tail = key.partition("hf.")
            name = head + inverse.get(tail, "hf." + tail)
            if name not in fixed:
                fixed.append(name)
        else:
            fixed.append(key)
    incompatible.missing_keys[:] = fixed


class CameraPredictor(nn.Module):
    """Predicts one camera per frame from DINOv2 features (VGGSfM v2 camera predictor).

    Pipeline: DINO patch tokens (336 px input, 24 x 24 patches) -> ``input_transform`` MLP ->
    LayerNorm -> + 2-D sin-cos embedding -> prepend ``pose_token`` -> 8 x (self-attention within
    each frame; cross-attention of frames 1..S-1 to frame 0) -> per-frame pose token
    ``rgb_feat_init``; then ``iters`` refinement steps over frames (harmonic embedding of the current
    pose encoding, 4 trunk blocks attending across frames, ``pose_branch`` MLP -> delta pose and
    delta feature) -> ``absT_quaR_OneFL`` pose encoding.

    Numerics: with ``exact=True`` (see ``blocks.set_exact``) the attention blocks reproduce the
    official float32 arithmetic bit for bit; otherwise they use fused SDPA (same function).

    Source: official ``CameraPredictor`` (hidden 768, 8 heads, mlp_ratio 4, att_depth 8,
    trunk_depth 4, ``down_size`` 336, ``absT_quaR_OneFL``).
    """

    def __init__(
        self,
        hidden_size: int = 768,
        num_heads: int = 8,
        mlp_ratio: float = 4,
        z_dim: int = 768,
        down_size: int = 336,
        att_depth: int = 8,
        trunk_depth: int = 4,
        pose_encoding_type: str = "absT_quaR_OneFL",
    ):
        super().__init__()
        from ..geometry.pose_encoding import POSE_ENCODING_DIMS

        self.down_size = down_size
        self.att_depth = att_depth
        self.pose_encoding_type = pose_encoding_type
        self.target_dim = POSE_ENCODING_DIMS[pose_encoding_type]
        self.n_harmonic = (hidden_size // self.target_dim) // 2
        self.pose_token = nn.Parameter(torch.zeros(1, 1, 1, hidden_size))
        self.backbone = DinoBackbone()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.input_transform = Mlp(z_dim, z_dim, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(hidden_size, hidden_size * 2, hidden_size + self.target_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU())
        self.self_att = nn.ModuleList([AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(att_depth)])
        self.cross_att = nn.ModuleList([CrossAttnBlock(hidden_size, hidden_size, num_heads, mlp_ratio) for _ in range(att_depth)])
        self.trunk = nn.Sequential(*[AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(trunk_depth)])

    # -- stage 1: DINO ------------------------------------------------------------------------------
    @torch.no_grad()
    def backbone_features(self, images: torch.Tensor, frame_chunk: Optional[int] = 16) -> torch.Tensor:
        """DINOv2 patch tokens of each image.

        Args:
            images: ``[M, 3, H, W]`` RGB in [0, 1]; resized to ``down_size`` (bilinear,
                ``align_corners=True``) when the width differs, then ImageNet-normalised.
            frame_chunk: images per backbone call (results do not depend on it).

        Returns:
            ``[M, 576, 768]`` float32 ``x_norm_patchtokens``.

        Source: official ``CameraPredictor.get_2D_image_features`` (first part).
        """
        out = []
        for f0, f1 in _spans(images.shape[0], frame_chunk):
            x = images[f0:f1]
            if x.shape[-1] != self.down_size:
                x = F.interpolate(x, (self.down_size, self.down_size), mode="bilinear", align_corners=True)
            out.append(self.backbone(imagenet_normalize(x)))
        return out[0] if len(out) == 1 else torch.cat(out, 0)

    def _hub_layout(self, tokens: torch.Tensor) -> torch.Tensor:
        """Give ``[M, P, C]`` patch tokens the memory layout of the hub's ``x_norm_patchtokens``
        (a slice ``[:, 5:]`` of the ``[M, 5 + P, C]`` token tensor). The official ``input_transform``
        runs on that non-contiguous view, and the GEMM path (and so the float rounding) depends on
        the strides; reproducing them keeps reused or reordered tokens bit-identical."""
        prefix = 1 + self.backbone.hf.config.num_register_tokens
        M, P, C = tokens.shape
        if tokens.stride() == ((P + prefix) * C, C, 1):
            return tokens
        buf = tokens.new_empty(M, P + prefix, C)
        buf[:, prefix:] = tokens
        return buf[:, prefix:]

    # -- stage 2: frame tokens -------------------------------------------------------------------------
    @torch.no_grad()
    def image_tokens(self, patch_tokens: torch.Tensor, batch_size: int = 1, chunk: Optional[int] = None) -> torch.Tensor:
        """Per-frame pose tokens after the self/cross attention layers.

        Args:
            patch_tokens: ``[B S, P, 768]`` from :meth:`backbone_features` (frame 0 of each batch is
                the reference frame).
            batch_size: B.
            chunk: tokens processed at once in the attention blocks (fast path only).

        Returns:
            ``[B, S, 768]`` (``rgb_feat_init``).
        """
        patch_tokens = self._hub_layout(patch_tokens)
        feat = self.norm(self.input_transform(patch_tokens))
        BS, P, C = feat.shape
        B = batch_size
        S = BS // B
        side = int(round(P**0.5))
        pos = cached_sincos_pos_embed_2d(C, side, side, feat.device).permute(0, 2, 3, 1).reshape(1, 1, P, C)
        feat = feat.reshape(B, S, P, C) + pos
        feat = torch.cat([self.pose_token.expand(B, S, -1, -1).to(feat.dtype), feat], dim=-2)
        P = P + 1
        for idx in range(self.att_depth):
            feat = self.self_att[idx](feat.reshape(B * S, P, C), chunk=chunk).reshape(B, S, P, C)
            if S > 1:
                others = feat[:, 1:].reshape(B, (S - 1) * P, C)
                others = self.cross_att[idx](others, feat[:, 0], chunk=chunk)
                feat = torch.cat([feat[:, 0:1], others.reshape(B, S - 1, P, C)], dim=1)
        return feat[:, :, 0]

    # -- stage 3: iterative pose refinement ---------------------------------------------------------------
    def refine_step(self, rgb_feat: torch.Tensor, rgb_feat_init: torch.Tensor, pose_enc: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """One refinement iteration.

        Args:
            rgb_feat: ``[B, S, 768]`` feature entering the iteration.
            rgb_feat_init: ``[B, S, 768]`` output of :meth:`image_tokens`.
            pose_enc: ``[B, S, 8]`` pose encoding entering the iteration.

        Returns:
            ``(rgb_feat, pose_enc, extras)`` after the iteration; ``extras`` holds ``pose_embed``,
            ``trunk_in``, ``trunk_out`` and ``pose_branch_out``.
        """
        pose_embed = harmonic_embedding(pose_enc, self.n_harmonic)
        trunk_in = rgb_feat + pose_embed
        trunk_out = self.trunk(trunk_in)
        delta = self.pose_branch(trunk_out)
        feat = self.ffeat_updater(self.norm(delta[..., self.target_dim :])) + trunk_out
        pose_enc = pose_enc + delta[..., : self.target_dim]
        feat = (feat + rgb_feat_init) / 2
        return feat, pose_enc, {"pose_embed": pose_embed, "trunk_in": trunk_in, "trunk_out": trunk_out, "pose_branch_out": delta}

    @torch.no_grad()
    def forward(
        self,
        images: Optional[torch.Tensor],
        iters: int = 4,
        batch_size: int = 1,
        patch_tokens: Optional[torch.Tensor] = None,
        chunk: Optional[int] = None,
        rgb_feat_init: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Predict cameras.

        Args:
            images: ``[B S, 3, H, W]`` RGB in [0, 1] (any square size; resized to 336), or None when
                ``patch_tokens`` is given.
            iters: refinement iterations (official 4).
            batch_size: B.
            patch_tokens: precomputed :meth:`backbone_features` of the same frames (in this order).
            chunk: tokens processed at once in the attention blocks.
            rgb_feat_init: precomputed :meth:`image_tokens` output ``[B, S, 768]`` (skips stages 1-2,
                as the official ``rgb_feat_init`` argument).

        Returns:
            dict with ``pred_pose_enc`` ``[B, S, 8]``, ``R`` ``[B S, 3, 3]``, ``T`` ``[B S, 3]`` (OpenCV
            ``cam_from_world`` relative to frame 0), ``focal_length`` ``[B S, 2]`` (normalised:
            pixels = value * min(W, H) / 2) and ``rgb_feat_init`` ``[B, S, 768]``.

        Source: official ``CameraPredictor.forward`` + ``pose_encoding_to_camera(to_OpenCV=True)``.
        """
        from ..geometry.pose_encoding import pose_encoding_to_camera

        if rgb_feat_init is None:
            if patch_tokens is None:
                patch_tokens = self.backbone_features(images)
            rgb_feat = self.image_tokens(patch_tokens, batch_size, chunk=chunk)
        else:
            rgb_feat = rgb_feat_init
        B, S, _ = rgb_feat.shape
        pose_enc = torch.zeros(B, S, self.target_dim, device=rgb_feat.device)
        rgb_feat_init = rgb_feat.clone()
        for _ in range(iters):
            rgb_feat, pose_enc, _ = self.refine_step(rgb_feat, rgb_feat_init, pose_enc)
        R, T, focal = pose_encoding_to_camera(pose_enc, self.pose_encoding_type, to_opencv=True)
        return {
            "pred_pose_enc": pose_enc,
            "R": R,
            "T": T,
            "focal_length": focal.expand(-1, 2) if focal.shape[-1] == 1 else focal,
            "rgb_feat_init": rgb_feat_init,
        }


def _spans(n: int, size: Optional[int]):
    if size is None or size >= n:
        return [(0, n)]
    return [(s, min(n, s + size)) for s in range(0, n, size)]
