"""Sampling plans over the one-window sampler: which frames are sampled together, which are given.

A plan gets a `Runner`: the model as a function, the schedule, the device and the few facts about the model a
plan needs (nothing else of the pipeline). `sample_window` samples one window of frames (some given);
`sample_autoregressive` slides such windows over a longer video, `sample_windows` fuses overlapping windows
every step, `sample_fifo` streams frames out of a queue. `VideoPipeline` builds the Runner and calls these.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from vidiff.devices import randn, randperm
from vidiff.diffusion.samplers import get_sampler
from vidiff.diffusion.schedule import Denoiser, NoiseSchedule, per_frame


@dataclass
class Runner:
    """What a sampling plan needs of a model, and nothing else."""

    model: Callable                    # model(x_t, t, ctx, cond=None, cond_mask=None) -> float32 prediction
    schedule: NoiseSchedule
    device: torch.device
    frame_conditioning: bool = False   # given frames enter as cond / cond_mask inputs (else: replacement)
    min_frames: int = 1                # the shortest window the model's temporal layers learned
    step_noise: Callable | None = None  # how samplers lay out step noise, when not `b c f h w` (`randn(x, g)`)
    windows: Callable | None = None    # windows(length, stride, weighting, loop=False): a context in which temporal
                                       # attention runs on overlapping windows (FreeNoise; wrapping with loop)
    decode: Callable | None = None     # latents -> `f h w 3` uint8 frames (fifo streams frames out)
    steered: bool = False              # the model also takes `where=` (a `Where`): control methods need the frames
                                       # of the window and the step


    def temporal_windows(self, length: int, stride: int, weighting: str, loop: bool = False):
        """The model's windowed-attention context (a no-op for a model without temporal layers); `loop` wraps it."""
        if not self.windows:
            return contextlib.nullcontext()
        return self.windows(length, stride, weighting, loop=True) if loop else self.windows(length, stride, weighting)


@dataclass
class Where:
    """Where sampling stands, for the methods that steer a video: the video's frames in this window and the step
    (its index in the window's grid of `steps`, read from the noise level the model is called at)."""

    frames: range
    sigmas: torch.Tensor               # the grid of this window's sampling, descending, ending at 0
    step: int = 0

    @property
    def steps(self) -> int:
        """Steps in the grid."""
        return len(self.sigmas) - 1

    def at(self, sigma: torch.Tensor) -> None:
        """Set the step from the (largest) noise level of a model call."""
        s = float(sigma.max())
        self.step = min(self.steps - 1, int((self.sigmas[:-1] > s * (1 + 1e-5)).sum()))


