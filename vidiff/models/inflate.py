"""Inflation: image UNet (vidiff or diffusers / Stable Diffusion 1.x-2.x) -> space-time UNet.

The spatial layers keep their weights; temporal layers are added with zeroed last layers, so the
result equals the image model frame by frame until it is trained. vidiff's spatial parameter names
are diffusers' UNet2DConditionModel names, so a diffusers state dict loads as it is; only the
config needs translating, and that needs no diffusers import.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path


from vidiff.models.unet import CONFIG_NAME, WEIGHTS_NAME, UNet, UNetConfig, is_temporal_key, load_weights
from vidiff.models.weights import read_safetensors

_DOWN = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
# diffusers config keys whose non-default values change the architecture in ways vidiff lacks
_MUST_BE = {
    "only_cross_attention": (False, None), "dual_cross_attention": (False, None),
    "class_embed_type": (None,), "addition_embed_type": (None,), "encoder_hid_dim": (None,),
    "time_embedding_type": ("positional", None), "resnet_time_scale_shift": ("default", "scale_shift", None),
    "time_cond_proj_dim": (None,), "conv_in_kernel": (3, None), "conv_out_kernel": (3, None),
    "center_input_sample": (False, None), "act_fn": ("silu", None), "downsample_padding": (1, None),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", None), "resnet_skip_time_act": (False, None),
    "resnet_out_scale_factor": (1.0, 1, None), "cross_attention_norm": (None,),
    "attention_type": ("default", None), "timestep_post_act": (None,), "num_class_embeds": (None,),
    "mid_block_only_cross_attention": (None, False), "time_embedding_dim": (None,),
}


def config_from_diffusers(d: dict) -> UNetConfig:
    """Translate a diffusers UNet2DConditionModel config dict into an image `UNetConfig`."""
    for key, allowed in _MUST_BE.items():
        value = d.get(key, allowed[0])
        if isinstance(value, (list, tuple)) and key == "only_cross_attention":
            value = any(value)
        if value not in allowed:
            raise ValueError(f"diffusers UNet config {key}={value!r} is not supported; allowed: {allowed}")
    down, up = list(d.get("down_block_types", [])), list(d.get("up_block_types", []))
    bad = [b for b in down if b not in _DOWN] + [b for b in up if b not in _UP]
    if bad:
        raise ValueError(f"unsupported diffusers block types {bad}; allowed: {list(_DOWN) + list(_UP)}")
    attn = tuple(_DOWN[b] for b in down)
    if tuple(_UP[b] for b in reversed(up)) != attn:
        raise ValueError(f"up_block_types {up} must mirror down_block_types {down}")
    ch = tuple(d["block_out_channels"])
    heads = d.get("num_attention_heads") or d.get("attention_head_dim", 8)  # diffusers' naming quirk
    heads = (heads,) * len(ch) if isinstance(heads, int) else tuple(heads)
    depth = d.get("transformer_layers_per_block", 1)
    if isinstance(depth, (list, tuple)):
        if len(set(depth)) != 1:
            raise ValueError(f"transformer_layers_per_block={depth} must be equal across levels")
        depth = depth[0]
    cross = d.get("cross_attention_dim", 1280)
    if isinstance(cross, (list, tuple)):
        raise ValueError(f"cross_attention_dim={cross}: per-level widths are not supported")
    lpb = d.get("layers_per_block", 2)
    if not isinstance(lpb, int):
        raise ValueError(f"layers_per_block={lpb}: per-level counts are not supported")
    return UNetConfig(
        in_channels=d.get("in_channels", 4), out_channels=d.get("out_channels", 4), block_out_channels=ch,
        layers_per_block=lpb, attention_levels=attn, mid_attention=d.get("mid_block_type", "x") is not None,
        num_heads=heads, transformer_depth=depth, cross_attention_dim=cross,
        linear_projection=bool(d.get("use_linear_projection", False)),
        norm_num_groups=d.get("norm_num_groups", 32), norm_eps=d.get("norm_eps", 1e-5),
        flip_sin_to_cos=d.get("flip_sin_to_cos", True), freq_shift=d.get("freq_shift", 0),
        dropout=d.get("dropout", 0.0), time_scale_shift=d.get("resnet_time_scale_shift") == "scale_shift",
        temporal=False)


def config_from_state_dict(sd: dict, num_heads: int | tuple | None = None) -> UNetConfig:
    """Infer an image `UNetConfig` from an SD 1.x/2.x UNet state dict in the diffusers layout.

    Head counts are not stored in weights: SD 2.x (linear projections) uses 64-wide heads, SD 1.x
    8 heads per level; pass `num_heads` for anything else.
    """
    if "conv_in.weight" not in sd:
        if any(k.startswith("model.diffusion_model.") or k.startswith("input_blocks.") for k in sd):
            raise ValueError("this is an original (LDM / CompVis) checkpoint layout; convert it to the "
                             "diffusers layout first (diffusers' convert_original_stable_diffusion_to_diffusers)")
        raise ValueError("not a UNet state dict in the diffusers layout: no 'conv_in.weight'")
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"down_blocks\.(\d+)\.", k))})
    ch = tuple(sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in levels)
    lpb = len({m.group(1) for k in sd if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))})
    attn = tuple(any(k.startswith(f"down_blocks.{i}.attentions.") for k in sd) for i in levels)
    k2 = next((k for k in sd if k.endswith("attn2.to_k.weight")), None)
    pin = next((k for k in sd if k.endswith("proj_in.weight")), None)
    linear = pin is not None and sd[pin].ndim == 2
    first = next((k.split("transformer_blocks")[0] for k in sd if "transformer_blocks" in k), "")
    depth = len({m.group(1) for k in sd if k.startswith(first) and (m := re.search(r"transformer_blocks\.(\d+)\.", k))}) or 1
    if num_heads is None:
        num_heads = tuple(max(1, c // 64) for c in ch) if linear else 8
    return UNetConfig(
        in_channels=sd["conv_in.weight"].shape[1], out_channels=sd["conv_out.weight"].shape[0],
        block_out_channels=ch, layers_per_block=lpb, attention_levels=attn,
        mid_attention=any(k.startswith("mid_block.attentions.") for k in sd), num_heads=num_heads,
        transformer_depth=depth, cross_attention_dim=sd[k2].shape[1] if k2 else 768,
        linear_projection=linear, temporal=False)


def load_image_unet(source, num_heads=None, variant: str | None = None) -> UNet:
    """Load an image UNet from a vidiff UNet, a diffusers UNet2DConditionModel, a folder or a safetensors file."""
    if isinstance(source, UNet):
        return source
    if type(source).__name__ == "UNet2DConditionModel":
        model = UNet(config_from_diffusers(dict(source.config)))
        _load_spatial(model, source.state_dict())
        return model
    config, sd = image_unet_parts(source, num_heads, variant)
    return load_weights(config, sd, what="state dict")


def image_unet_parts(source, num_heads=None, variant: str | None = None) -> tuple[UNetConfig, dict]:
    """(image UNetConfig, state dict) of a unet folder, a pipeline folder or a .safetensors file, read without
    building a model (a loader then builds one on the meta device and hands it these tensors)."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"cannot inflate a {type(source).__name__}; give a vidiff UNet, a diffusers "
                        "UNet2DConditionModel, a unet folder or a .safetensors file")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"inflate source {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: only .safetensors state dicts are read, got {path.suffix!r}")
        from safetensors.torch import load_file

        sd = load_file(str(path))
        return config_from_state_dict(sd, num_heads), sd
    if (path / "unet" / CONFIG_NAME).exists():   # a whole pipeline folder
        path = path / "unet"
    cfg_file = path / CONFIG_NAME
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path} has no {CONFIG_NAME}; expected a unet folder")
    raw = json.loads(cfg_file.read_text())
    if raw.get("_class_name") == "VidiffUNet":
        from safetensors.torch import load_file

        return UNetConfig.from_dict(raw), load_file(str(path / WEIGHTS_NAME))
    if raw.get("_class_name") != "UNet2DConditionModel":
        raise ValueError(f"{cfg_file}: _class_name={raw.get('_class_name')!r}, expected "
                         "'UNet2DConditionModel' or 'VidiffUNet'")
    return config_from_diffusers(raw), read_safetensors(path, variant)


