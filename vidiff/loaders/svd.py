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


def save_svd_unet(unet: UNet, out, num_frames: int = 25, dtype=None) -> None:
    """Write a vidiff svd-family UNet as a diffusers `UNetSpatioTemporalConditionModel` folder."""
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
    (out / "config.json").write_text(json.dumps(svd_unet_config(cfg, num_frames), indent=2) + "\n")
