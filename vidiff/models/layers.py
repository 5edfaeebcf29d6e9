"""Building blocks of the space-time UNet: embeddings, ResBlock, spatial and temporal layers.

Spatial layers see frames folded into the batch, `(b f) c h w`. Temporal layers take the same
tensor plus `f`, mix along the frame axis and return `(b f) c h w`; each is residual and starts as
the identity (its last layer is zero in weight and bias). Parameter names of the spatial layers
follow diffusers' UNet2DConditionModel, so SD checkpoints load without renaming.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

ATTENTION_BACKENDS = ("sdpa", "xformers", "math", "auto")


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that normalises a channels-last map in the contiguous layout and hands it back channels-last.

    torch's CPU GroupNorm on channels-last input is 3x (fp32) to 6x (bf16) slower than on the same map
    stored contiguously, forward and backward, so the two layout copies pay: a bf16 training step runs
    ~1.2x (default model) to ~1.4x (narrow model) faster. Same parameters, same state-dict keys.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: `n c h w` (any layout) -> same layout."""
        if x.dim() == 4 and x.device.type == "cpu" and not x.is_contiguous() \
                and x.is_contiguous(memory_format=torch.channels_last):
            y = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            return y.contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def xformers_available() -> bool:
    """True when xformers can be imported."""
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn a requested attention backend into the one that will run on `device`."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    if backend == "xformers":
        if not xformers_available():
            raise ValueError("attention_backend='xformers' but xformers is not installed "
                             "(pip install 'vidiff[xformers]'); use 'sdpa' or 'auto'")
        if device.type != "cuda":
            raise ValueError(f"attention_backend='xformers' needs CUDA tensors, got device {device}; "
                             "use 'sdpa' or 'auto'")
    return backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Multi-head attention over `b heads n d` tensors through the chosen backend."""
    if backend == "sdpa":
        n = max(q.shape[-2], k.shape[-2])
        if q.device.type == "cpu" and (n <= 32 if q.dtype == torch.float32 else n <= 128):
            # short sequences (frames; 8x8 maps): three batched matmuls beat the flash kernel's per-block
            # overhead on CPU: ~1.3x at 16 frames in fp32, and in bf16 training 2.5-5x forward+backward
            # at 64 tokens. The softmax runs in fp32, as the flash kernel's accumulation does.
            w = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
            return torch.matmul(w.float().softmax(dim=-1).to(v.dtype), v)
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "math":
        w = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        return w.softmax(dim=-1) @ v
    if backend == "xformers":
        import xformers.ops as xops

        out = xops.memory_efficient_attention(*(t.transpose(1, 2).contiguous() for t in (q, k, v)))
        return out.transpose(1, 2)
    raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS[:3]}, got {backend!r}")


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of noise levels `t` (any shape) -> `(*t.shape, dim)`, as in DDPM / diffusers."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.float()[..., None] * freqs
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[..., half:], emb[..., :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """MLP on the sinusoidal embedding: linear -> SiLU -> linear."""

    def __init__(self, in_dim: int, dim: int, out_dim: int | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed."""
        return self.linear_2(F.silu(self.linear_1(x)))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added in between (per frame).

    `scale_shift` (diffusers' `resnet_time_scale_shift="scale_shift"`): the embedding gives a scale
    and a shift applied after the second GroupNorm, so the condition is not normalised away.
    """

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int = 32, eps: float = 1e-5,
                 dropout: float = 0.0, scale_shift: bool = False):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, 2 * cout if scale_shift else cout)
        self.norm2 = GroupNorm(groups, cout, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x: `(b f) c h w`, temb: `(b f) d`."""
        h = self.conv1(F.silu(self.norm1(x)))
        emb = self.time_emb_proj(F.silu(temb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + emb)
        h = self.conv2(self.dropout(F.silu(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections (self or cross)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0,
                 qkv_bias: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by heads={heads}")
        self.heads = heads
        kv_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])
        self.backend = "sdpa"

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: `b n c`; context: `b m c'` or None for self-attention."""
        if context is not None and context.shape[1] == 1:
            # one key (SVD's image token): the softmax over it is exactly 1, so every query gets that token's
            # value. Skips the query and key projections and the attention over all positions.
            out = self.to_out[1](self.to_out[0](self.to_v(context)))
            return out.expand(context.shape[0], x.shape[1], -1) if out.shape[0] == x.shape[0] else \
                out.repeat_interleave(x.shape[0] // out.shape[0], 0).expand(-1, x.shape[1], -1)
        ctx = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = attention(q, k, v, self.backend)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out[1](self.to_out[0](out))


    def cross(self, x: torch.Tensor, context: torch.Tensor, f: int, extra=()) -> torch.Tensor:
        """Cross-attention of x `(b f) n c` to `context` plus extra keys and values (IP-Adapter's decoupled
        attention): out = to_out(attn(q, text) + sum of scale * attn(q, k, v)) over `extra` = [(k, v, scale)].
        Each context, k and v is `b m c'` (shared by a sample's f frames) or `(b f) m c'` (one per frame)."""
        q = rearrange(self.to_q(x), "n l (h d) -> n h l d", h=self.heads)
        out = self._over(q, self.to_k(context), self.to_v(context), f)
        for k, v, scale in extra:
            if scale != 0:                       # an adapter at scale 0 is skipped, as diffusers does
                out = out + scale * self._over(q, k.to(q.dtype), v.to(q.dtype), f)
        return self.to_out[1](self.to_out[0](rearrange(out, "n h l d -> n l (h d)")))

    def _over(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, f: int) -> torch.Tensor:
        k, v = (rearrange(t, "n m (h d) -> n h m d", h=self.heads) for t in (k, v))
        if k.shape[0] == q.shape[0]:
            return attention(q, k, v, self.backend)
        fold = rearrange(q, "(b f) h l d -> b h (f l) d", f=f)      # every frame against the sample's keys
        return rearrange(attention(fold, k, v, self.backend), "b h (f l) d -> (b f) h l d", f=f)


class CrossContext(NamedTuple):
    """The text states and the extra keys and values (IP-Adapter) of each cross-attention, as the UNet passes them
    to its spatial transformers: {attention module: [(k, v, scale), ...]}."""

    text: torch.Tensor
    extra: dict


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020)."""

    def __init__(self, din: int, dout: int):
        super().__init__()
        self.proj = nn.Linear(din, dout * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project and gate."""
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with a 4x inner width."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply."""
        for layer in self.net:
            x = layer(x)
        return x


FF_CHUNK = 2 ** 17   # elements of (tokens x width) per chunk of a no-grad feed-forward (hidden stays in cache)


def residual_ff(x: torch.Tensor, norm: nn.Module, ff: nn.Module) -> torch.Tensor:
    """`ff(norm(x)) + x` over the last axis; without grad, in token chunks (same values, ~1.5x faster on CPU).

    The feed-forward's hidden layer is 4x (GEGLU: 8x) the width; at 16 frames of 32x32 tokens it is
    tens of MB and the projections become memory-bound. Chunks of `FF_CHUNK / width` tokens keep it in cache.
    """
    rows, step = x.numel() // x.shape[-1], max(256, FF_CHUNK // x.shape[-1])
    if torch.is_grad_enabled() or rows < 2 * step or x.device.type != "cpu" or x.shape[-1] >= 512:
        # a CPU cache trick, for narrow widths only: from 640 channels on, the weights (12 x width^2) outweigh a
        # chunk's activations and each chunk reads them again (640 wide: 0.94x, 1280: 0.86x; 320: 1.4x)
        return ff(norm(x)) + x
    flat = x.reshape(rows, x.shape[-1])
    out = torch.empty_like(flat)
    for i in range(0, rows, step):
        part = flat[i:i + step]
        torch.add(ff(norm(part)), part, out=out[i:i + step])
    return out.view(x.shape)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim=context_dim, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, f: int) -> torch.Tensor:
        """x: `(b f) n c`; context: `b m c'`, shared by the f frames of a sample, or `(b f) m c'`, per frame."""
        x = self.attn1(self.norm1(x)) + x
        if isinstance(context, CrossContext):       # extra keys and values beside the text (IP-Adapter)
            x = self.attn2.cross(self.norm2(x), context.text, f, context.extra.get(self.attn2, ())) + x
        elif context.shape[0] == x.shape[0]:        # a text per frame (prompt travel), or f == 1
            x = self.attn2(self.norm2(x), context) + x
        else:
            # Every frame attends to the same text, so queries of all frames go in one call
            # against the un-repeated context: no f-fold copy of the keys and values.
            h = rearrange(self.norm2(x), "(b f) n c -> b (f n) c", f=f)
            x = rearrange(self.attn2(h, context), "b (f n) c -> (b f) n c", f=f) + x
        return residual_ff(x, self.norm3, self.ff)


class SpatialTransformer(nn.Module):
    """Per-frame transformer over the h*w tokens of a feature map, residual around the whole."""

    def __init__(self, channels: int, heads: int, context_dim: int, depth: int = 1, groups: int = 32,
                 linear_projection: bool = False, dropout: float = 0.0):
        super().__init__()
        self.linear_projection = linear_projection
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        proj = (lambda: nn.Linear(channels, channels)) if linear_projection else (lambda: nn.Conv2d(channels, channels, 1))
        self.proj_in = proj()
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(channels, heads, context_dim, dropout) for _ in range(depth)])
        self.proj_out = proj()

    def forward(self, x: torch.Tensor, context: torch.Tensor, f: int, inner=None) -> torch.Tensor:
        """x: `(b f) c h w` -> same. `inner(h, i)`, if given, runs on the tokens after block i (SVD's temporal blocks)."""
        _, _, hh, ww = x.shape
        h = self.norm(x)
        if self.linear_projection:
            h = self.proj_in(rearrange(h, "n c h w -> n (h w) c"))
        else:
            h = rearrange(self.proj_in(h), "n c h w -> n (h w) c")
        for i, block in enumerate(self.transformer_blocks):
            h = block(h, context, f)
            if inner is not None:
                h = inner(h, i)
        if self.linear_projection:
            h = rearrange(self.proj_out(h), "n (h w) c -> n c h w", h=hh, w=ww)
        else:
            h = self.proj_out(rearrange(h, "n (h w) c -> n c h w", h=hh, w=ww))
        return h + x


class Downsample(nn.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve h and w."""
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Double h and w."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# --------------------------------------------------------------------------------------------
# Temporal layers. Both are residual and zero-initialised in their last layer, so they start as
# the identity for every frame count; the UNet skips them entirely when f == 1.


class TemporalConv(nn.Module):
    """Residual kernel-3 convolution over frames: GroupNorm -> SiLU -> conv(3 frames), zero-init.

    The 3-tap conv is one 1x1 Conv2d to 3*c channels on the `(b f) c h w` tensor followed by
    shifted adds along f. That keeps the data in the spatial layout (no permute copies) and stays
    on the fast 2-D convolution path on CPU, where Conv3d is slow. Frames beyond the ends are
    zero, as in a zero-padded Conv1d.
    """

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-5):
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=eps)
        # Output channel blocks [0:c], [c:2c], [2c:3c] apply to frames f-1, f, f+1.
        self.conv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.zeros_(self.conv.weight)
        self.circular = False          # a looping video: frame 0 and the last frame are neighbours

    def forward(self, x: torch.Tensor, f: int) -> torch.Tensor:
        """x: `(b f) c h w` -> same."""
        y = self.conv(F.silu(self.norm(x)))
        y = rearrange(y, "(b f) (k c) h w -> b f k c h w", f=f, k=3)
        out = y[:, :, 1] + self.bias.view(-1, 1, 1).to(y.dtype)   # b f c h w, tap on frame f
        out[:, 1:] += y[:, :-1, 0]                                # tap on frame f-1
        out[:, :-1] += y[:, 1:, 2]                                # tap on frame f+1
        if self.circular:                                         # the ends wrap round
            out[:, 0] += y[:, -1, 0]
            out[:, -1] += y[:, 0, 2]
        return x + rearrange(out, "b f c h w -> (b f) c h w")

    @torch.no_grad()
    def conv1d_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The equivalent `nn.Conv1d(c, c, 3, padding=1)` weight `(c, c, 3)` and bias `(c,)`."""
        w = self.conv.weight[:, :, 0, 0].view(3, self.conv.out_channels // 3, -1)
        return w.permute(1, 2, 0).contiguous(), self.bias.clone()


def rope(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of `... n d` by positions `n`; no length cap."""
    d = x.shape[-1]
    d2 = d - d % 2
    inv = base ** (-torch.arange(0, d2, 2, device=x.device, dtype=torch.float32) / d)
    ang = pos.float()[:, None] * inv[None]                                # n d/2
    # each channel pair (2i, 2i+1) is a complex number turned by its angle: one complex product
    # (half the time of the real-arithmetic form, which made RoPE ~12% of a shapes-64 forward)
    pairs = torch.view_as_complex(x[..., :d2].float().reshape(*x.shape[:-1], d2 // 2, 2).contiguous())
    rot = torch.view_as_real(pairs * torch.polar(torch.ones_like(ang), ang)).flatten(-2).to(x.dtype)
    return rot if d2 == d else torch.cat([rot, x[..., d2:]], dim=-1)


WEIGHTINGS = ("flat", "pyramid", "delayed_reverse_sawtooth")


def window_weights(length: int, scheme: str = "pyramid") -> list[float]:
    """Per-frame weights of one window when overlapping windows are fused (FreeNoise; diffusers' schemes)."""
    half = length // 2
    if scheme == "flat":
        return [1.0] * length
    if scheme == "pyramid":            # 4 -> [1, 2, 2, 1]; 5 -> [1, 2, 3, 2, 1]
        up = list(range(1, half + 1)) if length % 2 == 0 else list(range(1, (length + 1) // 2))
        return [float(v) for v in (up + up[::-1] if length % 2 == 0 else up + [(length + 1) // 2] + up[::-1])]
    if scheme == "delayed_reverse_sawtooth":   # 4 -> [0.01, 2, 2, 1]; 5 -> [0.01, 0.01, 3, 2, 1]
        if length % 2 == 0:
            return [0.01] * (half - 1) + [float(half)] + [float(v) for v in range(half, 0, -1)]
        mid = (length + 1) // 2          # as documented (diffusers' code builds length + 1 weights here and fails)
        return [0.01] * (mid - 1) + [float(v) for v in range(mid, 0, -1)]
    raise ValueError(f"window weighting must be one of {WEIGHTINGS}, got {scheme!r}")


def fuse_windows(x: torch.Tensor, fn, length: int, stride: int, scheme: str = "pyramid",
                 loop: bool = False) -> torch.Tensor:
    """Apply `fn` to overlapping frame windows of `x` (`n f c`) and average the outputs with `window_weights`.

    Windows start every `stride` frames; when they do not reach the end, one more window is aligned
    to it and only its new frames count. This is diffusers' FreeNoise fusion, including its quirk that
    those last frames are counted with one frame's weight. With `loop`, windows start every `stride` frames all
    the way round and wrap from the last frames to the first (a looping video: the last frame's neighbour is frame 0).
    """
    f = x.shape[1]
    if f <= length:
        return fn(x)
    if loop:
        w = torch.tensor(window_weights(length, scheme), device=x.device, dtype=torch.float32)
        acc = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
        count = torch.zeros(f, device=x.device)
        for s in range(0, f, stride):
            idx = (torch.arange(length, device=x.device) + s) % f
            acc.index_add_(1, idx, fn(x[:, idx]).float() * w[None, :, None])
            count.index_add_(0, idx, w)
        return (acc / count[None, :, None]).to(x.dtype)
    spans = [(i, min(f, i + length)) for i in range(0, f - length + 1, stride)]
    w = torch.tensor(window_weights(length, scheme), device=x.device, dtype=x.dtype)[None, :, None]
    complete = spans[-1][1] == f
    tail = f - spans[-1][1]
    if not complete:
        spans.append((f - length, f))
    acc = torch.zeros_like(x)
    count = torch.zeros((1, f, 1), device=x.device)
    for i, (s, e) in enumerate(spans):
        weights = torch.ones_like(count[:, s:e]) * w
        out = fn(x[:, s:e])
        if i == len(spans) - 1 and not complete:
            acc[:, -tail:] += out[:, -tail:] * weights[:, -tail:]
            count[:, -tail:] += weights[:, -tail]
        else:
            acc[:, s:e] += out * weights
            count[:, s:e] += weights
    return torch.cat([torch.where(c > 0, a / c, a) for a, c in zip(acc.split(length, 1), count.split(length, 1))],
                     dim=1).to(x.dtype)


class TemporalAttention(nn.Module):
    """Self-attention across frames at each spatial position, with RoPE on frame index.

    RoPE has no table, so it runs at any frame count (the model is not capped at its training
    length). The output projection starts at zero: the layer is the identity at inflation.
    """

    def __init__(self, channels: int, heads: int, groups: int = 32):
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        self.to_qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)
        self.backend = "sdpa"
        self.window = None             # (length, stride, weighting): attend within overlapping windows (FreeNoise)

    def _attend(self, h: torch.Tensor) -> torch.Tensor:
        f = h.shape[1]
        q, k, v = rearrange(self.to_qkv(h), "n f (k h d) -> k n h f d", k=3, h=self.heads)
        pos = torch.arange(f, device=h.device)
        q, k = rope(q, pos), rope(k, pos)
        return self.to_out(rearrange(attention(q, k, v, self.backend), "n h f d -> n f (h d)"))

    def forward(self, x: torch.Tensor, f: int) -> torch.Tensor:
        """x: `(b f) c h w` -> same."""
        _, _, hh, ww = x.shape
        h = rearrange(self.norm(x), "(b f) c h w -> (b h w) f c", f=f)
        out = self._attend(h) if self.window is None else fuse_windows(h, self._attend, *self.window)
        return x + rearrange(out, "(b h w) f c -> (b f) c h w", h=hh, w=ww)
