"""Model folders: tell a vidiff folder from the diffusers pipelines people have on disk, and load one.

| `model_index.json` `_class_name` | UNet it holds | temporal family |
|---|---|---|
| `VidiffPipeline` | `VidiffUNet` (any family) | as saved |
| `AnimateDiffPipeline` | `UNetMotionModel`, or `UNet2DConditionModel` + `motion_adapter/` | animatediff |
| `StableDiffusionPipeline` | `UNet2DConditionModel` + `motion_adapter=` (folder or .safetensors) | animatediff |
| `TextToVideoSDPipeline` | `UNet3DConditionModel` (ModelScope, Zeroscope) | modelscope |

Text encoder, tokenizer, VAE (with its scaling factor) and scheduler come from the folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vidiff.models.codec import VaeCodec, load_codec
from vidiff.loaders.convert import load_unet, refuse_pickle
from vidiff.diffusion.schedule import SAMPLER_SCHEDULERS, SCHEDULER_PRESETS, SCHEDULER_SAMPLERS, NoiseSchedule
from vidiff.models.text import TextEncoder

DIFFUSERS_PIPELINES = {          # class -> (components it needs, default guidance as diffusers has it)
    "AnimateDiffPipeline": (("unet", "text_encoder", "tokenizer", "vae", "scheduler"), 7.5),
    "StableDiffusionPipeline": (("unet", "text_encoder", "tokenizer", "vae", "scheduler"), 7.5),
    "TextToVideoSDPipeline": (("unet", "text_encoder", "tokenizer", "vae", "scheduler"), 9.0),
}


def read_index(path: str | os.PathLike) -> dict:
    """`model_index.json` of a model folder; clear errors for a missing folder or file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist")
    refuse_pickle(path)
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is a file; a model is a folder with model_index.json")
    index_file = path / "model_index.json"
    if not index_file.exists():
        raise FileNotFoundError(f"{str(path)!r} is not a model folder (no model_index.json)")
    return json.loads(index_file.read_text())


def scheduler_config(cfg: dict, override) -> dict:
    """A folder's scheduler config with `override` applied: a preset (`animatediff`), a scheduler class or
    sampler name (the class changes, the betas stay), or a dict of config keys (its `_class_name` may be either)."""
    if isinstance(override, dict):
        name = override.get("_class_name")
        base = scheduler_config(cfg, name) if name else cfg
        return {**base, **{k: v for k, v in override.items() if k != "_class_name"}}
    if override is None:
        return cfg
    if not isinstance(override, str):
        raise TypeError(f"scheduler must be a name or a dict of config keys, got {type(override).__name__}")
    if override in SCHEDULER_PRESETS:
        return {**cfg, **SCHEDULER_PRESETS[override]}
    name = SAMPLER_SCHEDULERS.get(override, override)
    if name not in SCHEDULER_SAMPLERS:
        raise ValueError(f"scheduler {override!r} is not supported; supported: {', '.join(SCHEDULER_SAMPLERS)}, the "
                         f"sampler names {', '.join(SAMPLER_SCHEDULERS)} or the presets {', '.join(SCHEDULER_PRESETS)}")
    out = {**cfg, "_class_name": name}
    if override == "dpmpp_2m_sde" or (name == "DPMSolverMultistepScheduler" and override != "dpmpp_2m"
                                      and cfg.get("algorithm_type") == "sde-dpmsolver++"):
        out["algorithm_type"] = "sde-dpmsolver++"
    elif name == "DPMSolverMultistepScheduler":
        out["algorithm_type"] = "dpmsolver++"
    if name == "PNDMScheduler":
        out["timestep_spacing"] = "leading"          # the only grid PLMS runs on
    return out


def _schedule(path: Path, override, motion_adapter=None) -> NoiseSchedule:
    file = path / "scheduler" / "scheduler_config.json"
    if not file.exists():
        raise FileNotFoundError(f"model folder {str(path)!r} has no scheduler/scheduler_config.json")
    raw = json.loads(file.read_text())
    cfg = scheduler_config(raw, override)
    if motion_adapter is not None and override is None:
        import warnings

        warnings.warn(f"sampling with the Stable Diffusion folder's own {raw.get('_class_name')} and the motion adapter; "
                      "AnimateDiff's own settings are --scheduler animatediff (scheduler='animatediff')")
    try:
        return NoiseSchedule.from_config(cfg)
    except ValueError as e:
        raise ValueError(f"{file}: {e}" + ("; pick another with scheduler='ddim' (CLI: --scheduler ddim)"
                                            if "is not supported" in str(e) else "")) from None


