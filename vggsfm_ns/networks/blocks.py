"""Building blocks of the VGGSfM v2 networks: attention blocks, MLP, convolutional encoders.

Parameter names follow the official checkpoint (``attn.in_proj_weight``, ``mlp.fc1``,
``norm_context``, ``conv1``, ``downsample.0`` ...), so the official ``state_dict`` loads strictly.

Every attention block has two numerical modes, switched with :func:`set_exact`:

* ``exact=False`` (default, fast): q/k/v projections + ``F.scaled_dot_product_attention`` (fused,
  memory-efficient, no attention-weight tensor) and optional chunking over the batch dimension.
* ``exact=True``: the call goes through ``torch.nn.MultiheadAttention.forward`` exactly as the
  official code calls it (``need_weights=True``), which reproduces its float32 results bit for bit.

Both compute the same function; they differ only by float rounding.

Sources: official ``vggsfm/models/modules.py`` (``ResidualBlock``, ``Mlp``, ``AttnBlock``,
``CrossAttnBlock``) and ``vggsfm/models/track_modules/blocks.py`` (``BasicEncoder``,
``ShallowEncoder``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Mlp",
    "AttnBlock",
    "CrossAttnBlock",
    "ResidualBlock",
    "BasicEncoder",
    "ShallowEncoder",
    "set_exact",
    "attention",
]


def set_exact(module: nn.Module, exact: bool = True) -> nn.Module:
    """Switch every block under ``module`` between the fast path and the bit-exact official path.

    Returns ``module`` for chaining.
    """
    for m in module.modules():
        if hasattr(m, "exact"):
            m.exact = bool(exact)
    return module


def attention(mha: nn.MultiheadAttention, x: torch.Tensor, context: Optional[torch.Tensor] = None, exact: bool = False) -> torch.Tensor:
    """Multi-head attention with the weights of a ``nn.MultiheadAttention`` (batch-first).

    Args:
        mha: the module holding ``in_proj_weight`` (3C x C, rows q, k, v), ``in_proj_bias`` and
            ``out_proj``.
        x: ``[B, Lq, C]`` queries.
        context: ``[B, Lk, C]`` keys/values; None for self-attention.
        exact: call ``mha`` the way the official code does (bit-exact, materialises the weights).

    Returns:
        ``[B, Lq, C]``.
    """
    if exact:
        if context is None:
            return mha(x, x, x)[0]
        return mha(x, context, context)[0]
    B, Lq, C = x.shape
    H = mha.num_heads
    D = C // H
    w, b = mha.in_proj_weight, mha.in_proj_bias
    if context is None:
        qkv = F.linear(x, w, b).view(B, Lq, 3, H, D).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
    else:
        Lk = context.shape[1]
        q = F.linear(x, w[:C], b[:C]).view(B, Lq, H, D).transpose(1, 2)
        kv = F.linear(context, w[C:], b[C:]).view(B, Lk, 2, H, D).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
    out = F.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(B, Lq, C)
    return F.linear(out, mha.out_proj.weight, mha.out_proj.bias)


class Mlp(nn.Module):
    """Two-layer MLP ``fc2(GELU(fc1(x)))`` (exact erf GELU, no dropout at inference).

    ``[..., in_features]`` -> ``[..., out_features]``. Source: official ``modules.Mlp``.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in_features]`` -> ``[..., out_features]`` (fc1, GELU, fc2)."""
        return self.fc2(F.gelu(self.fc1(x)))


#: Smallest number of token rows a chunk may have. BLAS libraries switch to other kernels for
#: matrices with very few rows (MKL rounds differently below ~12 rows), so chunks never go below
#: this and a short remainder is merged into the previous chunk: chunked and unchunked runs then
#: execute the same kernels and give identical results.
MIN_ROWS = 64


def spans(n: int, size: Optional[int], min_size: int = 1):
    """``[(start, stop)]`` covering ``range(n)`` in pieces of about ``size`` items (None: one
    piece). Pieces have at least ``min_size`` items: a shorter remainder joins the previous piece."""
    if size is None or size >= n:
        return [(0, n)]
    size = max(1, int(size), int(min_size))
    out = [[s, min(n, s + size)] for s in range(0, n, size)]
    if len(out) > 1 and out[-1][1] - out[-1][0] < min_size:
        last = out.pop()
        out[-1][1] = last[1]
    return [tuple(x) for x in out]


def _token_slices(B: int, L: int, chunk: Optional[int]):
    """Slices ``(b0, b1, l0, l1)`` of a ``[B, L, .]`` query tensor holding about ``chunk`` tokens
    each (never fewer than :data:`MIN_ROWS` tokens, see there)."""
    if chunk is None or B * L <= max(chunk, MIN_ROWS):
        return [(0, B, 0, L)]
    if L <= chunk:
        rows = max(1, chunk // L)
        return [(b0, b1, 0, L) for b0, b1 in spans(B, rows, -(-MIN_ROWS // L))]
    return [(b, b + 1, l0, l1) for b in range(B) for l0, l1 in spans(L, chunk, MIN_ROWS)]


class AttnBlock(nn.Module):
    """Pre-norm self-attention block: ``x = LN1(x); x = x + MHA(x); x = x + MLP(LN2(x))``.

    Note the residual stream is the *normalised* input (official quirk). LayerNorms have no affine
    parameters and eps 1e-6; ``mlp`` is ``Mlp(C, mlp_ratio C)``.

    ``forward(x [B, L, C], chunk=None) -> [B, L, C]``; ``chunk`` bounds the tokens processed at
    once (whole sequences, at least :data:`MIN_ROWS` rows; fast path only; the result does not
    depend on it).

    Source: official ``modules.AttnBlock`` (with ``nn.MultiheadAttention``, batch-first).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(embed_dim=hidden_size, num_heads=num_heads, batch_first=True)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.exact = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x = x + attention(self.attn, x, None, self.exact)
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        """``[B, L, hidden_size]`` -> same shape. ``chunk``: most tokens per slice of the batch (memory
        bound; the result does not depend on it); ignored in exact mode."""
        B, L, _ = x.shape
        slices = _token_slices(B, L, None if self.exact else max(chunk, L) if chunk is not None else None)
        if len(slices) == 1:
            return self._forward(x)
        out = None
        for b0, b1, _, _ in slices:
            y = self._forward(x[b0:b1])
            if out is None:  # dtype of the result (autocast may change it)
                out = y.new_empty((B,) + y.shape[1:])
            out[b0:b1] = y
        return out


