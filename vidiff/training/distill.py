"""Progressive distillation (Salimans & Ho 2022): a student that samples in N DDIM steps learns to
take two of its teacher's steps in one.

The student starts as a copy of the teacher. For a clip x0 and a step i of the student's N-step DDIM
grid (sigma_i -> sigma_next), the teacher walks x = x0 + sigma_i eps in two DDIM steps through the
midpoint (in timestep) to x_next. The student's target is the x0 for which one DDIM step from x
lands exactly on x_next:

    x_next = x0 + sigma_next (x - x0) / sigma_i   =>   x0 = (x_next - r x) / (1 - r),  r = sigma_next / sigma_i

so a student trained to the end samples in N steps what its teacher samples in 2N. Repeating
(teacher <- student, N <- N/2) halves the steps again. Training runs through `train()` (same data,
masks, accelerate, EMA, checkpoints and bit-exact resume); `train.teacher` switches it on.
Frames given to the model (image-to-video, continuation) sit at level 0 for both, as in sampling.
Classifier-free guidance is left to sampling time: the student learns the teacher's conditional
and (through text dropout) unconditional predictions.
"""

from __future__ import annotations

import torch
from torch import nn

from vidiff.diffusion.schedule import Denoiser, NoiseSchedule, per_frame


def student_grid(schedule: NoiseSchedule, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sigma_from, sigma_mid, sigma_to), each `(n,)`: the student's DDIM steps and the teacher's midpoints."""
    plan = schedule.plan(n, "ddim")
    s_from = plan.sigmas[:-1].double()
    s_to = (plan.landing if plan.landing is not None else plan.sigmas[1:]).double()
    t_from = schedule.sigma_to_t(s_from).double()
    # a step to sigma 0 ends one step below t=0 (DDIM's t - T//n = -1), so its midpoint is t_from / 2 - 1/2
    t_to = torch.where(s_to > 0, schedule.sigma_to_t(s_to.clamp(min=float(schedule.sigmas_table[0]))).double(),
                       torch.full_like(s_to, -1.0))
    s_mid = schedule.sigma_at(((t_from + t_to) / 2).round())
    return s_from.float(), s_mid.float(), s_to.float()


def _ddim(x: torch.Tensor, x0: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step in sigma space: x = x0 + s eps -> x0 + s_next eps."""
    return x0 + (s_next / s) * (x - x0)


class DistillObjective(nn.Module):
    """The distillation loss as one module (the student is `self.unet`, so checkpoints see it as usual)."""

    def __init__(self, unet, teacher, schedule: NoiseSchedule, steps: int, floor: float = 0.05):
        super().__init__()
        self.unet, self.schedule, self.steps, self.floor = unet, schedule, steps, floor
        self._teacher = [teacher.eval().requires_grad_(False)]       # a list: not a submodule (not trained, not saved)
        self.grid = student_grid(schedule, steps)

    def _denoiser(self, net, ctx, x0, mask):
        kw = {"cond": x0, "cond_mask": mask} if net.config.frame_conditioning else {}
        return Denoiser(lambda x_t, t: net(x_t, t, ctx, **kw).float(), self.schedule)

    def loss(self, x0, ctx, step, noise, mask):
        """Weighted squared error between the student's x0 and the two-teacher-step target.

        `step` `(b, f)` holds each clip's index into the student's grid; given frames (mask 1) stay clean.
        """
        given = mask > 0                                                        # (b, f)
        s_from, s_mid, s_to = (torch.where(given, 0.0, g.to(x0.device)[step.long()]) for g in self.grid)
        keep = per_frame(given.float(), x0) > 0
        S = lambda s: per_frame(s, x0)                                          # noqa: E731
        safe = lambda s: S(s).clamp(min=1e-12)                                  # noqa: E731  (given frames: 0)
        x = torch.where(keep, x0, x0 + S(s_from) * noise)
        with torch.no_grad():
            teach = self._denoiser(self._teacher[0], ctx, x0, mask)
            a = teach(x, s_from)
            x_mid = torch.where(keep, x0, _ddim(x, a, safe(s_from), S(s_mid)))
            b = teach(x_mid, s_mid)
            x_next = torch.where(keep, x0, _ddim(x_mid, b, safe(s_mid), S(s_to)))
            r = S(s_to) / safe(s_from)
            target = torch.where(keep, x0, (x_next - r * x) / (1 - r))
        pred = self._denoiser(self.unet, ctx, x0, mask)(x, s_from)
        # v-space weight, as the `sample` training loss: x0 error / sqrt(1 - a), floored
        vp_sigma = (S(s_from) / (1 + S(s_from) ** 2).sqrt()).clamp(min=self.floor)
        err = (pred.float() - target.float()) ** 2 / vp_sigma ** 2
        weight = (~keep).float().expand_as(err)
        return (err * weight).sum() / weight.sum().clamp(min=1)

    def forward(self, video: tuple, images: tuple | None = None) -> torch.Tensor:
        """Loss of a video batch (image batches are not distilled)."""
        return self.loss(*video)
