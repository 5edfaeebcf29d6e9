"""VideoPipeline: text-to-video, image-to-video, continuation, interpolation and images.

All modes are one sampling routine over a window of frames, some of which may be given:
- a UNet with frame conditioning gets the given frames as `[cond * mask, mask]` inputs and
  holds them at noise level 0 (per-frame noise levels);
- any other UNet uses the training-free replacement method: given frames are re-noised to the
  current level before each model call and their x0 estimate is the given frame.
Autoregressive mode slides such a window over the video: `chunk` frames at a time, the first
`context` of each window taken from what was made so far. Peak memory is that of one window.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from vidiff.models.codec import PixelCodec, VaeCodec
from vidiff.devices import randn, resolve_device, resolve_dtype
from vidiff.diffusion.plans import Runner, sample_fifo, sample_plan, sample_window
from vidiff.loaders.lora import PipelineLoras
from vidiff.pipelines.control import PipelineControls
from vidiff.pipelines.inputs import PipelineInputs, load_frames  # noqa: F401  (load_frames: imported from here)
from vidiff.pipelines.offload import PipelineMemory
from vidiff.pipelines.requests import RequestChecks
from vidiff.pipelines.speed import PipelineSpeed, check_cache
from vidiff.pipelines.modes import PipelineModes, jump_warning  # noqa: F401  (jump_warning's old home)
from vidiff.pipelines.video import Video  # noqa: F401  (the public home of Video stays here)
from vidiff.diffusion.schedule import NoiseSchedule
from vidiff.models.text import TextEncoder
from vidiff.models.unet import UNet

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "weights" / "shapes-64"   # shipped, trained by vidiff's recipe


def is_svd_folder(folder) -> bool:
    """True for a diffusers `StableVideoDiffusionPipeline` folder."""
    index = Path(folder) / "model_index.json"
    return index.exists() and json.loads(index.read_text()).get("_class_name") == "StableVideoDiffusionPipeline"


def noise_layout(unet_config):
    """How a sampler draws its step noise: as diffusers' pipeline for this family lays it out.

    TextToVideoSDPipeline steps its scheduler on `(b f) c h w`, so ModelScope models draw noise
    frame-major; everything else draws it in `b c f h w` order.
    """
    if unet_config.temporal_family != "modelscope" or not unet_config.temporal:
        return None

    def frame_major(x, generator):
        b, c, f, h, w = x.shape
        flat = randn((b * f, c, h, w), generator, x.device, x.dtype)
        return rearrange(flat, "(b f) c h w -> b c f h w", b=b)
    return frame_major


class VideoPipeline(RequestChecks, PipelineInputs, PipelineLoras, PipelineMemory, PipelineControls, PipelineSpeed,
                    PipelineModes):
    """UNet + text encoder + noise schedule + codec, with the generation modes as methods."""

    def __init__(self, unet: UNet, text_encoder: TextEncoder, schedule: NoiseSchedule, codec=None,
                 defaults: dict | None = None):
        self.unet, self.text_encoder, self.schedule = unet.eval(), text_encoder, schedule
        self.codec = codec or PixelCodec(1)
        if self.codec.channels != unet.config.in_channels:
            raise ValueError(f"codec gives {self.codec.channels} channels, the UNet takes {unet.config.in_channels}")
        self.defaults = {"height": 64, "width": 64, "num_frames": 16, "fps": 8, **(defaults or {})}
        self.device, self.dtype = torch.device("cpu"), torch.float32

    # ---- folders -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, motion_adapter=None, device: str = "auto",
                        dtype="auto", scheduler: str | dict | None = None, variant: str | None = None,
                        revision: str | None = None) -> "VideoPipeline":
        """Load a model: a folder, a hub id (`org/name`, from the hub cache offline) or a single-file SD checkpoint.

        A `StableVideoDiffusionPipeline` folder gives an `SVDPipeline` (image-to-video, `animate(image)`).
        Reads vidiff folders and diffusers `AnimateDiffPipeline` (UNetMotionModel, or a UNet2D plus
        `motion_adapter/`), Stable Diffusion (with `motion_adapter=` a MotionAdapter folder, an
        AnimateDiff .safetensors file or a hub id) and `TextToVideoSDPipeline` (ModelScope, Zeroscope) folders.
        `scheduler` replaces the folder's scheduler class (a class, sampler or preset name) or some of its
        config keys (a dict). `device="auto"` is CUDA when present; `dtype="auto"` float16 on CUDA, else
        float32. `variant="fp16"` reads the `*.fp16.safetensors` files; `revision` picks a hub revision.
        """
        from vidiff.loaders.folders import load_components
        from vidiff.loaders.hub import resolve_model

        if path is None:
            path = DEFAULT_MODEL
            if not (path / "model_index.json").exists():
                raise FileNotFoundError(f"the default model is not installed at {path}; pass a model folder")
        folder, source = resolve_model(path, revision=revision, variant=variant)
        if is_svd_folder(folder):                    # image-to-video with Stable Video Diffusion
            if motion_adapter is not None or scheduler is not None:
                raise ValueError("a Stable Video Diffusion model takes no motion adapter and keeps its own EDM scheduler")
            from vidiff.pipelines.svd import SVDPipeline

            return SVDPipeline.from_pretrained(path, device=device, dtype=dtype, variant=variant, revision=revision)
        adapter, adapter_source = (None, None) if motion_adapter is None else resolve_model(
            motion_adapter, kind="motion adapter", variant=variant)
        unet, text, schedule, codec, defaults = load_components(folder, adapter, scheduler, variant=variant)
        device = resolve_device(device)
        pipe = cls(unet, text, schedule, codec, defaults).to(device, resolve_dtype(dtype, device))
        pipe.source, pipe.variant, pipe.adapter_source = source, variant, adapter_source
        return pipe

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Write the model folder (`model_index.json`, `unet/`, `text_encoder/`, `tokenizer/`, `scheduler/`).

        `dtype` (e.g. torch.float16) stores the UNet weights smaller; they load back into any dtype.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet", dtype=dtype)
        self.text_encoder.save_pretrained(path)
        self.schedule.save_pretrained(path / "scheduler")
        if isinstance(self.codec, VaeCodec):
            self.codec.vae.save_pretrained(path / "vae", safe_serialization=True)
        index = {"_class_name": "VidiffPipeline", "unet": ["vidiff", "UNet"],
                 "text_encoder": ["transformers", "CLIPTextModel"],
                 "tokenizer": ["transformers", type(self.text_encoder.tokenizer).__name__],
                 "scheduler": ["diffusers", self.schedule.class_name],
                 "vidiff": {"codec": self.codec.config(), "defaults": self.defaults}}
        (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    def to(self, device=None, dtype=None) -> "VideoPipeline":
        """Move UNet, text encoder and codec (`auto` names allowed); dtype applies to the UNet, and on CUDA
        to the text encoder and to a VAE that is safe in it (not `force_upcast`), as diffusers does."""
        self.device = resolve_device(device) if device is not None else self.device
        self.dtype = resolve_dtype(dtype, self.device) if dtype is not None else self.dtype
        if self.device.type == "cpu" and self.dtype == torch.float16:
            import warnings

            warnings.warn("float16 on a CPU is several times slower than float32 (no fast float16 kernels there); "
                          "use float32, or bfloat16 on CPUs with AMX")
        self.unet.to(device=self.device, dtype=self.dtype)
        half_ok = self.device.type == "cuda"                  # on CPU fp16/bf16 text and VAE are slow or lossy
        self.text_encoder.to(device=self.device, dtype=self.dtype if half_ok else torch.float32)
        self.codec.to(device=self.device, dtype=self.codec.safe_dtype(self.dtype) if half_ok else torch.float32)
        self.controls_to(self.device, self.dtype)
        return self

    # ---- generation --------------------------------------------------------------------------
    def __call__(self, prompt: str | dict = "", negative_prompt: str | dict | None = None, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale=None, sampler: str | None = None, eta: float = 0.0, seed: int | None = None,
                 generator: torch.Generator | None = None, mode: str = "all", chunk: int = 16, context: int = 4,
                 fps: float | None = None, given: dict | None = None, progress: bool = True,
                 first_frame_first: bool | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "video", stride: int = 4, weighting: str = "pyramid",
                 noise_type: str | None = None, partitions: int = 2, lookahead: bool = True,
                 init_video: np.ndarray | None = None, strength: float = 1.0, decode_chunk_size: int | None = None,
                 free_init: dict | int | None = None, loop: bool = False, control: dict | None = None,
                 control_scale: float | dict = 1.0, control_start: float | dict = 0.0, control_end: float | dict = 1.0,
                 ip_image=None, keyframes: dict | None = None, cache: int | dict | None = None):
        """Generate a video (or an image when num_frames=1). `given` maps frame index -> image.

        `prompt` (and `negative_prompt`) may be {frame: text}: prompt travel, the text states blended
        between key frames (see `travel`), in every mode.

        `sampler` defaults to the one the model folder's scheduler names. `latents` (`b c f h w`, in
        the codec's space) is the starting noise, scaled as diffusers scales it; its shape sets the
        batch, frames and size. `output_type="latent"` returns the final latents (as diffusers'
        `output_type="latent"`) instead of a `Video` (a list of them when b > 1).

        `first_frame_first` (default: the model's `defaults`, else False) makes text-to-video two steps of the
        same model: frame 0 as an image, then image-to-video from it (factorised generation, as in Emu Video).
        A model whose `defaults` set `min_frames` draws a shorter window as the first frames of one that long.

        `init_video` (`f h w 3` uint8 at the output size) with `strength` is video-to-video; see
        `video_to_video`, which also reads, resizes and keeps the frame rate of its input.

        `free_init` (a number of iterations, or {"iterations", "method", "order", "spatial", "temporal", "fast"})
        samples that many times, each pass starting from the last one's low frequencies (FreeInit; mode "all").

        `loop=True` (mode "windows") makes a looping video: the windows wrap from the last frames to the first. A
        loop has no first frame: the model's `first_frame_first` default is off for it and `noise_type` defaults to
        "random" (else FreeNoise's "shuffle_context", whose repeats run forward from frame 0).

        Control (each method loaded first; README "Control"): `control={name: frames}` (ControlNets of
        `load_controlnet`; frames an `f h w 3` uint8 array, a list of images or a video path, one per frame) with
        `control_scale`, `control_start`, `control_end` (numbers, or {name: number}); `keyframes={frame: image}`
        (SparseCtrl, `load_sparsectrl`); `ip_image=image | [one per frame] | {frame: image}` (IP-Adapter,
        `load_ip_adapter`; a dict blends between its frames as prompt travel does). They work in every mode but fifo.

        `cache` (an interval, or {"interval", "depth"}; default: the model's `defaults`, else off; 1 = off) reuses
        the deep UNet features between refreshes (DeepCache, `vidiff/pipelines/speed.py`), in every mode.

        `decode_chunk_size` sets how many frames the VAE decodes at once (default: the codec's, 8; fewer
        is less memory, as diffusers' argument of that name).
        """
        self.offload_idle()
        latents, b, num_frames, height, width = self.check_request(latents, num_frames, height, width, output_type,
                                                                   decode_chunk_size)
        fps = self.defaults["fps"] if fps is None else fps
        if num_inference_steps is None:            # the model's own (a distilled model: fewer)
            num_inference_steps = int(self.defaults.get("num_inference_steps", 25))
        sampler = sampler or self.schedule.sampler
        guidance_scale = self.defaults.get("guidance_scale", 7.5) if guidance_scale is None else guidance_scale
        f, h, w = self.check_args(num_frames, height, width, num_inference_steps, sampler, mode, chunk,
                                  context, guidance_scale, fps, stride)
        steer = self.steering(f, h, w, b, control, control_scale, control_start, control_end, ip_image, keyframes)
        if steer is not None and mode == "fifo":
            raise ValueError("control, keyframes and ip_image work in modes all, autoregressive and windows, not fifo")
        if seed is None and generator is None:
            seed = int(torch.randint(0, 2 ** 31, ()).item())      # recorded in the settings: reproducible
        g = generator or torch.Generator(device="cpu").manual_seed(seed)
        first_frame_first, noise_type = self.check_plan(mode, given, latents, output_type, b, free_init,
                                                        first_frame_first, loop, noise_type)
        shape = (b, self.codec.channels, f, h // self.codec.factor, w // self.codec.factor)
        init, start = None, 0
        if init_video is not None:                  # video-to-video: its latents first, then the noise (diffusers' order)
            if mode == "fifo" or latents is not None:
                raise ValueError("video-to-video runs in modes all, autoregressive and windows, without latents=")
            first_frame_first = False
            init, latents, start = self._encode_video(init_video, shape, strength, num_inference_steps, sampler, g)
        ctx = self._text(prompt, negative_prompt, guidance_scale, f)
        cache = self.defaults.get("cache") if cache is None else cache        # the model's own (shipped: on)
        runner = self.runner(decode_chunk_size, steer, cache)
        run = dict(ctx=ctx, steps=num_inference_steps, guidance=guidance_scale, sampler=sampler, eta=eta,
                   generator=g, progress=progress, init=init, start=start)
        if first_frame_first and f > 1 and not given:
            first = {**run, "ctx": ctx[:, :1]} if ctx.ndim == 4 else run
            given = {0: self._decode(sample_window(runner, (*shape[:2], 1, *shape[3:]), None, **first))[0]}
        known = self._encode_given(given or {}, f, h, w, b)
        seams = None
        if mode == "fifo":
            frames = sample_fifo(runner, shape, ctx, guidance_scale, g, progress, window=chunk, partitions=partitions,
                                 lookahead=lookahead)
        elif start == num_inference_steps:           # strength 0: the input, through the codec
            out = init
        else:
            out, seams = sample_plan(runner, mode, shape, known, run, chunk=chunk, context=context, stride=stride,
                                     weighting=weighting, noise_type=noise_type, noise=latents, free_init=free_init,
                                     loop=loop)
        if output_type == "latent" and mode != "fifo":
            return out
        settings = self._settings(locals(), init is not None, seams)
        if mode == "fifo":
            settings.update(partitions=partitions, lookahead=lookahead, num_inference_steps=partitions * chunk)
            return Video(frames, fps, settings, None)
        videos = [Video(self._decode(out[i:i + 1], decode_chunk_size), fps, dict(settings), seams) for i in range(b)]
        return videos[0] if b == 1 else videos

    def _settings(self, call: dict, edited: bool, seams) -> dict:
        """What made a video (the call's arguments as used, the seed, what loads the pipeline): saved in the file."""
        import vidiff

        g = call["guidance_scale"]
        keys = ("prompt", "negative_prompt", "num_inference_steps", "sampler", "eta", "seed", "mode", "chunk",
                "context", "fps")
        return {**{k: call[k] for k in keys}, "num_frames": call["f"], "height": call["h"], "width": call["w"],
                "guidance_scale": g if isinstance(g, (int, float)) else list(g),
                **({k: call[k] for k in ("stride", "weighting", "noise_type")} if call["mode"] == "windows" else {}),
                "first_frame_first": bool(call["first_frame_first"]), "given_frames": sorted(call["given"] or {}),
                "vidiff": getattr(vidiff, "__version__", None), "seams": seams,
                **({"strength": call["strength"]} if edited else {}),
                **({"free_init": call["free_init"]} if call.get("free_init") is not None else {}),
                **({"loop": True} if call.get("loop") else {}), **self.recipe(),
                **({"cache": check_cache(call["cache"])} if call.get("cache") is not None else {}),
                **self.steering_settings(*(call.get(k) for k in ("control", "control_scale", "control_start",
                                                                  "control_end", "ip_image", "keyframes")))}

    def runner(self, decode_chunk_size: int | None = None, steer=None, cache=None) -> Runner:
        """The model as the sampling plans see it: a function in float32 out, the schedule, the device, and the
        few facts about the model a plan needs (decoding `decode_chunk_size` frames at a time). `steer` (a
        `Steering`) adds the control methods' UNet inputs for the frames and step of each call; `cache` (step
        caching options) reuses deep features between refreshes."""
        from vidiff.pipelines.speed import StepCache

        unet, dtype = self.unet, self.dtype
        cache = None if cache is None else StepCache(cache, len(unet.config.block_out_channels))
        self.step_cache = cache

        def model(x_t, t, ctx, cond=None, cond_mask=None, where=None):
            kw = {} if cond is None else {"cond": cond.to(dtype), "cond_mask": cond_mask}
            x_t = x_t.to(dtype)
            if steer is not None:
                kw.update(steer(x_t, t, ctx, where))
            if cache is not None:
                kw["step_cache"] = cache(x_t, where)
            return unet(x_t, t, ctx, **kw).float()
        return Runner(model, self.schedule, self.device, bool(unet.config.frame_conditioning),
                      int(self.defaults.get("min_frames", 1)), noise_layout(unet.config), self.temporal_windows,
                      lambda z: self._decode(z, decode_chunk_size), steered=steer is not None or cache is not None)

    @contextlib.contextmanager
    def temporal_windows(self, length: int, stride: int = 4, weighting: str = "pyramid", loop: bool = False):
        """The UNet's (and a loaded SparseCtrl net's) temporal attention on overlapping windows for the block."""
        from vidiff.models.frames import windowed

        with contextlib.ExitStack() as stack:
            stack.enter_context(self.unet.temporal_windows(length, stride, weighting, loop))
            if self._sparsectrl is not None:
                stack.enter_context(windowed(self._sparsectrl, length, stride, weighting, loop))
            yield self

    def recipe(self) -> dict:
        """What loads this pipeline again: model (path or hub id@revision), motion adapter, variant, dtype, the
        whole scheduler config and the LoRAs with their sources and scales (stored in every video's settings)."""
        adapters = getattr(self, "_adapters", None)
        return {"model": getattr(self, "source", None), "motion_adapter": getattr(self, "adapter_source", None),
                "variant": getattr(self, "variant", None), "dtype": str(self.dtype).removeprefix("torch."),
                "scheduler": self.schedule.to_config(),
                **({"loras": [{"name": n, "source": adapters.sources.get(n), "scale": s}
                              for n, s in adapters.scales.items()]} if adapters else {})}
