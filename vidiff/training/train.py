"""Training: one function around accelerate, from an image model through inflation to a video model.

`train(load_config("configs/tiny.yaml"))` writes `output_dir/model/` (a folder that
`VideoPipeline.from_pretrained` loads), `output_dir/checkpoints/`, `output_dir/log.jsonl` and
`output_dir/config.yaml`. Running it again resumes from the last checkpoint: model, EMA,
optimizer, step, data position and RNG state, so a resumed run ends bit-identical to an
uninterrupted one. Checkpoints are safetensors + JSON (nothing is pickled) and are written to a
temp folder that is renamed into place, so a kill during a save never corrupts the last good one.

Frame conditioning is trained with random masks: per clip, no frame (text-to-video), the first
frame (image-to-video), the first k frames (continuation) or the first and last (interpolation).
Given frames sit at noise level 0 and are left out of the loss, exactly as the sampler treats them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from vidiff.models.codec import load_codec
from vidiff.training.config import Config, to_yaml
from vidiff.loaders.convert import load_unet
from vidiff.data.clips import ClipDataset, loader
from vidiff.loaders.folders import folder_adapter
from vidiff.models.inflate import inflate, load_image_unet
from vidiff.diffusion.edm import EDMSchedule
from vidiff.diffusion.schedule import NoiseSchedule, per_frame
from vidiff.training.svd_train import SVDObjective, is_svd_init, save_svd_result, svd_batch, svd_models
from vidiff.models.text import TextEncoder
from vidiff.models.unet import UNet, is_temporal_key
from vidiff.training.checkpoints import (make_ema, resume, save_checkpoint, save_tensors,
                                         truncate_log, update_ema)

STAGES = ("image", "video")
PRECISIONS = ("no", "bf16", "fp16")


# ---- building the models ---------------------------------------------------------------------
def _vocab(name: str) -> list[str]:
    if name == "shapes":
        from vidiff.data.shapes import VOCAB

        return list(VOCAB)
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"text.vocab must be 'shapes' or a word-list file, got {name!r}")
    return path.read_text().split()


def build_models(cfg: Config):
    """(unet, text encoder, schedule, codec) for a run: fresh from the config or from `train.init`."""
    t = cfg.train
    names = {f.name for f in fields(NoiseSchedule)}
    unknown = set(cfg.schedule) - names
    if unknown:
        raise ValueError(f"unknown schedule keys {sorted(unknown)}; allowed: {sorted(names)}")
    init = Path(t.init) if t.init else Path(t.teacher) if t.teacher else None
    if init is not None and not init.is_dir():
        raise FileNotFoundError(f"train.init {str(init)!r} is not a model folder")
    torch.manual_seed(t.seed)            # fresh layers start the same for the same seed
    if is_svd_init(init):                # Stable Video Diffusion: its own conditioning and loss (svd_train.py)
        if cfg.model or cfg.schedule or t.teacher or t.image_batch_size or t.stage != "video":
            raise ValueError("an SVD train.init takes no model:/schedule: overrides, teacher, image batches or "
                             "image stage (it fine-tunes the SVD model as it is)")
        unet, cond, schedule, codec = svd_models(init)
        if t.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        return unet, cond, schedule, codec

    if cfg.text.pretrained or init is not None:
        text = TextEncoder.from_pretrained(cfg.text.pretrained or init)
    else:
        c = cfg.text
        text = TextEncoder.build(_vocab(c.vocab), c.dim, c.layers, c.heads, c.max_length, seed=t.seed)
    sched_cfg = {}
    if init is not None and (init / "scheduler").is_dir():
        sched_cfg = json.loads((init / "scheduler" / "scheduler_config.json").read_text())
    schedule = NoiseSchedule.for_training({**sched_cfg, **cfg.schedule})
    if init is not None:
        index = init / "model_index.json"
        stored = json.loads(index.read_text()).get("vidiff", {}).get("codec") if index.exists() else None
        codec = load_codec(stored if stored is not None else (None if (init / "vae").is_dir() else cfg.codec), init)
    else:
        codec = load_codec(cfg.codec)

    if init is None:
        unet = UNet({"in_channels": codec.channels, "out_channels": codec.channels,
                     "cross_attention_dim": text.dim, **cfg.model, "temporal": t.stage == "video"})
    else:
        unet = _init_unet(init, t.motion_adapter)
        if t.stage == "video" and not unet.config.temporal:
            m = dict(cfg.model)
            unet = inflate(unet, frame_conditioning=m.pop("frame_conditioning", None),
                           temporal_attention_everywhere=m.pop("temporal_attention_everywhere", False),
                           temporal_heads=m.pop("temporal_heads", 8), **m)
        elif cfg.model:
            unet = _with_overrides(unet, cfg.model)
    if unet.config.in_channels != codec.channels:
        raise ValueError(f"the UNet takes {unet.config.in_channels} channels, the codec gives {codec.channels}")
    if unet.config.cross_attention_dim != text.dim:
        raise ValueError(f"the UNet's cross_attention_dim is {unet.config.cross_attention_dim}, "
                         f"the text encoder gives {text.dim}")
    return unet, text, schedule, codec


def _init_unet(init: Path, motion_adapter) -> UNet:
    """The UNet of `train.init`: a vidiff or SD folder, an SD folder + AnimateDiff adapter, an
    AnimateDiff or ModelScope pipeline folder (their temporal layers come along)."""
    if motion_adapter is not None and not Path(motion_adapter).exists():
        raise FileNotFoundError(f"train.motion_adapter {motion_adapter!r} does not exist")
    adapter = motion_adapter or folder_adapter(init)
    cfg = init / "unet" / "config.json"
    kind = json.loads(cfg.read_text()).get("_class_name") if cfg.exists() else None
    if adapter is not None or kind in ("UNetMotionModel", "UNet3DConditionModel"):
        return load_unet(init / "unet", adapter)
    return load_image_unet(init)


def _with_overrides(unet: UNet, overrides: dict) -> UNet:
    """Rebuild `unet` with config overrides that keep its weights (e.g. attention backend)."""
    new = UNet(asdict(unet.config), **overrides)
    try:
        missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    except RuntimeError as e:
        raise ValueError(f"model overrides {overrides} do not fit train.init's weights: "
                         f"{str(e).splitlines()[0]}") from None
    # layers that an override adds (frame_position, temporal layers) start as identities; any
    # other mismatch means the overrides change the shape of what was trained
    bad = [k for k in missing if not is_temporal_key(k)] + list(unexpected)
    if bad:
        raise ValueError(f"model overrides {overrides} do not fit train.init's weights: {bad[0]!r} "
                         f"{'is missing' if bad[0] in missing else 'is not used'}")
    return new


def _check_size(cfg: Config, codec_factor: int, unet_factor: int) -> None:
    """data.height / data.width must survive the codec and the UNet's downsampling: say so in pixels."""
    m = codec_factor * unet_factor
    for name in ("height", "width"):
        v = getattr(cfg.data, name)
        if v < m or v % m:
            raise ValueError(f"data.{name}={v} must be a multiple of {m} pixels (codec factor {codec_factor} "
                             f"x UNet downsampling {unet_factor}); e.g. {max(m, v // m * m)}")


