"""Temporal families: the layers a space-time UNet puts after its ResBlocks and spatial transformers.

A family fills two slots in every UNet unit (after the ResBlock, after the spatial transformer),
the same slots in the middle block, and optionally a stem after `conv_in`:

| family        | after ResBlock            | after spatial transformer         | stem             |
|---------------|---------------------------|-----------------------------------|------------------|
| `vidiff`      | TemporalConv (`temp_convs`) | TemporalAttention, RoPE (`temp_attentions`) | -      |
| `animatediff` | -                         | motion module (`motion_modules`), at every level | -   |
| `modelscope`  | 4-conv stack (`temp_convs`) | temporal transformer (`temp_attentions`) | `transformer_in` |
| `svd`         | temporal ResBlock, blended (`temporal_res_blocks`) | temporal blocks inside the spatial transformer (`temporal_transformers`) | - |

Parameter names are diffusers' (`UNetMotionModel`, `UNet3DConditionModel`), so their state dicts
load without renaming. Every layer takes `(b f) c h w` plus `f` and returns the same. The community
layers normalise with a GroupNorm whose statistics span all frames of a clip jointly, as diffusers
computes it (the original AnimateDiff normalises per frame; diffusers is the oracle here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidiff.models.frames import FrameConv, _back, joint_group_norm
from vidiff.models.layers import Attention, FeedForward, TemporalAttention, TemporalConv, fuse_windows, residual_ff
from vidiff.models.spatiotemporal import TemporalResBlock, TemporalTransformer as SVDTemporalTransformer

FAMILIES = ("vidiff", "animatediff", "modelscope", "svd")


class SinusoidalPE(nn.Module):
    """AnimateDiff's fixed frame-position table `pe (1, max_len, dim)` (sin on even, cos on odd)."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", torch.zeros(1, max_len, dim))      # persistent: MotionAdapter files carry it
        self.reset_buffers()

    def reset_buffers(self, device=None) -> None:
        """(Re)compute the table, e.g. after a model built on the meta device got its weights."""
        _, max_len, dim = self.pe.shape
        device = device or (self.pe.device if self.pe.device.type != "meta" else "cpu")
        pos = torch.arange(max_len, dtype=torch.float32, device=device)[:, None]
        div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim, device=device)
        pe[0, :, 0::2] = torch.sin(pos * div)
        pe[0, :, 1::2] = torch.cos(pos * div)
        self.pe = pe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: `n f c` + the first f rows of the table."""
        f = x.shape[1]
        if f > self.pe.shape[1]:
            raise ValueError(f"{f} frames exceed the motion module's positional table of {self.pe.shape[1]} frames; "
                             "use mode='autoregressive' with chunk <= that length")
        return x + self.pe[:, :f].to(x.dtype)


class TemporalBlock(nn.Module):
    """Two self-attentions over frames and a GEGLU feed-forward, pre-LayerNorm, each residual.

    With a positional table (AnimateDiff) the frame positions are added to each LayerNorm output
    just before each attention, not to the residual stream.
    """

    def __init__(self, dim: int, heads: int, max_len: int | None = None, dropout: float = 0.0, double: bool = True):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, heads, dropout=dropout)
        if double:                     # SparseCtrl's motion modules have one self-attention only
            self.norm2, self.attn2 = nn.LayerNorm(dim), Attention(dim, heads, dropout=dropout)
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim, dropout=dropout)
        self.pos_embed = SinusoidalPE(dim, max_len) if max_len else None
        self.window = None             # (length, stride, weighting): attend within overlapping windows (FreeNoise)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        pe = self.pos_embed if self.pos_embed is not None else (lambda t: t)
        x = self.attn1(pe(self.norm1(x))) + x
        return self.attn2(pe(self.norm2(x))) + x if hasattr(self, "attn2") else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: `n f c` -> same. With a window, the attentions run per window and are fused; the feed-forward sees all."""
        x = self._attend(x) if self.window is None else fuse_windows(x, self._attend, *self.window)
        return residual_ff(x, self.norm3, self.ff)


class TemporalTransformer(nn.Module):
    """Joint-frame GroupNorm -> Linear in -> TemporalBlocks over frames -> Linear out, residual.

    AnimateDiff's motion module (with a positional table) and ModelScope's temporal attention and
    `transformer_in` (without one, and an inner width that may differ from the channels).
    """

    def __init__(self, channels: int, heads: int, head_dim: int, groups: int, depth: int = 1,
                 max_len: int | None = None, dropout: float = 0.0, double: bool = True):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [TemporalBlock(inner, heads, max_len, dropout, double) for _ in range(depth)])
        self.proj_out = nn.Linear(inner, channels)
        nn.init.zeros_(self.proj_out.weight)            # starts as the identity (as the published inits)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, f: int) -> torch.Tensor:
        """x: `(b f) c h w` -> same."""
        _, _, hh, ww = x.shape
        h = self.proj_in(joint_group_norm(x, f, self.norm))                    # b f n c'
        h = rearrange(h, "b f n c -> (b n) f c")
        for block in self.transformer_blocks:
            h = block(h)
        h = rearrange(self.proj_out(h), "(b n) f c -> b f n c", n=hh * ww)
        return x + _back(h, hh, ww)