def sample_window(runner, shape, known, ctx, steps, guidance, sampler, eta, generator, progress, offset=0,
                  noise=None, init=None, start: int = 0):
    """Sample one window of frames with `runner`'s model, some possibly given (`known` = (latents, mask) or None).

    With `init` (clean latents of an input video), sampling starts at step `start` of the grid from
    `init` noised to that level (SDEdit; video-to-video), as diffusers' img2img pipelines do.
    Returns the final latents in the codec's (variance-preserving) units, as diffusers does. A free window
    shorter than the model's `min_frames` default is drawn as the start of one that long.
    """
    from tqdm.auto import tqdm

    b, _, f = shape[:3]
    k = runner.min_frames
    if f < k and known is None and init is None and noise is None:
        # the model's temporal layers never saw a window shorter than `min_frames` (its defaults): draw
        # this one as the first frames of a window that long (per-frame texts: the last one repeats)
        if ctx.ndim == 4:
            ctx = torch.cat([ctx, ctx[:, -1:].expand(-1, k - f, *ctx.shape[2:])], 1)
        return sample_window(runner, (*shape[:2], k, *shape[3:]), None, ctx, steps, guidance, sampler, eta, generator,
                             progress, offset)[:, :, :f]
    plan = runner.schedule.plan(steps, sampler)
    if noise is None:
        noise = randn(shape, generator)
    noise = noise.to(runner.device, torch.float32)
    sigmas = plan.sigmas[start:]                     # host-side: samplers move them; given-frame masks are host-side
    landing = None if plan.landing is None else plan.landing[start:]
    x = noise * plan.init_sigma if init is None else init.to(runner.device, torch.float32) + sigmas[0] * noise
    cfg = ctx.shape[0] == 2
    if ctx.shape[0] != b * (2 if cfg else 1):                  # [negative, positive] -> one per video
        ctx = ctx.repeat_interleave(b, 0)
    gscale = torch.as_tensor(guidance, dtype=torch.float32, device=runner.device)
    if gscale.ndim == 1:   # (first, last): a linear ramp over the frames of this window
        gscale = gscale[0] + (gscale[1] - gscale[0]) * torch.linspace(0, 1, f, device=runner.device)[None]
    framecond = known is not None and runner.frame_conditioning
    if framecond:
        lat, mask = known
        frozen = mask.bool().cpu()
        sigmas = sigmas[:, None, None].expand(-1, b, f).clone()
        sigmas[:, frozen] = 0                         # given frames sit at level 0 throughout
        if landing is not None:
            landing = landing[:, None, None].expand(-1, b, f).clone()
            landing[:, frozen] = 0
        x = torch.where(per_frame(mask, x) > 0, lat, x)

    n = 2 if cfg else 1
    kw = dict(cond=lat.repeat(n, 1, 1, 1, 1), cond_mask=mask.repeat(n, 1)) if framecond else {}
    where = Where(range(offset, offset + f), plan.sigmas[start:].float())
    if runner.steered:
        kw["where"] = where
    guided = _guided(runner, gscale, cfg, kw)
    denoise = Denoiser(lambda x_t, t: guided(x_t, t, ctx), runner.schedule, plan)
    if known is not None and not framecond:
        lat, mask = known
        replace = per_frame(mask, x) > 0
        fixed = randn(shape, generator, runner.device)

        def denoise(x, sigma, _d=denoise):       # replacement: given frames re-noised to sigma
            x = torch.where(replace, lat + per_frame(sigma, x) * fixed, x)
            return torch.where(replace, lat, _d(x, sigma))

    if runner.steered:
        def denoise(x, sigma, _d=denoise):       # the step, for control start / end
            where.at(sigma)
            return _d(x, sigma)

    extra = {"eta": eta} if sampler in ("ddim", "euler_ancestral") and eta else {}
    if sampler == "ddim" and landing is not None:
        extra["landing"] = landing
    if sampler == "lcm":
        extra.update(timesteps=plan.timesteps[start:], timestep_scaling=runner.schedule.timestep_scaling)
    if sampler in ("lcm", "euler_ancestral", "dpmpp_2m_sde") or extra.get("eta"):
        extra["randn"] = runner.step_noise
    bar = tqdm(total=len(sigmas) - 1, desc=f"frames {offset}-{offset + f - 1}", disable=not progress, leave=False)
    with torch.no_grad():
        x = get_sampler(sampler)(denoise, x, sigmas, generator=generator,
                                 callback=lambda *a: bar.update(1), **extra)
    bar.close()
    x = x * plan.output_scale
    if known is not None:
        x = torch.where(per_frame(known[1], x) > 0, known[0], x)
    return x


def sample_autoregressive(runner, shape, known, chunk, context, noise=None, seams: list | None = None, init=None,
                          **run):
    """Slide a `chunk`-frame window: each new window's first `context` frames are given.

    With `noise` (the whole video's starting noise) or `init` (video-to-video), each window starts from its slice.
    `seams`, when a list, receives the first new frame of every window after the first.
    """
    b, c, f, hh, ww = shape
    out = torch.zeros(shape, device=runner.device)
    done = torch.zeros(f, dtype=torch.bool)
    if known is not None:
        out = torch.where(per_frame(known[1], out) > 0, known[0], out)
        done = known[1][0].bool().cpu()
    # first window starts at the first frame still to make, backed up to give it context
    start = int(torch.nonzero(~done)[0]) if (~done).any() else f
    start = max(0, start - context) if start > 0 else 0
    windows = 0
    while start < f and not done[start:].all():
        end = min(start + chunk, f)
        win_mask = done[start:end].float()[None].expand(b, -1)
        win_known = (out[:, :, start:end], win_mask) if done[start:end].any() else None
        new = torch.nonzero(~done[start:end])
        if seams is not None and len(new) and windows:
            seams.append(start + int(new[0]))
        windows += 1
        per_frame_text = run["ctx"].ndim == 4                      # prompt travel: this window's texts
        window = sample_window(runner, (b, c, end - start, hh, ww), win_known, offset=start,
                              noise=None if noise is None else noise[:, :, start:end],
                              init=None if init is None else init[:, :, start:end],
                              **({**run, "ctx": run["ctx"][:, start:end]} if per_frame_text else run))
        out[:, :, start:end] = window
        done[start:end] = True
        if end == f:
            break
        start = end - context
    return out


NOISE_TYPES = ("shuffle_context", "repeat_context", "random")


