"""Single-file Stable Diffusion 1.x / 2.x checkpoints (original LDM keys, as civitai ships them) <-> diffusers folders.

A checkpoint holds `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE) and `cond_stage_model.*` (CLIP
text encoder: transformers' layout for SD 1.x, OpenCLIP's for SD 2.x). The key map is built from the UNet's
shape (levels, layers per block, which levels attend), which the keys themselves give, so no config is
downloaded. `ldm_to_diffusers` renames (the tensors are not copied); `diffusers_to_ldm` is its inverse (tests
write original-layout files with it). The tokenizer is not in the file: it comes from `config=` (a diffusers
SD folder, as diffusers' `from_single_file(config=...)` takes), else from the hub cache.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

UNET, VAE, TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model."
RES = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
       ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"))
VAE_ATTN = (("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0."))
SD_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "skip_prk_steps": True,
                "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}


def _ids(keys, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def unet_layout(keys) -> dict:
    """Levels, layers per block and attention levels of an LDM UNet, read from its keys."""
    keys = [k[len(UNET):] for k in keys if k.startswith(UNET)]
    inputs = _ids(keys, r"input_blocks\.(\d+)\.")
    if not inputs:
        raise ValueError("no 'model.diffusion_model.input_blocks.*' keys: not a Stable Diffusion single-file "
                         "checkpoint (original LDM layout)")
    downs = [i for i in inputs if any(k.startswith(f"input_blocks.{i}.0.op.") for k in keys)]
    levels = len(downs) + 1
    lpb = (len(inputs) - 1 - len(downs)) // levels
    attn = [any(k.startswith(f"input_blocks.{1 + lvl * (lpb + 1)}.1.") for k in keys) for lvl in range(levels)]
    return {"levels": levels, "lpb": lpb, "attn": attn}


def unet_pairs(layout: dict) -> list[tuple[str, str]]:
    """(LDM prefix, diffusers prefix, inner renames) of the UNet's blocks."""
    n, lpb, attn = layout["levels"], layout["lpb"], layout["attn"]
    pairs = [("time_embed.0.", "time_embedding.linear_1.", ()), ("time_embed.2.", "time_embedding.linear_2.", ()),
             ("input_blocks.0.0.", "conv_in.", ()), ("out.0.", "conv_norm_out.", ()), ("out.2.", "conv_out.", ()),
             ("middle_block.0.", "mid_block.resnets.0.", RES), ("middle_block.1.", "mid_block.attentions.0.", ()),
             ("middle_block.2.", "mid_block.resnets.1.", RES)]
    for lvl in range(n):
        for j in range(lpb):
            i = 1 + lvl * (lpb + 1) + j
            pairs.append((f"input_blocks.{i}.0.", f"down_blocks.{lvl}.resnets.{j}.", RES))
            if attn[lvl]:
                pairs.append((f"input_blocks.{i}.1.", f"down_blocks.{lvl}.attentions.{j}.", ()))
        if lvl < n - 1:
            pairs.append((f"input_blocks.{1 + lvl * (lpb + 1) + lpb}.0.op.", f"down_blocks.{lvl}.downsamplers.0.conv.", ()))
    for up in range(n):
        has_attn = attn[n - 1 - up]
        for j in range(lpb + 1):
            i = up * (lpb + 1) + j
            pairs.append((f"output_blocks.{i}.0.", f"up_blocks.{up}.resnets.{j}.", RES))
            if has_attn:
                pairs.append((f"output_blocks.{i}.1.", f"up_blocks.{up}.attentions.{j}.", ()))
        if up < n - 1:
            i = up * (lpb + 1) + lpb
            pairs.append((f"output_blocks.{i}.{2 if has_attn else 1}.conv.", f"up_blocks.{up}.upsamplers.0.conv.", ()))
    return pairs


def _inner(name: str, table, reverse: bool = False) -> str:
    for a, b in table:
        a, b = (b, a) if reverse else (a, b)
        if name.startswith(a):
            return b + name[len(a):]
    return name


def vae_pairs(keys) -> list[tuple[str, str]]:
    """(LDM prefix, diffusers prefix, inner renames) of the VAE's blocks, for `n` levels of `lpb` resnets."""
    keys = [k[len(VAE):] for k in keys if k.startswith(VAE)]
    n = len(_ids(keys, r"encoder\.down\.(\d+)\."))
    lpb = len(_ids(keys, r"encoder\.down\.0\.block\.(\d+)\."))
    return vae_layout_pairs(n, lpb)