def check(cfg: Config) -> None:
    """Reject bad training settings before any work, one line naming the value."""
    t, d = cfg.train, cfg.data
    if t.stage not in STAGES:
        raise ValueError(f"train.stage must be one of {STAGES}, got {t.stage!r}")
    if t.mixed_precision not in PRECISIONS:
        raise ValueError(f"train.mixed_precision must be one of {PRECISIONS}, got {t.mixed_precision!r}")
    if t.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {t.lr_schedule!r}")
    for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every"):
        if getattr(t, name) < 1:
            raise ValueError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    for name in ("text_dropout", "high_noise_fraction", "level_band_fraction", "cond_first", "cond_prefix",
                 "cond_first_last", "ema_decay"):
        if not 0 <= getattr(t, name) <= 1:
            raise ValueError(f"train.{name} must be in [0, 1], got {getattr(t, name)}")
    band = list(t.level_band) if isinstance(t.level_band, (list, tuple)) else None
    if band is None or len(band) != 2 or not all(isinstance(v, int) for v in band) or not 0 <= band[0] < band[1]:
        raise ValueError(f"train.level_band must be [lo, hi] whole timesteps with 0 <= lo < hi, got {t.level_band}")
    if not 0 < t.loss_floor <= 1:
        raise ValueError(f"train.loss_floor must be in (0, 1], got {t.loss_floor}")
    if t.cond_first + t.cond_prefix + t.cond_first_last > 1:
        raise ValueError("train.cond_first + cond_prefix + cond_first_last must be <= 1")
    smp = cfg.sample
    if smp.first_frame_first and (t.stage == "image" or cfg.model.get("frame_conditioning") is False):
        raise ValueError("sample.first_frame_first needs a video model with frame_conditioning")
    for name, lo in (("guidance_scale", 0), ("num_inference_steps", 0), ("min_frames", 1)):
        if getattr(smp, name) < lo:
            raise ValueError(f"sample.{name} must be >= {lo}, got {getattr(smp, name)}")
    if smp.min_frames > d.num_frames:
        raise ValueError(f"sample.min_frames must be <= data.num_frames ({d.num_frames}, the window the model "
                         f"learns), got {smp.min_frames}")
    if t.image_batch_size < 0:
        raise ValueError(f"train.image_batch_size must be >= 0, got {t.image_batch_size}")
    if not d.path:
        raise ValueError("data.path is required (a folder of clips or a metadata file)")
    if t.lora is not None:
        from vidiff.loaders.lora import TARGETS

        if not isinstance(t.lora, dict) or set(t.lora) - {"rank", "alpha", "targets"}:
            raise ValueError(f"train.lora must be a mapping of rank, alpha, targets, got {t.lora!r}")
        rank, alpha = t.lora.get("rank", 8), t.lora.get("alpha")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"train.lora.rank must be an integer >= 1, got {rank!r}")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0):
            raise ValueError(f"train.lora.alpha must be a number > 0, got {alpha!r}")
        if t.lora.get("targets", "all") not in TARGETS:
            raise ValueError(f"train.lora.targets must be one of {TARGETS}, got {t.lora.get('targets')!r}")
        if t.init is None or t.teacher is not None:
            raise ValueError("train.lora adapts a trained model: set train.init (and no train.teacher)")
    if t.teacher is not None:
        if not Path(t.teacher).is_dir():
            raise ValueError(f"train.teacher {t.teacher!r} is not a model folder")
        if t.distill_steps < 1:
            raise ValueError(f"train.distill_steps must be >= 1 with a teacher, got {t.distill_steps}")
        if t.stage != "video" or t.image_batch_size:
            raise ValueError("distillation runs with train.stage=video and train.image_batch_size=0")


