"""Community layouts to and from vidiff: AnimateDiff motion modules, ModelScope / Zeroscope UNets.

vidiff's parameter names are diffusers' names (spatial layers: `UNet2DConditionModel`; the
`animatediff` family: `UNetMotionModel` / `MotionAdapter`; the `modelscope` family:
`UNet3DConditionModel`), so a diffusers state dict loads as it is and conversion is a config
translation. The original AnimateDiff files use other key names (`temporal_transformer`,
`attention_blocks`, `norms`, `ff_norm`); `original_to_diffusers` renames them. No diffusers import
is needed; diffusers is the oracle in the tests. Weights are read only from safetensors.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import torch

from vidiff.models.inflate import config_from_diffusers, image_unet_parts, load_image_unet
from vidiff.models.weights import read_safetensors
from vidiff.models.unet import CONFIG_NAME, WEIGHTS_NAME, UNet, UNetConfig, _atomic
from vidiff.models.unet import load_weights

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
MOTION_DOWN = {"CrossAttnDownBlockMotion": "CrossAttnDownBlock2D", "DownBlockMotion": "DownBlock2D"}
MOTION_UP = {"CrossAttnUpBlockMotion": "CrossAttnUpBlock2D", "UpBlockMotion": "UpBlock2D"}
UNET3D_DOWN = {"CrossAttnDownBlock3D": "CrossAttnDownBlock2D", "DownBlock3D": "DownBlock2D"}
UNET3D_UP = {"CrossAttnUpBlock3D": "CrossAttnUpBlock2D", "UpBlock3D": "UpBlock2D"}


def refuse_pickle(path: str | os.PathLike) -> None:
    """ValueError for a pickle weight file: unpickling a file can run arbitrary code."""
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: {Path(path).suffix} files are pickles, and loading one can run code; vidiff "
                         "reads weights only from .safetensors (convert it once, in an environment you trust)")


def _one(value, name: str) -> int:
    """An int, or a list/tuple whose entries are all equal (vidiff keeps one value per model)."""
    if isinstance(value, (list, tuple)):
        flat = [v for x in value for v in (x if isinstance(x, (list, tuple)) else [x])]
        if len(set(flat)) != 1:
            raise ValueError(f"{name}={value}: per-level values are not supported")
        return flat[0]
    return value


def _translate_blocks(d: dict, down: dict, up: dict) -> dict:
    bad = [b for b in d.get("down_block_types", []) if b not in down] + \
          [b for b in d.get("up_block_types", []) if b not in up]
    if bad:
        raise ValueError(f"unsupported block types {bad}; allowed: {list(down) + list(up)}")
    return {**d, "down_block_types": [down[b] for b in d["down_block_types"]],
            "up_block_types": [up[b] for b in d["up_block_types"]]}


def config_from_motion_unet(d: dict) -> UNetConfig:
    """Translate a diffusers `UNetMotionModel` config into an `animatediff`-family `UNetConfig`."""
    image = config_from_diffusers(_translate_blocks(d, MOTION_DOWN, MOTION_UP))
    return UNetConfig.from_dict({
        **asdict(image), "temporal": True, "temporal_family": "animatediff",
        "temporal_heads": _one(d.get("motion_num_attention_heads", 8), "motion_num_attention_heads"),
        "temporal_layers": _one(d.get("temporal_transformer_layers_per_block", 1), "temporal_transformer_layers_per_block"),
        "motion_max_seq_length": d.get("motion_max_seq_length", 32),
        "motion_mid_block": bool(d.get("use_motion_mid_block", True))})


def config_from_unet3d(d: dict) -> UNetConfig:
    """Translate a diffusers `UNet3DConditionModel` config (ModelScope, Zeroscope) into a `modelscope` `UNetConfig`.

    diffusers' naming quirk: `attention_head_dim` is used as the head *width* there (heads = C / it).
    """
    head_dim = _one(d.get("num_attention_heads") or d.get("attention_head_dim", 64), "attention_head_dim")
    ch = tuple(d.get("block_out_channels", (320, 640, 1280, 1280)))
    translated = {**_translate_blocks(d, UNET3D_DOWN, UNET3D_UP), "num_attention_heads": None,
                  "attention_head_dim": [max(1, c // head_dim) for c in ch], "use_linear_projection": True}
    image = config_from_diffusers(translated)
    return UNetConfig.from_dict({**asdict(image), "temporal": True, "temporal_family": "modelscope",
                                 "transformer_in_head_dim": head_dim})


# ---- AnimateDiff motion adapters --------------------------------------------------------------

def original_to_diffusers(sd: dict) -> dict:
    """Rename an original-layout AnimateDiff motion module state dict to diffusers' names.

    The positional tables (`pos_encoder.pe`, one copy per attention) are dropped: they are
    fixed sinusoids, rebuilt at the length the config asks for.
    """
    return {rename_original(k): v for k, v in sd.items() if "pos_encoder" not in k}


ORIGINAL_RENAMES = ((".norms.0", ".norm1"), (".norms.1", ".norm2"), (".ff_norm", ".norm3"),
                    (".attention_blocks.0", ".attn1"), (".attention_blocks.1", ".attn2"), (".temporal_transformer", ""))


def rename_original(key: str) -> str:
    """One original AnimateDiff motion-module key in diffusers' names (also for motion LoRA keys)."""
    for a, b in ORIGINAL_RENAMES:
        key = key.replace(a, b)
    return key


