"""Input checks of the UNet: one clear line naming the value and what is allowed."""

from __future__ import annotations

import torch
from einops import rearrange


def check_inputs(cfg, x, t, ctx, windowed: bool):
    """Check the UNet's inputs; returns t as `(b,)` or `(b, f)` and the context expanded to the batch."""
    if not torch.is_tensor(x) or x.ndim != 5:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must be a 5-D video tensor (b c f h w), got shape {shape}; "
                         "for images use x[:, :, None]")
    b, c, f, h, w = x.shape
    if c != cfg.in_channels:
        raise ValueError(f"x has {c} channels, the UNet expects in_channels={cfg.in_channels}")
    m = cfg.downsample_factor
    if h % m or w % m:
        raise ValueError(f"height and width must be multiples of {m} (the UNet downsamples "
                         f"{len(cfg.block_out_channels) - 1} times), got {h}x{w}")
    if cfg.temporal and cfg.temporal_family == "animatediff" and f > cfg.motion_max_seq_length \
            and not windowed:
        raise ValueError(f"num_frames={f} exceeds the motion module's positional table of "
                         f"{cfg.motion_max_seq_length} frames; use mode='windows' or mode='autoregressive' with "
                         f"chunk <= {cfg.motion_max_seq_length}")
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(b)
    if t.shape not in ((b,), (b, f)):
        raise ValueError(f"t must have shape (b,)=({b},) or (b, f)=({b}, {f}), got {tuple(t.shape)}")
    if ctx is None:
        raise ValueError("encoder_hidden_states is required (b, n, "
                         f"{cfg.cross_attention_dim}); pass the text encoder's states")
    if ctx.ndim == 4 and ctx.shape[0] in (1, b) and ctx.shape[1] == f and ctx.shape[-1] == cfg.cross_attention_dim:
        return t, ctx.expand(b, -1, -1, -1).reshape(b * f, *ctx.shape[2:])     # per-frame text: (b f) n d
    if ctx.ndim != 3 or ctx.shape[0] not in (1, b) or ctx.shape[-1] != cfg.cross_attention_dim:
        raise ValueError(f"encoder_hidden_states must be (b={b}, n, {cfg.cross_attention_dim}) or per frame "
                         f"(b, f={f}, n, {cfg.cross_attention_dim}), got {tuple(ctx.shape)}")
    return t, ctx.expand(b, -1, -1)


def check_extras(cfg, x: torch.Tensor, ids, indicator):
    """Check SVD's added time ids and image-only indicator against x; the indicator as x's dtype or None."""
    b, f = x.shape[0], x.shape[2]
    if cfg.added_time_ids and (ids is None or tuple(ids.shape) != (b, cfg.added_time_ids)):
        got = None if ids is None else tuple(ids.shape)
        raise ValueError(f"added_time_ids (b, {cfg.added_time_ids}) = (fps - 1, motion bucket, noise augmentation) "
                         f"is required by this UNet, got {got}")
    if not cfg.added_time_ids and ids is not None:
        raise ValueError("added_time_ids given, but this UNet has no added time embedding (added_time_ids=0)")
    if indicator is None:
        return None
    indicator = torch.as_tensor(indicator, device=x.device)
    if tuple(indicator.shape) != (b, f):
        raise ValueError(f"image_only_indicator must have shape (b, f)=({b}, {f}), got {tuple(indicator.shape)}")
    return indicator


def cond_input(cfg, cond, cond_mask, x):
    """The frame-conditioning input `[cond * mask, mask]` as `(b f) (c+1) h w`, checked."""
    b, _, f, hh, ww = x.shape
    if not cfg.frame_conditioning:
        raise ValueError("cond/cond_mask given but the UNet has frame_conditioning=False")
    if cond is None:
        raise ValueError("cond (b c f h w) is required with cond_mask")
    if cond.shape != x.shape:
        raise ValueError(f"cond must have the shape of x {tuple(x.shape)}, got {tuple(cond.shape)}")
    if cond_mask is None:
        raise ValueError("cond_mask (b, f) is required with cond")
    mask = torch.as_tensor(cond_mask, device=x.device, dtype=x.dtype)
    if mask.shape != (b, f):
        raise ValueError(f"cond_mask must have shape (b, f)=({b}, {f}), got {tuple(mask.shape)}")
    mask = mask[:, None, :, None, None].expand(b, 1, f, hh, ww)
    inp = torch.cat([cond.to(x.dtype) * mask, mask], dim=1)
    return rearrange(inp, "b c f h w -> (b f) c h w").contiguous(memory_format=torch.channels_last)
