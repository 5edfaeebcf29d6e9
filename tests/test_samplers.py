"""Schedules and samplers against diffusers' schedulers, and against an oracle denoiser."""

import pytest
import torch

from vidiff.diffusion.samplers import SAMPLERS, get_sampler
from vidiff.diffusion.schedule import Denoiser, NoiseSchedule

diffusers = pytest.importorskip("diffusers")

W = torch.randn(4, 4, generator=torch.Generator().manual_seed(3)) * 0.3


def model(x, t):
    """A smooth, input- and time-dependent stand-in for a UNet (VP input, any prediction type)."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(torch.einsum("bc...,cd->bd...", x, W)) * (t / 1000 + 0.5) + 0.1 * x


CASES = [
    ("ddim", "DDIMScheduler", dict(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False), {}),
    ("ddim", "DDIMScheduler", dict(timestep_spacing="trailing", clip_sample=False), {}),
    ("ddim", "DDIMScheduler", dict(timestep_spacing="trailing", clip_sample=False), {"eta": 0.7}),
    ("euler", "EulerDiscreteScheduler", dict(timestep_spacing="linspace"), {}),
    ("euler_ancestral", "EulerAncestralDiscreteScheduler", dict(timestep_spacing="linspace"), {}),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", dict(timestep_spacing="linspace"), {}),
]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("name, cls, kw, extra", CASES, ids=[f"{c[0]}-{c[2]['timestep_spacing']}-{c[3]}" for c in CASES])
def test_trajectory_matches_diffusers(name, cls, kw, extra, prediction_type):
    base = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                prediction_type=prediction_type)
    sch = getattr(diffusers, cls)(**base, **kw)
    if prediction_type == "sample" and name == "euler_ancestral":
        pytest.skip("diffusers' EulerAncestralDiscreteScheduler does not implement prediction_type='sample'")
    # 10 divides 1000: diffusers' DDIM steps to t - T//n, which is the next listed timestep only then
    n = 10
    sch.set_timesteps(n)
    start = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = start * sch.init_noise_sigma
    g = torch.Generator().manual_seed(5)
    ref = []
    for t in sch.timesteps:
        out = model(sch.scale_model_input(x, t), t.expand(2))
        x = sch.step(out, t, x, generator=g, **extra).prev_sample
        ref.append(x)

    ours_sched = NoiseSchedule.from_config(dict(sch.config))
    sigmas = ours_sched.sigmas(n, timesteps=sch.timesteps.double())
    vp = name in ("ddim", "dpmpp_2m")      # these diffusers schedulers keep x on the VP scale
    x0 = start * sch.init_noise_sigma * ((1 + sigmas[0] ** 2).sqrt() if vp else 1)
    ours = []
    g = torch.Generator().manual_seed(5)
    SAMPLERS[name](Denoiser(model, ours_sched), x0, sigmas, generator=g,
                   callback=lambda i, x, d: ours.append(x / ((1 + sigmas[i + 1] ** 2).sqrt() if vp else 1)),
                   **extra)
    assert len(ours) == len(ref) == n
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert (a - b).abs().max() < 1e-4, (i, (a - b).abs().max())


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_timesteps_match_diffusers_ddim(spacing):
    sch = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0,
                                  clip_sample=False)
    for n in (1, 7, 25, 50):
        sch.set_timesteps(n)
        ours = NoiseSchedule.from_config(dict(sch.config)).timesteps(n)
        if spacing == "linspace":
            ours = ours.round()
        assert torch.equal(ours.long(), sch.timesteps), (spacing, n)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alphas_match_diffusers(beta_schedule):
    sch = diffusers.DDPMScheduler(beta_schedule=beta_schedule, clip_sample=False)
    ours = NoiseSchedule.from_config(dict(sch.config))
    torch.testing.assert_close(ours.alphas_cumprod.float(), sch.alphas_cumprod, rtol=1e-5, atol=1e-6)


def test_add_noise_and_targets_match_diffusers():
    sch = diffusers.DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False)
    ours = NoiseSchedule.from_config(dict(sch.config))
    x0, noise = torch.randn(3, 4, 2, 8, 8), torch.randn(3, 4, 2, 8, 8)
    t = torch.tensor([0, 500, 999])
    ref = torch.stack([sch.add_noise(x0[:, :, i], noise[:, :, i], t) for i in range(2)], 2)
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ref, rtol=1e-5, atol=1e-5)
    vref = torch.stack([sch.get_velocity(x0[:, :, i], noise[:, :, i], t) for i in range(2)], 2)
    torch.testing.assert_close(ours.target(x0, noise, t), vref, rtol=1e-5, atol=1e-5)
    # per-frame levels: frame i of sample b uses t[b, i]
    tf = torch.tensor([[0, 999], [10, 20], [500, 500]])
    per = ours.add_noise(x0, noise, tf)
    torch.testing.assert_close(per[:, :, 1], sch.add_noise(x0[:, :, 1], noise[:, :, 1], tf[:, 1]), rtol=1e-5, atol=1e-5)


def test_sample_prediction_loss_is_the_v_error_above_the_floor():
    """x-prediction's training weight makes its x0 error the v error of the same prediction."""
    sched = NoiseSchedule(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="sample")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 2, 5, 5, generator=g), torch.randn(3, 4, 2, 5, 5, generator=g)
    t = torch.tensor([[100, 100], [500, 500], [999, 999]])
    pred = x0 + 0.1 * torch.randn(x0.shape, generator=g)                     # a model's x0
    a = sched.alphas_cumprod.float()[t][:, None, :, None, None]
    x_t = sched.add_noise(x0, noise, t)
    v_of = lambda z: (a.sqrt() * x_t - z) / (1 - a).sqrt()                  # noqa: E731  v from an x0 estimate
    v_err = (v_of(pred) - v_of(x0)) ** 2
    assert torch.allclose(v_of(x0), a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-4)
    weighted = (pred - sched.target(x0, noise, t)) ** 2 * sched.loss_weight(t, x0)
    assert torch.allclose(weighted, v_err, rtol=1e-3, atol=1e-6)
    # below the floor (sqrt(1 - a) < 0.05) the weight stops growing
    assert float(sched.loss_weight(torch.tensor([[0]]), x0[:1, :, :1])) == pytest.approx(1 / 0.05 ** 2)
    assert NoiseSchedule(prediction_type="v_prediction").loss_weight(t, x0) is None