def _indices(keys, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def adapter_config_from_state_dict(sd: dict, original: dict | None = None) -> dict:
    """Infer a `MotionAdapter` config from its (diffusers-layout) weights; heads are not stored (8 published)."""
    levels = _indices(sd, r"down_blocks\.(\d+)\.motion_modules\.")
    if not levels:
        raise ValueError("no motion modules found (expected keys like "
                         "'down_blocks.0.motion_modules.0.…'); is this an AnimateDiff motion module?")
    widths = [sd[f"down_blocks.{i}.motion_modules.0.proj_in.weight"].shape[0] for i in levels]
    per_block = len(_indices(sd, r"down_blocks\.0\.motion_modules\.(\d+)\."))
    depth = len(_indices(sd, r"down_blocks\.0\.motion_modules\.0\.transformer_blocks\.(\d+)\."))
    pe = next((v for k, v in {**(original or {}), **sd}.items() if k.endswith((".pe", "pos_encoder.pe"))), None)
    return {"block_out_channels": widths, "motion_layers_per_block": per_block,
            "motion_transformer_layers_per_block": depth, "motion_mid_block_layers_per_block": 1,
            "motion_transformer_layers_per_mid_block": depth, "motion_num_attention_heads": 8,
            "motion_norm_num_groups": 32, "motion_max_seq_length": int(pe.shape[1]) if pe is not None else 32,
            "use_motion_mid_block": any(k.startswith("mid_block.motion_modules.") for k in sd),
            "conv_in_channels": None}


def read_motion_adapter(path: str | os.PathLike, variant: str | None = None) -> tuple[dict, dict]:
    """(MotionAdapter config, diffusers-layout state dict) from a MotionAdapter folder or a .safetensors file.

    A file may be in the original AnimateDiff layout (v1, v2, v3, Lightning's ComfyUI file) or in
    diffusers' (Lightning's `*_diffusers.safetensors`).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"motion adapter {str(path)!r} does not exist")
    refuse_pickle(path)
    if path.is_dir():
        cfg_file = path / CONFIG_NAME
        if not cfg_file.exists():
            raise FileNotFoundError(f"motion adapter folder {str(path)!r} has no {CONFIG_NAME}")
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("_class_name") not in (None, "MotionAdapter"):
            raise ValueError(f"{cfg_file}: _class_name={cfg.get('_class_name')!r}, expected 'MotionAdapter'")
        sd = read_safetensors(path, variant)
        if cfg.get("conv_in_channels"):
            raise ValueError(f"{path}: conv_in_channels={cfg['conv_in_channels']} (PIA) is not supported")
        return cfg, sd
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a motion adapter is a MotionAdapter folder or a .safetensors file, got {path.suffix!r}")
    raw = load_file(str(path))
    raw = {k.removeprefix("module."): v for k, v in raw.items() if k != "animatediff_config"}
    original = any(".temporal_transformer." in k or ".attention_blocks." in k for k in raw)
    sd = original_to_diffusers(raw) if original else raw
    sd = {k: v for k, v in sd.items() if ".motion_modules." in k}
    return adapter_config_from_state_dict(sd, raw), sd


def adapter_overrides(adapter: dict, base: UNetConfig) -> dict:
    """UNetConfig fields that add the adapter's motion modules to `base`, after checking that they fit."""
    widths = tuple(adapter.get("block_out_channels", (320, 640, 1280, 1280)))
    if widths != tuple(base.block_out_channels):
        raise ValueError(f"motion adapter block widths {widths} do not fit the UNet's block_out_channels "
                         f"{tuple(base.block_out_channels)} (an adapter for another base model?)")
    per_block = _one(adapter.get("motion_layers_per_block", 2), "motion_layers_per_block")
    if per_block != base.layers_per_block:
        raise ValueError(f"motion adapter has {per_block} motion modules per block, the UNet "
                         f"{base.layers_per_block} layers per block")
    if adapter.get("conv_in_channels"):
        raise ValueError(f"motion adapter conv_in_channels={adapter['conv_in_channels']} (PIA) is not supported")
    if _one(adapter.get("motion_mid_block_layers_per_block", 1), "motion_mid_block_layers_per_block") != 1:
        raise ValueError("motion_mid_block_layers_per_block != 1 is not supported")
    depth = _one(adapter.get("motion_transformer_layers_per_block", 1), "motion_transformer_layers_per_block")
    if _one(adapter.get("motion_transformer_layers_per_mid_block", depth), "motion_transformer_layers_per_mid_block") != depth:
        raise ValueError("motion modules of the mid block and the levels must have the same depth")
    return {"temporal": True, "temporal_family": "animatediff", "temporal_layers": depth,
            "temporal_heads": _one(adapter.get("motion_num_attention_heads", 8), "motion_num_attention_heads"),
            "motion_max_seq_length": int(adapter.get("motion_max_seq_length", 32)),
            "motion_mid_block": bool(adapter.get("use_motion_mid_block", True))}


def with_motion_adapter(image_unet, adapter, variant: str | None = None) -> UNet:
    """An `animatediff` UNet: the spatial layers of `image_unet` (anything `inflate` reads) + an adapter.

    `adapter` is a MotionAdapter folder, a .safetensors file or a `(config, state dict)` pair. From files,
    the weights are read once and handed to a UNet built on the meta device (one copy in memory).
    """
    if isinstance(image_unet, (str, os.PathLike)):
        base_cfg, base_sd = image_unet_parts(image_unet, variant=variant)
    else:
        base = load_image_unet(image_unet)
        base_cfg, base_sd = base.config, base.state_dict()
    if base_cfg.temporal:
        raise ValueError("the base UNet already has temporal layers; give an image (Stable Diffusion) UNet")
    cfg, sd = adapter if isinstance(adapter, tuple) else read_motion_adapter(adapter, variant)
    config = UNetConfig.from_dict({**asdict(base_cfg), **adapter_overrides(cfg, base_cfg)})
    dtype = next(iter(base_sd.values())).dtype if isinstance(image_unet, UNet) else torch.float32
    return load_weights(config, {**base_sd, **sd}, dtype=dtype, what="weights")


def load_unet(folder: str | os.PathLike, motion_adapter=None, variant: str | None = None) -> UNet:
    """Any UNet folder vidiff reads: vidiff, `UNetMotionModel`, `UNet3DConditionModel`, or
    `UNet2DConditionModel` (+ `motion_adapter`, else the image model)."""
    folder = Path(folder)
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.exists():
        raise FileNotFoundError(f"UNet folder {str(folder)!r} has no {CONFIG_NAME}")
    raw = json.loads(cfg_file.read_text())
    kind = raw.get("_class_name")
    if kind == "UNet2DConditionModel":
        return with_motion_adapter(folder, motion_adapter, variant) if motion_adapter is not None \
            else load_image_unet(folder, variant=variant)
    if motion_adapter is not None:
        raise ValueError(f"motion_adapter given, but {folder} holds a {kind}, which has its own temporal layers; "
                         "an adapter goes with a Stable Diffusion (UNet2DConditionModel) UNet")
    if kind in (None, "VidiffUNet"):
        return UNet.from_pretrained(folder, variant=variant)
    translate = {"UNetMotionModel": config_from_motion_unet, "UNet3DConditionModel": config_from_unet3d}
    if kind not in translate:
        raise ValueError(f"{cfg_file}: _class_name={kind!r} is not supported; supported: VidiffUNet, "
                         "UNet2DConditionModel (+ motion adapter), UNetMotionModel, UNet3DConditionModel")
    return load_weights(translate[kind](raw), read_safetensors(folder, variant))


# ---- export ---------------------------------------------------------------------------------------

def motion_adapter_config(cfg: UNetConfig) -> dict:
    """The diffusers `MotionAdapter` config of an `animatediff` UNet's motion modules."""
    if not (cfg.temporal and cfg.temporal_family == "animatediff"):
        raise ValueError(f"only an animatediff-family UNet exports to a MotionAdapter (this one is "
                         f"{cfg.temporal_family if cfg.temporal else 'an image UNet'})")
    return {"_class_name": "MotionAdapter", "block_out_channels": list(cfg.block_out_channels),
            "motion_layers_per_block": cfg.layers_per_block, "motion_transformer_layers_per_block": cfg.temporal_layers,
            "motion_mid_block_layers_per_block": 1, "motion_transformer_layers_per_mid_block": cfg.temporal_layers,
            "motion_num_attention_heads": cfg.temporal_heads, "motion_norm_num_groups": cfg.norm_num_groups,
            "motion_max_seq_length": cfg.motion_max_seq_length, "use_motion_mid_block": cfg.motion_mid_block,
            "conv_in_channels": None}


def save_motion_adapter(unet: UNet, out: str | os.PathLike) -> Path:
    """Write the motion modules of an `animatediff` UNet as a diffusers `MotionAdapter` folder."""
    from safetensors.torch import save_file

    cfg = motion_adapter_config(unet.config)
    state = {k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items() if ".motion_modules." in k}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    _atomic(out / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(cfg, indent=2) + "\n"))
    return out


