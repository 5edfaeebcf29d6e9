"""Stable Video Diffusion weights: diffusers' `UNetSpatioTemporalConditionModel` <-> vidiff's `svd` family.

The spatial layers keep their diffusers names; the temporal halves move to vidiff's slots:

| diffusers                                                 | vidiff                                             |
|-----------------------------------------------------------|----------------------------------------------------|
| `X.resnets.i.spatial_res_block.*`                        | `X.resnets.i.*`                                    |
| `X.resnets.i.temporal_res_block.*`                       | `X.temporal_res_blocks.i.*`                        |
| `X.resnets.i.time_mixer.mix_factor`                      | `X.temporal_res_blocks.i.time_mixer.mix_factor`    |
| `X.attentions.i.{temporal_transformer_blocks,time_pos_embed,time_mixer}.*` | `X.temporal_transformers.i.*`     |

The original generative-models files (`svd.safetensors`, `svd_xt.safetensors`) use the LDM layout;
`gm_to_diffusers` renames their UNet to diffusers' names first (`vidiff.loaders.svd_single` reads the rest).
"""

from __future__ import annotations

import re
from dataclasses import asdict

from vidiff.models.unet import UNet, UNetConfig, load_weights

_TO_VIDIFF = [
    (re.compile(r"^(.*)\.resnets\.(\d+)\.spatial_res_block\.(.*)$"), r"\1.resnets.\2.\3"),
    (re.compile(r"^(.*)\.resnets\.(\d+)\.temporal_res_block\.(.*)$"), r"\1.temporal_res_blocks.\2.\3"),
    (re.compile(r"^(.*)\.resnets\.(\d+)\.time_mixer\.(.*)$"), r"\1.temporal_res_blocks.\2.time_mixer.\3"),
    (re.compile(r"^(.*)\.attentions\.(\d+)\.((?:temporal_transformer_blocks|time_pos_embed|time_mixer)\..*)$"),
     r"\1.temporal_transformers.\2.\3"),
]
_TO_DIFFUSERS = [
    (re.compile(r"^(.*)\.temporal_res_blocks\.(\d+)\.time_mixer\.(.*)$"), r"\1.resnets.\2.time_mixer.\3"),
    (re.compile(r"^(.*)\.temporal_res_blocks\.(\d+)\.(.*)$"), r"\1.resnets.\2.temporal_res_block.\3"),
    (re.compile(r"^(.*)\.temporal_transformers\.(\d+)\.(.*)$"), r"\1.attentions.\2.\3"),
    (re.compile(r"^((?:down_blocks|up_blocks)\.\d+|mid_block)\.resnets\.(\d+)\.((?!temporal_res_block|time_mixer).*)$"),
     r"\1.resnets.\2.spatial_res_block.\3"),
]


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return key


def to_vidiff(sd: dict) -> dict:
    """diffusers' SVD UNet state dict -> vidiff's names (same tensors)."""
    return {_rename(k, _TO_VIDIFF): v for k, v in sd.items()}


def to_diffusers(sd: dict) -> dict:
    """vidiff's svd-family state dict -> diffusers' `UNetSpatioTemporalConditionModel` names."""
    return {_rename(k, _TO_DIFFUSERS): v for k, v in sd.items()}


def _per_level(value, n: int, name: str) -> tuple:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
    if len(set(values)) != 1 and name != "num_attention_heads":
        raise ValueError(f"per-level {name}={list(values)} is not supported (one value for all levels)")
    return values


