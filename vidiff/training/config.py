"""Training configs: dataclasses mirrored one to one by the YAML files in configs/.

`load_config("configs/tiny.yaml", ["train.steps=10", "lr=3e-4"])` reads the YAML, applies
`key=value` overrides (a dotted `section.key`, or a bare key when only one section has it; the value
is parsed as YAML) and rejects unknown keys with the list of allowed ones. The `model`, `schedule`
and `codec` sections are free-form here and checked by the classes they configure (UNetConfig,
NoiseSchedule, the codecs), which also reject unknown keys.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml


@dataclass
class DataConfig:
    path: str = ""                     # folder of videos/images, or a metadata.jsonl / metadata.csv
    num_frames: int = 16               # frames per training clip (the image stage uses 1)
    frame_stride: int = 1              # take every n-th source frame ...
    fps: float | None = None           # ... or sample at this frame rate (overrides frame_stride)
    height: int = 64                   # clips are resized to cover height x width, then cropped
    width: int = 64
    crop: str = "random"               # random | center
    short_videos: str = "skip"         # videos shorter than a clip: skip | loop | pad
    num_workers: int = 0               # DataLoader worker processes (decoding runs there)
    image_path: str | None = None      # joint training: where one-frame samples come from (default: path)


@dataclass
class TextConfig:
    pretrained: str | None = None      # model folder holding text_encoder/ + tokenizer/ (else built fresh)
    vocab: str = "shapes"              # fresh tokenizer's words: "shapes", or a .txt file with one word per line
    dim: int = 32                      # width of a fresh CLIP text model (= the UNet's cross_attention_dim)
    layers: int = 2
    heads: int = 2
    max_length: int = 16               # tokens per prompt


@dataclass
class TrainConfig:
    output_dir: str = "runs/tiny"      # checkpoints/, model/ (the result), log.jsonl, config.yaml
    stage: str = "video"               # image: temporal layers off, clips of 1 frame | video
    init: str | None = None            # start from this model folder (vidiff, diffusers SD, AnimateDiff or ModelScope);
                                       # the video stage inflates an image UNet (or adds motion_adapter to it)
    motion_adapter: str | None = None  # with an SD init: AnimateDiff MotionAdapter folder or .safetensors to train on
    freeze_spatial: bool = False       # train only the layers inflation added (temporal + frame-cond)
    steps: int = 1000                  # optimizer steps
    batch_size: int = 4                # clips per process per micro-step
    image_batch_size: int = 0          # joint image+video training: one-frame samples per micro-step
    grad_accum: int = 1                # micro-steps per optimizer step
    lr: float = 1.0e-4
    lr_schedule: str = "constant"      # constant | cosine (to 10% of lr), after warmup
    warmup_steps: int = 0
    weight_decay: float = 0.01
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float = 1.0         # 0 disables clipping
    mixed_precision: str = "no"        # no | bf16 | fp16 (bf16 is the fast one on CPUs with AMX)
    ema_decay: float = 0.999           # 0 disables EMA; warmed up as min(decay, (1+n)/(10+n))
    text_dropout: float = 0.1          # chance a caption is replaced by "" (classifier-free guidance)
    high_noise_fraction: float = 0.0   # chance a clip's noise level comes from the top tenth of the
                                       # schedule, where a video's layout is chosen (else uniform)
    level_band: list = field(default_factory=lambda: [400, 650])   # [lo, hi) timesteps of `level_band_fraction`
    level_band_fraction: float = 0.0   # chance a clip's (an image's) level is drawn from level_band instead: the
                                       # middle levels where a shape's place shows in x_t and its corners do not
    loss_floor: float = 0.05           # x-prediction (`sample`) loss weight 1 / (1 - a), with sqrt(1 - a)
                                       # floored here: raise it to stop the near-clean levels dominating
    cond_first: float = 0.0            # chance a clip is conditioned on its first frame (image-to-video)
    cond_prefix: float = 0.0           # ... on its first k frames, k in 1..max_prefix (continuation)
    cond_first_last: float = 0.0       # ... on its first and last frames (interpolation)
    max_prefix: int = 4
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 500        # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2          # older checkpoints are deleted
    log_every: int = 10                # steps between log lines
    log_samples: bool = False          # also log every sample key each rank read (debugging data order)
    cpu: bool = False                  # train on the CPU even where a GPU is available
    teacher: str | None = None         # distill this model folder (progressive distillation, vidiff/distill.py);
                                       # the student starts from `init` (default: the teacher)
    distill_steps: int = 0             # the student's DDIM steps N; it learns the teacher's 2N
    lora: dict | None = None           # {rank, alpha, targets: spatial | temporal | all}: train a peft LoRA on
                                       # `init` instead of the weights; the result is output_dir/lora.safetensors


@dataclass
class SampleConfig:
    """How the trained model samples by default (stored in its model_index.json as `defaults`)."""
    first_frame_first: bool = False    # text-to-video draws frame 0, then animates it (needs frame_conditioning)
    guidance_scale: float = 0.0        # 0: the pipeline's default
    num_inference_steps: int = 0       # 0: the pipeline's default
    min_frames: int = 1                # a shorter free window is drawn as the start of one this long
    cache: int = 0                     # step caching interval (DeepCache, depth 1); 0: off

    def defaults(self) -> dict:
        """The settings that differ from the pipeline's own defaults."""
        out = {"first_frame_first": True} if self.first_frame_first else {}
        if self.guidance_scale:
            out["guidance_scale"] = float(self.guidance_scale)
        if self.num_inference_steps:
            out["num_inference_steps"] = self.num_inference_steps
        if self.min_frames > 1:
            out["min_frames"] = self.min_frames
        if self.cache > 1:
            out["cache"] = {"interval": self.cache, "depth": 1}
        return out