def unet3d_config(cfg: UNetConfig) -> dict:
    """The diffusers `UNet3DConditionModel` config of a `modelscope` UNet."""
    if not (cfg.temporal and cfg.temporal_family == "modelscope"):
        raise ValueError("only a modelscope-family UNet exports to a UNet3DConditionModel")
    widths = {c // h for c, h in zip(cfg.block_out_channels, cfg.num_heads)}
    if widths != {cfg.transformer_in_head_dim} or not cfg.linear_projection or cfg.time_scale_shift \
            or not cfg.mid_attention or cfg.transformer_depth != 1 or cfg.temporal_layers != 1 or cfg.frame_conditioning:
        raise ValueError("this UNet has options UNet3DConditionModel cannot express (head widths "
                         f"{sorted(widths)}, frame conditioning, depth...)")
    down = ["CrossAttnDownBlock3D" if a else "DownBlock3D" for a in cfg.attention_levels]
    up = ["CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(cfg.attention_levels)]
    return {"_class_name": "UNet3DConditionModel", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "down_block_types": down, "up_block_types": up, "block_out_channels": list(cfg.block_out_channels),
            "layers_per_block": cfg.layers_per_block, "norm_num_groups": cfg.norm_num_groups, "norm_eps": cfg.norm_eps,
            "cross_attention_dim": cfg.cross_attention_dim, "attention_head_dim": cfg.transformer_in_head_dim,
            "act_fn": "silu"}


def save_unet3d(unet: UNet, out: str | os.PathLike) -> Path:
    """Write a `modelscope` UNet as a diffusers `UNet3DConditionModel` folder."""
    from safetensors.torch import save_file

    cfg = unet3d_config(unet.config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}
    _atomic(out / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    _atomic(out / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(cfg, indent=2) + "\n"))
    return out
