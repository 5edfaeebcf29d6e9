"""The real user's path: device rules (checked on CPU and on torch's meta device), hub ids through a hub cache the
test lays out, single-file SD checkpoints, fp16 variants, the schedulers SD folders ship, offload, loading memory."""

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vidiff import testing
from conftest import run_cli
from vidiff.devices import free_memory, randn, resolve_device, resolve_dtype
from vidiff.pipelines.pipeline import VideoPipeline
from vidiff.diffusion.samplers import _randn
from vidiff.loaders.singlefile import diffusers_to_ldm
from vidiff.training.checkpoints import make_ema
from vidiff.training.checkpoints import update_ema as _update_ema

PROMPT, NEG = "a red circle moving left", "blue"
ROOT = Path(__file__).resolve().parents[1]


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


cli = run_cli


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    testing.tiny_animatediff_folder(root / "animatediff")
    testing.tiny_sd_folder(root / "sd")
    return root


# ---- device rules --------------------------------------------------------------------------------

def test_noise_is_drawn_on_the_generators_device_then_moved():
    shape = (1, 4, 3, 8, 8)
    g, ref_g = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = randn(shape, g, device="meta")
    torch.randn(shape, generator=ref_g)                         # the same draw, on the CPU
    assert out.device.type == "meta"
    assert torch.equal(g.get_state(), ref_g.get_state())      # the CPU generator drew it (meta would draw nothing)
    x = torch.empty(shape, device="meta")
    g2, ref2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert _randn(x, g2).device.type == "meta"                 # samplers' step noise: the same rule
    torch.randn(shape, generator=ref2)
    assert torch.equal(g2.get_state(), ref2.get_state())
    assert torch.equal(randn(shape, torch.Generator().manual_seed(1)), torch.randn(shape, generator=torch.Generator().manual_seed(1)))


def test_device_and_dtype_names():
    assert resolve_device("auto") == torch.device("cpu")       # no CUDA here
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    for bad in ("gpu", "cuda:x"):
        with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("float8", torch.device("cpu"))


def test_cli_device_defaults_to_auto(capsys):
    from vidiff.app.cli import build_parser

    args = build_parser().parse_args(["generate", "x"])
    assert args.device == "auto" and args.dtype == "auto"
    code, _, err = cli(capsys, "generate", "x", "--device", "tpu", "-o", "/tmp/never.mp4")
    assert code == 2 and len(err) == 1 and "device must be auto, cpu, cuda or cuda:N" in err[0]
    assert not Path("/tmp/never.mp4").exists()


def test_ema_lives_on_each_parameters_device():
    unet = testing.tiny_pipeline().unet.to("meta")
    trainable = list(unet.named_parameters())
    ema = make_ema(trainable)
    assert all(v.device.type == "meta" for v in ema.values())
    _update_ema(ema, trainable, 0.99, 3)                      # a CPU copy would raise: meta and CPU do not mix
    _update_ema(ema, trainable, 0.0, 3)


def test_guard_reads_the_devices_own_free_memory(monkeypatch):
    pipe = testing.tiny_pipeline()
    calls = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (calls.append(device) or (2 ** 20, 2 ** 36)))
    pipe.device = torch.device("cuda")                        # as a CUDA run: nothing moved, only the reading
    with pytest.raises(ValueError, match=r"free on cuda"):
        pipe.guard(16, 64, 64)
    assert calls and free_memory("cuda") == 2 ** 20
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 ** 40, 2 ** 40))
    pipe.guard(16, 64, 64)


# Latents of the tiny pipeline on CPU with a CPU generator, recorded with the code before the device rules
# (commit dbb26c1): the rules change where noise is drawn, never what a CPU run draws.
BEFORE = {"t2v": (6681690.0, 771.9574584960938), "i2v": (5026159.5, 779.9970092773438),
          "ddim-eta": (6755833.0, 780.3335571289062), "lcm": (6787066.5, 783.25439453125),
          "autoregressive": (9961092.0, 771.9574584960938)}
MODES = {"t2v": {}, "i2v": {"given": {0: np.full((64, 64, 3), 128, np.uint8)}},
         "ddim-eta": {"sampler": "ddim", "eta": 1.0}, "lcm": {"sampler": "lcm"},
         "autoregressive": {"mode": "autoregressive", "chunk": 4, "context": 2, "num_frames": 6}}