def folder_adapter(path: Path):
    """`path/motion_adapter` when the folder pairs an image UNet with an AnimateDiff adapter, else None."""
    cfg = path / "unet" / "config.json"
    if (path / "motion_adapter").is_dir() and cfg.exists() \
            and json.loads(cfg.read_text()).get("_class_name") == "UNet2DConditionModel":
        return path / "motion_adapter"
    return None


def load_components(path: str | os.PathLike, motion_adapter=None, scheduler=None, variant: str | None = None):
    """(unet, text encoder, schedule, codec, defaults) of a vidiff or diffusers model folder; `variant`
    ("fp16") reads each component's `*.fp16.safetensors`."""
    path = Path(path)
    index = read_index(path)
    kind = index.get("_class_name")
    if kind == "VidiffPipeline" or "vidiff" in index:
        for part in ("unet", "text_encoder", "tokenizer"):
            if not (path / part).is_dir():
                raise FileNotFoundError(f"model folder {str(path)!r} has no {part}/")
        vidiff = index.get("vidiff", {})
        unet = load_unet(path / "unet", motion_adapter, variant)
        return (unet, TextEncoder.from_pretrained(path, variant), _schedule(path, scheduler, motion_adapter),
                load_codec(vidiff.get("codec"), path, variant), vidiff.get("defaults"))
    if kind not in DIFFUSERS_PIPELINES:
        raise ValueError(f"{path}/model_index.json: _class_name={kind!r} is not supported; supported: "
                         f"VidiffPipeline, {', '.join(DIFFUSERS_PIPELINES)}")
    parts, guidance = DIFFUSERS_PIPELINES[kind]
    missing = [p for p in parts if not (path / p).is_dir()]
    if missing:
        raise FileNotFoundError(f"model folder {str(path)!r} ({kind}) has no {', '.join(m + '/' for m in missing)}")
    raw = json.loads((path / "unet" / "config.json").read_text()) if (path / "unet" / "config.json").exists() else {}
    unet = load_unet(path / "unet", motion_adapter or folder_adapter(path), variant)
    if not unet.config.temporal:
        raise ValueError(f"{path} holds an image model ({kind}); give it motion layers with "
                         "motion_adapter=PATH (CLI: --motion-adapter PATH), an AnimateDiff MotionAdapter folder "
                         "or .safetensors file")
    codec = VaeCodec.from_pretrained(path / "vae", variant=variant)
    size = int(raw.get("sample_size") or 64) * codec.factor
    max_frames = unet.config.motion_max_seq_length if unet.config.temporal_family == "animatediff" else 16
    defaults = {"height": size, "width": size, "num_frames": min(16, max_frames), "fps": 8,
                "guidance_scale": guidance}
    return (unet, TextEncoder.from_pretrained(path, variant), _schedule(path, scheduler, motion_adapter), codec,
            defaults)


def export_diffusers(pipe, out: str | os.PathLike) -> str:
    """Write a vidiff pipeline's model for diffusers: a `MotionAdapter` folder (animatediff family) or a
    whole `TextToVideoSDPipeline` folder (modelscope family). Returns what was written."""
    from vidiff.loaders.convert import save_motion_adapter, save_unet3d

    cfg = pipe.unet.config
    family = cfg.temporal_family if cfg.temporal else None
    if family == "svd":                                 # SVDPipeline writes diffusers' own layout
        pipe.save_pretrained(out)
        return "StableVideoDiffusionPipeline"
    if family == "animatediff":
        save_motion_adapter(pipe.unet, out)
        return "MotionAdapter"
    if family != "modelscope":
        raise ValueError(f"only animatediff and modelscope models export to diffusers; this one is "
                         f"{family or 'an image model'} (vidiff's own format is already a diffusers-layout folder)")
    if not isinstance(pipe.codec, VaeCodec):
        raise ValueError("a TextToVideoSDPipeline needs a VAE; this model works in pixel space")
    out = Path(out)
    save_unet3d(pipe.unet, out / "unet")
    pipe.text_encoder.save_pretrained(out)
    pipe.codec.vae.save_pretrained(out / "vae", safe_serialization=True)
    pipe.schedule.save_pretrained(out / "scheduler")
    index = {"_class_name": "TextToVideoSDPipeline", "scheduler": ["diffusers", pipe.schedule.class_name],
             "text_encoder": ["transformers", type(pipe.text_encoder.model).__name__],
             "tokenizer": ["transformers", type(pipe.text_encoder.tokenizer).__name__],
             "unet": ["diffusers", "UNet3DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return "TextToVideoSDPipeline"