def freenoise_noise(shape, generator, length: int, stride: int, noise_type: str = "shuffle_context") -> torch.Tensor:
    """Starting noise for windowed sampling (FreeNoise, Qiu et al. 2024), drawn as diffusers draws it.

    `shuffle_context`: every `stride` frames past the first window repeat a shuffled block of the
    frames `length` earlier, so distant windows start from correlated noise. diffusers'
    `repeat_context` draws all frames at once as well (its window-sized draw never triggers), so
    here it is the same as `random`.
    """
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise type must be one of {NOISE_TYPES}, got {noise_type!r}")
    noise = randn(shape, generator)
    f = shape[2]
    if noise_type != "shuffle_context":
        return noise
    for i in range(length, f, stride):
        start = max(0, i - length)
        end = min(f, start + stride)
        if end == start:
            break
        idx = torch.arange(start, end)[randperm(end - start, generator)]
        n = min(f, i + len(idx)) - i
        noise[:, :, i:i + n] = noise[:, :, idx[:n]]
    return noise


def sample_windows(runner, shape, known, length: int, stride: int, weighting: str, noise_type: str, noise=None,
                   seams: list | None = None, loop: bool = False, **run):
    """All frames denoised together; temporal attention in overlapping windows fused every step (FreeNoise).

    `seams`, when a list, receives where each window after the first starts (its frames overlap the
    previous window, so these are where a join could show).
    """
    if noise is None:
        noise = freenoise_noise(shape, run["generator"], length, stride, noise_type)
    f = shape[2]
    if seams is not None and f > length:
        starts = list(range(stride, f - length + 1, stride))
        if not starts or starts[-1] + length < f:
            starts.append(f - length)
        seams.extend(starts)
    if loop:                                   # wrapping windows have no first or last: no seams to list
        seams = None
    with runner.temporal_windows(length, stride, weighting, loop=loop):
        return sample_window(runner, shape, known, noise=noise, **run)


def sample_plan(runner, mode: str, shape, known, run: dict, chunk: int, context: int, stride: int, weighting: str,
                noise_type: str, noise=None, free_init=None, loop: bool = False):
    """(latents, seams) of a whole video by plan `mode`: all frames in one window, overlapping windows fused
    every step (`windows`), or windows one after another (`autoregressive`). `run` holds `sample_window`'s
    arguments; seams is None for one window. `free_init` (options or iterations) repeats the one-window plan
    as FreeInit does (`vidiff/diffusion/free_init.py`)."""
    if free_init is not None:
        from vidiff.diffusion.free_init import sample_free_init

        if (mode != "all" and chunk < shape[2]) or run.get("init") is not None:
            raise ValueError("free_init works on one window (mode 'all'), without an input video")
        return sample_free_init(lambda z, n: sample_window(runner, shape, known, noise=z, **{**run, "steps": n}),
                                runner.schedule, shape, run["generator"], runner.device, run["steps"], free_init,
                                noise), None
    if loop:                                   # a looping video: windows (and temporal convolutions) wrap round
        if mode != "windows":
            raise ValueError(f"loop=True works with mode 'windows', got mode {mode!r}")
        return sample_windows(runner, shape, known, chunk, stride, weighting, noise_type, noise, None, loop=True,
                              **run), None
    if mode == "all" or chunk >= shape[2]:
        return sample_window(runner, shape, known, noise=noise, **run), None
    seams: list = []
    if mode == "windows":
        return sample_windows(runner, shape, known, chunk, stride, weighting, noise_type, noise=noise, seams=seams,
                              **run), seams
    return sample_autoregressive(runner, shape, known, chunk, context, noise=noise, seams=seams, **run), seams


def _guided(runner, gscale: torch.Tensor, cfg: bool, kw: dict):
    """`model(x_t, t, ctx)`: the unconditional and conditional halves in one UNet batch when `cfg`, then guidance."""
    n = 2 if cfg else 1

    def model(x_t, t, ctx):
        t = t.repeat(n, *([1] * (t.ndim - 1)))
        out = runner.model(x_t.repeat(n, 1, 1, 1, 1), t, ctx, **kw)
        if not cfg:
            return out
        uncond, cond = out.chunk(2)
        return uncond + per_frame(gscale, uncond) * (cond - uncond)
    return model