def run_modes(pipe):
    out = {}
    for name, kw in MODES.items():
        kw = {"num_frames": 4, **kw}
        lat = pipe(PROMPT, num_inference_steps=3, output_type="latent", seed=11, progress=False, **kw)
        out[name] = lat
    return out


def test_cpu_latents_are_unchanged_by_the_device_rules():
    for name, lat in run_modes(testing.tiny_pipeline()).items():
        total, peak = BEFORE[name]
        assert lat.abs().sum().item() == pytest.approx(total, rel=1e-6), name
        assert lat.abs().max().item() == pytest.approx(peak, rel=1e-6), name


def test_every_mode_runs_on_the_meta_device():
    pipe = testing.tiny_pipeline().to("meta")
    outs = run_modes(pipe)
    outs["windows"] = pipe(PROMPT, num_frames=6, mode="windows", chunk=4, stride=2, num_inference_steps=2,
                           output_type="latent", seed=0, progress=False)
    outs["interpolate"] = pipe(PROMPT, num_frames=4, given={0: np.zeros((64, 64, 3), np.uint8),
                                                            3: np.zeros((64, 64, 3), np.uint8)},
                               num_inference_steps=2, output_type="latent", seed=0, progress=False)
    outs["video-to-video"] = pipe(PROMPT, num_frames=4, init_video=np.zeros((4, 64, 64, 3), np.uint8), strength=0.5,
                                  num_inference_steps=4, output_type="latent", seed=0, progress=False)
    for sampler in ("dpmpp_2m_sde", "unipc", "plms", "euler_ancestral"):
        outs[sampler] = pipe(PROMPT, num_frames=4, sampler=sampler, num_inference_steps=3, output_type="latent",
                             seed=0, progress=False, given={0: np.zeros((64, 64, 3), np.uint8)})
    assert all(o.device.type == "meta" for o in outs.values())


def test_batch_rank_loads_onto_its_partial_state_device(folders, monkeypatch, tmp_path):
    import vidiff.devices as batch
    from vidiff.app.cli import build_parser
    from vidiff.app.make_cli import _load_pipeline

    monkeypatch.setattr(batch, "process_state", lambda: types.SimpleNamespace(device=torch.device("meta")))
    args = build_parser().parse_args(["generate", "--prompts", "p.txt", "--model", str(folders / "animatediff")])
    args.output, args.batch_rank = str(tmp_path / "index.mp4"), True
    pipe = _load_pipeline(args)
    assert pipe.device.type == "meta"
    assert all(p.is_meta for p in pipe.unet.parameters()) and all(p.is_meta for p in pipe.text_encoder.model.parameters())
    args.device, args.batch_rank = "cpu", True                 # an explicit device is kept
    assert _load_pipeline(args).device.type == "cpu"


# ---- hub ids -----------------------------------------------------------------------------------------

