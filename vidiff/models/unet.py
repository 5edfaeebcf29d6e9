"""The UNet: one model for images and videos, `b c f h w` in and out.

With `temporal=False` it is an image UNet that treats every frame independently (its layout and
parameter names match diffusers' UNet2DConditionModel). With `temporal=True` a temporal family
(`vidiff/temporal.py`: vidiff, animatediff, modelscope) fills two slots in every unit, after the
ResBlock and after the spatial transformer; `vidiff.models.inflate` turns the first into the second
without changing its output, and `vidiff.loaders.convert` loads community weights into it.
"""

from __future__ import annotations


import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from vidiff.models.layers import (ATTENTION_BACKENDS, CrossContext, Downsample, GroupNorm, ResBlock, SpatialTransformer, TimestepEmbedding,
                     Upsample, resolve_backend, timestep_embedding)
from vidiff.models.checks import check_extras, check_inputs, cond_input
from vidiff.models.layout import lay_out, memory_format_of
from vidiff.models.temporal import build_stem, get_family

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


@dataclass
class UNetConfig:
    """Shape of the UNet. The YAML `model:` section mirrors these fields one to one."""

    in_channels: int = 4                      # channels of the (latent or pixel) video
    out_channels: int = 4                     # usually == in_channels
    block_out_channels: tuple = (320, 640, 1280, 1280)  # width per resolution level
    layers_per_block: int = 2                 # ResBlocks per down level (up levels get one more)
    attention_levels: tuple = (True, True, True, False)  # spatial transformer at this level?
    mid_attention: bool = True                # spatial transformer in the middle block
    num_heads: tuple = (8, 8, 8, 8)           # spatial attention heads per level
    transformer_depth: int = 1                # transformer blocks per spatial transformer
    cross_attention_dim: int = 768            # width of the text encoder states
    linear_projection: bool = False           # SD 2.x uses Linear proj_in/out, SD 1.x 1x1 convs
    norm_num_groups: int = 32                 # GroupNorm groups everywhere
    norm_eps: float = 1e-5                    # GroupNorm eps of the ResBlocks
    flip_sin_to_cos: bool = True              # timestep embedding layout (SD: True)
    freq_shift: float = 0.0                   # timestep embedding frequency shift (SD: 0)
    dropout: float = 0.0
    time_scale_shift: bool = False            # ResBlocks take scale and shift from the embedding after
                                              # their 2nd GroupNorm (diffusers "scale_shift"), not a bias
                                              # before it that the norm partly removes
    # --- video ---
    temporal: bool = True                     # add temporal layers (False: image UNet)
    temporal_family: str = "vidiff"           # vidiff | animatediff | modelscope | svd (vidiff/temporal.py)
    temporal_heads: int = 8                   # heads of the temporal attention (vidiff: capped by width;
                                              # animatediff: the motion modules' heads, exactly)
    temporal_layers: int = 1                  # transformer blocks per temporal transformer (community families)
    motion_max_seq_length: int = 32           # animatediff: frames in the positional table (v1: 24)
    motion_mid_block: bool = True             # animatediff: a motion module in the middle block (v2)
    motion_double_attention: bool = True      # animatediff: two self-attentions per motion block (SparseCtrl: one)
    transformer_in_head_dim: int = 64         # modelscope: head width of transformer_in (8 heads)
    temporal_attention_everywhere: bool = False  # also temporal attention at attention-free levels
    frame_conditioning: bool = False          # extra inputs [cond * mask, mask] for i2v/continuation
    pooled_text: bool = False                 # add an MLP of the mean text state to the timestep
                                              # embedding: the prompt reaches every ResBlock
    frame_position: bool = False              # add an MLP of (frame index in the window, mean text state)
                                              # to each frame's timestep embedding: an arrow of time the
                                              # prompt can act on ("right" = left early, right late)
    added_time_ids: int = 0                   # svd: scalars (fps, motion bucket, noise augmentation) embedded and
    addition_time_embed_dim: int = 256        # added to the timestep embedding, each a sinusoid of this width
    # --- runtime (saved, but safe to change after loading) ---
    attention_backend: str = "sdpa"           # sdpa | xformers | math | auto
    gradient_checkpointing: bool = False      # recompute blocks in backward to save memory

    def __post_init__(self):
        for name in ("block_out_channels", "attention_levels", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, int) and name == "num_heads":
                value = (value,) * len(self.block_out_channels)
            setattr(self, name, tuple(value))
        n = len(self.block_out_channels)
        if len(self.attention_levels) != n or len(self.num_heads) != n:
            raise ValueError(f"attention_levels {self.attention_levels} and num_heads {self.num_heads} "
                             f"need one entry per level of block_out_channels {self.block_out_channels}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples "
                                 f"of norm_num_groups={self.norm_num_groups}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")
        get_family(self.temporal_family)

    @property
    def downsample_factor(self) -> int:
        """Height and width must be multiples of this."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Build from a dict; unknown keys are an error naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in d if k not in names and not k.startswith("_"))
        if unknown:
            raise ValueError(f"unknown UNet config keys {unknown}; allowed: {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})


class Level(nn.Module):
    """One resolution level: (ResBlock [+slot 1] [+SpatialTransformer] [+slot 2]) x n.

    The two slots hold the temporal family's layers (vidiff/temporal.py). Down levels end in a
    downsampler; up levels in an upsampler, and there the caller concatenates a skip connection
    from the down path before each ResBlock (hence the wider `cins`).
    """

    def __init__(self, cfg: UNetConfig, cins: list[int], cout: int, heads: int, attn: bool,
                 temb_dim: int, sample: str | None, eps: float | None = None):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps if eps is None else eps
        self.resnets = nn.ModuleList(
            [ResBlock(c, cout, temb_dim, g, eps, cfg.dropout, cfg.time_scale_shift) for c in cins])
        self.attentions = nn.ModuleList(
            [SpatialTransformer(cout, heads, cfg.cross_attention_dim, cfg.transformer_depth, g,
                                cfg.linear_projection, cfg.dropout) for _ in cins]) if attn else None
        self.slots = _add_slots(self, cfg, cout, heads, len(cins), len(cins) if attn else 0, eps)
        if sample == "down":
            self.downsamplers = nn.ModuleList([Downsample(cout)])
        elif sample == "up":
            self.upsamplers = nn.ModuleList([Upsample(cout)])

    def unit(self, i: int, h: torch.Tensor, temb: torch.Tensor, ctx: torch.Tensor, f: int,
             indicator: torch.Tensor | None = None) -> torch.Tensor:
        """ResBlock i of the level with the layers that follow it."""
        h = self.resnets[i](h, temb)
        return _after_resnet(self, i, h, temb, ctx, f, indicator, self.attentions is not None)


def _after_resnet(block, i, h, temb, ctx, f, indicator, attend: bool, slot2: bool = True):
    """Slot 1, the spatial transformer (if `attend`) and slot 2 (if `slot2`) of unit i of a level or the middle block."""
    conv, attn = block.slots
    attn = attn if slot2 else None
    video = block.video_model
    if not (f > 1 or video):
        conv = attn = None
    if conv:
        layer = getattr(block, conv)[i]
        h = layer(h, f, temb, indicator) if video else layer(h, f)
    if attend:
        text = ctx.text if isinstance(ctx, CrossContext) else ctx
        inner = getattr(block, attn)[i].inner(text, f, indicator) if attn and video else None
        h = block.attentions[i](h, ctx, f, inner)
    if attn and not video:
        h = getattr(block, attn)[i](h, f)
    return h


def _add_slots(module: nn.Module, cfg: UNetConfig, c: int, heads: int, n_conv: int, n_attn: int, eps: float):
    """Give `module` the family's temporal layers: `n_conv` for slot 1, `n_attn` (or one per unit
    where the family or config puts them everywhere) for slot 2. Returns the two attribute names."""
    module.video_model = False
    if not cfg.temporal:
        return None, None
    fam = get_family(cfg.temporal_family)
    module.video_model = fam.video_model
    names = [None, None]
    if fam.conv and n_conv:
        names[0] = fam.conv[0]
        setattr(module, fam.conv[0], nn.ModuleList([fam.conv[1](cfg, c, heads, eps) for _ in range(n_conv)]))
    if fam.attn and (fam.attn_everywhere or cfg.temporal_attention_everywhere):
        n_attn = max(n_attn, n_conv if isinstance(module, Level) else 1)
    if fam.attn and n_attn:
        names[1] = fam.attn[0]
        setattr(module, fam.attn[0], nn.ModuleList([fam.attn[1](cfg, c, heads, eps) for _ in range(n_attn)]))
    return tuple(names)


class MidBlock(nn.Module):
    """ResBlock [+slot 1] -> SpatialTransformer [+slot 2] -> ResBlock [+slot 1]."""

    def __init__(self, cfg: UNetConfig, temb_dim: int):
        super().__init__()
        c, g = cfg.block_out_channels[-1], cfg.norm_num_groups
        self.resnets = nn.ModuleList([ResBlock(c, c, temb_dim, g, cfg.norm_eps, cfg.dropout, cfg.time_scale_shift) for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialTransformer(
            c, cfg.num_heads[-1], cfg.cross_attention_dim, cfg.transformer_depth, g,
            cfg.linear_projection, cfg.dropout)]) if cfg.mid_attention else None
        fam = get_family(cfg.temporal_family)
        n_attn = 1 if cfg.mid_attention else 0
        if cfg.temporal_family == "animatediff" and not cfg.motion_mid_block:
            n_attn = -1                                  # v1/v3: a plain image middle block
        self.video_model = False
        self.slots = _add_slots(self, cfg, c, cfg.num_heads[-1], 2 if fam.mid_conv else 0, max(n_attn, 0),
                                cfg.norm_eps) if n_attn >= 0 else (None, None)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, ctx: torch.Tensor, f: int,
                indicator: torch.Tensor | None = None) -> torch.Tensor:
        """h: `(b f) c h w` -> same."""
        h = _after_resnet(self, 0, self.resnets[0](h, temb), temb, ctx, f, indicator, self.attentions is not None)
        return _after_resnet(self, 1, self.resnets[1](h, temb), temb, ctx, f, indicator, False, False)


class UNet(nn.Module):
    """Space-time (or image) UNet: `unet(x, t, encoder_hidden_states=ctx)` with x `b c f h w`."""

    _windowed = False          # inside `temporal_windows`: temporal attention sees windows, not the table's limit

    def __init__(self, config: UNetConfig | dict | None = None, **overrides):
        super().__init__()
        if config is None or isinstance(config, dict):
            config = UNetConfig.from_dict({**(config or {}), **overrides})
        elif overrides:
            config = UNetConfig.from_dict({**asdict(config), **overrides})
        self.config = cfg = config
        ch = cfg.block_out_channels
        temb_dim = ch[0] * 4
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        if cfg.frame_conditioning:
            # [cond * mask, mask] -> added to conv_in's output; zero so it starts as "no condition".
            self.frame_cond_in = nn.Conv2d(cfg.in_channels + 1, ch[0], 3, padding=1, bias=False)
            nn.init.zeros_(self.frame_cond_in.weight)
        stem = build_stem(cfg)
        if stem is not None:
            self.transformer_in = stem
        self.time_embedding = TimestepEmbedding(ch[0], temb_dim)
        if cfg.added_time_ids:
            self.add_embedding = TimestepEmbedding(cfg.added_time_ids * cfg.addition_time_embed_dim, temb_dim)
        # SVD hard-codes its GroupNorm eps per block type (1e-6 with attention and on the way up, else 1e-5)
        svd = (cfg.temporal and cfg.temporal_family == "svd") or None
        if cfg.pooled_text:
            self.text_embedding = TimestepEmbedding(cfg.cross_attention_dim, temb_dim)
        if cfg.frame_position:
            # zero output layer: a model that gains it (inflation, fine-tuning) starts unchanged
            self.frame_embedding = TimestepEmbedding(ch[0] + cfg.cross_attention_dim, temb_dim)
            nn.init.zeros_(self.frame_embedding.linear_2.weight)
            nn.init.zeros_(self.frame_embedding.linear_2.bias)

        self.down_blocks = nn.ModuleList()
        cprev = ch[0]
        for i, c in enumerate(ch):
            last = i == len(ch) - 1
            cins = [cprev] + [c] * (cfg.layers_per_block - 1)
            self.down_blocks.append(Level(cfg, cins, c, cfg.num_heads[i], cfg.attention_levels[i],
                                          temb_dim, None if last else "down", svd and (1e-6 if cfg.attention_levels[i] else 1e-5)))
            cprev = c

        self.mid_block = MidBlock(cfg, temb_dim)

        # Up levels, deepest first; each ResBlock takes one skip from the down path, popped in
        # reverse of the order pushed: conv_in, every down unit, every downsampler.
        skips = [ch[0]]
        for i, c in enumerate(ch):
            skips += [c] * cfg.layers_per_block + ([c] if i < len(ch) - 1 else [])
        self.up_blocks = nn.ModuleList()
        cprev = ch[-1]
        for level in reversed(range(len(ch))):
            c = ch[level]
            cins = [(cprev if j == 0 else c) + skips.pop() for j in range(cfg.layers_per_block + 1)]
            self.up_blocks.append(Level(cfg, cins, c, cfg.num_heads[level], cfg.attention_levels[level],
                                        temb_dim, "up" if level > 0 else None, svd and 1e-6))
            cprev = c

        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)
        self.set_attention_backend(cfg.attention_backend)
        lay_out(self)             # channels-last convolutions below 1024 channels (vidiff/models/layout.py)

    # ---------------------------------------------------------------------------------------
    def set_attention_backend(self, backend: str) -> None:
        """Choose sdpa / xformers / math / auto for every attention layer (checked at forward)."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
        self.config.attention_backend = backend
        self._resolved_backend = None

    def temporal_windows(self, length: int, stride: int = 4, weighting: str = "pyramid", loop: bool = False):
        """Within this block, temporal attention runs on overlapping `length`-frame windows, fused (FreeNoise).

        Everything else (ResBlocks, spatial layers, temporal convolutions) still sees all frames. With `loop` the
        windows wrap from the last frames to the first and the temporal convolutions wrap too: a looping video.
        """
        from vidiff.models.frames import windowed

        return windowed(self, length, stride, weighting, loop)

    def cross_attentions(self) -> list:
        """The text cross-attention modules in diffusers' processor order (down, up, then middle blocks): IP-Adapter
        files number their layers by this order."""
        levels = [*self.down_blocks, *self.up_blocks, self.mid_block]
        return [blk.attn2 for lv in levels for st in (lv.attentions or []) for blk in st.transformer_blocks]

    def enable_gradient_checkpointing(self, on: bool = True) -> None:
        """Recompute each block during backward instead of storing its activations."""
        self.config.gradient_checkpointing = on

    def temporal_parameters(self):
        """(name, parameter) pairs of the layers added by inflation: temporal and frame-cond."""
        return [(n, p) for n, p in self.named_parameters() if is_temporal_key(n)]

    def _apply_backend(self, device: torch.device) -> None:
        backend = resolve_backend(self.config.attention_backend, device)
        if backend != self._resolved_backend:
            for m in self.modules():
                if hasattr(m, "backend"):
                    m.backend = backend
            self._resolved_backend = backend

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, cond_mask: torch.Tensor | None = None,
                added_time_ids: torch.Tensor | None = None, image_only_indicator: torch.Tensor | None = None,
                residuals: tuple | None = None, extra_kv: dict | None = None,
                step_cache: dict | None = None) -> torch.Tensor:
        """Predict from noisy video x `b c f h w` at noise level t `(b,)` or `(b, f)`.

        `cond` (`b c f h w`) and `cond_mask` (`b f`, 1 = frame given) feed the frame-conditioning
        inputs of a model built with `frame_conditioning=True`; without them it is text-to-video.
        `added_time_ids` (`b, n`) are SVD's (fps - 1, motion bucket, noise augmentation); `image_only_indicator`
        (`b f`, 1 = an image) makes those frames the image model in the svd family (default: all video).

        The two inputs that steer a video from outside (vidiff/pipelines/control.py):
        - `residuals = (down, mid)` (ControlNet, SparseCtrl): `down` holds one `(b f) c h w` tensor per skip
          connection, in the order the down path makes them (conv_in, every down unit, every downsampler), each added
          to its skip after the whole down path; `mid` is added to the middle block's output (diffusers'
          `down_block_additional_residuals` / `mid_block_additional_residual`).
        - `extra_kv = {attention: [(k, v, scale), ...]}` (IP-Adapter): extra keys and values, already projected, that
          a cross-attention of `cross_attentions()` attends to beside the text; each result is added, times `scale`,
          before its output projection. k and v are `b n c` (shared by a sample's frames) or `(b f) n c` (per frame).

        `step_cache = {"depth": d}` (DeepCache, Ma et al. 2024): a full pass stores, under "deep", the features the
        d outermost up levels start from; a pass given "deep" runs only conv_in, the d outermost down and up levels
        and conv_out around them (the caller decides which steps refresh: `vidiff/pipelines/speed.py`).
        """
        cfg = self.config
        t, ctx = check_inputs(cfg, x, t, encoder_hidden_states, self._windowed)
        indicator = check_extras(cfg, x, added_time_ids, image_only_indicator)
        self._apply_backend(x.device)
        b, _, f, hh, ww = x.shape

        temb = timestep_embedding(t.expand(f, b).T if t.ndim == 1 else t, cfg.block_out_channels[0],
                                  cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = self.time_embedding(rearrange(temb, "b f d -> (b f) d").to(x.dtype))     # (b f) d
        if cfg.added_time_ids:
            ids = timestep_embedding(added_time_ids.reshape(-1), cfg.addition_time_embed_dim, True, 0)
            temb = temb + self.add_embedding(ids.reshape(b, -1).to(x.dtype)).repeat_interleave(f, 0)
        pooled = ctx.mean(1).to(x.dtype)
        if ctx.shape[0] != b * f or f == 1:  # one text per sample: pooled once, then to each of its frames
            pooled = pooled.repeat_interleave(f, 0)                                   # (b f) d
        if cfg.pooled_text:
            temb = temb + self.text_embedding(pooled)
        if cfg.frame_position:               # frame i of the window (0 = first; an image is frame 0), with the prompt
            pos = timestep_embedding(torch.arange(f, device=x.device), cfg.block_out_channels[0],
                                     cfg.flip_sin_to_cos, cfg.freq_shift).to(x.dtype)
            temb = temb + self.frame_embedding(torch.cat([pos.repeat(b, 1), pooled], 1))
        if extra_kv:
            ctx = CrossContext(ctx, extra_kv)

        xf = rearrange(x, "b c f h w -> (b f) c h w").contiguous(memory_format=torch.channels_last)
        if torch.is_grad_enabled() and not xf.requires_grad and not self.conv_in.weight.requires_grad \
                and any(p.requires_grad for p in self.parameters()):
            # Frozen stem, trainable layers further in (freeze_spatial): torch 2.13's CPU GroupNorm
            # backward segfaults on a channels-last input that needs no grad while its weight does.
            # Letting the input carry grad costs one conv's input gradient and avoids that path.
            xf = xf.detach().requires_grad_()
        h = self.conv_in(xf)                                                            # (b f) c h w
        if cond is not None or cond_mask is not None:
            c_in = cond_input(cfg, cond, cond_mask, x)                              # checks first
            h = h + self.frame_cond_in(c_in)
        if f > 1 and hasattr(self, "transformer_in"):
            h = self.transformer_in(h, f)

        h = self._levels(h, temb, ctx, f, indicator, residuals, step_cache)
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        return rearrange(h, "(b f) c h w -> b c f h w", b=b)

    def _levels(self, h, temb, ctx, f, indicator, residuals, step_cache):
        """The down path, middle block and up path on conv_in's output (with a step cache: only the outer levels
        on steps that reuse the deep features)."""
        run = self._runner()
        n = len(self.down_blocks)
        depth = n if step_cache is None else check_depth(step_cache.get("depth", 1), n)
        reuse = step_cache is not None and step_cache.get("deep") is not None
        skips = [h]
        for li, level in enumerate(self.down_blocks[:depth] if reuse else self.down_blocks):
            h = h.contiguous(memory_format=memory_format_of(self.config.block_out_channels[li]))
            for i in range(len(level.resnets)):
                h = run(level.unit, i, h, temb, ctx, f, indicator)
                skips.append(h)
            if hasattr(level, "downsamplers") and not (reuse and li == depth - 1):
                h = level.downsamplers[0](h)
                skips.append(h)
        if residuals is not None:
            down, mid = residuals
            if len(down) != len(skips) and not reuse:
                raise ValueError(f"residuals hold {len(down)} down tensors; this UNet has {len(skips)} skip connections")
            skips = [s + r.to(s.dtype) for s, r in zip(skips, down)]
        if not reuse:
            h = run(self.mid_block, h.contiguous(memory_format=memory_format_of(self.config.block_out_channels[-1])),
                    temb, ctx, f, indicator)
            if residuals is not None:
                h = h + mid.to(h.dtype)
        for li, level in zip(range(n - 1, -1, -1), self.up_blocks):
            if reuse and li >= depth:
                continue
            if step_cache is not None and li == depth - 1:      # the deep features: what the outer levels get
                h = step_cache["deep"] if reuse else step_cache.setdefault("deep", h)
            h = h.contiguous(memory_format=memory_format_of(self.config.block_out_channels[li]))
            for i in range(len(level.resnets)):
                h = torch.cat([h, skips.pop()], dim=1)
                h = run(level.unit, i, h, temb, ctx, f, indicator)
            if hasattr(level, "upsamplers"):
                h = level.upsamplers[0](h)
        return h

    def _runner(self):
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return lambda fn, *args: checkpoint(fn, *args, use_reentrant=False)
        return lambda fn, *args: fn(*args)

    # ---------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Write `config.json` and `diffusion_pytorch_model.safetensors` into folder `path` (atomically).

        `dtype` casts floating-point weights on the way out (e.g. float16 halves the file).
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = {"_class_name": "VidiffUNet", **asdict(self.config)}
        cast = (lambda v: v.to(dtype) if dtype is not None and v.is_floating_point() else v)   # noqa: E731
        state = {k: cast(v.detach()).contiguous().cpu() for k, v in self.state_dict().items()}
        _atomic(path / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        _atomic(path / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(cfg, indent=2) + "\n"))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, variant: str | None = None, **overrides) -> "UNet":
        """Load a folder written by `save_pretrained` (or a model folder holding `unet/`), one copy in memory."""
        from safetensors.torch import load_file

        path = Path(path)
        if (path / "unet" / CONFIG_NAME).exists():
            path = path / "unet"
        weights = path / (WEIGHTS_NAME.replace(".safetensors", f".{variant}.safetensors") if variant else WEIGHTS_NAME)
        if not (path / CONFIG_NAME).exists() or not weights.exists():
            raise FileNotFoundError(f"{path} is not a vidiff UNet folder (needs {CONFIG_NAME} and {weights.name})")
        raw = json.loads((path / CONFIG_NAME).read_text())
        if raw.get("_class_name") not in (None, "VidiffUNet"):
            raise ValueError(f"{path} holds a {raw['_class_name']}, not a vidiff UNet; "
                             "convert it with vidiff.models.inflate() or `vidiff inflate`")
        return load_weights(UNetConfig.from_dict({**raw, **overrides}), load_file(str(weights)))


