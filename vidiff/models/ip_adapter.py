"""IP-Adapter (Ye et al. 2023): an image as a prompt, through extra keys and values in every text cross-attention.

A CLIP image embedding is projected to a few tokens (`ImageProjection`: one linear + LayerNorm, plain IP-Adapter;
`Resampler`: a perceiver over CLIP's penultimate hidden states, IP-Adapter Plus). Each cross-attention layer has its
own key and value projections of those tokens; their attention output is added to the text's, times a scale
(decoupled cross-attention). Parameter names are the original files' (`image_proj.*`, `ip_adapter.{id}.to_k_ip`).
The tokens do not change while sampling, so the keys and values are projected once per video, not once per step,
and enter the UNet as `UNet.forward(extra_kv=...)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ImageProjection(nn.Module):
    """CLIP `image_embeds` `(b, d)` -> `(b, n, cross)` tokens: linear, reshape, LayerNorm."""

    def __init__(self, embed_dim: int, cross_dim: int, tokens: int = 4):
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Linear(embed_dim, tokens * cross_dim)
        self.norm = nn.LayerNorm(cross_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project."""
        return self.norm(self.proj(x).reshape(x.shape[0], self.tokens, -1))


class PerceiverAttention(nn.Module):
    """Latent queries attend to [image features; latents] (the Resampler's attention; fused to_kv, no biases)."""

    def __init__(self, dim: int, heads: int, head_dim: int = 64):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x `(b, m, dim)` image features, latents `(b, q, dim)` -> `(b, q, dim)`."""
        x, latents = self.norm1(x), self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], 1)).chunk(2, dim=-1)
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)      # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).flatten(2))


class Resampler(nn.Module):
    """IP-Adapter Plus: CLIP hidden states `(b, m, d)` -> `(b, q, cross)` through learned latent queries."""

    def __init__(self, embed_dim: int, dim: int, cross_dim: int, queries: int, depth: int = 4, heads: int = 12,
                 ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, queries, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(embed_dim, dim)
        self.proj_out = nn.Linear(dim, cross_dim)
        self.norm_out = nn.LayerNorm(cross_dim)
        self.layers = nn.ModuleList(nn.ModuleList([
            PerceiverAttention(dim, heads),
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                          nn.Linear(dim * ff_mult, dim, bias=False))]) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Resample."""
        latents = self.latents.repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class IPLayer(nn.Module):
    """One cross-attention's key and value projections of the image tokens."""

    def __init__(self, cross_dim: int, width: int):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_dim, width, bias=False)
        self.to_v_ip = nn.Linear(cross_dim, width, bias=False)


class IPAdapter(nn.Module):
    """`image_proj` and one `IPLayer` per text cross-attention (the file's `ip_adapter.{2j+1}` is layer j)."""

    def __init__(self, image_proj: nn.Module, cross_dim: int, widths: list[int], plus: bool):
        super().__init__()
        self.image_proj, self.plus, self.cross_dim = image_proj, plus, cross_dim
        self.ip_adapter = nn.ModuleDict({str(2 * j + 1): IPLayer(cross_dim, w) for j, w in enumerate(widths)})

    def state_names(self) -> list[str]:
        """Layer ids in cross-attention order."""
        return [str(2 * j + 1) for j in range(len(self.ip_adapter))]

    def keys_values(self, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(k, v) of `tokens` `(n, q, cross)` for each cross-attention layer, in order."""
        layers = [self.ip_adapter[k] for k in self.state_names()]
        tokens = tokens.to(layers[0].to_k_ip.weight.dtype)
        return [(layer.to_k_ip(tokens), layer.to_v_ip(tokens)) for layer in layers]
