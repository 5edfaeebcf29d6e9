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
    """(unet, frozen SVDPipeline parts standing for the text encoder, EDM schedule, codec) of an SVD folder."""
    from vidiff.pipelines.svd import SVDPipeline

    pipe = SVDPipeline.from_pretrained(init, device="cpu", dtype="float32")
    for module in (pipe.vae, pipe.image_encoder):
        module.requires_grad_(False)
    return pipe.unet.train(), Conditioner(pipe), pipe.schedule, PixelsThrough(pipe.factor)


class Conditioner:
    """The frozen SVD parts (VAE, CLIP image encoder), where the training loop keeps a text encoder."""

    def __init__(self, pipe):
        self.pipe, self.dim = pipe, pipe.unet.config.cross_attention_dim

    def to(self, device=None, dtype=None) -> "Conditioner":
        """Move the frozen parts (they run in float32)."""
        self.pipe.device = torch.device(device) if device is not None else self.pipe.device
        self.pipe.vae.to(self.pipe.device)
        self.pipe.image_encoder.to(self.pipe.device)
        return self

    def __call__(self, captions, warn_unknown=False):
        """SVD has no text: captions are not used."""
        return None


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

    def __init__(self, unet, conditioner: Conditioner, schedule: EDMSchedule, fps: float = 7.0,
                 motion_bucket: float = 127.0):
        super().__init__()
        self.unet, self.schedule = unet, schedule
        self._cond = conditioner                       # not a submodule: frozen, never wrapped or saved
        self.fps, self.bucket = fps, motion_bucket

    def forward(self, video: tuple, images=None) -> torch.Tensor:
        """video = (pixels `b 3 f h w` in [-1, 1], sigma, noise, aug, aug_noise, drop)."""
        x, sigma, noise, aug, aug_noise, drop = video
        pipe, dev = self._cond.pipe, self.unet.conv_in.weight.device
        b, _, f = x.shape[:3]
        with torch.no_grad():
            frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, *x.shape[1:2], *x.shape[3:])
            x0 = pipe.encode_latents(frames).reshape(b, f, 4, *noise.shape[-2:]).permute(0, 2, 1, 3, 4)
            first = x[:, :, 0]
            cond = torch.cat([pipe.vae.encode(first[i:i + 1] + aug[i] * aug_noise[i:i + 1]).latent_dist.mode()
                              for i in range(b)]).float()
            embeds = pipe.encode_image((first + 1) / 2)
            keep = (~drop).float().to(dev)
            cond, embeds = cond * keep.view(-1, 1, 1, 1), embeds * keep.view(-1, 1, 1)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy = x0 + s * noise
        inp = torch.cat([noisy * self.schedule.c_in(s), cond[:, :, None].expand(-1, -1, f, -1, -1)], dim=1)
        ids = torch.stack([torch.full_like(aug, self.fps - 1), torch.full_like(aug, self.bucket), aug], 1)
        dtype = self.unet.conv_in.weight.dtype
        v = self.unet(inp.to(dtype), self.schedule.c_noise(sigma), embeds.to(dtype), added_time_ids=ids.to(dtype))
        return F.mse_loss(v.float(), self.schedule.v_target(x0, noise, sigma).float())


def svd_batch(batches, g: torch.Generator, schedule: EDMSchedule, factor: int, dropout: float, device):
    """One micro-step's (video tuple, None, keys, unreadable files), randomness drawn from `g` in a fixed order."""
    x, _, keys, bad = next(batches)
    parts = svd_draw(x, schedule, factor, g, dropout)
    return (x.to(device), *(p.to(device) for p in parts)), None, keys, bad


def save_svd_result(net, ema: dict, conditioner: Conditioner, dest: Path) -> None:
    """The fine-tuned model (EMA weights) as a diffusers StableVideoDiffusionPipeline folder."""
    import copy

    from vidiff.data.io import write_folder_atomically

    pipe = copy.copy(conditioner.pipe)
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
