"""Image conditioning for Stable Video Diffusion: the module beside the text encoder that SVD uses instead of one.

An image gives three things to SVD's UNet: its CLIP image embedding (the one cross-attention token), its VAE
latents after noise augmentation (concatenated to every frame's channels, unscaled, as SVD was trained) and the
added time ids (fps - 1, motion bucket, augmentation strength). `ImageConditioning` holds the frozen CLIP image
encoder and the temporal-decoder VAE and makes each of them, and decodes latents back to frames; the pipeline
and the training objective both use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from vidiff.devices import randn

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def blur_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Anti-aliased downsizing of `b c h w` as SVD prepares its CLIP input: a Gaussian blur with
    sigma = (scale - 1) / 2 per axis (odd kernel of about 4 sigma, reflected edges), then bicubic with aligned corners."""
    h, w = x.shape[-2:]
    for axis, (n, m) in enumerate(((h, size[0]), (w, size[1]))):
        sigma = max((n / m - 1) / 2, 0.001)
        k = int(max(4 * sigma, 3))
        k += 1 - k % 2
        t = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
        g = torch.exp(-t ** 2 / (2 * sigma ** 2))
        g = (g / g.sum()).view(1, 1, *((k, 1) if axis == 0 else (1, k))).expand(x.shape[1], 1, -1, -1)
        pad = (0, 0, (k - 1) // 2, k // 2) if axis == 0 else ((k - 1) // 2, k // 2, 0, 0)
        x = F.conv2d(F.pad(x, pad, mode="reflect"), g, groups=x.shape[1])
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


class ImageConditioning:
    """CLIP image encoder + temporal-decoder VAE (both frozen): what SVD gets from its input image."""

    def __init__(self, vae, image_encoder, image_mean=CLIP_MEAN, image_std=CLIP_STD):
        self.vae, self.image_encoder = vae.eval(), image_encoder.eval()
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.channels = int(vae.config.latent_channels)
        self.scaling = float(vae.config.scaling_factor)
        self.device = torch.device("cpu")

    def to(self, device=None, dtype=None) -> "ImageConditioning":
        """Move both; `dtype` applies to the encoder, and to the VAE unless its config asks for float32
        (`force_upcast`, as SVD's does). Callers pass a half dtype only on CUDA."""
        self.device = torch.device(device) if device is not None else self.device
        self.image_encoder.to(device=self.device, dtype=dtype)
        vae_dtype = dtype if dtype is not None and not getattr(self.vae.config, "force_upcast", True) else torch.float32
        self.vae.to(device=self.device)
        if next(self.vae.parameters()).dtype != vae_dtype:
            self.vae.to(dtype=vae_dtype)
        return self

    def requires_grad_(self, on: bool = False) -> "ImageConditioning":
        """Freeze (or unfreeze) both parts."""
        self.vae.requires_grad_(on)
        self.image_encoder.requires_grad_(on)
        return self

    def _vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def embed(self, pixels: torch.Tensor, resize: bool = True) -> torch.Tensor:
        """CLIP image embedding `(b, 1, d)` of `b 3 h w` pixels in [0, 1]; `resize` brings them to the encoder's
        size as SVD does (diffusers skips it for tensor inputs, so parity with a tensor image needs False; a tensor not
        at the encoder's size is resized all the same)."""
        x = pixels.to(self.device, torch.float32)
        size = int(self.image_encoder.config.image_size)
        if resize or tuple(x.shape[-2:]) != (size, size):
            x = (blur_resize(x * 2 - 1, (size, size)) + 1) / 2
        mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(next(self.image_encoder.parameters()).dtype)
        with torch.no_grad():
            return self.image_encoder(x).image_embeds[:, None].float()

    def condition(self, image: torch.Tensor, aug, generator=None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The conditioning latents `b 4 h w` of `b 3 h w` pixels in [-1, 1] after noise augmentation of strength `aug`
        (a number or `(b,)`): the mode of the VAE's posterior, not scaled, as SVD was trained. The augmentation noise
        is `noise`, or drawn from `generator` (first, as diffusers draws it)."""
        if noise is None:
            noise = randn(image.shape, generator, image.device, image.dtype)
        aug = torch.as_tensor(aug, device=image.device, dtype=image.dtype).reshape(-1, 1, 1, 1)
        with torch.no_grad():
            return self.vae.encode((image + aug * noise).to(self._vae_dtype())).latent_dist.mode().float()

    def latents(self, image: torch.Tensor) -> torch.Tensor:
        """`b 3 h w` pixels in [-1, 1] -> the latents a video frame of them has (`b 4 h w`, scaled)."""
        with torch.no_grad():
            z = self.vae.encode(image.to(self._vae_dtype())).latent_dist.mode().float()
        return z * self.scaling

    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """`b 4 f h w` latents -> `b 3 f H W` pixels in [-1, 1], `chunk` frames per VAE call (its temporal layers
        see one chunk: fewer is less memory, at some cost to smoothness across chunk edges)."""
        b, _, f = latents.shape[:3]
        chunk = chunk or f
        z = rearrange(latents, "b c f h w -> (b f) c h w") / self.scaling
        with torch.no_grad():
            out = torch.cat([self.vae.decode(z[i:i + chunk].to(self._vae_dtype()), num_frames=len(z[i:i + chunk])).sample
                             for i in range(0, len(z), chunk)])
        return rearrange(out.float(), "(b f) c h w -> b c f h w", b=b)

    @staticmethod
    def time_ids(fps, motion_bucket, aug, device=None) -> torch.Tensor:
        """SVD's added time ids `(b, 3)`: (fps - 1, motion bucket, augmentation strength), each a number or `(b,)`."""
        parts = [torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1) for v in (fps, motion_bucket, aug)]
        b = max(len(p) for p in parts)
        return torch.stack([p.expand(b) for p in parts], 1) - torch.tensor([1.0, 0.0, 0.0], device=device)