def test_scheduler_config_round_trip(tmp_path):
    sched = NoiseSchedule(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="v_prediction")
    sched.save_pretrained(tmp_path)
    assert NoiseSchedule.from_pretrained(tmp_path) == sched
    # a diffusers-written folder loads too
    diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False).save_pretrained(tmp_path / "d")
    assert NoiseSchedule.from_pretrained(tmp_path / "d").beta_schedule == "squaredcos_cap_v2"
    # what vidiff writes loads into the diffusers class it names, with the same settings
    sched = NoiseSchedule(class_name="EulerDiscreteScheduler", timestep_spacing="leading", steps_offset=1)
    sched.save_pretrained(tmp_path / "e")
    back = diffusers.EulerDiscreteScheduler.from_pretrained(tmp_path / "e")
    assert back.config.timestep_spacing == "leading" and back.config.steps_offset == 1
    assert NoiseSchedule.from_pretrained(tmp_path / "e") == sched


def test_terminal_snr_rescale_is_diffusers_zero_snr_at_zero():
    """rescale_terminal_snr(., 0) is diffusers' rescale_zero_terminal_snr (Lin et al. 2023)."""
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

    from vidiff.diffusion.schedule import rescale_terminal_snr

    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ref = torch.cumprod(1 - rescale_zero_terminal_snr(betas), 0)
    torch.testing.assert_close(rescale_terminal_snr(torch.cumprod(1 - betas, 0), 0.0), ref, rtol=0, atol=1e-9)


def test_terminal_snr_schedule_ends_at_that_snr_and_round_trips(tmp_path):
    base = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="v_prediction")
    plain, low = NoiseSchedule(**base), NoiseSchedule(**base, terminal_snr=1e-8)
    ac = low.alphas_cumprod
    assert abs(float(ac[-1] / (1 - ac[-1])) / 1e-8 - 1) < 1e-6         # the asked-for SNR at the top
    assert float(ac[0]) == pytest.approx(float(plain.alphas_cumprod[0]), abs=1e-12)  # the bottom stays
    assert bool((ac[1:] < ac[:-1]).all())                              # still a noising schedule
    assert float(ac[500].sqrt()) == pytest.approx(float(plain.alphas_cumprod[500].sqrt()), rel=0.03)
    assert torch.isfinite(low.sigmas(25)).all() and float(low.sigmas(25)[0]) == pytest.approx(1e4, rel=1e-4)
    low.save_pretrained(tmp_path)
    back = NoiseSchedule.from_pretrained(tmp_path)
    assert back == low and torch.equal(back.alphas_cumprod, ac)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="terminal_snr must be in"):
            NoiseSchedule(**base, terminal_snr=bad)
    with pytest.raises(ValueError, match="not below the schedule's own last SNR"):
        NoiseSchedule(**base, terminal_snr=1e-2)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("per_frame", [False, True])