def vae_layout_pairs(n: int, lpb: int) -> list:
    """The VAE's block pairs for `n` levels of `lpb` encoder resnets."""
    short = (("nin_shortcut", "conv_shortcut"),)
    pairs = []
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.norm_out.", f"{side}.conv_norm_out.", ()),
                  (f"{side}.mid.block_1.", f"{side}.mid_block.resnets.0.", short),
                  (f"{side}.mid.block_2.", f"{side}.mid_block.resnets.1.", short),
                  (f"{side}.mid.attn_1.", f"{side}.mid_block.attentions.0.", VAE_ATTN)]
    for i in range(n):
        pairs += [(f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.", short) for j in range(lpb)]
        pairs.append((f"encoder.down.{i}.downsample.conv.", f"encoder.down_blocks.{i}.downsamplers.0.conv.", ()))
        up = n - 1 - i
        pairs += [(f"decoder.up.{i}.block.{j}.", f"decoder.up_blocks.{up}.resnets.{j}.", short) for j in range(lpb + 1)]
        pairs.append((f"decoder.up.{i}.upsample.conv.", f"decoder.up_blocks.{up}.upsamplers.0.conv.", ()))
    return pairs


def _rename(key: str, pairs, reverse: bool = False) -> str:
    for a, b, inner in pairs:
        a, b = (b, a) if reverse else (a, b)
        if key.startswith(a):
            return b + _inner(key[len(a):], inner, reverse)
    return key


def ldm_to_diffusers(sd: dict) -> dict:
    """{"unet": ..., "vae": ..., "text_encoder": ...} state dicts in diffusers / transformers names."""
    import torch

    pairs, vpairs = unet_pairs(unet_layout(sd)), vae_pairs(sd)
    out: dict = {"unet": {}, "vae": {}, "text_encoder": {}}
    openclip = any(k.startswith(TEXT + "model.") for k in sd)
    for key, v in sd.items():
        if key.startswith(UNET):
            out["unet"][_rename(key[len(UNET):], pairs)] = v
        elif key.startswith(VAE):
            name = _rename(key[len(VAE):], vpairs)
            if ".mid_block.attentions." in name and v.ndim == 4:
                v = v.flatten(1)                                    # 1x1 convs -> linear layers
            out["vae"][name] = v
        elif key.startswith(TEXT) and not openclip:
            name = key[len(TEXT):].removeprefix("transformer.")
            if name.endswith("position_ids"):
                continue
            out["text_encoder"][name if name.startswith("text_model.") else "text_model." + name] = v
    if openclip:
        out["text_encoder"] = openclip_to_transformers({k[len(TEXT + "model."):]: v for k, v in sd.items()
                                                        if k.startswith(TEXT + "model.")}, torch)
    if not out["vae"] or not out["text_encoder"]:
        raise ValueError("the checkpoint lacks its VAE (first_stage_model.*) or text encoder (cond_stage_model.*); "
                         "vidiff reads whole-model single files")
    return out


def openclip_to_transformers(sd: dict, torch) -> dict:
    """SD 2.x's OpenCLIP text tower -> transformers' CLIPTextModel names, without its last layer (SD 2 reads the
    penultimate one)."""
    layers = _ids(sd, r"transformer\.resblocks\.(\d+)\.")[:-1]
    out = {"text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
           "text_model.final_layer_norm.weight": sd["ln_final.weight"],
           "text_model.final_layer_norm.bias": sd["ln_final.bias"]}
    for i in layers:
        src, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{dst}{b}.{p}"] = sd[f"{src}{a}.{p}"]
        for p in ("weight", "bias"):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), sd[f"{src}attn.in_proj_{p}"].chunk(3)):
                out[f"{dst}self_attn.{name}.{p}"] = part
    return out


