"""Stable Video Diffusion's temporal layers (the `svd` family), in vidiff's two slots.

SVD (Blattmann et al. 2023) adds, after every spatial ResBlock, a ResBlock over frames whose output
is blended with the spatial one by a learned factor, and inside every spatial transformer, after each
of its blocks, a transformer over frames (with an embedding of the frame index) blended the same way:

    out = a * spatial + (1 - a) * temporal,   a = sigmoid(mix_factor), or 1 for frames marked image-only

Slot 1 (`temporal_res_blocks`) holds the first; slot 2 (`temporal_transformers`) the second, which the
spatial transformer calls between its blocks and `proj_out` (`SpatialTransformer(inner=...)`). Parameter
names inside each are diffusers' (`UNetSpatioTemporalConditionModel`): converting is renaming the prefix
(`vidiff.loaders.svd`). The temporal layers run on one frame too, as SVD was trained; a frame whose
`image_only_indicator` is 1 gets the spatial output alone, so it is the image model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.models.layers import (Attention, FeedForward, TimestepEmbedding, fuse_windows, residual_ff,
                                  timestep_embedding)
from vidiff.models.frames import FrameConv, _back, joint_group_norm


class TimeMixer(nn.Module):
    """The learned blend factor of SVD's `a * spatial + (1 - a) * temporal` (diffusers' AlphaBlender,
    learned_with_images); the layers apply it in their own fused form."""

    def __init__(self, merge_factor: float = 0.5):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([merge_factor]))

    def alpha(self, indicator: torch.Tensor | None, b: int, f: int, device, dtype) -> torch.Tensor:
        """`(b f)` blend factors: sigmoid(mix_factor), or 1 where `indicator` (`b f`) marks an image."""
        a = torch.sigmoid(self.mix_factor.float()).expand(b * f)
        if indicator is not None:
            a = torch.where(indicator.reshape(-1).bool(), torch.ones_like(a), a)
        return a.to(device=device, dtype=dtype)



class TemporalResBlock(nn.Module):
    """GroupNorm over the clip -> SiLU -> conv over 3 frames, + the frame's time embedding, twice; residual; blended.

    diffusers' `TemporalResnetBlock` plus the `time_mixer` of its SpatioTemporalResBlock. The Conv3d
    weights `(c, c, 3, 1, 1)` run as a matmul with shifted adds (`FrameConv`); Conv3d is slow on CPU.
    """

    def __init__(self, channels: int, temb_dim: int, eps: float, groups: int = 32):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, eps=eps)
        self.conv1 = FrameConv(channels, channels)
        self.time_emb_proj = nn.Linear(temb_dim, channels)
        self.norm2 = nn.GroupNorm(groups, channels, eps=eps)
        self.conv2 = FrameConv(channels, channels)
        self.time_mixer = TimeMixer()

    def forward(self, x: torch.Tensor, f: int, temb: torch.Tensor, indicator: torch.Tensor | None = None):
        """x: `(b f) c h w` (the spatial ResBlock's output), temb `(b f) d` -> same."""
        bf, c, hh, ww = x.shape
        emb = self.time_emb_proj(F.silu(temb)).view(bf // f, f, 1, c)                  # per frame
        h = self.conv1(F.silu(joint_group_norm(x, f, self.norm1)), shift=emb)           # b f n c
        h = self.conv2(F.silu(joint_group_norm(_back(h, hh, ww), f, self.norm2)))
        # a x + (1 - a)(x + r) = x + (1 - a) r: the blend of the residual block in one pass
        keep = 1 - self.time_mixer.alpha(indicator, bf // f, f, x.device, x.dtype)
        return torch.addcmul(x, _back(h, hh, ww), keep.view(-1, 1, 1, 1))


class TemporalBasicBlock(nn.Module):
    """Over the frames at each position: GEGLU in, self-attention, cross-attention to the image, GEGLU; pre-norm.

    diffusers' `TemporalBasicTransformerBlock` with `time_mix_inner_dim == dim` (every SVD checkpoint).
    """

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm_in, self.ff_in = nn.LayerNorm(dim), FeedForward(dim)
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim), Attention(dim, heads, context_dim=context_dim)
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: `b n f c`; context `b m d` (each clip's first-frame conditioning) -> `b n f c`."""
        b, n, f, c = x.shape
        h = x.reshape(b * n, f, c)
        h = residual_ff(h, self.norm_in, self.ff_in)          # in token chunks without grad on CPU (same values)
        h = self.attn1(self.norm1(h)) + h
        # cross-attention is per query: all positions of a clip attend to its context in one call
        q = self.norm2(h).reshape(b, n * f, c)
        h = self.attn2(q, context).reshape(b * n, f, c) + h
        h = residual_ff(h, self.norm3, self.ff)
        return h.reshape(b, n, f, c)


class TemporalTransformer(nn.Module):
    """The temporal half of SVD's `TransformerSpatioTemporalModel`: a block per spatial block, frame-index
    embedding, one blend. `inner(...)` returns the function the spatial transformer calls after block i."""

    def __init__(self, dim: int, heads: int, context_dim: int, depth: int = 1):
        super().__init__()
        self.temporal_transformer_blocks = nn.ModuleList([TemporalBasicBlock(dim, heads, context_dim)
                                                          for _ in range(depth)])
        self.time_pos_embed = TimestepEmbedding(dim, 4 * dim, out_dim=dim)
        self.time_mixer = TimeMixer()
        self.window = None             # (length, stride, weighting): frames in overlapping windows (long videos)

    def inner(self, context: torch.Tensor, f: int, indicator: torch.Tensor | None):
        """The hook for `SpatialTransformer.forward(inner=)`: `(h (b f) n c, i) -> h`.

        `context` is the UNet's `b m d` (or per frame `(b f) m d`, of which frame 0 is used, as SVD does).
        """
        def hook(h: torch.Tensor, i: int) -> torch.Tensor:
            bf, n, c = h.shape
            b = bf // f
            ctx = context if context.shape[0] == b else context.reshape(b, f, *context.shape[1:])[:, 0]
            block = self.temporal_transformer_blocks[i]

            def pos(length):            # the frame-index embedding of a window (positions start at 0)
                emb = timestep_embedding(torch.arange(length, device=h.device), c, True, 0).to(h.dtype)
                return self.time_pos_embed(emb)

            alpha = self.time_mixer.alpha(indicator, b, f, h.device, h.dtype).view(b, f, 1, 1)
            frames_last = h.view(b, f, n, c).permute(0, 2, 1, 3)                        # b n f c (a view)
            if self.window is None:     # gather to frames-last and add the positions in one pass
                x = torch.add(frames_last, pos(f).view(1, 1, f, c)).reshape(b * n, f, c)
                out = block(x.view(b, n, f, c), ctx)
            else:
                def run(x):             # x: (b n) f' c, one window
                    x = x + pos(x.shape[1])[None]
                    return block(x.reshape(b, n, *x.shape[1:]), ctx).reshape(b * n, *x.shape[1:])

                out = fuse_windows(frames_last.reshape(b * n, f, c), run, *self.window).view(b, n, f, c)
            # blend straight into the frames-first layout: a * spatial + (1 - a) * temporal
            blended = torch.lerp(out.permute(0, 2, 1, 3), h.view(b, f, n, c), alpha)
            return blended.reshape(bf, n, c)
        return hook
