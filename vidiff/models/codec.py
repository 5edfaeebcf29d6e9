"""Codecs between pixels `b 3 f h w` in [-1, 1] and the space the UNet works in.

`PixelCodec` is the identity, optionally folding r x r pixel blocks into channels (pixel-unshuffle),
so a 64x64 video is a 12-channel 32x32 one inside. `VaeCodec` wraps diffusers' AutoencoderKL
(extra `[sd]`) and runs frame chunks to bound memory on long videos.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange


class PixelCodec:
    """Identity codec with optional pixel-unshuffle by `factor`."""

    kind = "pixel"

    def __init__(self, factor: int = 1):
        if factor < 1:
            raise ValueError(f"pixel codec factor must be >= 1, got {factor}")
        self.factor = factor
        self.channels = 3 * factor * factor

    def config(self) -> dict:
        """What model_index.json stores."""
        return {"type": "pixel", "factor": self.factor}

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """`b 3 f h w` -> `b (3 r r) f h/r w/r`."""
        if self.factor == 1:
            return video
        b = video.shape[0]
        x = F.pixel_unshuffle(rearrange(video, "b c f h w -> (b f) c h w"), self.factor)
        return rearrange(x, "(b f) c h w -> b c f h w", b=b)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of `encode`."""
        if self.factor == 1:
            return latents
        b = latents.shape[0]
        x = F.pixel_shuffle(rearrange(latents, "b c f h w -> (b f) c h w"), self.factor)
        return rearrange(x, "(b f) c h w -> b c f h w", b=b)

    def to(self, device=None, dtype=None) -> "PixelCodec":
        """Nothing to move."""
        return self

    def safe_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """Any precision is safe for an identity."""
        return dtype


class VaeCodec:
    """diffusers AutoencoderKL, run on `chunk` frames at a time."""

    kind = "vae"

    def __init__(self, vae, chunk: int = 8):
        self.vae, self.chunk = vae.eval(), chunk
        self.scaling = float(vae.config.scaling_factor)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.channels = vae.config.latent_channels

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, chunk: int = 8, variant: str | None = None) -> "VaeCodec":
        """Load `vae/` (safetensors only; `variant="fp16"` reads `*.fp16.safetensors`) with diffusers."""
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise ValueError("this model has a VAE: install the [sd] extra (pip install 'vidiff[sd]')") from None
        from vidiff.models.weights import folder_variant

        vae = AutoencoderKL.from_pretrained(Path(path), local_files_only=True, use_safetensors=True,
                                            variant=folder_variant(path, variant))
        return cls(vae.float(), chunk)

    def config(self) -> dict:
        """What model_index.json stores."""
        return {"type": "vae", "chunk": self.chunk}

    def _frames(self, fn, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        flat = rearrange(x, "b c f h w -> (b f) c h w")
        out = torch.cat([fn(flat[i:i + self.chunk]) for i in range(0, len(flat), self.chunk)])
        return rearrange(out, "(b f) c h w -> b c f h w", b=b)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels -> scaled latent means."""
        dtype = self.vae.dtype
        return self._frames(lambda v: self.vae.encode(v.to(dtype)).latent_dist.mean * self.scaling, video)

    @torch.no_grad()
    def encode_sample(self, video: torch.Tensor, generator: torch.Generator | None, chunk: int = 16) -> torch.Tensor:
        """Pixels -> scaled latents drawn from the VAE's posterior with `generator`, video by video in
        `chunk`-frame calls (the order diffusers' video-to-video pipelines draw them in)."""
        dtype = self.vae.dtype
        out = []
        for vid in rearrange(video, "b c f h w -> b f c h w"):
            parts = [self.vae.encode(vid[i:i + chunk].to(dtype)).latent_dist.sample(generator)
                     for i in range(0, len(vid), chunk)]
            out.append(torch.cat(parts).float() * self.scaling)
        return rearrange(torch.stack(out), "b f c h w -> b c f h w")

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Scaled latents -> pixels, `chunk` (default: the codec's) frames at a time."""
        dtype = self.vae.dtype
        saved, self.chunk = self.chunk, chunk or self.chunk
        try:
            return self._frames(lambda z: self.vae.decode((z / self.scaling).to(dtype)).sample.float(), latents)
        finally:
            self.chunk = saved

    def to(self, device=None, dtype=None) -> "VaeCodec":
        """Move the VAE (its dtype changes only when it differs: diffusers warns on every cast)."""
        if dtype is not None and dtype != self.vae.dtype:
            self.vae.to(dtype=dtype)
        if device is not None:
            self.vae.to(device=device)
        return self

    def safe_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """`dtype`, or float32 where the VAE overflows in float16 (its config's `force_upcast`, as diffusers reads it)."""
        return torch.float32 if dtype == torch.float16 and self.vae.config.get("force_upcast", True) else dtype


def load_codec(cfg: dict | None = None, folder: str | os.PathLike | None = None, variant: str | None = None):
    """A codec from its config (`{"type": "pixel", "factor": 2}` or `{"type": "vae", "path": DIR}`).

    With no config, a model `folder` decides: its `vae/` if it has one, else pixels.
    A VAE without a `path` is read from `folder/vae`.
    """
    if cfg is None:
        cfg = {"type": "vae"} if folder is not None and (Path(folder) / "vae").is_dir() else {"type": "pixel"}
    kind = cfg.get("type", "pixel")
    allowed = {"pixel": {"type", "factor"}, "vae": {"type", "path", "chunk"}}
    if kind not in allowed:
        raise ValueError(f"codec type must be 'pixel' or 'vae', got {kind!r}")
    unknown = set(cfg) - allowed[kind]
    if unknown:
        raise ValueError(f"unknown {kind} codec keys {sorted(unknown)}; allowed: {sorted(allowed[kind])}")
    if kind == "pixel":
        return PixelCodec(int(cfg.get("factor", 1)))
    path = cfg.get("path") or (Path(folder) / "vae" if folder is not None else None)
    if path is None or not Path(path).is_dir():
        raise FileNotFoundError(f"VAE folder {str(path)!r} does not exist (set codec.path)")
    return VaeCodec.from_pretrained(path, int(cfg.get("chunk", 8)), variant)