def lay_out_hub_repo(cache: Path, repo: str, src: Path, rev: str = "0123456789abcdef0123456789abcdef01234567") -> None:
    """A hub cache entry as huggingface_hub keeps it: models--org--name/{refs/main, snapshots/REV/...}."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(rev)
    if src.is_dir():
        shutil.copytree(src, base / "snapshots" / rev)
    else:
        (base / "snapshots" / rev).mkdir(parents=True)
        shutil.copy(src, base / "snapshots" / rev / src.name)


@pytest.fixture
def hub(folders, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    lay_out_hub_repo(cache, "tiny-org/animatediff", folders / "animatediff")
    lay_out_hub_repo(cache, "tiny-org/sd", folders / "sd")
    lay_out_hub_repo(cache, "tiny-org/adapter", folders / "animatediff" / "motion_adapter")
    (tmp_path / "l").mkdir()
    testing.tiny_lora_file(VideoPipeline.from_pretrained(folders / "animatediff").unet, tmp_path / "l" / "style.safetensors")
    lay_out_hub_repo(cache, "tiny-org/lora", tmp_path / "l")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_ids_load_offline_from_the_cache(folders, hub, tmp_path, capsys):
    lat = torch.randn(1, 4, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(latents=lat, num_inference_steps=2, output_type="latent", seed=0, progress=False)
    local = VideoPipeline.from_pretrained(folders / "animatediff")(PROMPT, **kw)
    by_id = VideoPipeline.from_pretrained("tiny-org/animatediff")
    assert by_id.source == "tiny-org/animatediff"
    assert torch.equal(by_id(PROMPT, **kw), local)
    sd_adapter = VideoPipeline.from_pretrained("tiny-org/sd", motion_adapter="tiny-org/adapter",
                                               scheduler="animatediff")
    assert sd_adapter.unet.config.temporal_family == "animatediff"
    code, out, err = cli(capsys, "generate", PROMPT, "--model", "tiny-org/sd", "--motion-adapter", "tiny-org/adapter",
                         "--lora", "tiny-org/lora:0.8", "--frames", "4", "--height", "16", "--width", "16", "--steps", "2",
                         "--seed", "0", "-o", tmp_path / "hub.mp4")
    assert code == 0, err
    assert (tmp_path / "hub.mp4").stat().st_size > 0


def test_an_uncached_hub_id_offline_is_one_line(hub, tmp_path, capsys):
    code, _, err = cli(capsys, "generate", PROMPT, "--model", "nobody/missing", "-o", tmp_path / "x.mp4")
    assert code == 2 and len(err) == 1, err
    assert "nobody/missing" in err[0] and "HF_HUB_OFFLINE" in err[0]
    assert not (tmp_path / "x.mp4").exists()


# ---- single-file checkpoints ----------------------------------------------------------------------------

def ldm_file(sd_folder: Path, out: Path) -> Path:
    parts = [load_file(str(sd_folder / d / f)) for d, f in (("unet", "diffusion_pytorch_model.safetensors"),
                                                            ("vae", "diffusion_pytorch_model.safetensors"),
                                                            ("text_encoder", "model.safetensors"))]
    save_file({k: v.contiguous() for k, v in diffusers_to_ldm(*parts).items()}, str(out))
    return out


def test_single_file_matches_diffusers_from_single_file(folders, tmp_path, monkeypatch):
    from vidiff.loaders.hub import converted_folder

    monkeypatch.setenv("VIDIFF_CACHE", str(tmp_path / "cache"))
    file = ldm_file(folders / "sd", tmp_path / "civitai-model.safetensors")
    ref_sd = diffusers.StableDiffusionPipeline.from_single_file(str(file), config=str(folders / "sd"),
                                                                safety_checker=None, requires_safety_checker=False)
    adapter = diffusers.MotionAdapter.from_pretrained(folders / "animatediff" / "motion_adapter")
    ref = diffusers.AnimateDiffPipeline(unet=ref_sd.unet, motion_adapter=adapter, vae=ref_sd.vae,
                                        text_encoder=ref_sd.text_encoder, tokenizer=ref_sd.tokenizer,
                                        scheduler=testing.ddim_scheduler())
    ref.set_progress_bar_config(disable=True)
    ours = VideoPipeline.from_pretrained(converted_folder(file, config=folders / "sd"),
                                         motion_adapter=folders / "animatediff" / "motion_adapter",
                                         scheduler={"_class_name": "DDIMScheduler", "beta_schedule": "linear",
                                                    "steps_offset": 1, "set_alpha_to_one": True})
    lat = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    r = ref(prompt=PROMPT, negative_prompt=NEG, latents=lat.clone(), num_frames=8, height=16, width=16,
            num_inference_steps=4, guidance_scale=7.5, output_type="latent").frames
    o = ours(PROMPT, negative_prompt=NEG, latents=lat.clone(), num_inference_steps=4, guidance_scale=7.5,
             output_type="latent", seed=0, progress=False)
    assert rel(o, r) <= 1e-4


def test_single_file_without_config_infers_the_layout(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VIDIFF_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "hub"                                   # the tokenizer SD 1.x files leave out, from the hub cache
    lay_out_hub_repo(cache, "openai/clip-vit-large-patch14", folders / "sd" / "tokenizer")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from vidiff.loaders.hub import tokenizer_folder
    from vidiff.loaders.singlefile import convert_checkpoint

    file = ldm_file(folders / "sd", tmp_path / "model.safetensors")
    out = convert_checkpoint(file, tmp_path / "inferred", tokenizer=tokenizer_folder)   # no config: from the keys
    for part, weights in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model")):
        want = load_file(str(folders / "sd" / part / f"{weights}.safetensors"))
        have = load_file(str(out / part / f"{weights}.safetensors"))
        assert want.keys() == have.keys() and all(torch.equal(have[k], v) for k, v in want.items())
        cfg, ref = (json.loads((d / part / "config.json").read_text()) for d in (out, folders / "sd"))
        for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "in_channels"):
            assert cfg[key] == ref[key], (part, key)         # heads and group counts are not in the weights
    assert (out / "tokenizer").is_dir() and json.loads((out / "scheduler" / "scheduler_config.json").read_text())[
        "_class_name"] == "PNDMScheduler"
    code, _, err = cli(capsys, "convert", file, "--config", folders / "sd", "--motion-adapter",
                       folders / "animatediff" / "motion_adapter", "--out", tmp_path / "converted")
    assert code == 0, err
    assert (tmp_path / "converted" / "model_index.json").exists()
    bad = tmp_path / "bad.safetensors"
    save_file({"some.weight": torch.zeros(2)}, str(bad))
    code, _, err = cli(capsys, "generate", PROMPT, "--model", bad, "-o", tmp_path / "bad.mp4")
    assert code == 2 and len(err) == 1 and "not a Stable Diffusion single-file checkpoint" in err[0]


# ---- variants, the SD folder's own scheduler ---------------------------------------------------------------

def test_fp16_variant_folder_loads_as_diffusers_loads_it(folders, tmp_path):
    ad = diffusers.AnimateDiffPipeline.from_pretrained(folders / "animatediff")
    ad.save_pretrained(tmp_path / "fp16", variant="fp16", safe_serialization=True)
    assert list((tmp_path / "fp16" / "unet").glob("*.fp16.safetensors"))
    ref = diffusers.AnimateDiffPipeline.from_pretrained(tmp_path / "fp16", variant="fp16", torch_dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    ours = VideoPipeline.from_pretrained(tmp_path / "fp16", variant="fp16")
    assert ours.dtype == torch.float32
    lat = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    r = ref(prompt=PROMPT, latents=lat.clone(), num_frames=8, height=16, width=16, num_inference_steps=3,
            output_type="latent").frames
    o = ours(PROMPT, latents=lat.clone(), num_inference_steps=3, guidance_scale=7.5, output_type="latent", seed=0,
             progress=False)
    assert rel(o, r) <= 1e-4
    with pytest.raises(FileNotFoundError, match="no bf16 weights"):
        VideoPipeline.from_pretrained(tmp_path / "fp16", variant="bf16")


def test_sd_folder_with_its_pndm_scheduler_generates_without_a_flag(folders, tmp_path, capsys):
    sd = tmp_path / "sd-pndm"
    shutil.copytree(folders / "sd", sd)
    pndm = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pndm.save_pretrained(sd / "scheduler")
    code, _, err = cli(capsys, "generate", PROMPT, "--model", sd, "--motion-adapter",
                       folders / "animatediff" / "motion_adapter", "--frames", "4", "--height", "16", "--width", "16",
                       "--steps", "3", "--seed", "0", "-o", tmp_path / "pndm.mp4")
    assert code == 0, err
    assert any("own PNDMScheduler" in line and "--scheduler animatediff" in line for line in err)
    code, _, err = cli(capsys, "convert", sd, "--motion-adapter", folders / "animatediff" / "motion_adapter",
                       "--scheduler", "ddim", "--out", tmp_path / "conv")
    assert code == 0, err
    assert json.loads((tmp_path / "conv" / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "DDIMScheduler"


def test_animatediff_preset_is_diffusers_animatediff_ddim(folders):
    sd_cfg = json.loads((folders / "sd" / "scheduler" / "scheduler_config.json").read_text())
    ref = diffusers.DDIMScheduler.from_config(sd_cfg, clip_sample=False, timestep_spacing="linspace",
                                              beta_schedule="linear", steps_offset=1)
    ours = VideoPipeline.from_pretrained(folders / "sd", motion_adapter=folders / "animatediff" / "motion_adapter",
                                         scheduler="animatediff").schedule
    ref.set_timesteps(7)
    assert ours.timesteps(7).round().tolist() == ref.timesteps.tolist()
    assert torch.allclose(ours.alphas_cumprod.float(), ref.alphas_cumprod)


# ---- offload, decode chunks, loading memory ----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["model", "sequential"])
def test_offload_gives_the_same_latents(folders, how):
    lat = torch.randn(1, 4, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(latents=lat, num_inference_steps=2, output_type="latent", seed=0, progress=False)
    plain = VideoPipeline.from_pretrained(folders / "animatediff")(PROMPT, **kw)
    pipe = VideoPipeline.from_pretrained(folders / "animatediff")
    getattr(pipe, f"enable_{how}_cpu_offload")("cpu")
    assert hasattr(pipe.unet, "_hf_hook") or any(hasattr(m, "_hf_hook") for m in pipe.unet.modules())
    assert pipe.offload == how
    assert torch.equal(pipe(PROMPT, **kw), plain)
    video = pipe(PROMPT, num_frames=4, height=16, width=16, num_inference_steps=2, seed=0, progress=False)
    assert video.frames.shape == (4, 16, 16, 3)


def test_decode_chunk_size_and_vae_tiling_keep_the_frames(folders):
    pipe = VideoPipeline.from_pretrained(folders / "animatediff")
    kw = dict(num_frames=4, height=16, width=16, num_inference_steps=2, seed=0, progress=False)
    calls = []
    decode = pipe.codec.vae.decode
    pipe.codec.vae.decode = lambda z, *a, **k: (calls.append(len(z)), decode(z, *a, **k))[1]
    base = pipe(PROMPT, **kw).frames
    assert calls == [4]                                        # the codec's 8 frames at a time: one call
    calls.clear()
    assert np.array_equal(pipe(PROMPT, decode_chunk_size=1, **kw).frames, base)
    assert calls == [1, 1, 1, 1]                               # one frame at a time, same frames
    with pytest.raises(ValueError, match="decode_chunk_size must be an integer >= 1"):
        pipe(PROMPT, decode_chunk_size=0, **kw)
    pipe.enable_vae_tiling()
    assert pipe.codec.vae.use_tiling


LOAD_PEAK = """
import resource, sys, torch
from vidiff.pipelines.pipeline import VideoPipeline
torch.set_num_threads(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pipe = VideoPipeline.from_pretrained(sys.argv[1], motion_adapter=sys.argv[2])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.slow
def test_loading_sd_and_adapter_holds_about_one_copy_of_the_weights(tmp_path):
    from diffusers import MotionAdapter, UNet2DConditionModel

    torch.manual_seed(0)
    widths = (128, 256, 512)
    unet = UNet2DConditionModel(block_out_channels=widths, cross_attention_dim=256, sample_size=8,
                                down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2)
    sd = tmp_path / "sd"
    parts = testing.tiny_sd_parts(cross_attention_dim=256)
    diffusers.StableDiffusionPipeline(unet=unet, scheduler=testing.ddim_scheduler(), safety_checker=None,
                                      feature_extractor=None, requires_safety_checker=False,
                                      **parts).save_pretrained(sd, safe_serialization=True)
    MotionAdapter(block_out_channels=widths, motion_layers_per_block=2).save_pretrained(tmp_path / "ad")
    weights = sum(p.stat().st_size for p in list(sd.rglob("*.safetensors")) + list((tmp_path / "ad").rglob("*.safetensors")))
    out = subprocess.run([sys.executable, "-c", LOAD_PEAK, str(sd), str(tmp_path / "ad")], capture_output=True,
                         text=True, check=True)
    peak = int(out.stdout.strip().splitlines()[-1])
    assert weights > 200e6
    assert peak <= 1.3 * weights, f"loading took {peak / 1e6:.0f} MB for {weights / 1e6:.0f} MB of weights"


def test_a_training_step_with_ema_runs_on_the_meta_device():
    from vidiff.training.config import load_config
    from vidiff.training.train import Objective, draw

    pipe = testing.tiny_pipeline()
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [])
    unet = pipe.unet.to("meta").train()
    trainable = list(unet.named_parameters())
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=1e-3)
    ema = make_ema(trainable)                                  # made where the weights are (after prepare)
    objective = Objective(unet, pipe.schedule)
    x0 = torch.zeros(2, 12, 4, 16, 16, device="meta")
    t, noise, mask, _ = draw(torch.zeros(2, 12, 4, 16, 16), cfg, pipe.schedule, torch.Generator().manual_seed(0), True)
    ctx = torch.zeros(2, 16, 32, device="meta")
    loss = objective((x0, ctx, t.to("meta"), noise.to("meta"), mask.to("meta")))
    loss.backward()
    optimizer.step()
    _update_ema(ema, trainable, 0.99, 1)
    assert loss.device.type == "meta" and all(v.device.type == "meta" for v in ema.values())
