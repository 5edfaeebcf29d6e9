"""ControlNet and SparseCtrl: a copy of the UNet's down path and middle block that turns a condition into
residuals for the UNet's skip connections (`UNet.forward(residuals=...)`).

One class holds both. A ControlNet (Zhang et al. 2023) is the image UNet's encoder, run per frame on the noisy
latents plus an embedding of its condition image (pose, depth, edges). SparseCtrl (Guo et al. 2023) is the same
encoder with AnimateDiff motion modules (one self-attention each) and no motion module in the middle; it ignores
the noisy latents (zeros in, as the original sets `set_noisy_sample_input_to_zero`) and takes its condition at a
few frames, with a mask channel saying which. Names are diffusers' (`ControlNetModel`, `SparseControlNetModel`),
so their state dicts load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidiff.models.checks import check_inputs
from vidiff.models.layers import TimestepEmbedding, timestep_embedding
from vidiff.models.unet import Level, MidBlock, UNetConfig


class ConditionEmbedding(nn.Module):
    """Condition image -> a map at the latent size: conv, then (conv, stride-2 conv) per width step, SiLU after
    each, and a last conv (zero at init) to the UNet's first width (diffusers' ControlNetConditioningEmbedding)."""

    def __init__(self, out_channels: int, in_channels: int = 3, widths=(16, 32, 96, 256)):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(a, a, 3, padding=1))
            self.blocks.append(nn.Conv2d(a, b, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: `n c H W` -> `n c0 H/8 W/8` (for four widths)."""
        h = F.silu(self.conv_in(x))
        for block in self.blocks:
            h = F.silu(block(h))
        return self.conv_out(h)


class ControlNet(nn.Module):
    """`net(x, t, ctx, cond)` -> (down residuals, mid residual) for `UNet.forward(residuals=...)`.

    `config` is the encoder's UNetConfig (image UNet for a ControlNet; `animatediff` family with one self-attention
    per motion block and no middle motion module for SparseCtrl). `cond_channels` are the condition's channels (a
    mask channel included), `embedding` "full" (ConditionEmbedding from pixels) or "simple" (one conv, SparseCtrl
    RGB: the condition is already latents), `sparse` ignores the noisy input and repeats the time embedding per frame.
    """

    def __init__(self, config: UNetConfig, cond_channels: int = 3, embedding: str = "full",
                 embedding_widths=(16, 32, 96, 256), sparse: bool = False, global_pool: bool = False,
                 bgr: bool = False):
        super().__init__()
        self.config, self.sparse, self.global_pool, self.bgr = config, sparse, global_pool, bgr
        self.cond_channels, self.embedding = cond_channels, embedding
        ch = config.block_out_channels
        temb_dim = ch[0] * 4
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb_dim)
        if embedding == "simple":
            self.controlnet_cond_embedding = nn.Conv2d(cond_channels, ch[0], 3, padding=1)
        else:
            self.controlnet_cond_embedding = ConditionEmbedding(ch[0], cond_channels, tuple(embedding_widths))
        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([nn.Conv2d(ch[0], ch[0], 1)])
        cprev = ch[0]
        for i, c in enumerate(ch):
            last = i == len(ch) - 1
            cins = [cprev] + [c] * (config.layers_per_block - 1)
            self.down_blocks.append(Level(config, cins, c, config.num_heads[i], config.attention_levels[i], temb_dim,
                                          None if last else "down"))
            self.controlnet_down_blocks.extend(nn.Conv2d(c, c, 1) for _ in range(config.layers_per_block + (not last)))
            cprev = c
        self.mid_block = MidBlock(config, temb_dim)
        self.controlnet_mid_block = nn.Conv2d(ch[-1], ch[-1], 1)

    def embed(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition `n c H W` (per frame) as the map added after conv_in; the same every step, so the
        pipeline computes it once per video."""
        if self.bgr:
            cond = cond.flip(1)
        return self.controlnet_cond_embedding(cond.to(self.conv_in.weight.dtype))

    def forward(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, embedded: torch.Tensor,
                scale: float = 1.0) -> tuple[list, torch.Tensor]:
        """x `b c f h w` (noisy latents, as the UNet gets them), t `(b,)` or `(b, f)`, ctx the UNet's text states,
        `embedded` = `embed(cond)`, `(b f) c h w` or `f c h w` (shared by the batch). Returns residuals times `scale`."""
        cfg = self.config
        b, _, f, hh, ww = x.shape
        t, ctx = check_inputs(cfg, x, t, ctx, True)
        temb = timestep_embedding(t.expand(f, b).T if t.ndim == 1 else t, cfg.block_out_channels[0],
                                  cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = self.time_embedding(rearrange(temb, "b f d -> (b f) d").to(x.dtype))
        if self.sparse:              # the noisy sample is replaced by zeros: conv_in gives its bias
            h = self.conv_in.bias.to(x.dtype).view(1, -1, 1, 1).expand(b * f, -1, hh, ww)
        else:
            h = self.conv_in(rearrange(x, "b c f h w -> (b f) c h w").contiguous(memory_format=torch.channels_last))
        if embedded.shape[0] != b * f:                       # one condition for the whole batch
            embedded = embedded.repeat(b * f // embedded.shape[0], 1, 1, 1)
        h = h + embedded.to(h.dtype)
        skips = [h]
        for level in self.down_blocks:
            for i in range(len(level.resnets)):
                h = level.unit(i, h, temb, ctx, f)
                skips.append(h)
            if hasattr(level, "downsamplers"):
                h = level.downsamplers[0](h)
                skips.append(h)
        h = self.mid_block(h, temb, ctx, f)
        down = [conv(s) * scale for conv, s in zip(self.controlnet_down_blocks, skips)]
        mid = self.controlnet_mid_block(h) * scale
        if self.global_pool:
            down = [d.mean((2, 3), keepdim=True) for d in down]
            mid = mid.mean((2, 3), keepdim=True)
        return down, mid

    def check_fits(self, unet_config: UNetConfig, name: str = "ControlNet") -> None:
        """One clear line when this net's residuals cannot go into a UNet of `unet_config` (another base model)."""
        mine, theirs = self.config, unet_config
        if (tuple(mine.block_out_channels) != tuple(theirs.block_out_channels)
                or mine.layers_per_block != theirs.layers_per_block
                or mine.cross_attention_dim != theirs.cross_attention_dim):
            raise ValueError(f"{name} was made for a base model with widths {list(mine.block_out_channels)} and text "
                             f"width {mine.cross_attention_dim}; this model has {list(theirs.block_out_channels)} and "
                             f"{theirs.cross_attention_dim}: use a {name} for this base model")