def check_depth(depth, levels: int) -> int:
    """A step cache's depth: how many outer levels run on reusing steps (1 .. levels - 1)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth < levels:
        raise ValueError(f"cache depth must be an integer in 1..{levels - 1} (outer levels that run on cached "
                         f"steps; this UNet has {levels}), got {depth!r}")
    return depth


def load_weights(config: UNetConfig, sd: dict, dtype: torch.dtype = torch.float32, what: str = "weights") -> UNet:
    """A UNet of `config` holding the tensors of `sd` themselves: built on the meta device and filled with
    `load_state_dict(assign=True)`, so loading holds one copy of the weights, not a random init beside them.

    Every parameter must be in `sd`; fixed tables missing from it (AnimateDiff's `pe`) are computed.
    Floating tensors are cast to `dtype` one at a time (an fp16 file loads as float32 by default).
    """
    return fill(lambda: UNet(config), sd, dtype, what, "the UNet")


def fill(build, sd: dict, dtype: torch.dtype = torch.float32, what: str = "weights", into: str = "the model"):
    """`build()` made on the meta device and given the tensors of `sd` (cast to `dtype`); every parameter must be
    there (computed tables aside); 2-D convolutions channels-last, as the UNet lays them."""
    for k, v in sd.items():
        if v.is_floating_point() and v.dtype != dtype:
            sd[k] = v.to(dtype)
    with torch.device("meta"):
        model = build()
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:    # shape mismatches: bad input, not a crash
        detail = [line.strip() for line in str(e).splitlines() if "size mismatch" in line][:2]
        raise ValueError(f"{what} do not fit {into}: {'; '.join(detail) or e}") from None
    missing = [k for k in missing if not k.endswith(".pe")]
    if missing or unexpected:
        raise ValueError(f"{what} do not match {into}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    device = next(iter(sd.values())).device if sd else torch.device("cpu")
    for m in model.modules():
        if hasattr(m, "reset_buffers") and any(b.is_meta for b in m.buffers(recurse=False)):
            m.reset_buffers(device)
    lay_out(model)                                           # as __init__ lays them: the fast layout
    return model


def is_temporal_key(name: str) -> bool:
    """True for parameters that the image UNet does not have (temporal layers, frame-cond input)."""
    return (".temp_convs." in name or ".temp_attentions." in name or ".motion_modules." in name
            or ".temporal_res_blocks." in name or ".temporal_transformers." in name
            or name.startswith(("frame_cond_in.", "frame_embedding.", "transformer_in.")))


def _atomic(dest: Path, write) -> None:
    """Write through a temp file in the same folder, then rename over `dest`."""
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
