"""Noise schedules, prediction types and training targets (DDPM family, diffusers-compatible).

Training works in the variance-preserving form x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps with
a_t = alphas_cumprod[t]. Sampling works in the k-diffusion form x = x0 + sigma * eps with
sigma = sqrt((1 - a_t) / a_t); `Denoiser` turns a model into the function `x0 = D(x, sigma)` that
every sampler takes. Timesteps and sigmas may be per sample `(b,)` or per frame `(b, f)`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "linspace", "trailing")
# diffusers scheduler class -> the vidiff sampler that walks the same trajectory
SCHEDULER_SAMPLERS = {"DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler",
                      "EulerAncestralDiscreteScheduler": "euler_ancestral",
                      "DPMSolverMultistepScheduler": "dpmpp_2m", "LCMScheduler": "lcm",
                      "PNDMScheduler": "plms", "UniPCMultistepScheduler": "unipc"}
SAMPLER_SCHEDULERS = {**{v: k for k, v in SCHEDULER_SAMPLERS.items()}, "dpmpp_2m_sde": "DPMSolverMultistepScheduler"}
# named scheduler configs a user picks by one word (CLI --scheduler NAME)
SCHEDULER_PRESETS = {
    # AnimateDiff's own (its repo and diffusers' AnimateDiff docs): DDIM, linear betas, linspace, offset 1
    "animatediff": {"_class_name": "DDIMScheduler", "beta_schedule": "linear", "beta_start": 0.00085,
                    "beta_end": 0.012, "timestep_spacing": "linspace", "steps_offset": 1, "clip_sample": False},
}
# config values these samplers do not reproduce: key -> the values that are fine
_UNSUPPORTED = {"clip_sample": (False, None), "thresholding": (False, None),
                "use_exponential_sigmas": (False, None), "use_beta_sigmas": (False, None),
                "use_lu_lambdas": (False, None), "final_sigmas_type": ("zero", None),
                "interpolation_type": ("linear", None), "algorithm_type": ("dpmsolver++", "sde-dpmsolver++", None),
                "solver_order": (2, None), "euler_at_final": (False, None), "use_flow_sigmas": (False, None),
                "timestep_type": ("discrete", None), "solver_type": ("midpoint", "bh2", None),
                "predict_x0": (True, None), "disable_corrector": ([], None), "lower_order_final": (True, None),
                "skip_prk_steps": (True, None), "use_dynamic_shifting": (False, None)}
KARRAS = ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler")


def per_frame(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a level of shape `()`, `(b,)` or `(b, f)` against a video `b c f h w`."""
    s = torch.as_tensor(s, device=x.device, dtype=x.dtype)
    if s.ndim == 0:
        return s
    if s.ndim == 1:
        return s.view(-1, 1, 1, 1, 1)
    if s.ndim == 2:
        return s[:, None, :, None, None]
    raise ValueError(f"noise level must have shape (), (b,) or (b, f), got {tuple(s.shape)}")


def rescale_terminal_snr(alphas_cumprod: torch.Tensor, snr: float) -> torch.Tensor:
    """Map sqrt(alphas_cumprod) linearly so the first stays and the last has signal-to-noise `snr`.

    With `snr=0` this is diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023). A small positive
    `snr` keeps the top sigma finite. Why it matters for video: at the top of an ordinary schedule a
    clip still carries a little signal, and over many frames and pixels that is enough to place the
    object, so the model learns to read its trajectory from the noise instead of from the prompt.
    """
    if not 0 <= snr < 1:
        raise ValueError(f"terminal_snr must be in [0, 1), got {snr}")
    s = alphas_cumprod.sqrt()
    target = math.sqrt(snr / (1 + snr))                                   # sqrt(a) at SNR a/(1-a) = snr
    if target >= s[-1]:
        raise ValueError(f"terminal_snr={snr} is not below the schedule's own last SNR "
                         f"{float(alphas_cumprod[-1] / (1 - alphas_cumprod[-1])):.3g}")
    s = (s - s[-1]) * (s[0] - target) / (s[0] - s[-1]) + target
    return s ** 2