def test_oracle_denoiser_lands_on_the_data(name, per_frame):
    target = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sched = NoiseSchedule()
    plan = sched.plan(20, name)
    sigmas = plan.sigmas
    kw = {"timesteps": plan.timesteps} if name == "lcm" else {}
    if per_frame:
        sigmas = sigmas[:, None, None].expand(-1, 1, 4).clone()
        sigmas[:, :, 0] = 0                            # frame 0 is given and must stay put
    x = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 15
    if per_frame:
        x[:, :, 0] = target[:, :, 0]
    out = get_sampler(name)(lambda x, s: target.expand_as(x), x, sigmas, generator=torch.Generator().manual_seed(0), **kw)
    assert (out - target).abs().max() < 1e-4


def test_bad_sampler_name_and_steps():
    with pytest.raises(ValueError, match="unknown sampler 'heun'; allowed: ddim"):
        get_sampler("heun")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        NoiseSchedule().timesteps(0)
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule(beta_schedule="cosine")


PLAN_CASES = [
    ("DDIMScheduler", dict(timestep_spacing="linspace", beta_schedule="linear", steps_offset=1, set_alpha_to_one=False), 25),
    ("DDIMScheduler", dict(timestep_spacing="leading", beta_schedule="linear", steps_offset=1, set_alpha_to_one=False), 7),
    ("DDIMScheduler", dict(timestep_spacing="trailing", beta_schedule="scaled_linear"), 6),
    ("EulerDiscreteScheduler", dict(timestep_spacing="trailing", beta_schedule="linear"), 4),
    ("EulerDiscreteScheduler", dict(timestep_spacing="leading", beta_schedule="linear", steps_offset=1), 5),
    ("EulerAncestralDiscreteScheduler", dict(timestep_spacing="linspace"), 6),
    ("DPMSolverMultistepScheduler", dict(timestep_spacing="linspace"), 8),
    ("DPMSolverMultistepScheduler", dict(timestep_spacing="leading", steps_offset=1), 20),
    ("LCMScheduler", dict(beta_schedule="linear", steps_offset=1, set_alpha_to_one=False), 6),
    ("LCMScheduler", dict(beta_schedule="scaled_linear"), 4),
]


@pytest.mark.parametrize("cls, kw, n", PLAN_CASES, ids=[f"{c[0]}-{c[1].get('timestep_spacing', '')}-{c[2]}" for c in PLAN_CASES])
def test_scheduler_plan_walks_the_diffusers_trajectory(cls, kw, n):
    """The sampler a scheduler config names, on the grid that class lays, ends where diffusers' loop ends."""
    sch = getattr(diffusers, cls)(**kw, **({"clip_sample": False} if cls in ("DDIMScheduler", "LCMScheduler") else {}))
    sch.set_timesteps(n)
    latents = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = latents * sch.init_noise_sigma
    g = torch.Generator().manual_seed(5)
    for t in sch.timesteps:
        x = sch.step(model(sch.scale_model_input(x, t), t.expand(2)), t, x, generator=g).prev_sample

    ours = NoiseSchedule.from_config({**sch.config, "_class_name": cls})
    plan = ours.plan(n)
    assert ours.sampler == {"DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler", "LCMScheduler": "lcm",
                            "EulerAncestralDiscreteScheduler": "euler_ancestral",
                            "DPMSolverMultistepScheduler": "dpmpp_2m"}[cls]
    assert torch.equal(plan.timesteps.round().long(), sch.timesteps.round().long())
    kwargs = {"timesteps": plan.timesteps} if ours.sampler == "lcm" else {}
    if plan.landing is not None:
        kwargs["landing"] = plan.landing
    out = get_sampler(ours.sampler)(Denoiser(model, ours), latents * plan.init_sigma, plan.sigmas,
                                    generator=torch.Generator().manual_seed(5), **kwargs) * plan.output_scale
    assert ((out - x).abs().max() / x.abs().max()) < 1e-4


def test_unsupported_scheduler_configs_are_clear_errors():
    with pytest.raises(ValueError, match="KDPM2DiscreteScheduler.*supported: DDIMScheduler"):
        NoiseSchedule.from_config({"_class_name": "KDPM2DiscreteScheduler"})
    with pytest.raises(ValueError, match="PNDMScheduler runs with timestep_spacing='leading'"):
        NoiseSchedule.from_config({"_class_name": "PNDMScheduler", "timestep_spacing": "linspace"})
    with pytest.raises(ValueError, match="clip_sample=True"):
        NoiseSchedule.from_config({"_class_name": "DDIMScheduler", "clip_sample": True})
    with pytest.raises(ValueError, match="use_karras_sigmas=True works with"):
        NoiseSchedule.from_config({"_class_name": "DDIMScheduler", "use_karras_sigmas": True})