# ---- the loss ----------------------------------------------------------------------------------
class Objective(nn.Module):
    """The diffusion loss as one module, so DDP sees a single forward for video and image batches.

    All randomness (t, noise, masks) comes in as arguments: the caller draws it from its generator.
    """

    def __init__(self, unet: UNet, schedule: NoiseSchedule, loss_floor: float = 0.05):
        super().__init__()
        self.unet, self.schedule, self.loss_floor = unet, schedule, loss_floor

    def loss(self, x0, ctx, t, noise, mask):
        """Mean squared error of the prediction on the frames that are not given (mask 0)."""
        x_t = self.schedule.add_noise(x0, noise, t)
        x_t = torch.where(per_frame(mask, x0) > 0, x0, x_t)           # given frames are clean ...
        t = torch.where(mask > 0, torch.zeros_like(t), t)              # ... at level 0
        kw = {"cond": x0, "cond_mask": mask} if self.unet.config.frame_conditioning else {}
        pred = self.unet(x_t, t, ctx, **kw)
        err = F.mse_loss(pred.float(), self.schedule.target(x0, noise, t).float(), reduction="none")
        weight = per_frame(1 - mask, err).expand_as(err)
        level = self.schedule.loss_weight(t, err, floor=self.loss_floor)
        scaled = err if level is None else err * level
        return (scaled * weight).sum() / weight.sum().clamp(min=1)

    def forward(self, video: tuple, images: tuple | None = None) -> torch.Tensor:
        """Loss of a video batch, plus an image batch (one-frame clips) weighted by sample count."""
        loss = self.loss(*video)
        if images is None:
            return loss
        nv, ni = video[0].shape[0], images[0].shape[0]
        return (loss * nv + self.loss(*images) * ni) / (nv + ni)


