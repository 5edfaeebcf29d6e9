"""Samplers: plain functions over a denoiser `D(x, sigma) -> x0`, in the k-diffusion style.

Every sampler has the signature `sample_x(denoise, x, sigmas, *, generator=None, callback=None)`
where x is `b c f h w` at noise level sigmas[0] (x = x0 + sigma * eps) and `sigmas` is `(n+1,)`
or per frame `(n+1, b, f)`. A frame whose sigma is 0 at both ends of a step is held fixed (it is a
given, conditioning frame). `callback(i, x, denoised)` runs after each step. Samplers that draw
noise take `randn(x, generator)` to lay it out as a reference implementation does (default: in
x's own `b c f h w` order).
"""

from __future__ import annotations

import torch

from vidiff.devices import randn as _draw
from vidiff.diffusion.schedule import per_frame


def _levels(sigmas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(n+1,) -> (n+1, b); (n+1, b, f) kept: the per-step level handed to the denoiser."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32, device=x.device)
    if sigmas.ndim == 1:
        return sigmas[:, None].expand(-1, x.shape[0])
    if sigmas.ndim == 3 and sigmas.shape[1:] == (x.shape[0], x.shape[2]):
        return sigmas
    raise ValueError(f"sigmas must be (steps+1,) or (steps+1, b, f)=(*, {x.shape[0]}, {x.shape[2]}), "
                     f"got {tuple(sigmas.shape)}")


def _hold(x: torch.Tensor, x_next: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
    """Keep frames whose level is 0 now and next (given frames) exactly as they are (no host sync)."""
    if s.ndim < 2:
        return x_next
    frozen = per_frame(((s == 0) & (s_next == 0)).float(), x) > 0
    return torch.where(frozen, x, x_next)


def _randn(x: torch.Tensor, generator: torch.Generator | None, randn=None) -> torch.Tensor:
    """Step noise like x, drawn on the generator's device and moved to x's."""
    if randn is not None:
        return randn(x, generator)
    return _draw(x.shape, generator, x.device, x.dtype)


def _ancestral(denoise, x, sigmas, eta, generator, callback, landing=None, randn=None):
    """Shared loop of DDIM (Song et al. 2021) and Euler ancestral: exact DDIM update in sigma space.

    `landing` (n,) or (n, b, f): the level each update goes to when it is not the next step's level
    (diffusers' DDIM steps to t - T//n); x is then rescaled to the next level, as the VP-space
    scheduler implicitly does when it calls the model at the next listed timestep.
    """
    levels = _levels(sigmas, x)
    lands = None
    if landing is not None:
        lands = torch.as_tensor(landing, dtype=torch.float32, device=x.device)
        lands = lands[:, None].expand(-1, x.shape[0]) if lands.ndim == 1 else lands
    for i in range(len(levels) - 1):
        s, s_next = levels[i], levels[i + 1]
        denoised = denoise(x, s)
        sb, nb = per_frame(s, x), per_frame(s_next if lands is None else lands[i], x)
        # eta-scaled ancestral noise: eta=0 is deterministic DDIM, eta=1 is DDPM-like.
        up = (eta * nb * (sb ** 2 - nb ** 2).clamp(min=0).sqrt() / sb.clamp(min=1e-12)).clamp(max=nb) if eta else 0 * nb
        down = (nb ** 2 - up ** 2).clamp(min=0).sqrt()
        eps = (x - denoised) / sb.clamp(min=1e-12)
        x_next = denoised + down * eps
        if eta:
            x_next = x_next + up * _randn(x, generator, randn)
        if lands is not None:
            x_next = x_next * ((1 + per_frame(s_next, x) ** 2) / (1 + nb ** 2)).sqrt()
        x = _hold(x, x_next, s, s_next)
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_ddim(denoise, x, sigmas, *, eta: float = 0.0, generator=None, callback=None, landing=None, randn=None):
    """DDIM (Song et al. 2021), with eta for stochasticity."""
    return _ancestral(denoise, x, sigmas, eta, generator, callback, landing, randn)


def sample_euler(denoise, x, sigmas, *, generator=None, callback=None):
    """Euler method on the probability-flow ODE (Karras et al. 2022, Alg. 1 without churn).

    In sigma space the Euler step x + (s' - s)(x - x0)/s is exactly DDIM's x0 + s' eps, so this is
    DDIM with eta=0; in diffusers the two differ only in the timestep grid their schedulers lay.
    """
    return _ancestral(denoise, x, sigmas, 0.0, generator, callback)


def sample_euler_ancestral(denoise, x, sigmas, *, eta: float = 1.0, generator=None, callback=None, randn=None):
    """Euler ancestral (k-diffusion; diffusers EulerAncestralDiscreteScheduler)."""
    return _ancestral(denoise, x, sigmas, eta, generator, callback, None, randn)


def sample_dpmpp_2m(denoise, x, sigmas, *, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022), first order on the first and the last step."""
    levels = _levels(sigmas, x)
    last = torch.as_tensor(sigmas).cpu().reshape(len(levels), -1).eq(0).all(1).tolist()   # host-side: no device sync
    old = h_last = None
    for i in range(len(levels) - 1):
        s, s_next = levels[i], levels[i + 1]
        denoised = denoise(x, s)
        sb, nb = per_frame(s, x), per_frame(s_next, x)
        lam = -sb.clamp(min=1e-12).log()
        lam_next = -nb.clamp(min=1e-12).log()
        h = lam_next - lam
        if old is None or last[i + 1]:
            d = denoised
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
        x_next = (nb / sb.clamp(min=1e-12)) * x - torch.expm1(-h) * d
        x = _hold(x, x_next, s, s_next)
        old, h_last = denoised, h
        if callback is not None:
            callback(i, x, denoised)
    return x


def _lam(s: torch.Tensor) -> torch.Tensor:
    """log-SNR half, lambda = log(alpha / sigma_vp) = -log(sigma) in k-diffusion units (inf at sigma 0)."""
    return -s.log()


def sample_dpmpp_2m_sde(denoise, x, sigmas, *, generator=None, callback=None, randn=None):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022; diffusers' `algorithm_type="sde-dpmsolver++"`, midpoint).

    In sigma units each step is x' = (s'/s) e^-h x + (1 - e^-2h) D + s' sqrt(1 - e^-2h) z, with D the
    first- or second-order data estimate and h = log(s / s'); noise is drawn every step, as diffusers does.
    """
    levels = _levels(sigmas, x)
    last = torch.as_tensor(sigmas).cpu().reshape(len(levels), -1).eq(0).all(1).tolist()
    old = h_last = None
    for i in range(len(levels) - 1):
        s, s_next = levels[i], levels[i + 1]
        denoised = denoise(x, s)
        sb, nb = per_frame(s, x), per_frame(s_next, x)
        h = (sb.clamp(min=1e-12) / nb.clamp(min=1e-12)).log()
        noise = _randn(x, generator, randn)
        d = denoised if old is None or last[i + 1] else denoised + (denoised - old) / (2 * h_last / h)
        decay = torch.exp(-h)
        x_next = (nb / sb.clamp(min=1e-12)) * decay * x + (1 - decay ** 2) * d \
            + nb * (1 - decay ** 2).clamp(min=0).sqrt() * noise
        x = _hold(x, x_next, s, s_next)
        old, h_last = denoised, h
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_plms(denoise, x, sigmas, *, generator=None, callback=None):
    """PLMS, the pseudo linear multistep method of PNDM (Liu et al. 2022; diffusers' PNDMScheduler with
    skip_prk_steps, what Stable Diffusion folders ship).

    Each step is DDIM's x' = x + (s' - s) e with e a multistep blend of the past noise estimates (Adams-Bashforth
    weights 1, 3/2, 23/12, 55/24); the first step is a Heun-like predictor-corrector that costs one more model call.
    """
    levels = _levels(sigmas, x)
    n = len(levels) - 1
    history: list = []
    for i in range(n):
        s, s_next = levels[i], levels[i + 1]
        sb, nb = per_frame(s, x), per_frame(s_next, x)
        denoised = denoise(x, s)
        e = (x - denoised) / sb.clamp(min=1e-12)
        if i == 0 and n > 1:                       # predictor, then the average of both ends' estimates
            x_pred = _hold(x, x + (nb - sb) * e, s, s_next)
            e_next = (x_pred - denoise(x_pred, s_next)) / nb.clamp(min=1e-12)
            history, e_use = [e], (e + e_next) / 2
        else:
            history = (history + [e])[-4:]
            k = len(history)
            w = {1: (1,), 2: (3, -1), 3: (23, -16, 5), 4: (55, -59, 37, -9)}[k]
            e_use = sum(c * h for c, h in zip(w, reversed(history))) / {1: 1, 2: 2, 3: 12, 4: 24}[k]
        x = _hold(x, x + (nb - sb) * e_use, s, s_next)
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_unipc(denoise, x, sigmas, *, generator=None, callback=None):
    """UniPC (Zhao et al. 2023; diffusers' UniPCMultistepScheduler defaults: order 2, bh2, predicting x0,
    lower order at the ends, the corrector on every step after the first).

    Before each predictor step the previous step is corrected with the model's estimate at the point it reached
    (UniC, no extra model call); the predictor (UniP) is DPM-Solver++-like with a B(h) = e^h - 1 weighting.
    """
    levels = _levels(sigmas, x)
    n = len(levels) - 1
    ms: list = []              # data estimates at the last two levels
    lams: list = []            # their lambdas
    last_x = order = None
    for i in range(n):
        s, s_next = levels[i], levels[i + 1]
        m = denoise(x, s)
        lam = _lam(per_frame(s, x))
        if i > 0:                                  # UniC: correct the step that led here
            lam_prev, m_prev = lams[-1], ms[-1]
            h = lam - lam_prev
            phi = torch.expm1(-h)
            x_c = (per_frame(s, x) / per_frame(levels[i - 1], x)) * last_x - phi * m_prev
            b1 = (phi / -h - 1) / phi
            if order == 1:
                rho_last, corr = 0.5, 0
            else:
                rk = (lams[-2] - lam_prev) / h
                b2 = ((phi / -h - 1) / -h - 0.5) * 2 / phi
                rho1 = (b1 - b2) / (1 - rk)
                rho_last, corr = b1 - rho1, rho1 * (ms[-2] - m_prev) / rk
            x = _hold(x, x_c - phi * (corr + rho_last * (m - m_prev)), levels[i - 1], s)
        ms, lams = (ms + [m])[-2:], (lams + [lam])[-2:]
        order = min(2, n - i, len(ms))
        last_x = x
        h = _lam(per_frame(s_next, x)) - lam
        phi = torch.expm1(-h)
        x_next = (per_frame(s_next, x) / per_frame(s, x).clamp(min=1e-12)) * x - phi * m
        if order == 2:                             # UniP-2: rho = 1/2 on the first difference
            rk = (lams[-2] - lam) / h
            x_next = x_next - phi * 0.5 * (ms[-2] - m) / rk
        x = _hold(x, x_next, s, s_next)
        if callback is not None:
            callback(i, x, m)
    return x


def sample_lcm(denoise, x, sigmas, *, timesteps, timestep_scaling: float = 10.0, generator=None, callback=None,
               randn=None):
    """Latent consistency sampling (Luo et al. 2023; diffusers LCMScheduler), for AnimateLCM and LCM-LoRAs.

    Each step maps x to the consistency function's output, a boundary-condition mix of the x0
    estimate and the (variance-preserving) input, then re-noises it to the next level; the last
    step returns the mix itself.
    """
    levels = _levels(sigmas, x)
    n = len(levels) - 1
    for i in range(n):
        s, s_next = levels[i], levels[i + 1]
        x0 = denoise(x, s)
        c = float(timesteps[i]) * timestep_scaling
        c_skip, c_out = 0.25 / (c * c + 0.25), c / (c * c + 0.25) ** 0.5     # sigma_data = 0.5
        sb = per_frame(s, x)
        denoised = c_out * x0 + c_skip * x / (1 + sb ** 2).sqrt()
        x_next = denoised + per_frame(s_next, x) * _randn(x, generator, randn) if i < n - 1 else denoised
        x = _hold(x, x_next, s, s_next)
        if callback is not None:
            callback(i, x, denoised)
    return x


SAMPLERS = {
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "plms": sample_plms,
    "unipc": sample_unipc,
    "lcm": sample_lcm,
}


def get_sampler(name: str):
    """Look a sampler up by name; ValueError naming the allowed ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
