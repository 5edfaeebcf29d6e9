"""Fine-tuning Stable Video Diffusion on clip folders (`train.init` = a diffusers SVD folder).

The run is vidiff's usual one (accelerate, EMA, resumable checkpoints, LoRA through peft, freeze_spatial for the
temporal layers only); what differs is the sample and the loss, as SVD was trained:
- the conditioning image is the clip's frame 0: its CLIP embedding is the cross-attention token and its latents,
  after noise augmentation (strength ln a ~ N(-3.0, 0.5), also told to the model), are concatenated to every frame;
- the levels are EDM's, ln sigma ~ N(0.7, 1.6), and the loss is the mean squared error of the v-prediction, which
  equals EDM's (sigma^2 + 1) / sigma^2 weighting of the x0 error (sigma_data = 1);
- with `train.text_dropout` the image conditioning (embedding and latents) is zeroed, as the unconditional half of
  classifier-free guidance sees it.
The VAE and the image encoder stay frozen; latents are the posterior's mode, so a resume is bit-exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.diffusion.edm import EDMSchedule


def is_svd_init(init) -> bool:
    """True when `init` is a diffusers StableVideoDiffusionPipeline folder."""
    index = Path(init) / "model_index.json" if init else None
    return bool(index and index.exists() and json.loads(index.read_text()).get("_class_name")
                == "StableVideoDiffusionPipeline")


class PixelsThrough:
    """The training loop's codec for SVD: clips stay pixels (the objective encodes them), `factor` is the VAE's."""

    kind, channels = "svd", 3

    def __init__(self, factor: int):
        self.factor = factor

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels as they are."""
        return video

    def to(self, device=None, dtype=None) -> "PixelsThrough":
        """Nothing to move."""
        return self


def svd_models(init: Path):
    """(unet, its frozen image conditioning standing for the text encoder, EDM schedule, codec) of an SVD folder."""
    from vidiff.pipelines.svd import SVDPipeline

    pipe = SVDPipeline.from_pretrained(init, device="cpu", dtype="float32")
    pipe.conditioning.requires_grad_(False)
    pipe.conditioning.pipe = pipe                  # what the result folder is written with
    return pipe.unet.train(), pipe.conditioning, pipe.schedule, PixelsThrough(pipe.factor)


def svd_draw(x: torch.Tensor, schedule: EDMSchedule, factor: int, g: torch.Generator, dropout: float):
    """Levels `(b,)`, latent noise, augmentation strengths `(b,)` and their pixel noise, dropout flags."""
    b, _, f, h, w = x.shape
    sigma = schedule.sample_sigma(b, g)
    noise = torch.randn((b, 4, f, h // factor, w // factor), generator=g)
    aug = (-3.0 + 0.5 * torch.randn(b, generator=g)).exp()
    aug_noise = torch.randn((b, 3, h, w), generator=g)
    drop = torch.rand(b, generator=g) < dropout
    return sigma, noise, aug, aug_noise, drop


class SVDObjective(nn.Module):
    """SVD's training loss as one module (the UNet is its only trainable part)."""

    def __init__(self, unet, conditioning, schedule: EDMSchedule, fps: float = 7.0, motion_bucket: float = 127.0):
        super().__init__()
        self.unet, self.schedule = unet, schedule
        self._cond = conditioning                      # not a submodule: frozen, never wrapped or saved
        self.fps, self.bucket = fps, motion_bucket

    def forward(self, video: tuple, images=None) -> torch.Tensor:
        """video = (pixels `b 3 f h w` in [-1, 1], sigma, noise, aug, aug_noise, drop)."""
        x, sigma, noise, aug, aug_noise, drop = video
        cond, dev = self._cond, self.unet.conv_in.weight.device
        b, _, f = x.shape[:3]
        with torch.no_grad():
            x0 = cond.latents(x.transpose(1, 2).flatten(0, 1))                            # (b f) 4 h w
            x0 = x0.reshape(b, f, *x0.shape[1:]).transpose(1, 2)
            first = x[:, :, 0]
            image = cond.condition(first, aug, noise=aug_noise)
            embeds = cond.embed((first + 1) / 2)
            keep = (~drop).float().to(dev)
            image, embeds = image * keep.view(-1, 1, 1, 1), embeds * keep.view(-1, 1, 1)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = x0 + s * noise
        inp = torch.cat([noisy * self.schedule.c_in(s), image[:, :, None].expand(-1, -1, f, -1, -1)], dim=1)
        ids = cond.time_ids(self.fps, self.bucket, aug, dev)
        dtype = self.unet.conv_in.weight.dtype
        v = self.unet(inp.to(dtype), self.schedule.c_noise(sigma), embeds.to(dtype), added_time_ids=ids.to(dtype))
        return F.mse_loss(v.float(), self.schedule.v_target(x0, noise, sigma).float())


def svd_batch(batches, g: torch.Generator, schedule: EDMSchedule, factor: int, dropout: float, device):
    """One micro-step's (video tuple, None, keys, unreadable files), randomness drawn from `g` in a fixed order."""
    x, _, keys, bad = next(batches)
    parts = svd_draw(x, schedule, factor, g, dropout)
    return (x.to(device), *(p.to(device) for p in parts)), None, keys, bad


def save_svd_result(net, ema: dict, conditioning, dest: Path) -> None:
    """The fine-tuned model (EMA weights) as a diffusers StableVideoDiffusionPipeline folder."""
    import copy

    from vidiff.data.io import write_folder_atomically

    pipe = copy.copy(conditioning.pipe)
    final = copy.deepcopy(net).cpu()
    final.load_state_dict({**final.state_dict(), **{k: v.cpu() for k, v in ema.items()}})
    final.config.gradient_checkpointing = False
    pipe.unet = final.eval()
    dest = Path(dest)
    if dest.exists():                             # a finished run, run again: write anew, then swap
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new", dir=dest.parent))
        pipe.save_pretrained(tmp)
        shutil.rmtree(dest)
        tmp.rename(dest)
        return
    write_folder_atomically(dest, pipe.save_pretrained)