def config_from_svd_unet(d: dict) -> UNetConfig:
    """vidiff's config for a diffusers `UNetSpatioTemporalConditionModel` config.json."""
    if d.get("_class_name") not in (None, "UNetSpatioTemporalConditionModel"):
        raise ValueError(f"not an SVD UNet config: _class_name={d.get('_class_name')!r}")
    ch = tuple(d.get("block_out_channels", (320, 640, 1280, 1280)))
    n = len(ch)
    downs = d.get("down_block_types", ["CrossAttnDownBlockSpatioTemporal"] * (n - 1) + ["DownBlockSpatioTemporal"])
    ups = d.get("up_block_types", ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * (n - 1))
    attn = tuple(t.startswith("CrossAttn") for t in downs)
    if tuple(t.startswith("CrossAttn") for t in reversed(ups)) != attn:
        raise ValueError(f"down_block_types {downs} and up_block_types {ups} do not mirror each other")
    heads = _per_level(d.get("num_attention_heads", (5, 10, 20, 20)), n, "num_attention_heads")
    ids_dim = int(d.get("addition_time_embed_dim", 256))
    proj = int(d.get("projection_class_embeddings_input_dim", 768))
    if proj % ids_dim:
        raise ValueError(f"projection_class_embeddings_input_dim={proj} is not a multiple of "
                         f"addition_time_embed_dim={ids_dim}")
    return UNetConfig(
        in_channels=int(d.get("in_channels", 8)), out_channels=int(d.get("out_channels", 4)), block_out_channels=ch,
        layers_per_block=_per_level(d.get("layers_per_block", 2), n, "layers_per_block")[0],
        attention_levels=attn, mid_attention=True, num_heads=heads,
        transformer_depth=_per_level(d.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block")[0],
        cross_attention_dim=_per_level(d.get("cross_attention_dim", 1024), n, "cross_attention_dim")[0],
        linear_projection=True, norm_eps=1e-5, temporal=True, temporal_family="svd",
        added_time_ids=proj // ids_dim, addition_time_embed_dim=ids_dim)


def svd_unet_config(cfg: UNetConfig, num_frames: int = 25) -> dict:
    """The diffusers config.json of a vidiff svd-family UNet."""
    n = len(cfg.block_out_channels)
    return {"_class_name": "UNetSpatioTemporalConditionModel", "sample_size": None,
            "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "down_block_types": ["CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal"
                                 for a in cfg.attention_levels],
            "up_block_types": ["CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal"
                               for a in reversed(cfg.attention_levels)],
            "block_out_channels": list(cfg.block_out_channels),
            "addition_time_embed_dim": cfg.addition_time_embed_dim,
            "projection_class_embeddings_input_dim": cfg.added_time_ids * cfg.addition_time_embed_dim,
            "layers_per_block": cfg.layers_per_block, "cross_attention_dim": cfg.cross_attention_dim,
            "transformer_layers_per_block": cfg.transformer_depth, "num_attention_heads": list(cfg.num_heads)[:n],
            "num_frames": num_frames}


def load_svd_unet(folder, variant: str | None = None) -> UNet:
    """A diffusers SVD `unet/` folder as vidiff's UNet (svd family), one copy of the weights in memory."""
    import json
    from pathlib import Path

    from vidiff.models.weights import read_safetensors

    folder = Path(folder)
    cfg = config_from_svd_unet(json.loads((folder / "config.json").read_text()))
    sd = read_safetensors(folder, variant)
    return load_weights(cfg, to_vidiff(sd), what=f"{folder} (SVD UNet)")


def save_svd_unet(unet: UNet, out, num_frames: int = 25, dtype=None, base: dict | None = None) -> None:
    """Write a vidiff svd-family UNet as a diffusers `UNetSpatioTemporalConditionModel` folder; `base`, the
    config it was loaded from, is written back as it was when it describes the same model."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    cfg = unet.config
    if not (cfg.temporal and cfg.temporal_family == "svd"):
        raise ValueError(f"only svd-family UNets save as UNetSpatioTemporalConditionModel, this one is "
                         f"{cfg.temporal_family if cfg.temporal else 'an image UNet'}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cast = (lambda v: v.to(dtype) if dtype is not None and v.is_floating_point() else v)   # noqa: E731
    state = {k: cast(v.detach()).contiguous().cpu() for k, v in to_diffusers(unet.state_dict()).items()}
    save_file(state, str(out / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    same = base is not None and asdict(config_from_svd_unet(base)) == {**asdict(cfg), "attention_backend": "sdpa",
                                                                        "gradient_checkpointing": False}
    config = {**base, "num_frames": num_frames} if same else svd_unet_config(cfg, num_frames)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# ---- generative-models (LDM) layout -------------------------------------------------------------
GM_UNET = "model.diffusion_model."
_RES = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"))
_TOP = (("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
        ("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2"),
        ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out"))


def _resnet(rest: str) -> str:
    """Inside a GM video ResBlock: spatial layers, `time_stack` (temporal) and `time_mixer`."""
    part, sub = "spatial_res_block", rest
    if rest.startswith("time_stack."):
        part, sub = "temporal_res_block", rest[len("time_stack."):]
    elif rest.startswith("time_mixer."):
        return rest
    for a, b in _RES:
        if sub == a or sub.startswith(a + "."):
            return f"{part}.{b}{sub[len(a):]}"
    raise ValueError(f"unexpected ResBlock key {rest!r} in an SVD checkpoint")


def _transformer(rest: str) -> str:
    rest = re.sub(r"^time_stack\.", "temporal_transformer_blocks.", rest)
    return re.sub(r"^time_pos_embed\.([02])\.", lambda m: f"time_pos_embed.linear_{1 + int(m[1]) // 2}.", rest)


def gm_to_diffusers(sd: dict, layers_per_block: int = 2) -> dict:
    """The UNet of a generative-models SVD checkpoint (`model.diffusion_model.*`) in diffusers' names."""
    n, out = layers_per_block, {}
    for key, value in sd.items():
        if not key.startswith(GM_UNET):
            continue
        k = key[len(GM_UNET):]
        new = next((b + k[len(a):] for a, b in _TOP if k.startswith(a + ".")), None)
        m = re.match(r"^(input_blocks|output_blocks|middle_block)\.(?:(\d+)\.)?(\d+)\.(.*)$", k)
        if new is None and m is None:
            raise ValueError(f"unexpected key {key!r} in an SVD checkpoint")
        if new is None:
            kind, i, j, rest = m[1], int(m[2] or 0), int(m[3]), m[4]
            if kind == "middle_block":
                i, j = j, None
                new = f"mid_block.attentions.0.{_transformer(rest)}" if i == 1 else \
                    f"mid_block.resnets.{i // 2}.{_resnet(rest)}"
            elif kind == "input_blocks":
                b, l_ = (i - 1) // (n + 1), (i - 1) % (n + 1)
                new = (f"down_blocks.{b}.downsamplers.0.conv{rest[2:]}" if l_ == n else
                       f"down_blocks.{b}.resnets.{l_}.{_resnet(rest)}" if j == 0 else
                       f"down_blocks.{b}.attentions.{l_}.{_transformer(rest)}")
            else:
                b, l_ = i // (n + 1), i % (n + 1)
                up = rest.startswith("conv.")
                new = (f"up_blocks.{b}.upsamplers.0.{rest}" if up else
                       f"up_blocks.{b}.resnets.{l_}.{_resnet(rest)}" if j == 0 else
                       f"up_blocks.{b}.attentions.{l_}.{_transformer(rest)}")
        out[new] = value
    if not out:
        raise ValueError(f"no '{GM_UNET}*' keys: not a generative-models SVD checkpoint")
    return out


def diffusers_to_gm(sd: dict, layers_per_block: int = 2) -> dict:
    """The inverse of `gm_to_diffusers` (for writing test checkpoints): diffusers' SVD UNet in GM's names."""
    attn = {int(m[1]) for k in sd if (m := re.match(r"^up_blocks\.(\d+)\.attentions\.", k))}
    return {GM_UNET + _gm_name(k, layers_per_block, attn): v for k, v in sd.items()}


def _gm_name(key: str, n: int, attn_levels: set) -> str:
    for a, b in _TOP:
        if key.startswith(b + "."):
            return a + key[len(b):]
    res = {b: a for a, b in _RES}

    def resnet(rest):
        part, _, sub = rest.partition(".")
        if part == "time_mixer":
            return rest
        name, _, tail = sub.partition(".")
        return ("time_stack." if part == "temporal_res_block" else "") + res[name] + "." + tail

    def transformer(rest):
        rest = re.sub(r"^temporal_transformer_blocks\.", "time_stack.", rest)
        return re.sub(r"^time_pos_embed\.linear_([12])\.", lambda m: f"time_pos_embed.{2 * (int(m[1]) - 1)}.", rest)

    m = re.match(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)$", key)
    if key.startswith("mid_block."):
        m2 = re.match(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", key)
        if m2[1] == "attentions":
            return f"middle_block.1.{transformer(m2[3])}"
        return f"middle_block.{2 * int(m2[2])}.{resnet(m2[3])}"
    kind, b, what, l_, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
    if kind == "down_blocks":
        if what == "downsamplers":
            return f"input_blocks.{b * (n + 1) + n + 1}.0.op.{rest.partition('.')[2]}"
        i = b * (n + 1) + l_ + 1
        return f"input_blocks.{i}.0.{resnet(rest)}" if what == "resnets" else f"input_blocks.{i}.1.{transformer(rest)}"
    if what == "upsamplers":
        i = b * (n + 1) + n
        return f"output_blocks.{i}.{2 if b in attn_levels else 1}.{rest}"
    i = b * (n + 1) + l_
    return f"output_blocks.{i}.0.{resnet(rest)}" if what == "resnets" else f"output_blocks.{i}.1.{transformer(rest)}"


def is_gm_svd(keys) -> bool:
    """True for a generative-models checkpoint with video layers (SVD's `time_stack`)."""
    return any(k.startswith(GM_UNET) and ".time_stack." in k for k in keys)


def convert_svd_checkpoint(sd: dict, file, out, config) -> None:
    """Write generative-models SVD checkpoint `sd` (read from `file`) as a diffusers `StableVideoDiffusionPipeline`
    folder at `out`: its UNet from the file, the VAE, image encoder, scheduler and feature extractor from `config`,
    a diffusers SVD folder of the same model (SVD and SVD-XT share them)."""
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file

    if config is None or not (Path(config) / "unet" / "config.json").exists():
        raise ValueError(f"{file} is a Stable Video Diffusion checkpoint: convert it with --config DIR, a diffusers "
                         "StableVideoDiffusionPipeline folder (its VAE, image encoder and scheduler are used), "
                         "e.g. `vidiff convert svd_xt.safetensors --config SVD_FOLDER --out DIR`")
    config, out = Path(config), Path(out)
    unet_cfg = json.loads((config / "unet" / "config.json").read_text())
    lpb = unet_cfg.get("layers_per_block", 2)
    unet = gm_to_diffusers(sd, lpb[0] if isinstance(lpb, (list, tuple)) else lpb)
    (out / "unet").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in unet.items()}, str(out / "unet" / "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})
    (out / "unet" / "config.json").write_text(json.dumps(unet_cfg, indent=2) + "\n")
    for part in ("vae", "image_encoder", "scheduler", "feature_extractor"):
        if (config / part).is_dir():
            shutil.copytree(config / part, out / part, ignore=shutil.ignore_patterns("*.bin", "*.fp16.*"))
    index = json.loads((config / "model_index.json").read_text())
    index["vidiff_source"] = {"single_file": str(Path(file).resolve())}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