def fifo_cost(frames: int, window: int, partitions: int, lookahead: bool = True) -> tuple[int, int]:
    """(UNet window passes of a fifo run, passes per output frame): `sample_fifo`'s loop, counted."""
    la, nf = (window // 2 if lookahead else 0), partitions * window
    per = len(range(0, la + nf - window + 1, window // 2)) if lookahead else len(range(0, nf, window))
    return (frames + nf - window) * per + nf, per          # + the base clip: nf steps of one window


def sample_fifo(runner, shape, ctx, guidance, generator, progress, window: int, partitions: int = 2,
                lookahead: bool = True):
    """FIFO-Diffusion (Kim et al. 2024): a queue of frames whose noise rises from head to tail.

    The queue holds `partitions * window` frames, frame k at level k of a DDIM grid of that many
    steps. Each pass denoises every frame one level (the UNet sees `window` frames at a time, each
    at its own level), the clean head frame leaves as output and fresh noise joins the tail, so
    memory does not grow with the video's length. With `lookahead`, `window / 2` clean frames ride
    ahead of the head and windows overlap by half; only each window's noisier half is written back.
    The queue starts from a base clip sampled in one window, and the first `(partitions - 1) * window`
    outputs are warm-up and dropped (the paper's released code). Returns decoded frames `f h w 3`.
    """
    from tqdm.auto import tqdm

    b, c, total, hh, ww = shape
    f, n = window, partitions
    if b != 1:
        raise ValueError("fifo mode makes one video at a time (b=1)")
    if f < 2 or n < 1 or (lookahead and f % 2):
        raise ValueError(f"fifo needs window >= 2 (even with lookahead) and partitions >= 1, got {f} and {n}")
    nf, la, warm = n * f, (f // 2 if lookahead else 0), n * f - f
    plan = runner.schedule.plan(nf, "ddim")
    sig = plan.sigmas.to(runner.device)
    levels = sig[:-1].flip(0)                                        # slot k (0 = head) sits at levels[k]
    lands = torch.cat([sig[-1:], levels[:-1]])                       # one level down; the head lands clean
    lev_all = torch.cat([levels[:1].expand(la), levels])             # lookahead slots are read at level 0
    land_all = torch.cat([levels[:1].expand(la), lands])
    per_frame_text = ctx.ndim == 4
    texts = (lambda idx: ctx[:, idx]) if per_frame_text else (lambda idx: ctx)     # noqa: E731

    # the queue starts from a base clip: the last `window` slots hold its frames noised to their levels,
    # the earlier ones its first frame
    base = sample_window(runner, (b, c, f, hh, ww), None, texts([min(i, total - 1) for i in range(f)]), nf,
                         guidance, "ddim", 0.0, generator, False)
    eps = randn((b, c, la + nf, hh, ww), generator, runner.device)
    src = [0] * la + [max(0, k - warm) for k in range(nf)]
    queue = base[:, :, src] + lev_all[None, None, :, None, None] * eps
    gscale = torch.as_tensor(guidance, dtype=torch.float32, device=runner.device)
    if gscale.ndim:
        raise ValueError("fifo mode takes one guidance scale, not a (first, last) ramp")
    starts = list(range(0, la + nf - f + 1, f // 2)) if lookahead else list(range(0, nf, f))
    # one model per queue window; a steered runner (step caching) is told which slots it holds
    models = {s: _guided(runner, gscale, ctx.shape[0] == 2,
                         {"where": Where(range(s, s + f), torch.zeros(1))} if runner.steered else {}) for s in starts}
    keep = f // 2 if lookahead else 0                                # with lookahead only the noisier half is written
    out = []
    bar = tqdm(total=total + warm, desc="fifo", disable=not progress, leave=False)
    with torch.no_grad():
        for it in range(total + warm):
            # output frame of each slot (for a per-frame prompt): stream position - warm-up, clamped
            frame = [min(max(it - la + j - warm, 0), total - 1) for j in range(la + nf)]
            for s in reversed(starts):                               # tail first: each window reads un-updated slots
                e = s + f
                x, sl = queue[:, :, s:e], lev_all[s:e][None].expand(b, -1)
                slot = models[s]
                x0 = Denoiser(lambda x_t, t, idx=frame[s:e]: slot(x_t, t, texts(idx)), runner.schedule)(x, sl)
                ratio = per_frame(land_all[s:e][None].expand(b, -1) / sl, x0)
                queue[:, :, s + keep:e] = (x0 + ratio * (x - x0))[:, :, keep:]
            if it >= warm:
                out.append(runner.decode(queue[:, :, la:la + 1] * plan.output_scale)[0])
            tail = randn((b, c, 1, hh, ww), generator, runner.device) * plan.init_sigma
            queue = torch.cat([queue[:, :, 1:], tail], dim=2)
            bar.update(1)
    bar.close()
    return np.stack(out)