class TemporalConvStack(nn.Module):
    """ModelScope's temporal conv: 4 x (joint-frame GroupNorm, SiLU, [dropout,] conv over 3 frames), residual."""

    def __init__(self, channels: int, groups: int, dropout: float = 0.1):
        super().__init__()
        self.conv1 = nn.ModuleList([nn.GroupNorm(groups, channels), nn.SiLU(), FrameConv(channels, channels)])
        for name in ("conv2", "conv3", "conv4"):
            setattr(self, name, nn.ModuleList([nn.GroupNorm(groups, channels), nn.SiLU(), nn.Dropout(dropout),
                                               FrameConv(channels, channels)]))
        nn.init.zeros_(self.conv4[-1].weight)           # starts as the identity
        nn.init.zeros_(self.conv4[-1].bias)

    def forward(self, x: torch.Tensor, f: int) -> torch.Tensor:
        """x: `(b f) c h w` -> same."""
        _, _, hh, ww = x.shape
        h = x
        for stage in (self.conv1, self.conv2, self.conv3, self.conv4):
            y = joint_group_norm(h, f, stage[0])                                  # b f n c
            y = stage[-1](stage[-2](F.silu(y)) if len(stage) == 4 else F.silu(y))
            h = _back(y, hh, ww)
        return x + h


# --------------------------------------------------------------------------------------------
# The families: which module fills which slot. Each builder gets (cfg, channels, heads of the
# level's spatial attention) and returns a module or None.

def _vidiff_conv(cfg, c, heads, eps=None):
    return TemporalConv(c, cfg.norm_num_groups, cfg.norm_eps)


def _vidiff_attn(cfg, c, heads, eps=None):
    h = max(1, min(cfg.temporal_heads, c))
    while c % h:
        h -= 1
    return TemporalAttention(c, h, cfg.norm_num_groups)


def _motion_module(cfg, c, heads, eps=None):
    if c % cfg.temporal_heads:
        raise ValueError(f"motion module width {c} is not divisible by temporal_heads={cfg.temporal_heads}")
    return TemporalTransformer(c, cfg.temporal_heads, c // cfg.temporal_heads, cfg.norm_num_groups,
                               cfg.temporal_layers, cfg.motion_max_seq_length, double=cfg.motion_double_attention)


def _modelscope_conv(cfg, c, heads, eps=None):
    return TemporalConvStack(c, cfg.norm_num_groups)


def _modelscope_attn(cfg, c, heads, eps=None):
    return TemporalTransformer(c, heads, c // heads, cfg.norm_num_groups, cfg.temporal_layers)


def _svd_conv(cfg, c, heads, eps=1e-5):
    return TemporalResBlock(c, cfg.block_out_channels[0] * 4, eps, cfg.norm_num_groups)


def _svd_attn(cfg, c, heads, eps=None):
    return SVDTemporalTransformer(c, heads, cfg.cross_attention_dim, cfg.transformer_depth)


class Family:
    """Slot names and builders of one temporal family."""

    def __init__(self, conv: tuple | None, attn: tuple | None, attn_everywhere: bool, mid_conv: bool,
                 video_model: bool = False):
        self.conv, self.attn = conv, attn                  # (attribute name, builder) or None
        self.attn_everywhere = attn_everywhere             # second slot also at levels without attention
        self.mid_conv = mid_conv                           # first slot after both mid ResBlocks
        # SVD: slot 1 takes the time embedding and the image-only indicator, slot 2 runs inside the
        # spatial transformer, and both run on one frame too (the blend, not the frame count, makes an image)
        self.video_model = video_model


FAMILY = {
    "vidiff": Family(("temp_convs", _vidiff_conv), ("temp_attentions", _vidiff_attn), False, True),
    "animatediff": Family(None, ("motion_modules", _motion_module), True, False),
    "modelscope": Family(("temp_convs", _modelscope_conv), ("temp_attentions", _modelscope_attn), False, True),
    "svd": Family(("temporal_res_blocks", _svd_conv), ("temporal_transformers", _svd_attn), False, True, True),
}


def get_family(name: str) -> Family:
    """The family called `name`; ValueError naming the known ones."""
    if name not in FAMILY:
        raise ValueError(f"temporal_family must be one of {FAMILIES}, got {name!r}")
    return FAMILY[name]


def build_stem(cfg) -> nn.Module | None:
    """The layer after conv_in, if the family has one (ModelScope's `transformer_in`)."""
    if cfg.temporal and cfg.temporal_family == "modelscope":
        return TemporalTransformer(cfg.block_out_channels[0], 8, cfg.transformer_in_head_dim, cfg.norm_num_groups,
                                   cfg.temporal_layers)
    return None
