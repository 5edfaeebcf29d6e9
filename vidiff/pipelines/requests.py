"""A generation request's checks before any work: arguments, a memory estimate, the far-outside warning.

`RequestChecks` is mixed into `VideoPipeline`; it reads the pipeline's `defaults`, `unet`, `codec`,
`schedule` and `dtype`.
"""

from __future__ import annotations

import torch

from vidiff.models.codec import VaeCodec
from vidiff.devices import free_memory
from vidiff.diffusion.samplers import get_sampler

MODES = ("all", "autoregressive", "windows", "fifo")


class RequestChecks:
    """Validation, peak-memory estimate and guard of a generation request (one clear line each)."""

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this."""
        return self.codec.factor * self.unet.config.downsample_factor

    # ---- checks ------------------------------------------------------------------------------
    def check_request(self, latents, num_frames, height, width, output_type: str, decode_chunk_size):
        """(latents, batch, frames, height, width) of a request: a given `latents`' shape sets the last four."""
        if output_type not in ("video", "latent"):
            raise ValueError(f"output_type must be 'video' or 'latent', got {output_type!r}")
        if decode_chunk_size is not None and (not isinstance(decode_chunk_size, int) or decode_chunk_size < 1):
            raise ValueError(f"decode_chunk_size must be an integer >= 1, got {decode_chunk_size!r}")
        b = 1
        if latents is not None:
            latents = torch.as_tensor(latents)
            r, c = self.codec.factor, self.codec.channels
            if latents.ndim != 5 or latents.shape[1] != c:
                raise ValueError(f"latents must be (b, {c}, f, h/{r}, w/{r}), got {tuple(latents.shape)}")
            b, num_frames, height, width = latents.shape[0], latents.shape[2], latents.shape[3] * r, latents.shape[4] * r
        return latents, b, num_frames, height, width

    def check_plan(self, mode, given, latents, output_type, b, free_init, first_frame_first, loop, noise_type):
        """(first_frame_first, noise_type) of a request, defaults filled in and the combinations checked."""
        if noise_type is None:              # FreeNoise's shuffled repeats run forward from frame 0; a loop has no start
            noise_type = "random" if loop else "shuffle_context"
        if first_frame_first is None:       # a loop has no first frame: frame 0 made alone and held would be one
            first_frame_first = bool(self.defaults.get("first_frame_first", False)) and not loop
        if mode == "fifo":
            if given or latents is not None or output_type != "video" or b > 1 or free_init is not None:
                raise ValueError("fifo mode makes one video from text: no given frames, latents, latent output or free_init")
            first_frame_first = False
        if first_frame_first and not self.unet.config.frame_conditioning:
            raise ValueError("first_frame_first=True needs a model with frame_conditioning (image-to-video); "
                             "this one has none")
        if first_frame_first and b > 1:
            raise ValueError("first_frame_first works on one video at a time (latents with b=1)")
        return first_frame_first, noise_type

    def check_args(self, num_frames=None, height=None, width=None, num_inference_steps=25, sampler=None,
                   mode="all", chunk=16, context=4, guidance_scale=7.5, fps=8, stride=4) -> tuple[int, int, int]:
        """Validate generation arguments before any work; returns (frames, height, width)."""
        f = self.defaults["num_frames"] if num_frames is None else num_frames
        h = self.defaults["height"] if height is None else height
        w = self.defaults["width"] if width is None else width
        if not isinstance(f, int) or f < 1:
            raise ValueError(f"num_frames must be an integer >= 1, got {f!r}")
        m = self.size_multiple
        for name, v in (("height", h), ("width", w)):
            if not isinstance(v, int) or v < m or v % m:
                raise ValueError(f"{name} must be a positive multiple of {m} for this model, got {v!r}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        get_sampler(sampler or self.schedule.sampler)
        self.schedule.plan(num_inference_steps, sampler)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "autoregressive" and not (1 <= context < chunk):
            raise ValueError(f"autoregressive mode needs 1 <= context < chunk, got context={context}, chunk={chunk}")
        if mode == "fifo" and chunk < 2:
            raise ValueError(f"fifo mode needs chunk (the window) >= 2, got {chunk}")
        if mode == "windows" and not (1 <= stride <= chunk):
            raise ValueError(f"windows mode needs 1 <= stride <= chunk, got stride={stride}, chunk={chunk}")
        cfg = self.unet.config
        if cfg.temporal and cfg.temporal_family == "animatediff":
            table = cfg.motion_max_seq_length
            window = f if mode == "all" else chunk if mode == "fifo" else min(chunk, f)
            if window > table:
                raise ValueError(f"{window} frames in one window exceed the motion module's positional table of "
                                 f"{table} frames; use mode='windows' (all frames denoised together, temporal "
                                 f"attention in overlapping windows) or mode='autoregressive' (CLI: --mode windows | "
                                 f"autoregressive) with chunk <= {table}")
        g = torch.as_tensor(guidance_scale, dtype=torch.float32)
        if g.ndim > 1 or (g.ndim == 1 and len(g) != 2) or not torch.isfinite(g).all():
            raise ValueError(f"guidance_scale must be a number or a (first_frame, last_frame) pair, got {guidance_scale!r}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        return f, h, w

    # ---- guards ------------------------------------------------------------------------------
    def estimate_memory(self, num_frames: int, height: int, width: int, mode: str = "all", chunk: int = 16,
                        guidance: bool = True) -> int:
        """Rough peak bytes of one generation: UNet activations of one window, the whole video's
        latents and frames, VAE decoding, weights. Calibrated on shapes-64 (measured/estimate ~0.75).
        A video shorter than the model's `min_frames` is sampled as a window that long (`sample_window`)."""
        num_frames = max(num_frames, int(self.defaults.get("min_frames", 1)))
        r = self.codec.factor
        window = num_frames if mode in ("all", "windows") else min(chunk, num_frames)
        h, w = max(1, height // r), max(1, width // r)
        ch = self.unet.config.block_out_channels
        cells = sum(c * max(1, h >> i) * max(1, w >> i) for i, c in enumerate(ch))   # activations per frame
        elem = torch.finfo(self.dtype).bits // 8
        unet = (2 if guidance else 1) * window * cells * elem * 24          # ~18 measured, +1/3 margin
        video = num_frames * (self.codec.channels * h * w * 4 * 3 + height * width * 3)
        vae = 8 * 128 * height * width * 4 * 6 if isinstance(self.codec, VaeCodec) else 0
        weights = sum(p.numel() * p.element_size() for p in self.unet.parameters())
        return int(unet + video + vae + weights)

    def guard(self, num_frames: int, height: int, width: int, mode: str = "all", chunk: int = 16,
              guidance: bool = True, force: bool = False) -> None:
        """Warn when a request is far outside what the model was trained on; refuse (unless `force`)
        one whose estimated peak memory exceeds what this machine has free, before any work."""
        import warnings

        d = self.defaults
        far = []
        if not (0.5 <= height / d["height"] <= 2 and 0.5 <= width / d["width"] <= 2):
            far.append(f"{width}x{height} (trained at {d['width']}x{d['height']})")
        window = num_frames if mode == "all" else min(chunk, num_frames)    # windows: no attention sees more than chunk
        if window > 2 * d["num_frames"]:
            far.append(f"{window} frames in one window (trained on {d['num_frames']})")
        need = self.estimate_memory(num_frames, height, width, mode, chunk, guidance)
        free = free_memory(self.device)            # the GPU's own free memory for a CUDA run
        if not force and free is not None and need > 0.9 * free:         # refused: the one line that matters
            gib = 2 ** 30
            msg = (f"{num_frames} frames at {width}x{height} need about {need / gib:.1f} GiB (estimate), more "
                   f"than the {free / gib:.1f} GiB free on {self.device}")
            ar = self.estimate_memory(num_frames, height, width, "autoregressive", min(chunk, 16), guidance)
            if mode == "all" and ar <= 0.9 * free:
                msg += f"; --mode autoregressive --chunk {min(chunk, 16)} needs about {ar / gib:.1f} GiB"
            raise ValueError(msg + "; --force tries anyway")
        if far:
            warnings.warn(f"{' and '.join(far)} is far outside what the model was trained on; expect poor results")