def _load_spatial(model: UNet, sd: dict) -> None:
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:   # shape mismatches: report them as bad input, not a crash
        detail = [line.strip() for line in str(e).splitlines() if "size mismatch" in line][:2]
        raise ValueError(f"state dict does not fit the UNet config: {'; '.join(detail) or e}") from None
    missing = [k for k in missing if not is_temporal_key(k)]
    if missing or unexpected:
        raise ValueError(f"state dict does not match the UNet: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")


def inflate(source, *, frame_conditioning: bool | None = None, temporal_attention_everywhere: bool = False,
            temporal_heads: int = 8, num_heads=None, **overrides) -> UNet:
    """Return a space-time UNet equal to the image UNet `source` frame by frame at initialisation.

    `frame_conditioning=None` keeps the source's setting (an image stage may already have trained it).
    """
    image = load_image_unet(source, num_heads=num_heads)
    if image.config.temporal:
        raise ValueError("source UNet already has temporal layers (config.temporal=True)")
    if frame_conditioning is None:
        frame_conditioning = image.config.frame_conditioning
    if image.config.frame_conditioning and not frame_conditioning:
        raise ValueError("the source UNet has frame conditioning; inflate with frame_conditioning=True (or None)")
    cfg = {**asdict(image.config), "temporal": True, "frame_conditioning": frame_conditioning,
           "temporal_attention_everywhere": temporal_attention_everywhere,
           "temporal_heads": temporal_heads, **overrides}
    video = UNet(UNetConfig.from_dict(cfg))
    p = next(image.parameters())
    video.to(device=p.device, dtype=p.dtype)
    _load_spatial(video, image.state_dict())
    return video