def diffusers_to_ldm(unet: dict, vae: dict, text: dict) -> dict:
    """The inverse of `ldm_to_diffusers` for SD 1.x (transformers text encoder): one original-layout state dict."""
    pairs = unet_pairs(_layout_from_diffusers(unet))
    out = {UNET + _rename(k, pairs, reverse=True): v for k, v in unet.items()}
    vpairs = vae_layout_pairs(len(_ids(vae, r"encoder\.down_blocks\.(\d+)\.")),
                              len(_ids(vae, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")))
    for k, v in vae.items():
        if ".mid_block.attentions." in k and v.ndim == 2:
            v = v[:, :, None, None]                                  # linear layers -> 1x1 convs
        out[VAE + _rename(k, vpairs, reverse=True)] = v
    out.update({TEXT + "transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
                for k, v in text.items()})
    return out


def _layout_from_diffusers(unet: dict) -> dict:
    levels = len(_ids(unet, r"down_blocks\.(\d+)\."))
    lpb = len(_ids(unet, r"down_blocks\.0\.resnets\.(\d+)\."))
    attn = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in unet) for i in range(levels)]
    return {"levels": levels, "lpb": lpb, "attn": attn}


def inferred_configs(parts: dict) -> dict:
    """Diffusers configs of UNet, VAE and text encoder read from the converted weights' shapes (SD conventions:
    8 heads per level for SD 1.x, 64-wide heads with linear projections for SD 2.x)."""
    u, v, t = parts["unet"], parts["vae"], parts["text_encoder"]
    lay = _layout_from_diffusers(u)
    widths = [u[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(lay["levels"])]
    linear = u["down_blocks.0.attentions.0.proj_in.weight"].ndim == 2 if lay["attn"][0] else False
    cross = next(w.shape[1] for k, w in u.items() if k.endswith("attn2.to_k.weight"))
    unet = {"_class_name": "UNet2DConditionModel", "in_channels": u["conv_in.weight"].shape[1],
            "out_channels": u["conv_out.weight"].shape[0], "block_out_channels": widths,
            "layers_per_block": lay["lpb"], "cross_attention_dim": cross, "use_linear_projection": linear,
            "attention_head_dim": [c // 64 for c in widths] if linear else 8, "sample_size": 96 if linear else 64,
            "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in lay["attn"]],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(lay["attn"])]}
    vn = len(_ids(v, r"encoder\.down_blocks\.(\d+)\."))
    vae = {"_class_name": "AutoencoderKL", "in_channels": v["encoder.conv_in.weight"].shape[1],
           "out_channels": v["decoder.conv_out.weight"].shape[0],
           "block_out_channels": [v[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(vn)],
           "layers_per_block": len(_ids(v, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")),
           "latent_channels": v["post_quant_conv.weight"].shape[0], "scaling_factor": 0.18215,
           "down_block_types": ["DownEncoderBlock2D"] * vn, "up_block_types": ["UpDecoderBlock2D"] * vn,
           "sample_size": 768 if linear else 512}
    hidden = t["text_model.embeddings.token_embedding.weight"].shape[1]
    text = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": hidden,
            "vocab_size": t["text_model.embeddings.token_embedding.weight"].shape[0],
            "max_position_embeddings": t["text_model.embeddings.position_embedding.weight"].shape[0],
            "num_hidden_layers": len(_ids(t, r"text_model\.encoder\.layers\.(\d+)\.")),
            "num_attention_heads": hidden // 64, "intermediate_size": t["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            "hidden_act": "gelu" if linear else "quick_gelu", "projection_dim": hidden}
    return {"unet": unet, "vae": vae, "text_encoder": text}


def convert_checkpoint(file: str | os.PathLike, out: str | os.PathLike, config: str | os.PathLike | None = None,
                       tokenizer=None) -> Path:
    """Write single-file checkpoint `file` as a diffusers `StableDiffusionPipeline` folder at `out`.

    Configs, tokenizer and scheduler come from `config` (a diffusers SD folder) when given, else from the keys
    (`inferred_configs`), `tokenizer(sd2)` (a function giving the tokenizer folder: the caller's hub lookup) and SD's
    own PNDM settings (v-prediction for SD 2.x).
    """
    import shutil

    from safetensors.torch import load_file, save_file

    raw = load_file(str(file))
    from vidiff.loaders.svd import convert_svd_checkpoint, is_gm_svd

    if is_gm_svd(raw):                                  # Stable Video Diffusion (generative-models layout)
        convert_svd_checkpoint(raw, file, out, config)
        return Path(out)
    parts = ldm_to_diffusers(raw)
    configs = inferred_configs(parts)
    sd2 = configs["unet"]["use_linear_projection"]
    scheduler = {**SD_SCHEDULER, "prediction_type": "v_prediction" if sd2 else "epsilon"}
    if config is not None:
        config = Path(config)
        for name in configs:
            configs[name] = json.loads((config / name / "config.json").read_text())
        scheduler = json.loads((config / "scheduler" / "scheduler_config.json").read_text())
    if tokenizer is None and config is None:
        raise ValueError("a single-file checkpoint carries no tokenizer; pass config=DIR, a diffusers SD folder")
    tokenizer = config / "tokenizer" if config is not None else tokenizer(sd2)
    out = Path(out)
    files = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
             "text_encoder": "model.safetensors"}
    for name, weights in parts.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        save_file({k: w.contiguous() for k, w in weights.items()}, str(out / name / files[name]),
                  metadata={"format": "pt"})
        (out / name / "config.json").write_text(json.dumps(configs[name], indent=2) + "\n")
    shutil.copytree(tokenizer, out / "tokenizer", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", scheduler["_class_name"]],
             "vidiff_source": {"single_file": str(Path(file).resolve())}}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
