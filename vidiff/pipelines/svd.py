"""Image-to-video with Stable Video Diffusion (SVD, SVD-XT) in vidiff's UNet.

`SVDPipeline.animate(image)` samples as diffusers' `StableVideoDiffusionPipeline` does, step for step
and draw for draw (a seed gives diffusers' video): the image's CLIP embedding is the one cross-attention
token, the image (noised by `noise_aug_strength`) is VAE-encoded and concatenated to every frame's
latents, `(fps - 1, motion_bucket_id, noise_aug_strength)` are added to the time embedding, and
classifier-free guidance rises linearly over the frames from `min_guidance_scale` to `guidance_scale`.
Longer videos than the model's window: `mode="autoregressive"` (each window starts from the last frames
of the one before) and `mode="windows"` (the temporal attention runs on overlapping windows).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from vidiff.data.io import fit_frame
from vidiff.devices import randn, resolve_device, resolve_dtype
from vidiff.diffusion.edm import EDMSchedule
from vidiff.diffusion.samplers import sample_euler
from vidiff.models.image_conditioning import CLIP_MEAN, CLIP_STD, ImageConditioning
from vidiff.models.unet import UNet
from vidiff.pipelines.inputs import load_frames
from vidiff.pipelines.video import Video

MODES = ("all", "autoregressive", "windows")


def check_svd_args(num_frames, height, width, steps, guidance, min_guidance, fps, bucket, aug, mode, chunk, context,
                   multiple: int) -> None:
    """One clear line for each bad argument of `SVDPipeline.animate`."""
    def need(ok, msg):
        if not ok:
            raise ValueError(msg)
    need(isinstance(num_frames, int) and num_frames >= 1, f"num_frames must be an integer >= 1, got {num_frames!r}")
    need(height % multiple == 0 and width % multiple == 0 and height > 0 and width > 0,
         f"height and width must be positive multiples of {multiple} for this model, got {height}x{width}; "
         "pass resize='crop' (CLI: --resize crop) to fit the image")
    need(isinstance(steps, int) and steps >= 1, f"num_inference_steps must be an integer >= 1, got {steps!r}")
    need(min_guidance >= 0 and guidance >= 0, f"guidance scales must be >= 0, got {min_guidance} and {guidance}")
    need(fps >= 1, f"fps must be >= 1 (the model is told fps - 1), got {fps}")
    need(isinstance(bucket, (int, float)) and bucket >= 0,
         f"motion_bucket_id must be >= 0 (SVD was trained on 0-255; 127 is its default), got {bucket!r}")
    need(aug >= 0, f"noise_aug_strength must be >= 0, got {aug}")
    need(mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    need(chunk >= 2 and 1 <= context < chunk, f"chunk must be >= 2 and context in [1, chunk), got chunk={chunk}, "
                                              f"context={context}")


class SVDPipeline:
    """UNet (svd family) + temporal-decoder VAE + CLIP image encoder + EDM Euler sampling."""

    def __init__(self, unet: UNet, vae, image_encoder, schedule: EDMSchedule, image_mean=CLIP_MEAN,
                 image_std=CLIP_STD, defaults: dict | None = None):
        if not (unet.config.temporal and unet.config.temporal_family == "svd"):
            raise ValueError("SVDPipeline needs an svd-family UNet")
        self.unet, self.schedule = unet.eval(), schedule
        self.conditioning = ImageConditioning(vae, image_encoder, image_mean, image_std)   # beside text: the image
        self.factor = self.conditioning.factor
        self.defaults = {"height": 576, "width": 1024, "num_frames": 25, "fps": 7, "num_inference_steps": 25,
                         "guidance_scale": 3.0, "min_guidance_scale": 1.0, **(defaults or {})}
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.source = self.variant = None

    @property
    def vae(self):
        """The temporal-decoder VAE (held by `conditioning`)."""
        return self.conditioning.vae

    @property
    def image_encoder(self):
        """The CLIP image encoder (held by `conditioning`)."""
        return self.conditioning.image_encoder

    # ---- folders -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, device: str = "auto", dtype="auto", variant: str | None = None,
                        revision: str | None = None) -> "SVDPipeline":
        """Load a diffusers `StableVideoDiffusionPipeline` folder or hub id (safetensors only)."""
        from diffusers import AutoencoderKLTemporalDecoder
        from transformers import CLIPVisionModelWithProjection

        from vidiff.loaders.folders import read_index
        from vidiff.loaders.hub import resolve_model
        from vidiff.loaders.svd import load_svd_unet
        from vidiff.models.weights import folder_variant

        folder, source = resolve_model(path, revision=revision, variant=variant)
        folder = Path(folder)
        index = read_index(folder)
        missing = [p for p in ("unet", "vae", "image_encoder", "scheduler") if not (folder / p).is_dir()]
        if missing:
            raise FileNotFoundError(f"SVD folder {str(folder)!r} has no {', '.join(m + '/' for m in missing)}")
        unet = load_svd_unet(folder / "unet", variant)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(folder / "vae", local_files_only=True, use_safetensors=True,
                                                           variant=folder_variant(folder / "vae", variant),
                                                           torch_dtype=torch.float32)
        enc = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder", local_files_only=True,
                                                            use_safetensors=True,
                                                            variant=folder_variant(folder / "image_encoder", variant),
                                                            torch_dtype=torch.float32)
        schedule = EDMSchedule.from_config(json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))
        proc = folder / "feature_extractor" / "preprocessor_config.json"
        pre = json.loads(proc.read_text()) if proc.exists() else {}
        unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
        defaults = {"num_frames": int(unet_cfg.get("num_frames") or 25), **index.get("vidiff", {}).get("defaults", {})}
        pipe = cls(unet, vae, enc, schedule, pre.get("image_mean", CLIP_MEAN),
                   pre.get("image_std", CLIP_STD), defaults)
        device = resolve_device(device)
        pipe.to(device, resolve_dtype(dtype, device))
        pipe.source, pipe.variant, pipe.unet_config = source, variant, unet_cfg
        return pipe

    def save_pretrained(self, path, dtype: torch.dtype | None = None) -> None:
        """Write a diffusers `StableVideoDiffusionPipeline` folder (diffusers and vidiff both load it)."""
        from vidiff.loaders.svd import save_svd_unet

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_svd_unet(self.unet, path / "unet", int(self.defaults["num_frames"]), dtype,
                      getattr(self, "unet_config", None))
        self.vae.save_pretrained(path / "vae", safe_serialization=True)
        self.image_encoder.save_pretrained(path / "image_encoder", safe_serialization=True)
        mean, std = self.conditioning.image_mean, self.conditioning.image_std
        (path / "scheduler").mkdir(exist_ok=True)
        (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(self.schedule.to_config(), indent=2))
        (path / "feature_extractor").mkdir(exist_ok=True)
        size = int(self.image_encoder.config.image_size)
        (path / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "CLIPImageProcessor", "image_mean": list(mean),
            "image_std": list(std), "size": {"shortest_edge": size},
            "crop_size": {"height": size, "width": size}, "do_normalize": True, "do_resize": True,
            "do_center_crop": True, "do_rescale": True, "rescale_factor": 1 / 255, "resample": 3}, indent=2))
        index = {"_class_name": "StableVideoDiffusionPipeline",
                 "feature_extractor": ["transformers", "CLIPImageProcessor"],
                 "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
                 "scheduler": ["diffusers", "EulerDiscreteScheduler"],
                 "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
                 "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
                 "vidiff": {"defaults": {k: v for k, v in self.defaults.items() if k != "num_frames"}}}
        (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    def to(self, device=None, dtype=None) -> "SVDPipeline":
        """Move the parts; `dtype` applies to the UNet, and on CUDA to the image encoder and a VAE safe in it."""
        self.device = resolve_device(device) if device is not None else self.device
        self.dtype = resolve_dtype(dtype, self.device) if dtype is not None else self.dtype
        self.unet.to(device=self.device, dtype=self.dtype)
        self.conditioning.to(self.device, self.dtype if self.device.type == "cuda" else torch.float32)
        return self

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this."""
        return self.factor * self.unet.config.downsample_factor

    # ---- sampling ----------------------------------------------------------------------------
    def sample(self, embeds: torch.Tensor, cond: torch.Tensor, ids: torch.Tensor, num_frames: int, steps: int,
               min_guidance: float, guidance: float, generator, latents: torch.Tensor | None = None,
               known: torch.Tensor | None = None) -> torch.Tensor:
        """One window: Euler over Karras sigmas from noise to latents `b 4 f h w`.

        `embeds` `(b, 1, d)`, `cond` the conditioning latents `b 4 h w`, `ids` `(b, 3)`. The starting noise is
        drawn `b f c h w` as diffusers draws it, unless `latents` (`b c f h w`) are given. `known` (`b 4 k h w`)
        holds the first k frames: they are re-noised to each level with one fixed draw (taken after the
        starting noise) and come out as given.
        """
        b, _, h, w = cond.shape
        sigmas = self.schedule.sigmas(steps)
        if latents is None:
            noise = randn((b, num_frames, cond.shape[1], h, w), generator, self.device, self.dtype)
            latents = rearrange(noise, "b f c h w -> b c f h w")
        x = latents.to(self.device, torch.float32) * self.schedule.init_scale(sigmas)
        fixed = None if known is None else randn(known.shape, generator, self.device, torch.float32)
        cfg = guidance > 1
        ramp = torch.linspace(min_guidance, guidance, num_frames, device=self.device).view(1, 1, -1, 1, 1)
        ctx = torch.cat([torch.zeros_like(embeds), embeds]) if cfg else embeds
        image = torch.cat([torch.zeros_like(cond), cond]) if cfg else cond
        image = image[:, :, None].expand(-1, -1, num_frames, -1, -1)
        ids = torch.cat([ids, ids]) if cfg else ids
        k = 0 if known is None else known.shape[2]

        def denoise(x, level):                   # x0 from SVD's v-prediction, guided per frame; one level per step
            s = level.reshape(-1)[0]
            if k:                                 # the held frames, re-noised to this level
                x = torch.cat([known + s * fixed, x[:, :, k:]], dim=2)
            xin = torch.cat([x, x]) if cfg else x
            xin = torch.cat([xin * self.schedule.c_in(s), image], dim=1).to(self.dtype)
            t = self.schedule.c_noise(s).expand(xin.shape[0]).to(self.device)
            with torch.no_grad():
                v = self.unet(xin, t, ctx.to(self.dtype), added_time_ids=ids.to(self.dtype)).float()
            if cfg:
                uncond, c = v.chunk(2)
                v = uncond + ramp * (c - uncond)
            x0 = self.schedule.x0(v, x, s)
            return torch.cat([known, x0[:, :, k:]], dim=2) if k else x0

        return sample_euler(denoise, x, sigmas)

    def __call__(self, prompt: str | None = None, image=None, **kwargs):
        """`animate(image)`; SVD makes videos from an image, so a call without one is an error."""
        if image is None:
            raise ValueError("this is an image-to-video model (Stable Video Diffusion, no text encoder): pass an image "
                             "(CLI: --image PATH)")
        return self.animate(image, prompt=prompt, **kwargs)

    def animate(self, image, prompt: str | None = None, num_frames: int | None = None, height: int | None = None,
                width: int | None = None, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                min_guidance_scale: float | None = None, fps: float | None = None, motion_bucket_id: int = 127,
                noise_aug_strength: float = 0.02, decode_chunk_size: int | None = None,
                generator: torch.Generator | None = None, seed: int | None = None,
                latents: torch.Tensor | None = None, output_type: str = "video", mode: str = "all",
                chunk: int | None = None, context: int = 1, stride: int = 4, resize: str | None = None,
                keep_first_frame: bool = True, progress: bool = True):
        """Image-to-video: `image` (path, PIL, `h w 3` uint8, or a `1 3 h w` tensor in [0, 1]) is frame 0.

        `guidance_scale` is the top of the per-frame guidance ramp, `min_guidance_scale` its start; `fps`,
        `motion_bucket_id` (more motion when higher) and `noise_aug_strength` (how loosely the video follows the
        image) are SVD's conditioning. `latents` (`b c f h w`) replace the starting noise. `output_type` is
        "video" (a `Video`), "latent" (the final latents) or "pt" (`b 3 f h w` frames in [0, 1]).
        Longer than the model's window (`chunk`, default its `num_frames`): mode "autoregressive" (each window
        is conditioned on its first frame, the `context` frames it shares with the window before held as made)
        or "windows" (temporal attention on overlapping windows of `chunk`, `stride` apart).

        `keep_first_frame` (default True) holds frame 0's latents to the image's own during sampling and returns
        the image itself as frame 0, so the video starts exactly at the input (SVD alone drifts from it).
        False samples exactly as diffusers' StableVideoDiffusionPipeline: the same seed gives its video.
        """
        if prompt:
            warnings.warn("this SVD model has no text encoder: the prompt is ignored (the image alone conditions it)")
        if output_type not in ("video", "latent", "pt"):
            raise ValueError(f"output_type must be 'video', 'latent' or 'pt', got {output_type!r}")
        if decode_chunk_size is not None and (not isinstance(decode_chunk_size, int) or decode_chunk_size < 1):
            raise ValueError(f"decode_chunk_size must be an integer >= 1, got {decode_chunk_size!r}")
        d = self.defaults
        pixels, resize_clip = self._image(image, height, width, resize)
        height, width = pixels.shape[-2:]
        if latents is not None:
            latents = torch.as_tensor(latents)
            if latents.ndim != 5 or latents.shape[1] != self.conditioning.channels:
                raise ValueError(f"latents must be (b, {self.conditioning.channels}, f, h/{self.factor}, "
                                 f"w/{self.factor}), got {tuple(latents.shape)}")
            num_frames = latents.shape[2]
        num_frames = int(num_frames or d["num_frames"])
        steps = int(num_inference_steps or d["num_inference_steps"])
        guidance = float(d["guidance_scale"] if guidance_scale is None else guidance_scale)
        min_guidance = float(d["min_guidance_scale"] if min_guidance_scale is None else min_guidance_scale)
        fps = float(d["fps"] if fps is None else fps)
        chunk = int(chunk or d["num_frames"])
        check_svd_args(num_frames, height, width, steps, guidance, min_guidance, fps, motion_bucket_id,
                       noise_aug_strength, mode, chunk, context, self.size_multiple)
        if seed is None and generator is None:
            seed = int(torch.randint(0, 2 ** 31, ()).item())
        g = generator or torch.Generator(device="cpu").manual_seed(seed)
        cond = self.conditioning
        embeds = cond.embed(pixels, resize_clip)
        ids = cond.time_ids(fps, motion_bucket_id, noise_aug_strength, self.device)
        run = dict(steps=steps, min_guidance=min_guidance, guidance=guidance, generator=g)
        image_m11 = pixels.to(self.device) * 2 - 1
        first = cond.latents(image_m11)[:, :, None] if keep_first_frame else None
        if mode == "autoregressive" and num_frames > chunk:
            out, frames = self._autoregressive(image_m11, embeds, ids, num_frames, chunk, context, noise_aug_strength,
                                               decode_chunk_size, run, first)
        else:
            image_latents = cond.condition(image_m11, noise_aug_strength, g)
            windows = self.unet.temporal_windows(chunk, stride) if mode == "windows" and num_frames > chunk else None
            with windows or contextlib.nullcontext():
                out = self.sample(embeds, image_latents, ids, num_frames, latents=latents, known=first, **run)
            frames = None if output_type == "latent" else cond.decode(out, decode_chunk_size)
        if keep_first_frame and frames is not None:
            frames[:, :, 0] = image_m11 if frames.dtype != torch.uint8 else _uint8(image_m11)
        if output_type == "latent":
            return out
        if output_type == "pt":
            return frames.float() / 255 if frames.dtype == torch.uint8 else (frames / 2 + 0.5).clamp(0, 1)
        settings = {"image_to_video": "svd", "num_frames": num_frames, "height": height, "width": width,
                    "num_inference_steps": steps, "guidance_scale": guidance, "min_guidance_scale": min_guidance,
                    "fps": fps, "motion_bucket_id": motion_bucket_id, "noise_aug_strength": noise_aug_strength,
                    "seed": seed, "mode": mode, "chunk": chunk, "context": context, "model": self.source,
                    "variant": self.variant, "dtype": str(self.dtype).removeprefix("torch."),
                    "scheduler": self.schedule.to_config()}
        uint8 = frames[0] if frames.dtype == torch.uint8 else _uint8(frames[0])
        return Video(rearrange(uint8, "c f h w -> f h w c").cpu().numpy(), fps, settings)

    def _image(self, image, height, width, resize):
        """`1 3 h w` pixels in [0, 1] at the output size, and whether CLIP's input is resized (not for tensors)."""
        if torch.is_tensor(image):
            x = image.float()
            if x.ndim != 4 or x.shape[:2] != (1, 3):
                raise ValueError(f"an image tensor must be (1, 3, h, w) in [0, 1], got {tuple(x.shape)}")
            if (height and height != x.shape[2]) or (width and width != x.shape[3]):
                x = F.interpolate(x, size=(height or x.shape[2], width or x.shape[3]), mode="bilinear")
            return x, False
        frame = load_frames(image)[0]
        h, w = frame.shape[:2]
        if resize is not None:
            th, tw = height or self.defaults["height"], width or self.defaults["width"]
            if (h, w) != (th, tw):
                warnings.warn(f"resized the {w}x{h} image to {tw}x{th} ({resize})")
                frame = fit_frame(frame, th, tw, resize)
        elif (height and height != h) or (width and width != w):
            raise ValueError(f"the image is {w}x{h}, not the {width or w}x{height or h} asked for; pass resize='crop' "
                             "(CLI: --resize crop) to fit it")
        return torch.from_numpy(np.array(frame)).permute(2, 0, 1)[None].float() / 255, True

    def _autoregressive(self, image, embeds, ids, num_frames, chunk, context, aug, decode_chunk, run, first=None):
        """Windows of `chunk` frames, each conditioned on its first frame and holding the `context` frames it shares
        with the window before; one window of latents and pixels is alive at a time. Returns (latents, uint8 pixels)."""
        parts, pixels, cond_image, known, made = [], [], image, None, 0
        while made < num_frames:
            new = min(num_frames - made, chunk if known is None else chunk - context)
            size = new if known is None else context + new
            cond = self.conditioning.condition(cond_image, aug, run["generator"])
            lat = self.sample(embeds, cond, ids, size, known=first if known is None else known, **run)
            frames = self.conditioning.decode(lat, decode_chunk)
            skip = 0 if known is None else context
            parts.append(lat[:, :, skip:].cpu())
            pixels.append(_uint8(frames[:, :, skip:]).cpu())          # a long video is kept as uint8
            made += new
            known, cond_image = lat[:, :, -context:], frames[:, :, -context]
        return torch.cat(parts, dim=2), torch.cat(pixels, dim=2)


def _uint8(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