class CrossAttnBlock(nn.Module):
    """Pre-norm cross-attention block.

    ``x = LN1(x)`` (no affine, eps 1e-6), ``ctx = norm_context(ctx)`` (affine LayerNorm, eps 1e-5),
    ``x = x + MHA(x, ctx, ctx)``, ``x = x + MLP(LN2(x))``.

    ``forward(x [B, Lq, C], context [B, Lk, C], chunk=None) -> [B, Lq, C]``; ``chunk`` bounds the
    query tokens processed at once (batch slices, or query-length slices for B = 1 with the keys
    and values projected once; fast path only).

    Source: official ``modules.CrossAttnBlock``.
    """

    def __init__(self, hidden_size: int, context_dim: int, num_heads: int = 1, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.norm_context = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.cross_attn = nn.MultiheadAttention(embed_dim=hidden_size, num_heads=num_heads, batch_first=True)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.exact = False

    def _forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + attention(self.cross_attn, x, context, self.exact)
        return x + self.mlp(self.norm2(x))

    def _forward_kv(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, Lq, C = x.shape
        H = self.cross_attn.num_heads
        x = self.norm1(x)
        w, b = self.cross_attn.in_proj_weight, self.cross_attn.in_proj_bias
        q = F.linear(x, w[:C], b[:C]).view(B, Lq, H, C // H).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, Lq, C)
        x = x + F.linear(o, self.cross_attn.out_proj.weight, self.cross_attn.out_proj.bias)
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, context: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        """Queries ``[B, Lq, hidden_size]`` attend to ``context [B, Lk, context_dim]``; returns
        ``[B, Lq, hidden_size]``. ``chunk`` as in :meth:`AttnBlock.forward`."""
        B, Lq, C = x.shape
        slices = _token_slices(B, Lq, None if self.exact else chunk)
        if len(slices) == 1:
            return self._forward(x, context)
        # keys/values once, then independent query slices
        Lk = context.shape[1]
        H = self.cross_attn.num_heads
        ctx = self.norm_context(context)
        w, b = self.cross_attn.in_proj_weight, self.cross_attn.in_proj_bias
        kv = F.linear(ctx, w[C:], b[C:]).view(B, Lk, 2, H, C // H).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        out = None
        for b0, b1, l0, l1 in slices:
            y = self._forward_kv(x[b0:b1, l0:l1], k[b0:b1], v[b0:b1])
            if out is None:  # dtype of the result (autocast may change it)
                out = y.new_empty((B, Lq) + y.shape[2:])
            out[b0:b1, l0:l1] = y
        return out


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with instance norm and a residual connection.

    ``y = ReLU(IN(conv2(ReLU(IN(conv1(x))))))``; shortcut = identity, or ``IN(conv1x1(x))`` when
    ``stride != 1`` (keys ``downsample.0``); output ``ReLU(shortcut + y)``. InstanceNorm has no
    affine parameters (eps 1e-5).

    ``[B, in_planes, H, W] -> [B, planes, ceil(H/stride), ceil(W/stride)]``.

    Source: official ``modules.ResidualBlock`` with ``norm_fn="instance"``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.downsample = None
        if stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), nn.InstanceNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_planes, H, W]`` -> ``[B, planes, H // stride, W // stride]``."""
        y = F.relu(F.instance_norm(self.conv1(x)), inplace=True)
        y = F.relu(F.instance_norm(self.conv2(y)), inplace=True)
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y, inplace=True)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size, mode="bilinear", align_corners=True)


class BasicEncoder(nn.Module):
    """Coarse feature network (RAFT/CoTracker style basic encoder).

    ``[B, 3, H, W]`` in [0, 1] -> ``[B, output_dim, H // stride, W // stride]``: a 7x7/2 conv, four
    stages of two residual blocks (64, 96, 128, 128 channels; strides 1, 2, 2, 2), the four stage
    outputs resized (bilinear, align_corners=True) to ``H // stride`` and concatenated (416
    channels), then 3x3 conv + IN + ReLU and a 1x1 conv.

    Source: official ``track_modules/blocks.BasicEncoder`` (output_dim 128, stride 4).
    """

    def __init__(self, input_dim: int = 3, output_dim: int = 128, stride: int = 4):
        super().__init__()
        self.stride = stride
        c1, c2, c3 = output_dim // 2, output_dim // 4 * 3, output_dim
        self.conv1 = nn.Conv2d(input_dim, c1, kernel_size=7, stride=2, padding=3)
        self.layer1 = nn.Sequential(ResidualBlock(c1, c1, 1), ResidualBlock(c1, c1, 1))
        self.layer2 = nn.Sequential(ResidualBlock(c1, c2, 2), ResidualBlock(c2, c2, 1))
        self.layer3 = nn.Sequential(ResidualBlock(c2, c3, 2), ResidualBlock(c3, c3, 1))
        self.layer4 = nn.Sequential(ResidualBlock(c3, c3, 2), ResidualBlock(c3, c3, 1))
        self.conv2 = nn.Conv2d(c1 + c2 + c3 + c3, output_dim * 2, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(output_dim * 2, output_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, input_dim, H, W]`` -> ``[B, output_dim, H // stride, W // stride]``."""
        H, W = x.shape[-2:]
        size = (H // self.stride, W // self.stride)
        x = F.relu(F.instance_norm(self.conv1(x)), inplace=True)
        a = self.layer1(x)
        b = self.layer2(a)
        c = self.layer3(b)
        d = self.layer4(c)
        x = torch.cat([_resize(a, size), _resize(b, size), _resize(c, size), _resize(d, size)], dim=1)
        del a, b, c, d
        x = F.relu(F.instance_norm(self.conv2(x)), inplace=True)
        return self.conv3(x)


class ShallowEncoder(nn.Module):
    """Fine (patch) feature network.

    ``[B, 3, P, P] -> [B, output_dim, P // stride, P // stride]``: 3x3/2 conv + IN + ReLU (x), two
    stride-2 residual blocks whose outputs are upsampled and added to x, a 1x1 conv with a residual,
    then a bilinear resize (align_corners=True) back to the input size.

    Source: official ``track_modules/blocks.ShallowEncoder`` (output_dim 32, stride 1, instance norm).
    """

    def __init__(self, input_dim: int = 3, output_dim: int = 32, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(input_dim, output_dim, kernel_size=3, stride=2, padding=1)
        self.layer1 = ResidualBlock(output_dim, output_dim, 2)
        self.layer2 = ResidualBlock(output_dim, output_dim, 2)
        self.conv2 = nn.Conv2d(output_dim, output_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, input_dim, P, P]`` -> ``[B, output_dim, P // stride, P // stride]``."""
        H, W = x.shape[-2:]
        x = F.relu(F.instance_norm(self.conv1(x)), inplace=True)
        t = self.layer1(x)
        x = x + _resize(t, x.shape[-2:])
        t = self.layer2(t)
        x = x + _resize(t, x.shape[-2:])
        del t
        x = self.conv2(x) + x
        return _resize(x, (H // self.stride, W // self.stride))
