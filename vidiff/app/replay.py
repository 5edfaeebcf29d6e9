"""Make a video again from the settings stored in it (`vidiff generate --from-settings OUT.mp4`).

Every video vidiff writes carries its settings (`io.read_settings`): the call's arguments, the seed, what loads
the pipeline (`VideoPipeline.recipe`: model path or hub id@revision, motion adapter, variant, dtype, the whole
scheduler config, LoRAs with sources and scales) and, from the command line, the command and its input files.
`apply_settings` writes them back onto parsed command-line arguments, so the same code path runs again: on the
same device and dtype the result is the same, bit for bit.
"""

from __future__ import annotations

import os

# settings key -> command-line attribute
ARGS = {"negative_prompt": "negative_prompt", "num_frames": "frames", "height": "height", "width": "width",
        "num_inference_steps": "steps", "guidance_scale": "guidance", "sampler": "sampler", "eta": "eta",
        "seed": "seed", "mode": "mode", "chunk": "chunk", "context": "context", "fps": "fps", "stride": "stride",
        "weighting": "weighting", "noise_type": "noise_type", "partitions": "partitions", "lookahead": "lookahead",
        "first_frame_first": "first_frame_first", "motion_adapter": "motion_adapter", "variant": "variant",
        "dtype": "dtype", "scheduler": "scheduler", "free_init": "free_init", "loop": "loop"}
# the control options, stored as given (paths absolute) under inputs["control"]
CONTROL = ("controlnet", "control", "control_scale", "control_start", "control_end", "sparsectrl", "keyframe",
           "ip_adapter", "image_encoder", "ip_image", "ip_scale")


def _prompt(prompt):
    """A stored prompt: text, or {frame: text} whose keys JSON turned into strings."""
    return {int(k): v for k, v in prompt.items()} if isinstance(prompt, dict) else prompt


def apply_settings(args, settings: dict | None, source: str) -> str:
    """Fill `args` from a video's stored settings; returns the command that made it (generate, extend, interpolate)."""
    if not settings or "prompt" not in settings:
        raise ValueError(f"--from-settings {source}: the file holds no vidiff settings")
    if not settings.get("model"):
        raise ValueError(f"--from-settings {source}: the settings do not name the model (made before vidiff 0.1 "
                         "stored it); pass --model and the options by hand")
    model = str(settings["model"])
    if "@" in model and not os.path.exists(model):             # hub id@revision
        model, args.revision = model.rsplit("@", 1)
    args.model = model
    for key, attr in ARGS.items():
        if key in settings and settings[key] is not None:
            setattr(args, attr, settings[key])
    if settings.get("mode") == "fifo":
        args.steps = None                                      # fifo's steps follow partitions x chunk
    args.lora = [f"{lora['source']}:{lora['scale']}" for lora in settings.get("loras") or []]
    args.prompt_at = []
    command = settings.get("command", "generate")
    inputs = settings.get("inputs") or {}
    args.prompt = _prompt(settings["prompt"])
    for key in ("image", "video", "first", "last", "resize", "strength"):
        if key in inputs:
            setattr(args, key, inputs[key])
    for key in ("image", "video", "first", "last"):
        path = inputs.get(key)
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"--from-settings {source}: its input {key} {path} does not exist any more")
    if settings.get("cache"):
        args.cache, args.cache_depth = settings["cache"]["interval"], settings["cache"]["depth"]
    for key, value in (inputs.get("control") or {}).items():
        if key in CONTROL:
            setattr(args, key, value)
    if command == "extend":
        args.frames = inputs.get("new_frames", args.frames)
    return command


def _absolute(value: str) -> str:
    """A path, or FRAME:path, made absolute."""
    at, sep, path = value.partition(":")
    if sep and at.isdigit() and not os.path.exists(value):
        return f"{at}:{os.path.abspath(path)}"
    return os.path.abspath(value) if os.path.exists(value) else value


def record_inputs(args) -> dict:
    """The input files of a command-line run (absolute paths) and how they were fitted, for the settings."""
    out = {}
    for key in ("image", "video", "first", "last"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = os.path.abspath(value)
    if out.get("image") or (out.get("video") and args.command == "generate"):
        out["resize"] = args.resize
    if getattr(args, "strength", None) is not None:
        out["strength"] = args.strength
    if args.command == "extend":
        out["new_frames"] = args.frames
    control = {}
    for key in CONTROL:
        value = getattr(args, key, None)
        if value is None or value == []:
            continue
        if key in ("controlnet", "control", "keyframe", "ip_image"):
            value = [_absolute(v) for v in value]
        elif key in ("sparsectrl", "ip_adapter", "image_encoder"):
            value = _absolute(str(value))
        control[key] = value
    if any(k in control for k in ("controlnet", "sparsectrl", "ip_adapter")):
        out["control"] = control
    return out