def draw(x0: torch.Tensor, cfg: Config, schedule: NoiseSchedule, g: torch.Generator, video: bool):
    """Draw t `(b, f)`, noise, frame-conditioning mask `(b, f)` and text-dropout flags for a batch."""
    t_cfg = cfg.train
    b, _, f = x0.shape[:3]
    drop = torch.rand(b, generator=g) < t_cfg.text_dropout
    T = schedule.num_train_timesteps
    shape = (b, 1) if video else (b, f)            # a video's frames share one level; images have one each
    t = torch.randint(0, T, shape, generator=g).expand(b, f)
    # some clips (or images) from the top tenth, where a video's layout is chosen, and from the middle band,
    # where an object's place shows in x_t and only the caption can decide its details
    for (lo, hi), share in (((T - T // 10, T), t_cfg.high_noise_fraction),
                            ((t_cfg.level_band[0], min(t_cfg.level_band[1], T)), t_cfg.level_band_fraction)):
        if share > 0:
            levels = torch.randint(lo, max(hi, lo + 1), shape, generator=g).expand(b, f)
            t = torch.where(torch.rand(shape, generator=g) < share, levels, t)
    noise = torch.randn(x0.shape, generator=g)
    mask = torch.zeros(b, f)
    u = torch.rand(b, generator=g)
    k = torch.randint(1, max(2, min(t_cfg.max_prefix, f - 1) + 1), (b,), generator=g)
    if video and f > 1:
        p1, p2, p3 = t_cfg.cond_first, t_cfg.cond_prefix, t_cfg.cond_first_last
        for i in range(b):
            if u[i] < p1:
                mask[i, 0] = 1
            elif u[i] < p1 + p2:
                mask[i, :k[i]] = 1
            elif u[i] < p1 + p2 + p3:
                mask[i, [0, -1]] = 1
    return t.contiguous(), noise, mask, drop


# ---- checkpoints ---------------------------------------------------------------------------------
def lr_at(step: int, cfg) -> float:
    """Learning rate at optimizer step `step`: linear warmup, then constant or cosine to 10%."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "constant":
        return cfg.lr * warm
    progress = max(0, step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _batches(dl, device, codec):
    """Endless (latents, captions, keys, skipped) from a DataLoader."""
    for batch in dl:
        with torch.no_grad():
            x0 = codec.encode(batch["video"].to(device))
        yield x0, batch["caption"], batch["key"], batch["skipped"]


def _log_line(accelerator, step: int, t, loss_sum: float, n: int, skipped: int, per_step: int, seconds: float,
              samples: int) -> dict:
    """One log.jsonl line for the steps since the last: mean loss over every process, throughput, skipped files."""
    world = accelerator.num_processes
    stats = torch.tensor([loss_sum, n, skipped], device=accelerator.device, dtype=torch.float64)
    stats = accelerator.reduce(stats, "sum") if world > 1 else stats
    return {"step": step, "loss": float(stats[0] / stats[1]), "lr": lr_at(step - 1, t),
            "clips_per_s": n / t.grad_accum * per_step / seconds,
            "skipped_files": int(stats[2] / world) if world > 1 else skipped, "samples": samples}


def _set_trainable(unet: UNet, t) -> list:
    """Decide what learns (a LoRA only, the temporal layers only, or everything); returns the (name, param) pairs."""
    if t.lora is not None:                   # only the adapter learns; the base weights stay as they are
        from vidiff.loaders.lora import add_trainable, target_layers

        add_trainable(unet, target_layers(unet, t.lora.get("targets", "all"), is_temporal_key),
                      t.lora.get("rank", 8), t.lora.get("alpha"), seed=t.seed)
    elif t.freeze_spatial:
        if not unet.config.temporal:
            raise ValueError("train.freeze_spatial needs temporal layers (stage: video)")
        for name, p in unet.named_parameters():
            p.requires_grad_(is_temporal_key(name))
    return [(n, p) for n, p in unet.named_parameters() if p.requires_grad]


def _save_result(cfg: Config, net: UNet, ema: dict, text, schedule, codec, dest: Path) -> None:
    """The run's result with the EMA weights: a LoRA file, or a model folder (a distilled student samples with
    DDIM in its N steps, keeping the teacher's other defaults)."""
    from vidiff.pipelines.pipeline import VideoPipeline       # same tier: it writes the result folder

    t, d = cfg.train, cfg.data
    if t.lora is not None:
        _save_lora(net, ema, dest, cfg)
        return
    final = UNet(net.config)
    final.load_state_dict({**net.state_dict(), **ema})
    final.config.gradient_checkpointing = False
    defaults = {"height": d.height, "width": d.width, "num_frames": d.num_frames, "fps": d.fps or 8,
                **cfg.sample.defaults()}
    if t.teacher:
        from vidiff.loaders.folders import load_components

        defaults = {**load_components(t.teacher)[4], **defaults, "num_inference_steps": t.distill_steps}
        schedule = NoiseSchedule.from_config({**schedule.to_config(), "_class_name": "DDIMScheduler"})
    VideoPipeline(final, text, schedule, codec, defaults).save_pretrained(dest)


def _save_lora(net, ema: dict, path: Path, cfg: Config) -> None:
    """The trained adapter (EMA weights) in diffusers' layout, written atomically, with what it was trained on."""
    from vidiff.loaders.lora import export_state

    meta = {"base": cfg.train.init, "rank": cfg.train.lora.get("rank", 8),
            "alpha": cfg.train.lora.get("alpha") or cfg.train.lora.get("rank", 8),
            "targets": cfg.train.lora.get("targets", "all"), "steps": cfg.train.steps}
    tmp = path.with_name(f".{path.name}.tmp")
    save_tensors(export_state(net, "unet", values=ema), tmp, {"vidiff_lora": meta})
    os.replace(tmp, path)


def _accelerator(t):
    """The run's Accelerator, checked to span the processes it was launched as."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one global state per process; a second train() in the same process (tests,
    # notebooks) may use another precision. The distributed part (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    # Launched as N processes on a machine without a GPU, accelerate only joins them into one
    # (gloo) run when told cpu=True; otherwise it would run N unconnected copies into one folder.
    accelerator = Accelerator(mixed_precision=t.mixed_precision,
                              cpu=t.cpu or (launched > 1 and not torch.cuda.is_available()))
    if accelerator.num_processes != launched:
        raise RuntimeError(f"launched as {launched} processes but accelerate set up {accelerator.num_processes}")
    return accelerator


def _objective(t, unet: UNet, schedule: NoiseSchedule, device):
    """What a step minimises: the denoising loss, or (with `train.teacher`) distillation from the teacher."""
    if not t.teacher:
        return Objective(unet, schedule, t.loss_floor)
    from vidiff.training.distill import DistillObjective
    from vidiff.loaders.folders import load_components

    teacher = load_components(t.teacher)[0].to(device)
    return DistillObjective(unet, teacher, schedule, t.distill_steps)


def _next_batch(batches, images, cfg: Config, schedule: NoiseSchedule, g: torch.Generator, encode, device):
    """(video batch, image batch or None, sample keys, unreadable files) of one micro-step, levels and noise drawn
    with `g` (in the same order every run, so a resume is bit-exact)."""
    t = cfg.train
    x0, captions, keys, bad = next(batches)
    tt, noise, mask, drop = draw(x0, cfg, schedule, g, t.stage == "video")
    if t.teacher:          # distillation: a step of the student's grid per clip, not a level
        tt = torch.randint(0, t.distill_steps, (tt.shape[0], 1), generator=g).expand_as(tt).contiguous()
    vid = (x0, encode(captions, drop), tt.to(device), noise.to(device), mask.to(device))
    img = None
    if images is not None:
        i0, icap, ikeys, ibad = next(images)
        it, inoise, imask, idrop = draw(i0, cfg, schedule, g, False)
        img = (i0, encode(icap, idrop), it.to(device), inoise.to(device), imask.to(device))
        bad, keys = bad + ibad, keys + ikeys
    return vid, img, keys, bad


def train(cfg: Config, progress: bool = True) -> dict:
    """Train as `cfg` says (resuming when `output_dir` holds a checkpoint); returns a summary dict."""
    from tqdm.auto import tqdm

    check(cfg)
    t = cfg.train
    accelerator = _accelerator(t)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    out = Path(t.output_dir)
    ckpt_dir = out / "checkpoints"

    unet, text, schedule, codec = build_models(cfg)
    _check_size(cfg, codec.factor, unet.config.downsample_factor)      # before anything is written
    if t.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = _set_trainable(unet, t)
    text.to(device)
    codec.to(device)

    d = cfg.data
    ds = ClipDataset(d.path, num_frames=d.num_frames, frame_stride=d.frame_stride, fps=d.fps,
                     size=(d.height, d.width), crop=d.crop, short_videos=d.short_videos,
                     images=None, warn=accelerator.is_main_process)
    per_step = t.batch_size * t.grad_accum * world          # samples of the global stream per step
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=t.lr, betas=tuple(t.adam_betas),
                                  weight_decay=t.weight_decay)
    svd = isinstance(schedule, EDMSchedule)
    objective = SVDObjective(unet, text, schedule, d.fps or 7.0) if svd else _objective(t, unet, schedule, device)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    ema = make_ema(trainable)                 # after prepare: on the device the weights now live on
    g = torch.Generator().manual_seed(t.seed * 1000 + rank)
    step, state = resume(ckpt_dir, unet, ema, optimizer, g, accelerator)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))

    # both sample streams restart where the checkpoint left them (global positions, any world size)
    batches = _batches(loader(ds, t.batch_size, t.seed, rank, world, state["samples"], d.num_workers), device, codec)
    images = None
    if t.image_batch_size:
        ids = ClipDataset(d.image_path or d.path, num_frames=1, size=(d.height, d.width), crop=d.crop,
                          images=True, warn=False)
        images = _batches(loader(ids, t.image_batch_size, t.seed + 1, rank, world,
                                 state.get("image_samples", 0), d.num_workers), device, codec)
    skipped = set(ds.skipped) | set(state["runtime_skipped"])
    log_file = out / "log.jsonl"
    if accelerator.is_main_process and log_file.exists():
        truncate_log(log_file, step)        # a resumed run re-logs the steps after its checkpoint
    samples_file = out / f"samples-rank{rank}.jsonl" if t.log_samples else None
    bar = tqdm(total=t.steps, initial=step, disable=not (progress and accelerator.is_main_process), desc="train")
    window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
    objective.train()

    def encode(captions, drop):
        return text([("" if dr else c) for c, dr in zip(captions, drop)], warn_unknown=False).to(device)

    while step < t.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, t)
        for micro in range(t.grad_accum):
            vid, img, keys, bad = svd_batch(batches, g, schedule, codec.factor, t.text_dropout, device) if svd \
                else _next_batch(batches, images, cfg, schedule, g, encode, device)
            skipped.update(bad)
            sync = micro == t.grad_accum - 1
            with accelerator.no_sync(objective) if not sync and world > 1 else contextlib.nullcontext():
                loss = objective(vid, img)
                accelerator.backward(loss / t.grad_accum)
            window_loss, window_n = window_loss + loss.item(), window_n + 1
            if samples_file is not None:
                with open(samples_file, "a") as fh:
                    fh.write(json.dumps({"step": step, "keys": keys}) + "\n")
        if t.max_grad_norm:
            accelerator.clip_grad_norm_([p for _, p in trainable], t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        state["samples"] += per_step
        state["image_samples"] = state.get("image_samples", 0) + t.image_batch_size * t.grad_accum * world
        update_ema(ema, trainable, t.ema_decay, step)
        bar.update(1)

        if step % t.log_every == 0 or step == t.steps:
            line = _log_line(accelerator, step, t, window_loss, window_n, len(skipped), per_step,
                             time.perf_counter() - t_window, state["samples"])
            if accelerator.is_main_process:
                with open(log_file, "a") as fh:
                    fh.write(json.dumps(line) + "\n")
                bar.set_postfix(loss=f"{line['loss']:.4f}", clips_s=f"{line['clips_per_s']:.2f}")
            window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
        if step % t.checkpoint_every == 0 or step == t.steps:
            state.update(world=world, runtime_skipped=sorted(skipped - set(ds.skipped)))
            save_checkpoint(ckpt_dir, step, accelerator.unwrap_model(objective).unet, ema, optimizer, g,
                            accelerator, state, t.keep_checkpoints)
    bar.close()

    net = accelerator.unwrap_model(objective).unet
    model_dir = out / ("lora.safetensors" if t.lora is not None else "model")
    if accelerator.is_main_process and svd and t.lora is None:
        save_svd_result(net, ema, text, model_dir)
    elif accelerator.is_main_process:
        _save_result(cfg, net, ema, text, schedule, codec, model_dir)
    accelerator.wait_for_everyone()
    return {"model_dir": model_dir, "step": step, "unet": net, "ema": ema, "skipped": sorted(skipped),
            "main": accelerator.is_main_process}
