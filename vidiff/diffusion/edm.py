"""EDM noise levels and preconditioning (Karras et al. 2022), as Stable Video Diffusion samples and trains.

SVD's scheduler is diffusers' EulerDiscreteScheduler with `use_karras_sigmas`, `sigma_min`/`sigma_max`,
`prediction_type="v_prediction"` and `timestep_type="continuous"`: the model sees c_noise = 0.25 ln(sigma),
its input is scaled by c_in = 1/sqrt(sigma^2 + 1), and x0 = c_skip x + c_out v with c_skip = 1/(sigma^2 + 1),
c_out = -sigma/sqrt(sigma^2 + 1) (generative-models' `VScalingWithEDMcNoise`). The sample lives in the
k-diffusion form x = x0 + sigma * eps, so Euler steps and replacing given frames are the usual ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_KEYS = ("sigma_min", "sigma_max", "prediction_type", "timestep_spacing", "use_karras_sigmas", "timestep_type")


@dataclass
class EDMSchedule:
    """Karras sigmas between `sigma_min` and `sigma_max` with v-prediction preconditioning; fields are the
    scheduler_config.json keys SVD ships (other keys of that file are kept for saving, not used)."""

    sigma_min: float = 0.002
    sigma_max: float = 700.0
    timestep_spacing: str = "leading"         # only sets the starting scale: sqrt(sigma_max^2 + 1) when leading
    p_mean: float = 0.7                        # training: ln(sigma) ~ N(p_mean, p_std) (SVD's fine-tuning values)
    p_std: float = 1.6
    raw: dict | None = None                    # the whole config as read

    @classmethod
    def from_config(cls, d: dict) -> "EDMSchedule":
        """Build from SVD's scheduler config; anything this sampler would not reproduce is a clear error."""
        want = {"prediction_type": "v_prediction", "use_karras_sigmas": True, "timestep_type": "continuous"}
        bad = {k: d.get(k) for k, v in want.items() if d.get(k, v) != v}
        if d.get("_class_name", "EulerDiscreteScheduler") != "EulerDiscreteScheduler" or bad:
            raise ValueError(f"an SVD scheduler is EulerDiscreteScheduler with {want}; got "
                             f"{d.get('_class_name')} with {bad}")
        lo, hi = float(d.get("sigma_min") or 0.002), float(d.get("sigma_max") or 700.0)
        if not 0 < lo < hi:
            raise ValueError(f"sigma_min and sigma_max must satisfy 0 < sigma_min < sigma_max, got {lo} and {hi}")
        return cls(lo, hi, d.get("timestep_spacing", "leading"), raw=dict(d))

    def to_config(self) -> dict:
        """The diffusers config dict (loads into EulerDiscreteScheduler)."""
        base = {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "beta_end": 0.012, "interpolation_type": "linear", "steps_offset": 1,
                "prediction_type": "v_prediction", "use_karras_sigmas": True, "timestep_type": "continuous"}
        return {**base, **(self.raw or {}), "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "timestep_spacing": self.timestep_spacing}

    def sigmas(self, n: int) -> torch.Tensor:
        """`n` Karras levels (rho = 7) from sigma_max down to sigma_min, then 0: float32, as diffusers lays them."""
        if n < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {n}")
        ramp = np.linspace(0, 1, n)
        lo, hi = self.sigma_min ** (1 / 7), self.sigma_max ** (1 / 7)
        s = (hi + ramp * (lo - hi)) ** 7
        return torch.from_numpy(np.concatenate([s, [0.0]]).astype(np.float32))

    def init_scale(self, sigmas: torch.Tensor) -> float:
        """How much the unit starting noise is scaled (diffusers' `init_noise_sigma`)."""
        top = float(sigmas.max())
        return top if self.timestep_spacing in ("linspace", "trailing") else (top ** 2 + 1) ** 0.5

    @staticmethod
    def c_noise(sigma: torch.Tensor) -> torch.Tensor:
        """The model's timestep input: 0.25 ln(sigma)."""
        return 0.25 * torch.as_tensor(sigma).log()

    @staticmethod
    def c_in(sigma: torch.Tensor) -> torch.Tensor:
        """Input scale 1/sqrt(sigma^2 + 1)."""
        return 1 / (torch.as_tensor(sigma) ** 2 + 1) ** 0.5

    @staticmethod
    def x0(v: torch.Tensor, x: torch.Tensor, sigma) -> torch.Tensor:
        """The clean estimate from a v-prediction at level sigma (diffusers' Euler step formula)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        return v * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)

    # ---- training -----------------------------------------------------------------------------
    def sample_sigma(self, b: int, generator=None, device=None) -> torch.Tensor:
        """Training levels: ln(sigma) ~ N(p_mean, p_std^2) (EDM's log-normal; SVD fine-tuning's 0.7 and 1.6)."""
        z = torch.randn(b, generator=generator)
        return (self.p_mean + self.p_std * z).exp().to(device or "cpu")

    @staticmethod
    def v_target(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The v that gives back x0 from x = x0 + sigma * noise: (noise - sigma x0) / sqrt(sigma^2 + 1).

        EDM weights the x0 error by (sigma^2 + 1) / sigma^2 (sigma_data = 1), which is exactly 1 / c_out^2:
        the plain mean squared error on v is SVD's weighted loss.
        """
        s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        return (noise - s * x0) / (s ** 2 + 1) ** 0.5
