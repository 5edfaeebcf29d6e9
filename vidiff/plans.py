"""Sampling plans over the one-window sampler: which frames are sampled together, which are given.

`sample_window` samples one window of frames (some given) with a pipeline's UNet, schedule and
codec; `sample_autoregressive` slides such windows over a longer video. `VideoPipeline` stays the
thin owner of model, text, codec and schedule and calls these.
"""

from __future__ import annotations

import torch
from einops import rearrange

from .samplers import get_sampler
from .schedule import Denoiser, per_frame


def sample_window(pipe, shape, known, ctx, steps, guidance, sampler, eta, generator, progress, offset=0,
                  noise=None):
    """Sample one window of frames with `pipe`, some possibly given (`known` = (latents, mask) or None).

    Returns the final latents in the codec's (variance-preserving) units, as diffusers does.
    """
    from tqdm.auto import tqdm

    b, _, f = shape[:3]
    plan = pipe.schedule.plan(steps, sampler)
    if noise is None:
        noise = torch.randn(shape, generator=generator)
    x = noise.to(pipe.device, torch.float32) * plan.init_sigma
    sigmas = plan.sigmas.to(pipe.device)
    landing = None if plan.landing is None else plan.landing.to(pipe.device)
    cfg = ctx.shape[0] == 2
    if ctx.shape[0] != b * (2 if cfg else 1):                  # [negative, positive] -> one per video
        ctx = ctx.repeat_interleave(b, 0)
    gscale = torch.as_tensor(guidance, dtype=torch.float32, device=pipe.device)
    if gscale.ndim == 1:   # (first, last): a linear ramp over the frames of this window
        gscale = gscale[0] + (gscale[1] - gscale[0]) * torch.linspace(0, 1, f, device=pipe.device)[None]
    framecond = known is not None and pipe.unet.config.frame_conditioning
    if framecond:
        lat, mask = known
        frozen = mask.bool()
        sigmas = sigmas[:, None, None].expand(-1, b, f).clone()
        sigmas[:, frozen] = 0                         # given frames sit at level 0 throughout
        if landing is not None:
            landing = landing[:, None, None].expand(-1, b, f).clone()
            landing[:, frozen] = 0
        x = torch.where(per_frame(mask, x) > 0, lat, x)

    n = 2 if cfg else 1         # unconditional and conditional halves in one UNet batch
    kw = dict(cond=lat.repeat(n, 1, 1, 1, 1).to(pipe.dtype), cond_mask=mask.repeat(n, 1)) if framecond else {}

    def model(x_t, t):
        t = t.repeat(n, *([1] * (t.ndim - 1)))
        out = pipe.unet(x_t.repeat(n, 1, 1, 1, 1).to(pipe.dtype), t, ctx, **kw).float()
        if not cfg:
            return out
        uncond, cond = out.chunk(2)
        return uncond + per_frame(gscale, uncond) * (cond - uncond)

    denoise = Denoiser(model, pipe.schedule)
    if known is not None and not framecond:
        lat, mask = known
        replace = per_frame(mask, x) > 0
        fixed = torch.randn(shape, generator=generator).to(pipe.device)

        def denoise(x, sigma, _d=denoise):       # replacement: given frames re-noised to sigma
            x = torch.where(replace, lat + per_frame(sigma, x) * fixed, x)
            return torch.where(replace, lat, _d(x, sigma))

    extra = {"eta": eta} if sampler in ("ddim", "euler_ancestral") and eta else {}
    if sampler == "ddim" and landing is not None:
        extra["landing"] = landing
    if sampler == "lcm":
        extra.update(timesteps=plan.timesteps, timestep_scaling=pipe.schedule.timestep_scaling)
    if sampler in ("lcm", "euler_ancestral") or extra.get("eta"):
        extra["randn"] = noise_layout(pipe.unet.config)
    bar = tqdm(total=steps, desc=f"frames {offset}-{offset + f - 1}", disable=not progress, leave=False)
    with torch.no_grad():
        x = get_sampler(sampler)(denoise, x, sigmas, generator=generator,
                                 callback=lambda *a: bar.update(1), **extra)
    bar.close()
    x = x * plan.output_scale
    if known is not None:
        x = torch.where(per_frame(known[1], x) > 0, known[0], x)
    return x


def noise_layout(unet_config):
    """How a sampler draws its step noise: as diffusers' pipeline for this family lays it out.

    TextToVideoSDPipeline steps its scheduler on `(b f) c h w`, so ModelScope models draw noise
    frame-major; everything else draws it in `b c f h w` order.
    """
    if unet_config.temporal_family != "modelscope" or not unet_config.temporal:
        return None

    def randn(x, generator):
        b, c, f, h, w = x.shape
        flat = torch.randn((b * f, c, h, w), generator=generator, dtype=x.dtype).to(x.device)
        return rearrange(flat, "(b f) c h w -> b c f h w", b=b)
    return randn

def sample_autoregressive(pipe, shape, known, chunk, context, noise=None, seams: list | None = None, **run):
    """Slide a `chunk`-frame window: each new window's first `context` frames are given.

    With `noise` (the whole video's starting noise), each window starts from its slice of it.
    `seams`, when a list, receives the first new frame of every window after the first.
    """
    b, c, f, hh, ww = shape
    out = torch.zeros(shape, device=pipe.device)
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
        win_mask = done[start:end].float()[None].expand(b, -1).to(pipe.device)
        win_known = (out[:, :, start:end], win_mask) if win_mask.any() else None
        new = torch.nonzero(~done[start:end])
        if seams is not None and len(new) and windows:
            seams.append(start + int(new[0]))
        windows += 1
        window = sample_window(pipe, (b, c, end - start, hh, ww), win_known, offset=start,
                              noise=None if noise is None else noise[:, :, start:end], **run)
        out[:, :, start:end] = window
        done[start:end] = True
        if end == f:
            break
        start = end - context
    return out
