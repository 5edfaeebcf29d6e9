"""FreeInit (Wu et al. 2023): sample several times, each pass starting from the last result's low frequencies.

After a pass, its final latents are diffused back to the top of the schedule with the first pass's own starting
noise; in 3-D frequency space (frames, height, width) a low-pass filter keeps that result's low frequencies and
fresh noise supplies the high ones. The low frequencies carry the layout and the motion, so later passes refine
one consistent motion instead of drawing a new one. As diffusers' `enable_free_init` does it (same filter, same
generator draws, one float32 draw per extra pass), so a seed gives its video.
"""

from __future__ import annotations

import torch

from vidiff.devices import randn

METHODS = ("butterworth", "gaussian", "ideal")
DEFAULTS = {"iterations": 3, "method": "butterworth", "order": 4, "spatial": 0.25, "temporal": 0.25, "fast": False}


def check_free_init(options) -> dict:
    """`options` (a dict of DEFAULTS' keys, or an int: that many iterations) with the defaults filled in; one clear
    line for anything else."""
    if isinstance(options, bool) or not isinstance(options, (int, dict)):
        raise ValueError(f"free_init must be a number of iterations or a dict of {sorted(DEFAULTS)}, got {options!r}")
    opts = {**DEFAULTS, **({"iterations": options} if isinstance(options, int) else options)}
    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown free_init keys {unknown}; allowed: {sorted(DEFAULTS)}")
    if not isinstance(opts["iterations"], int) or opts["iterations"] < 1:
        raise ValueError(f"free_init iterations must be an integer >= 1, got {opts['iterations']!r}")
    if opts["method"] not in METHODS:
        raise ValueError(f"free_init method must be one of {', '.join(METHODS)}, got {opts['method']!r}")
    for key in ("spatial", "temporal"):
        if not 0 <= opts[key] <= 1:
            raise ValueError(f"free_init {key} stop frequency must be in [0, 1], got {opts[key]}")
    return opts


def low_pass(f: int, h: int, w: int, method: str, order: float, spatial: float, temporal: float) -> torch.Tensor:
    """The `(f, h, w)` low-pass mask over centred frequencies: distance d^2 with the temporal axis scaled by
    spatial/temporal; butterworth 1/(1 + (d^2/s^2)^order), gaussian exp(-d^2/(2 s^2)), ideal d^2 <= 2 s (as
    diffusers and the original write it). A zero stop frequency gives all zeros."""
    if spatial == 0 or temporal == 0:
        return torch.zeros(f, h, w)
    axis = lambda n: 2 * torch.arange(n, dtype=torch.float64) / n - 1       # noqa: E731
    d2 = ((spatial / temporal) * axis(f))[:, None, None] ** 2 + axis(h)[None, :, None] ** 2 + axis(w)[None, None] ** 2
    if method == "butterworth":
        mask = 1 / (1 + (d2 / spatial ** 2) ** order)
    elif method == "gaussian":
        mask = torch.exp(-d2 / (2 * spatial ** 2))
    else:
        mask = (d2 <= spatial * 2).to(torch.float64)
    return mask.float()


def mix(x: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Low frequencies of `x`, high frequencies of `noise` (over the last three axes: frames, height, width)."""
    dims = (-3, -2, -1)
    fx = torch.fft.fftshift(torch.fft.fftn(x, dim=dims), dim=dims)
    fn = torch.fft.fftshift(torch.fft.fftn(noise, dim=dims), dim=dims)
    mixed = fx * mask + fn * (1 - mask)
    return torch.fft.ifftn(torch.fft.ifftshift(mixed, dim=dims), dim=dims).real


def sample_free_init(sample, schedule, shape, generator, device, steps: int, options, noise=None) -> torch.Tensor:
    """Final latents of FreeInit: `sample(noise, steps)` (one pass from starting noise in the pipeline's units)
    run `iterations` times; `fast` gives pass k of n only `steps * (k + 1) / n` steps (coarse to fine)."""
    opts = check_free_init(options)
    n = opts["iterations"]
    first = randn(shape, generator, device) if noise is None else noise.to(device, torch.float32)
    mask = low_pass(*shape[-3:], opts["method"], opts["order"], opts["spatial"], opts["temporal"]).to(device)
    top = torch.full((shape[0],), schedule.num_train_timesteps - 1, device=device)
    out, start = None, first
    for k in range(n):
        if k:
            diffused = schedule.add_noise(out.float(), first, top).float()
            start = mix(diffused, randn(shape, generator, device), mask)
        out = sample(start, max(1, int(steps / n * (k + 1))) if opts["fast"] else steps)
    return out