@dataclass
class Config:
    model: dict = field(default_factory=dict)       # UNetConfig fields
    schedule: dict = field(default_factory=dict)    # NoiseSchedule fields (incl. prediction_type)
    codec: dict = field(default_factory=lambda: {"type": "pixel", "factor": 1})
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


SECTIONS = {"text": TextConfig, "data": DataConfig, "train": TrainConfig, "sample": SampleConfig}
FREE_SECTIONS = ("model", "schedule", "codec")


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def _number(value):
    """YAML 1.1 reads `1e-8` (exponent, no dot) as a string; read it as the float it is."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_number(v) for v in value]
    return value


def _check_type(key: str, value, default):
    """Reject a value whose type cannot be the field's (`steps=abc`, `lr=[1]`)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str):       # PyYAML reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        if isinstance(default, str) and isinstance(value, bool):
            value = "yes" if value else "no"     # YAML 1.1 reads a bare no/yes as a boolean
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"config key {key!r} must be a {type(default).__name__}, got {value!r}")
    return value


def _set(cfg: Config, section: str, key: str, value) -> None:
    value = _number(value)
    if section in FREE_SECTIONS:
        getattr(cfg, section)[key] = value
        return
    if section not in SECTIONS:
        raise ValueError(f"unknown config section {section!r}; sections: {', '.join(FREE_SECTIONS + tuple(SECTIONS))}")
    obj = getattr(cfg, section)
    names = [f.name for f in fields(obj)]
    head, _, sub = key.partition(".")
    if sub and head in names and isinstance(getattr(obj, head), (dict, type(None))) \
            and getattr(type(obj)(), head) is None:                      # train.lora.rank=8: one key of a mapping
        setattr(obj, head, {**(getattr(obj, head) or {}), sub: value})
        return
    if key not in names:
        raise ValueError(f"unknown config key {section}.{key}; {section} keys: {', '.join(names)}")
    setattr(obj, key, _check_type(f"{section}.{key}", value, getattr(type(obj)(), key)))


def parse_override(cfg: Config, item: str) -> None:
    """Apply one `key=value` (YAML value) to `cfg`; bare keys must belong to exactly one section."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value (e.g. train.steps=100)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ValueError(f"override {item!r}: value {raw!r} is not valid YAML") from None
    if key in FREE_SECTIONS:                 # model={...}: replace the whole section
        if not isinstance(value, dict):
            raise ValueError(f"override {key}= must be a mapping like {{a: 1}}, got {raw!r}")
        setattr(cfg, key, _number(value))
        return
    if "." in key:
        section, name = key.split(".", 1)
    else:
        owners = [s for s, cls in SECTIONS.items() if key in {f.name for f in fields(cls)}]
        if len(owners) != 1:
            why = "is in several sections" if owners else "is not a config key"
            raise ValueError(f"override {key!r} {why}; write it as section.key "
                             f"(sections: {', '.join(FREE_SECTIONS + tuple(SECTIONS))})")
        section, name = owners[0], key
    _set(cfg, section, name, value)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Read a YAML config (or start from the defaults) and apply `key=value` overrides."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"config {str(path)!r} must be a mapping of sections")
        for section, values in raw.items():
            if section in FREE_SECTIONS or section in SECTIONS:
                if not isinstance(values, dict):
                    raise ValueError(f"config section {section!r} must be a mapping, got {values!r}")
                if section in FREE_SECTIONS:
                    setattr(cfg, section, {})       # the file's section replaces the default
                for key, value in values.items():
                    _set(cfg, section, key, value)
            else:
                _set(cfg, section, "", None)         # raises: unknown section
    for item in overrides:
        parse_override(cfg, item)
    return cfg


def to_yaml(cfg: Config) -> str:
    """The config as YAML (what a run writes next to its checkpoints)."""
    return yaml.safe_dump(asdict(cfg), sort_keys=False)
