"""Loading what steers a video: ControlNet and SparseCtrl folders and files, IP-Adapter files, CLIP image encoders.

- ControlNet: a diffusers `ControlNetModel` folder (`config.json` + `diffusion_pytorch_model.safetensors`), or a
  folder holding one in `controlnet/`, or a hub id.
- SparseCtrl: a diffusers `SparseControlNetModel` folder, or the original `v3_sd15_sparsectrl_{rgb,scribble}` weights
  as .safetensors (keys as the original saves them; the motion modules are renamed as AnimateDiff's are).
- IP-Adapter: the original file as .safetensors (`image_proj.*`, `ip_adapter.{id}.to_{k,v}_ip.weight`), plain or
  Plus; its image encoder a transformers `CLIPVisionModelWithProjection` folder.
Weights are read only from safetensors.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch

from vidiff.loaders.convert import MOTION_DOWN, _one, refuse_pickle, rename_original
from vidiff.models.controlnet import ControlNet
from vidiff.models.inflate import config_from_diffusers
from vidiff.models.ip_adapter import IPAdapter, ImageProjection, Resampler
from vidiff.models.unet import UNetConfig, fill

WEIGHTS = "diffusion_pytorch_model.safetensors"
UP_OF = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}


def _read(file: Path) -> dict:
    from safetensors.torch import load_file

    refuse_pickle(file)
    if file.suffix != ".safetensors":
        raise ValueError(f"{file}: weights are read from .safetensors files only")
    return load_file(str(file))


def controlnet_config(d: dict) -> tuple[UNetConfig, dict]:
    """(encoder UNetConfig, ControlNet keyword arguments) of a diffusers ControlNetModel or SparseControlNetModel config."""
    sparse = d.get("_class_name") == "SparseControlNetModel"
    down = [MOTION_DOWN.get(b, b) for b in d.get("down_block_types", ())]
    if any(b not in UP_OF for b in down):
        raise ValueError(f"unsupported ControlNet block types {d.get('down_block_types')}")
    image = config_from_diffusers({**d, "down_block_types": down, "up_block_types": [UP_OF[b] for b in reversed(down)],
                                   "mid_block_type": "UNetMidBlock2DCrossAttn"})
    widths = tuple(d.get("conditioning_embedding_out_channels") or (16, 32, 96, 256))
    kw = {"embedding_widths": widths, "global_pool": bool(d.get("global_pool_conditions", False)),
          "bgr": d.get("controlnet_conditioning_channel_order", "rgb") == "bgr"}
    if not sparse:
        return image, {**kw, "cond_channels": d.get("conditioning_channels", 3), "embedding": "full"}
    cfg = UNetConfig.from_dict({
        **asdict(image), "temporal": True, "temporal_family": "animatediff",
        "temporal_heads": _one(d.get("motion_num_attention_heads", 8), "motion_num_attention_heads"),
        "temporal_layers": _one(d.get("temporal_transformer_layers_per_block", 1), "temporal_transformer_layers_per_block"),
        "motion_max_seq_length": d.get("motion_max_seq_length", 32), "motion_mid_block": False,
        "motion_double_attention": False})
    channels = d.get("conditioning_channels", 4) + (1 if d.get("concat_conditioning_mask", True) else 0)
    return cfg, {**kw, "cond_channels": channels, "sparse": True,
                 "embedding": "simple" if d.get("use_simplified_condition_embedding", True) else "full"}


def load_controlnet(source, variant: str | None = None) -> tuple[ControlNet, str]:
    """(ControlNet or SparseCtrl net, recorded source) from a folder, a hub id or an original SparseCtrl file."""
    from vidiff.loaders.hub import resolve_model

    path, recorded = resolve_model(source, kind="ControlNet", variant=variant)
    if path.is_file():
        return sparsectrl_from_original(_read(path), path.name), recorded
    if (path / "controlnet" / "config.json").exists():
        path = path / "controlnet"
    cfg_file = path / "config.json"
    name = WEIGHTS.replace(".safetensors", f".{variant}.safetensors") if variant else WEIGHTS
    if not cfg_file.exists() or not (path / name).exists():
        raise FileNotFoundError(f"{path} is not a ControlNet folder (needs config.json and {name}), nor a .safetensors file")
    raw = json.loads(cfg_file.read_text())
    if raw.get("_class_name") not in ("ControlNetModel", "SparseControlNetModel"):
        raise ValueError(f"{path} holds a {raw.get('_class_name')}, not a ControlNetModel or SparseControlNetModel")
    cfg, kw = controlnet_config(raw)
    return fill(lambda: ControlNet(cfg, **kw), _read(path / name), what=f"{path} weights", into="the ControlNet").eval(), \
        recorded


def sparsectrl_from_original(sd: dict, what: str = "SparseCtrl file") -> ControlNet:
    """A SparseCtrl net from the original weights (RGB: one-conv condition embedding of latents + mask; scribble:
    the pixel embedding of 3 channels + mask). Heads are not stored: SD 1.5's 8 (spatial and motion) are assumed."""
    pe = [v for k, v in sd.items() if k.endswith((".pos_encoder.pe", ".pos_embed.pe"))]     # fixed tables: rebuilt
    sd = {rename_original(k.removeprefix("controlnet.")): v for k, v in sd.items()
          if not k.endswith((".pos_encoder.pe", ".pos_embed.pe"))}
    if "conv_in.weight" not in sd or "controlnet_mid_block.weight" not in sd:
        raise ValueError(f"{what}: not SparseCtrl weights (no conv_in / controlnet_mid_block keys)")
    ch = []
    i = 0
    while f"down_blocks.{i}.resnets.0.conv1.weight" in sd:
        ch.append(sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0])
        i += 1
    lpb = len({k.split(".")[3] for k in sd if k.startswith("down_blocks.0.resnets.")})
    attn = [any(k.startswith(f"down_blocks.{j}.attentions.") for k in sd) for j in range(len(ch))]
    cross = next(v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight"))
    simple = "controlnet_cond_embedding.weight" in sd
    cond = sd["controlnet_cond_embedding.weight" if simple else "controlnet_cond_embedding.conv_in.weight"].shape[1]
    widths = [sd["controlnet_cond_embedding.conv_in.weight"].shape[0]] if not simple else []
    j = 1
    while not simple and f"controlnet_cond_embedding.blocks.{j}.weight" in sd:
        widths.append(sd[f"controlnet_cond_embedding.blocks.{j}.weight"].shape[0])
        j += 2
    config = {"_class_name": "SparseControlNetModel", "block_out_channels": ch, "layers_per_block": lpb,
              "down_block_types": ["CrossAttnDownBlockMotion" if a else "DownBlockMotion" for a in attn],
              "cross_attention_dim": cross, "attention_head_dim": 8, "motion_num_attention_heads": 8,
              "norm_num_groups": math.gcd(32, *ch), "motion_max_seq_length": pe[0].shape[1] if pe else 32,
              "conditioning_channels": cond - 1, "use_simplified_condition_embedding": simple,
              "conditioning_embedding_out_channels": widths or None}
    cfg, kw = controlnet_config(config)
    return fill(lambda: ControlNet(cfg, **kw), sd, what=what, into="a SparseCtrl net").eval()


def original_sparsectrl_keys(sd: dict) -> dict:
    """diffusers SparseControlNetModel keys -> the original file's (the inverse of the renaming above)."""
    back = ((".attn1.", ".attention_blocks.0."), (".norm1.", ".norms.0."), (".norm3.", ".ff_norm."),
            (".pos_embed.", ".attention_blocks.0.pos_encoder."))
    out = {}
    for k, v in sd.items():
        if ".motion_modules." in k:
            head, tail = k.split(".motion_modules.", 1)
            n, rest = tail.split(".", 1)
            rest = "temporal_transformer." + rest
            for a, b in back:
                rest = rest.replace(a, b)
            k = f"{head}.motion_modules.{n}.{rest}"
        out[k] = v
    return out


def load_ip_adapter(file, cross_dim: int, widths: list[int]) -> IPAdapter:
    """An IP-Adapter from its .safetensors file, checked against the UNet's text width and cross-attention widths."""
    from vidiff.loaders.hub import resolve_file

    path = resolve_file(file, kind="IP-Adapter")
    sd = _read(path)
    proj = {k.removeprefix("image_proj."): v for k, v in sd.items() if k.startswith("image_proj.")}
    layers = {k.removeprefix("ip_adapter."): v for k, v in sd.items() if k.startswith("ip_adapter.")}
    if not proj or not layers:
        raise ValueError(f"{path}: not an IP-Adapter file (needs image_proj.* and ip_adapter.* keys)")
    if "proj.3.weight" in proj or any(k.startswith(("perceiver_resampler.", "norm.")) and "proj.weight" not in proj
                                       for k in proj):
        raise ValueError(f"{path}: IP-Adapter Full-face and FaceID files are not supported; plain and Plus are")
    k_ip = layers.get("1.to_k_ip.weight")
    if k_ip is None or k_ip.shape[1] != cross_dim:
        got = "no layer 1" if k_ip is None else f"text width {k_ip.shape[1]}"
        raise ValueError(f"{path}: this IP-Adapter was made for another base model ({got}); this model's "
                         f"cross-attention takes width {cross_dim}")
    n_layers = len({k.split(".")[0] for k in layers})
    if n_layers != len(widths):
        raise ValueError(f"{path}: IP-Adapter for {n_layers} cross-attention layers; this model has {len(widths)}")
    plus = "proj.weight" not in proj
    if plus:
        dim = proj["latents"].shape[2]
        heads = proj["layers.0.0.to_q.weight"].shape[0] // 64
        depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
        image = Resampler(proj["proj_in.weight"].shape[1], dim, proj["proj_out.weight"].shape[0],
                          proj["latents"].shape[1], depth, heads, proj["layers.0.1.1.weight"].shape[0] // dim)
    else:
        image = ImageProjection(proj["proj.weight"].shape[1], cross_dim, proj["proj.weight"].shape[0] // cross_dim)
    with torch.no_grad():
        adapter = IPAdapter(image, cross_dim, widths, plus)
    try:
        adapter.load_state_dict({**{f"image_proj.{k}": v for k, v in proj.items()},
                                 **{f"ip_adapter.{k}": v for k, v in layers.items()}}, strict=True)
    except RuntimeError as e:
        detail = [line.strip() for line in str(e).splitlines() if "size mismatch" in line or "Missing" in line][:2]
        raise ValueError(f"{path}: IP-Adapter weights do not fit this model: {'; '.join(detail) or e}") from None
    return adapter.eval()


def load_image_encoder(folder: str | os.PathLike):
    """(CLIPVisionModelWithProjection, CLIPImageProcessor) from a local folder (safetensors weights only); the
    processor is the folder's `preprocessor_config.json`, else CLIP's defaults."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    folder = Path(folder)
    if (folder / "image_encoder" / "config.json").exists():
        folder = folder / "image_encoder"
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"image encoder {str(folder)!r} is not a CLIP vision folder (needs config.json and "
                                "model.safetensors)")
    model = CLIPVisionModelWithProjection.from_pretrained(folder, use_safetensors=True).eval()
    proc = CLIPImageProcessor.from_pretrained(folder) if (folder / "preprocessor_config.json").exists() \
        else CLIPImageProcessor()
    return model, proc