@dataclass
class NoiseSchedule:
    """A DDPM noise schedule; fields are diffusers' `scheduler_config.json` keys."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"      # linear | scaled_linear | squaredcos_cap_v2
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "epsilon"          # epsilon | v_prediction | sample (the clean x0 itself)
    timestep_spacing: str = "trailing"        # leading | linspace | trailing (sampling grid)
    steps_offset: int = 0                     # added to "leading" timesteps (SD configs use 1)
    set_alpha_to_one: bool = True             # DDIM: the last step lands on sigma=0
    class_name: str = "DDIMScheduler"        # diffusers' `_class_name`: picks the default sampler and its grid
    original_inference_steps: int = 50        # LCMScheduler: the distillation grid its steps are taken from
    timestep_scaling: float = 10.0            # LCMScheduler: boundary-condition scale
    use_karras_sigmas: bool = False           # Euler / DPM++ / UniPC: Karras et al. (2022) rho=7 sigma spacing
    algorithm_type: str = "dpmsolver++"       # DPMSolverMultistepScheduler: dpmsolver++ | sde-dpmsolver++ (noise each step)
    terminal_snr: float | None = None         # rescale sqrt(alphas_cumprod) linearly (Lin et al. 2023)
                                              # so the last timestep has this SNR, e.g. 1e-8: near zero,
                                              # yet a finite sigma for the samplers. None: as the betas give

    def __post_init__(self):
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.class_name not in SCHEDULER_SAMPLERS:
            raise ValueError(f"scheduler class {self.class_name!r} is not supported; supported: "
                             f"{', '.join(SCHEDULER_SAMPLERS)}")
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {self.timestep_spacing!r}")
        if self.terminal_snr is not None and not 0 < self.terminal_snr < 1:
            raise ValueError(f"terminal_snr must be in (0, 1) (0 would make the top sigma infinite), "
                             f"got {self.terminal_snr}")
        if self.use_karras_sigmas and self.class_name not in KARRAS:
            raise ValueError(f"use_karras_sigmas=True works with {', '.join(KARRAS)}, not {self.class_name}")
        if self.class_name == "PNDMScheduler" and self.timestep_spacing != "leading":
            raise ValueError(f"PNDMScheduler runs with timestep_spacing='leading' (as SD ships it), got "
                             f"{self.timestep_spacing!r}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        T = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64)
        elif self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, T, dtype=torch.float64) ** 2
        else:  # Nichol & Dhariwal 2021 cosine, betas capped at 0.999
            abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
            betas = torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)],
                                 dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)                      # (T,) float64
        if self.terminal_snr is not None:
            self.alphas_cumprod = rescale_terminal_snr(self.alphas_cumprod, self.terminal_snr)
        self.sigmas_table = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    # ---- config -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, d: dict) -> "NoiseSchedule":
        """Build from a diffusers scheduler config dict (other schedulers' extra keys are ignored)."""
        if d.get("rescale_betas_zero_snr"):
            raise ValueError("rescale_betas_zero_snr=True is not supported")
        if d.get("trained_betas") is not None:
            raise ValueError("trained_betas are not supported; use a beta_schedule")
        for key, ok in _UNSUPPORTED.items():
            if d.get(key) not in ok:
                raise ValueError(f"scheduler config {key}={d[key]!r} is not supported; allowed: {ok[0]!r}")
        names = {f.name for f in fields(cls)}
        d = {**d, "class_name": d.get("_class_name") or d.get("class_name") or "DDIMScheduler"}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def for_training(cls, d: dict) -> "NoiseSchedule":
        """Build from a folder's scheduler config for training: only its betas and prediction type
        matter there, so a sampling class vidiff does not run (e.g. SD's PNDMScheduler) becomes DDIM."""
        d = {k: v for k, v in d.items() if k not in _UNSUPPORTED}
        if d.get("_class_name") not in SCHEDULER_SAMPLERS:
            d["_class_name"] = "DDIMScheduler"
        return cls.from_config(d)

    def to_config(self) -> dict:
        """The diffusers-compatible config dict (it loads into the diffusers class it names)."""
        d = asdict(self)
        return {"_class_name": d.pop("class_name"), **d, "clip_sample": False}

    @property
    def sampler(self) -> str:
        """The vidiff sampler that walks this scheduler's trajectory."""
        if self.class_name == "DPMSolverMultistepScheduler" and self.algorithm_type == "sde-dpmsolver++":
            return "dpmpp_2m_sde"
        return SCHEDULER_SAMPLERS[self.class_name]

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "NoiseSchedule":
        """Read `scheduler_config.json` from a scheduler folder or a model folder holding `scheduler/`."""
        path = Path(path)
        for p in (path, path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
            if p.is_file():
                return cls.from_config(json.loads(p.read_text()))
        raise FileNotFoundError(f"no scheduler_config.json in {path}")

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write `scheduler_config.json` into folder `path`."""
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "scheduler_config.json").write_text(json.dumps(self.to_config(), indent=2) + "\n")

    # ---- training ---------------------------------------------------------------------------
    def _ac(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ac = self.alphas_cumprod.to(x.device)[torch.as_tensor(t, device=x.device).long()]
        return per_frame(ac.to(x.dtype), x)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise, with integer t of shape (b,) or (b, f)."""
        ac = self._ac(t, x0)
        return ac.sqrt() * x0 + (1 - ac).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model should output: noise (epsilon), v = sqrt(a) noise - sqrt(1-a) x0, or x0 (sample)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        ac = self._ac(t, x0)
        return ac.sqrt() * noise - (1 - ac).sqrt() * x0

    def loss_weight(self, t: torch.Tensor, x: torch.Tensor, floor: float = 0.05) -> torch.Tensor | None:
        """Per-frame weight on the squared error of the prediction; None means 1.

        For `sample` the error is measured in v units (Li & He 2025, "Back to Basics"): the model
        outputs x0 but is weighted as a v-model, v error = x0 error / sqrt(1 - a), with sqrt(1 - a)
        floored at `floor` so the lowest levels do not dominate.
        """
        if self.prediction_type != "sample":
            return None
        return 1 / (1 - self._ac(t, x)).clamp(min=floor ** 2)

    # ---- sampling grid ----------------------------------------------------------------------
    def timesteps(self, n: int) -> torch.Tensor:
        """`n` sampling timesteps (float, descending) by `timestep_spacing`, as diffusers lays them."""
        if n < 1:
            raise ValueError(f"number of steps must be >= 1, got {n}")
        T = self.num_train_timesteps
        if n > T:
            raise ValueError(f"number of steps {n} exceeds num_train_timesteps={T}")
        if self.timestep_spacing == "leading":
            ts = torch.arange(n, dtype=torch.float64).mul(T // n).round() + self.steps_offset
            return ts.flip(0)
        if self.timestep_spacing == "trailing":
            return (torch.arange(T, 0, -T / n, dtype=torch.float64).round() - 1)[:n]
        return torch.linspace(0, T - 1, n, dtype=torch.float64).flip(0)

    def plan(self, n: int, sampler: str | None = None) -> "Plan":
        """The grid `sampler` (default: this scheduler's) walks in `n` steps, laid as diffusers' class for it lays it.

        DDIM steps from t to t - T//n, which is not always the next listed timestep (linspace and
        trailing grids when n does not divide T); `landing` then records where each update lands.
        """
        sampler = sampler or self.sampler
        cls = SAMPLER_SCHEDULERS.get(sampler)
        if cls is None:
            raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLER_SCHEDULERS)}")
        T = self.num_train_timesteps
        if n < 1:
            raise ValueError(f"number of steps must be >= 1, got {n}")
        if n > T:
            raise ValueError(f"number of steps {n} exceeds num_train_timesteps={T}")
        table = self.sigmas_table
        final = 0.0 if self.set_alpha_to_one else float(table[0])
        landing = None
        if cls == "LCMScheduler":
            k = T // self.original_inference_steps
            origin = (torch.arange(1, self.original_inference_steps + 1, dtype=torch.float64) * k - 1).flip(0)
            if n > self.original_inference_steps:
                raise ValueError(f"the lcm sampler takes at most original_inference_steps="
                                 f"{self.original_inference_steps} steps, got {n}")
            idx = torch.floor(torch.linspace(0, len(origin), n + 1, dtype=torch.float64)[:-1]).long()
            ts, final = origin[idx], 0.0
        elif cls in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler") and self.use_karras_sigmas:
            ts, sig = self._karras(table.flip(0), n, round_t=self.beta_schedule != "squaredcos_cap_v2")
            sigmas = torch.cat([sig, torch.tensor([0.0], dtype=torch.float64)])
            return Plan(ts, sigmas.float(), None, (float(sigmas.max()) ** 2 + 1) ** 0.5, exact_t=True)
        elif cls in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
            if self.timestep_spacing == "linspace":
                ts = torch.linspace(0, T - 1, n + 1, dtype=torch.float64).round().flip(0)[:-1]
            elif self.timestep_spacing == "leading":
                ts = (torch.arange(n + 1, dtype=torch.float64) * (T // (n + 1))).round().flip(0)[:-1] + self.steps_offset
            else:
                ts = (torch.arange(T, 0, -T / n, dtype=torch.float64).round() - 1)[:n]
            final = 0.0
        elif cls == "EulerDiscreteScheduler" and self.use_karras_sigmas:
            spaced = self.sigma_at(self.timesteps(n))
            ts, sig = self._karras(spaced, n, round_t=False)
            sigmas = torch.cat([sig, torch.tensor([0.0], dtype=torch.float64)])
            s0 = float(sigmas.max())
            init = s0 if self.timestep_spacing != "leading" else (s0 ** 2 + 1) ** 0.5
            return Plan(ts, sigmas.float(), None, init, exact_t=True)
        elif cls == "PNDMScheduler":
            ts = self.timesteps(n).round()
        else:
            ts = self.timesteps(n)
            if cls == "DDIMScheduler":
                ts = ts.round()
                prev = ts - T // n
                landing = torch.where(prev >= 0, table[prev.clamp(min=0).long()], torch.tensor(final, dtype=torch.float64))
            else:
                final = 0.0
        sig = self.sigma_at(ts)
        sigmas = torch.cat([sig, torch.tensor([final], dtype=torch.float64)])
        if landing is not None and torch.equal(landing, sigmas[1:]):
            landing = None
        s0 = float(sigmas.max())
        if cls in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler") and self.timestep_spacing != "leading":
            init = s0                                      # diffusers' init_noise_sigma = max sigma
        else:
            init = (s0 ** 2 + 1) ** 0.5                    # VP-space schedulers start at unit variance
        return Plan(ts, sigmas.float(), None if landing is None else landing.float(), init)

    def _karras(self, spaced: torch.Tensor, n: int, round_t: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps, sigmas) of Karras et al.'s rho=7 spacing between the ends of `spaced` (descending), each
        timestep read back log-linearly from the table, as diffusers' `_convert_to_karras` / `_sigma_to_t` do."""
        lo, hi = float(spaced[-1]), float(spaced[0])
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        sig = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
        log_table = self.sigmas_table.log()
        ls = sig.clamp(min=1e-10).log()
        low = ((ls[None] - log_table[:, None]) >= 0).long().cumsum(0).argmax(0).clamp(max=len(log_table) - 2)
        w = ((log_table[low] - ls) / (log_table[low] - log_table[low + 1])).clamp(0, 1)
        ts = (1 - w) * low + w * (low + 1)
        return (ts.round() if round_t else ts), sig

    def sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """sigma at (fractional) timesteps, linear in between table entries as diffusers' Euler does."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.num_train_timesteps - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=self.num_train_timesteps - 1)
        w = t - lo
        return (1 - w) * self.sigmas_table[lo] + w * self.sigmas_table[hi]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Inverse of `sigma_at`: the (fractional) timestep of each sigma; 0 below the table."""
        table = self.sigmas_table.to(sigma.device)
        s = sigma.double().clamp(table[0], table[-1])
        hi = torch.searchsorted(table, s).clamp(1, len(table) - 1)
        lo = hi - 1
        t = lo + (s - table[lo]) / (table[hi] - table[lo])
        return t.float()

    def sigmas(self, n: int, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """The `n + 1` sigmas a sampler walks: one per timestep, then the final level."""
        ts = self.timesteps(n) if timesteps is None else torch.as_tensor(timesteps, dtype=torch.float64)
        final = 0.0 if self.set_alpha_to_one else float(self.sigmas_table[0])
        return torch.cat([self.sigma_at(ts), torch.tensor([final], dtype=torch.float64)]).float()


@dataclass
class Plan:
    """A sampling grid: what the model sees at each step and where the sampler goes."""

    timesteps: torch.Tensor            # (n,) the model's timesteps
    sigmas: torch.Tensor               # (n + 1,) level of x at each step, then the final level
    landing: torch.Tensor | None       # (n,) where DDIM's update lands, when that is not sigmas[1:]
    init_sigma: float                  # sampling starts at x = noise * init_sigma (k-diffusion units)
    exact_t: bool = False              # the model sees `timesteps` themselves at `sigmas` (Karras grids: a rounded
                                       # or log-read t that `sigma_to_t` would not give back)

    @property
    def output_scale(self) -> float:
        """x * output_scale is the final sample in diffusers' (variance-preserving) units."""
        return float(1 / (1 + self.sigmas[-1].double() ** 2).sqrt())


class Denoiser:
    """Wrap `model(x_t, t) -> prediction` (VP input) as `D(x, sigma) -> x0` (VE input) for samplers.

    With a `plan` whose `exact_t` is set, a sigma of the plan's grid is shown to the model as the plan's own
    timestep (diffusers' Karras grids); any other sigma (0 for a given frame) as `sigma_to_t` reads it.
    """

    def __init__(self, model, schedule: NoiseSchedule, plan: "Plan | None" = None):
        self.model, self.schedule = model, schedule
        self.grid = (plan.sigmas[:-1], plan.timesteps.float()) if plan is not None and plan.exact_t else None

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's timestep for each sigma."""
        t = self.schedule.sigma_to_t(sigma)
        if self.grid is None:
            return t
        grid_s, grid_t = (g.to(sigma.device) for g in self.grid)
        hit = (sigma[..., None] == grid_s).float()                            # (..., n)
        exact = (hit * grid_t).sum(-1) / hit.sum(-1).clamp(min=1)
        return torch.where(hit.sum(-1) > 0, exact, t)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x0 estimate for x = x0 + sigma * eps; sigma `(b,)` or `(b, f)`."""
        s = per_frame(sigma, x)
        a = 1 / (1 + s ** 2).sqrt()                      # sqrt(alpha_cumprod)
        out = self.model(x * a, self.timestep(sigma))
        if self.schedule.prediction_type == "epsilon":
            return x - s * out
        if self.schedule.prediction_type == "sample":
            return out
        return a * (x * a) - (s * a) * out               # sqrt(a) x_t - sqrt(1-a) v
