"""Community models (AnimateDiff, ModelScope/Zeroscope): vidiff against diffusers on the same tiny weights."""

import json
import warnings

import pytest
import torch

from vidiff import testing
from vidiff.loaders.convert import (adapter_overrides, config_from_motion_unet, config_from_unet3d,
                            read_motion_adapter)
from vidiff.models.inflate import config_from_diffusers
from vidiff.pipelines.pipeline import VideoPipeline
from vidiff.models.unet import UNet, UNetConfig
from vidiff.models.unet import load_weights

diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", category=FutureWarning)
PROMPT, NEG = "a red circle moving right", "blue square"


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# ---- the UNet --------------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["v1", "v2", "v3"])
def test_animatediff_unet_matches_unet_motion_model(style):
    mid, seq = {"v1": (False, 24), "v2": (True, 32), "v3": (False, 32)}[style]
    ref = diffusers.UNetMotionModel.from_unet2d(testing.tiny_unet2d(), testing.tiny_motion_adapter(mid=mid, max_seq=seq)).eval()
    ours = load_weights(config_from_motion_unet(dict(ref.config)), ref.state_dict()).eval()
    assert ours.config.temporal_family == "animatediff" and ours.config.motion_max_seq_length == seq
    for f in (2, 8, 16):
        x, t, ctx = torch.randn(2, 4, f, 16, 16), torch.tensor([10, 700]), torch.randn(2, 5, 8)
        with torch.no_grad():
            assert rel(ours(x, t, ctx), ref(x, t, ctx.repeat_interleave(f, 0)).sample) <= 1e-5, f


def test_modelscope_unet_matches_unet3d():
    ref = testing.tiny_unet3d()
    ours = load_weights(config_from_unet3d(dict(ref.config)), ref.state_dict()).eval()
    for f in (2, 8, 16):
        x, t, ctx = torch.randn(2, 4, f, 16, 16), torch.tensor([10, 700]), torch.randn(2, 5, 8)
        with torch.no_grad():
            assert rel(ours(x, t, ctx), ref(x, t, ctx).sample) <= 1e-5, f


def test_one_frame_is_the_image_model_in_every_family():
    image = testing.tiny_unet2d()
    motion = diffusers.UNetMotionModel.from_unet2d(image, testing.tiny_motion_adapter())
    ours = load_weights(config_from_motion_unet(dict(motion.config)), motion.state_dict()).eval()
    x, t, ctx = torch.randn(2, 4, 1, 16, 16), torch.tensor([3, 900]), torch.randn(2, 5, 8)
    with torch.no_grad():
        assert rel(ours(x, t, ctx)[:, :, 0], image(x[:, :, 0], t, ctx).sample) <= 1e-5


@pytest.mark.parametrize("family", ["animatediff", "modelscope"])
def test_inflate_adds_any_family_exactly(family):
    from vidiff.models.inflate import inflate

    image = testing.tiny_unet2d()
    video = inflate(image, temporal_family=family).eval()
    x, t, ctx = torch.randn(1, 4, 6, 16, 16), torch.tensor([500]), torch.randn(1, 5, 8)
    with torch.no_grad():
        ref = torch.stack([image(x[:, :, i], t, ctx).sample for i in range(6)], 2)
        assert rel(video(x, t, ctx), ref) <= 1e-5


# ---- folders and pipelines -----------------------------------------------------------------------

def to_original(sd: dict) -> dict:
    """diffusers MotionAdapter keys -> the original AnimateDiff layout (what the .ckpt/.safetensors files hold)."""
    import re

    out = {}
    for k, v in sd.items():
        k = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", k)
        if k.endswith("pos_embed.pe"):
            for a in (0, 1):
                out[k.replace("pos_embed.pe", f"attention_blocks.{a}.pos_encoder.pe")] = v.clone()
            continue
        for a, b in ((".attn1", ".attention_blocks.0"), (".attn2", ".attention_blocks.1"), (".norm1", ".norms.0"),
                     (".norm2", ".norms.1"), (".norm3", ".ff_norm")):
            k = k.replace(a, b)
        out[k] = v
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("community")
    ad = testing.tiny_animatediff_folder(root / "animatediff")
    testing.tiny_sd_folder(root / "sd")
    adapter = diffusers.MotionAdapter.from_pretrained(ad / "motion_adapter")
    save_file(to_original(adapter.state_dict()), str(root / "mm_original.safetensors"))
    # an AnimateDiffPipeline folder whose unet/ is the image UNet2D, with motion_adapter/ beside it
    import shutil

    shutil.copytree(root / "sd", root / "ad2d")
    shutil.copytree(ad / "motion_adapter", root / "ad2d" / "motion_adapter")
    index = json.loads((ad / "model_index.json").read_text())
    (root / "ad2d" / "model_index.json").write_text(json.dumps(index))
    testing.tiny_modelscope_folder(root / "modelscope")
    return root


LOADS = {   # how vidiff is pointed at the weights -> (folder, motion_adapter, diffusers pipeline class, folder)
    "animatediff-folder": ("animatediff", None, "AnimateDiffPipeline"),
    "unet2d+motion_adapter/": ("ad2d", None, "AnimateDiffPipeline"),
    "sd+adapter-folder": ("sd", "animatediff/motion_adapter", "AnimateDiffPipeline"),
    "sd+original-safetensors": ("sd", "mm_original.safetensors", "AnimateDiffPipeline"),
    "modelscope": ("modelscope", None, "TextToVideoSDPipeline"),
}
SCHEDULERS = {
    "ddim-linspace": ("DDIMScheduler", {"timestep_spacing": "linspace", "steps_offset": 1}, 5),
    "ddim-leading": ("DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 1}, 3),
    "euler-trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, 4),
    "lcm": ("LCMScheduler", {}, 4),
    # what SD folders ship and users pick (the real user's path)
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True, "timestep_spacing": "leading", "steps_offset": 1}, 5),
    "unipc": ("UniPCMultistepScheduler", {}, 5),
    "euler-karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, 5),
    "dpmpp-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 5),
    "sde-dpmpp-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, 5),
}


def diffusers_pipeline(folders, load, scheduler):
    name, adapter, cls = LOADS[load]
    path = folders / ("animatediff" if cls == "AnimateDiffPipeline" else name)
    pipe = getattr(diffusers, cls).from_pretrained(path)
    sched_cls, kw, _ = SCHEDULERS[scheduler]
    pipe.scheduler = getattr(diffusers, sched_cls).from_config(pipe.scheduler.config, **kw)
    return pipe.set_progress_bar_config(disable=True) or pipe


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("load", list(LOADS))
def test_pipeline_latents_match_diffusers(folders, load, scheduler):
    name, adapter, cls = LOADS[load]
    sched_cls, kw, steps = SCHEDULERS[scheduler]
    ref_pipe = diffusers_pipeline(folders, load, scheduler)
    ours = VideoPipeline.from_pretrained(folders / name, motion_adapter=adapter and folders / adapter,
                                         scheduler={"_class_name": sched_cls, **kw})
    f = 8
    lat = torch.randn(1, 4, f, 8, 8, generator=torch.Generator().manual_seed(0))
    common = dict(num_inference_steps=steps, guidance_scale=7.5, output_type="latent")
    ref = ref_pipe(prompt=PROMPT, negative_prompt=NEG, latents=lat.clone(), num_frames=f, height=16, width=16,
                   generator=torch.Generator().manual_seed(7), **common).frames
    out = ours(PROMPT, negative_prompt=NEG, latents=lat.clone(), seed=7, progress=False, **common)
    assert out.shape == ref.shape == lat.shape
    assert rel(out, ref) <= 1e-4


def test_original_layout_file_gives_the_adapter_folder_weights(folders):
    cfg_f, sd_f = read_motion_adapter(folders / "animatediff" / "motion_adapter")
    cfg_o, sd_o = read_motion_adapter(folders / "mm_original.safetensors")
    assert set(sd_o) == {k for k in sd_f if not k.endswith("pos_embed.pe")}
    assert all(torch.equal(sd_o[k], sd_f[k]) for k in sd_o)
    for key in ("block_out_channels", "use_motion_mid_block", "motion_max_seq_length", "motion_layers_per_block"):
        assert list(cfg_o[key]) == list(cfg_f[key]) if isinstance(cfg_f[key], (list, tuple)) else cfg_o[key] == cfg_f[key]


SD15 = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, sample_size=64)


@pytest.mark.parametrize("version, mid, seq, params", [("v2", True, 32, 453_209_280), ("v1", False, 24, 417_137_600)])
@pytest.mark.slow
def test_real_sd15_adapter_key_sets_on_meta_device(version, mid, seq, params):
    adapter_cfg = dict(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
                       use_motion_mid_block=mid, motion_max_seq_length=seq)
    with torch.device("meta"):
        ref = diffusers.UNetMotionModel.from_unet2d(diffusers.UNet2DConditionModel(**SD15),
                                                    diffusers.MotionAdapter(**adapter_cfg), load_weights=False)
        base = config_from_diffusers(SD15)
        ours = UNet(UNetConfig.from_dict({**base.__dict__, **adapter_overrides(adapter_cfg, base)}))
    theirs = ref.state_dict()
    assert set(ours.state_dict()) == set(theirs)
    assert all(ours.state_dict()[k].shape == theirs[k].shape for k in theirs)
    motion = sum(p.numel() for k, p in ours.named_parameters() if ".motion_modules." in k)
    assert motion == params


def test_export_motion_adapter_round_trip(folders, tmp_path):
    """vidiff convert -> vidiff export -> diffusers: the same weights bit for bit, the same video."""
    from vidiff.app.cli import main

    assert main(["convert", str(folders / "animatediff"), "--out", str(tmp_path / "v")]) == 0
    assert main(["export", str(tmp_path / "v"), "--to", "diffusers", str(tmp_path / "ma")]) == 0
    exported = diffusers.MotionAdapter.from_pretrained(tmp_path / "ma")
    original = diffusers.MotionAdapter.from_pretrained(folders / "animatediff" / "motion_adapter")
    a, b = exported.state_dict(), original.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    ref = diffusers.AnimateDiffPipeline.from_pretrained(folders / "animatediff")
    ref.set_progress_bar_config(disable=True)
    pipe = diffusers.AnimateDiffPipeline.from_pretrained(folders / "sd", motion_adapter=exported)
    pipe.set_progress_bar_config(disable=True)
    lat = torch.randn(1, 4, 4, 8, 8)
    kw = dict(prompt=PROMPT, num_inference_steps=2, output_type="latent", num_frames=4, height=16, width=16)
    assert torch.equal(pipe(latents=lat.clone(), **kw).frames, ref(latents=lat.clone(), **kw).frames)
    ours = VideoPipeline.from_pretrained(tmp_path / "v")
    assert rel(ours(PROMPT, latents=lat.clone(), num_inference_steps=2, output_type="latent", progress=False),
               ref(latents=lat.clone(), **kw).frames) <= 1e-4


def test_export_modelscope_pipeline_round_trip(folders, tmp_path):
    from vidiff.app.cli import main

    assert main(["convert", str(folders / "modelscope"), "--out", str(tmp_path / "v"), "--dtype", "float32"]) == 0
    assert main(["export", str(tmp_path / "v"), "--to", "diffusers", str(tmp_path / "ms")]) == 0
    a = diffusers.UNet3DConditionModel.from_pretrained(tmp_path / "ms" / "unet").state_dict()
    b = diffusers.UNet3DConditionModel.from_pretrained(folders / "modelscope" / "unet").state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    pipe = diffusers.TextToVideoSDPipeline.from_pretrained(tmp_path / "ms")
    pipe.set_progress_bar_config(disable=True)
    lat = torch.randn(1, 4, 4, 8, 8)
    kw = dict(prompt=PROMPT, num_inference_steps=2, output_type="latent", num_frames=4, height=16, width=16)
    ref = diffusers.TextToVideoSDPipeline.from_pretrained(folders / "modelscope")
    ref.set_progress_bar_config(disable=True)
    assert torch.equal(pipe(latents=lat.clone(), **kw).frames, ref(latents=lat.clone(), **kw).frames)


# ---- modes on community models -----------------------------------------------------------------------

def test_vidiff_modes_run_on_an_animatediff_model(folders):
    pipe = VideoPipeline.from_pretrained(folders / "animatediff")
    kw = dict(num_inference_steps=2, height=16, width=16, seed=0, progress=False)
    video = pipe(PROMPT, num_frames=12, mode="autoregressive", chunk=8, context=2, **kw)
    assert video.frames.shape == (12, 16, 16, 3)
    image = pipe(PROMPT, num_frames=1, **kw)
    assert image.frames.shape == (1, 16, 16, 3)
    animated = pipe.animate(video.frames[0], PROMPT, num_frames=6, **kw)
    assert len(animated) == 6
    longer = pipe.extend(video, PROMPT, num_frames=4, chunk=8, num_inference_steps=2, seed=0, progress=False)
    assert len(longer) == 16 and (longer.frames[:12] == video.frames).all()
    between = pipe.interpolate(video.frames[0], video.frames[-1], PROMPT, num_frames=5, **kw)
    assert len(between) == 5
    # per-frame noise levels reach the UNet
    x, ctx = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 16, 8)
    with torch.no_grad():
        per = pipe.unet(x, torch.tensor([[10, 500, 900]]), ctx)
        flat = pipe.unet(x, torch.tensor([500]), ctx)
    assert not torch.allclose(per, flat)


def test_too_many_frames_for_the_table_is_one_line(folders):
    pipe = VideoPipeline.from_pretrained(folders / "animatediff")
    with pytest.raises(ValueError, match="33 frames in one window exceed the motion module's positional table "
                                         "of 32 frames; use mode='windows'.*or mode='autoregressive'"):
        pipe(PROMPT, num_frames=33, height=16, width=16, progress=False)
    video = pipe(PROMPT, num_frames=34, height=16, width=16, num_inference_steps=1, mode="autoregressive",
                 chunk=16, context=4, progress=False)
    assert len(video) == 34


# ---- bad inputs ----------------------------------------------------------------------------------

def test_bad_community_inputs_are_one_line_and_exit_2(folders, tmp_path, capsys):
    from diffusers import MotionAdapter

    from vidiff.app.cli import main

    MotionAdapter(block_out_channels=(16, 32), motion_layers_per_block=2, motion_norm_num_groups=2,
                  motion_num_attention_heads=4).save_pretrained(tmp_path / "wide")
    (tmp_path / "mm.ckpt").write_bytes(b"\x80\x04not really a pickle")
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(folders / "modelscope", broken)
    shutil.rmtree(broken / "vae")
    pndm = tmp_path / "pndm"
    shutil.copytree(folders / "modelscope", pndm)
    cfg = json.loads((pndm / "scheduler" / "scheduler_config.json").read_text())
    (pndm / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "_class_name": "KDPM2DiscreteScheduler"}))
    cases = [
        (["--model", str(folders / "sd"), "--motion-adapter", str(tmp_path / "wide")], r"\(16, 32\).*\(8, 16\)"),
        (["--model", str(folders / "sd"), "--motion-adapter", str(tmp_path / "mm.ckpt")], "pickle"),
        (["--model", str(broken)], "has no vae/"),
        (["--model", str(pndm)], "KDPM2DiscreteScheduler.*supported: DDIMScheduler"),
        (["--model", str(folders / "animatediff"), "--frames", "40"], "positional table of 32 frames"),
        (["--model", str(folders / "sd")], "image model.*--motion-adapter"),
    ]
    for args, pattern in cases:
        out = tmp_path / "x.mp4"
        code = main(["generate", PROMPT, "-o", str(out), "--steps", "1", "--height", "16", "--width", "16", *args])
        err = capsys.readouterr().err.strip()
        assert code == 2, args
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        import re

        assert re.search(pattern, err), (pattern, err)
        assert not out.exists()


def test_cli_generates_from_an_animatediff_folder(folders, tmp_path, capsys):
    from vidiff.app.cli import main
    from vidiff.data.io import read_video

    out = tmp_path / "out.mp4"
    code = main(["generate", PROMPT, "--model", str(folders / "animatediff"), "--frames", "8", "--steps", "4",
                 "--height", "16", "--width", "16", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    frames, _ = read_video(out)
    assert frames.shape[0] == 8


def test_train_motion_module_and_export_to_diffusers(folders, tmp_path):
    """configs/animatediff-motion.yaml: SD + adapter, spatial frozen; the result exports to a MotionAdapter
    that diffusers loads and samples exactly as vidiff does."""
    from pathlib import Path

    from vidiff.app.cli import main
    from vidiff.training.config import load_config
    from vidiff.data.shapes import make_shapes_dataset
    from vidiff.training.train import train

    data = make_shapes_dataset(tmp_path / "data", clips=4, size=16, num_frames=6, progress=False)
    cfg = load_config(Path(__file__).parent.parent / "configs" / "animatediff-motion.yaml", [
        f"train.init={folders / 'sd'}", f"train.motion_adapter={folders / 'animatediff' / 'motion_adapter'}",
        f"data.path={data}", f"train.output_dir={tmp_path / 'run'}", "data.height=16", "data.width=16",
        "data.num_frames=4", "data.num_workers=0", "train.steps=2", "train.grad_accum=1", "train.batch_size=2",
        "train.mixed_precision=no", "train.lr=1e-2", "train.warmup_steps=0"])
    result = train(cfg, progress=False)
    before = diffusers.UNetMotionModel.from_unet2d(
        diffusers.UNet2DConditionModel.from_pretrained(folders / "sd" / "unet"),
        diffusers.MotionAdapter.from_pretrained(folders / "animatediff" / "motion_adapter")).state_dict()
    after = result["unet"].state_dict()
    spatial = [k for k in before if ".motion_modules." not in k]
    assert all(torch.equal(after[k], before[k]) for k in spatial)                   # frozen
    assert any(not torch.equal(after[k], before[k]) for k in before if ".motion_modules." in k and "pe" not in k)

    assert main(["export", str(result["model_dir"]), "--to", "diffusers", str(tmp_path / "ma")]) == 0
    ref = diffusers.AnimateDiffPipeline.from_pretrained(
        folders / "sd", motion_adapter=diffusers.MotionAdapter.from_pretrained(tmp_path / "ma"))
    ref.set_progress_bar_config(disable=True)
    ours = VideoPipeline.from_pretrained(result["model_dir"])
    ref.scheduler = diffusers.DDIMScheduler.from_config(ref.scheduler.config, beta_schedule="linear")
    lat = torch.randn(1, 4, 4, 8, 8)
    kw = dict(num_inference_steps=2, output_type="latent", guidance_scale=7.5)
    expected = ref(prompt=PROMPT, latents=lat.clone(), num_frames=4, height=16, width=16, **kw).frames
    assert rel(ours(PROMPT, latents=lat.clone(), progress=False, **kw), expected) <= 1e-4


def test_decoded_video_matches_diffusers_np_output(folders):
    """The VAE and its scaling factor come from the folder: decoded frames equal diffusers' to 8-bit rounding."""
    ref = diffusers.AnimateDiffPipeline.from_pretrained(folders / "animatediff")
    ref.set_progress_bar_config(disable=True)
    pipe = VideoPipeline.from_pretrained(folders / "animatediff")
    assert pipe.codec.scaling == ref.vae.config.scaling_factor
    lat = torch.randn(1, 4, 4, 8, 8)
    frames = ref(prompt=PROMPT, latents=lat.clone(), num_inference_steps=2, num_frames=4, height=16, width=16,
                 output_type="np").frames[0]
    video = pipe(PROMPT, latents=lat.clone(), num_inference_steps=2, progress=False)
    assert video.frames.shape == frames.shape
    assert abs(video.frames.astype(float) / 255 - frames).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("init", ["modelscope", "animatediff"])
def test_train_init_from_a_community_folder_trains_only_its_temporal_layers(folders, tmp_path, init):
    from vidiff.training.config import load_config
    from vidiff.data.shapes import make_shapes_dataset
    from vidiff.training.train import train
    from vidiff.models.unet import is_temporal_key

    data = make_shapes_dataset(tmp_path / "data", clips=2, size=16, num_frames=6, progress=False)
    cfg = load_config(None, [
        f"train.init={folders / init}", f"data.path={data}", f"train.output_dir={tmp_path / 'run'}",
        "data.height=16", "data.width=16", "data.num_frames=4", "train.steps=1", "train.batch_size=2",
        "train.freeze_spatial=true", "train.lr=1e-2", "train.ema_decay=0", "train.text_dropout=0"])
    before = VideoPipeline.from_pretrained(folders / init).unet.state_dict()
    after = train(cfg, progress=False)["unet"].state_dict()
    assert set(before) == set(after)
    assert all(torch.equal(after[k], before[k]) for k in before if not is_temporal_key(k))
    assert any(not torch.equal(after[k], before[k]) for k in before if is_temporal_key(k))


def test_cli_scheduler_override_with_config_keys(folders, tmp_path, capsys):
    from vidiff.app.cli import main

    out = tmp_path / "lightning.gif"
    code = main(["generate", PROMPT, "--model", str(folders / "animatediff"), "--frames", "4", "--steps", "2",
                 "--height", "16", "--width", "16", "--guidance", "1", "-o", str(out),
                 "--scheduler", "euler:timestep_spacing=trailing,beta_schedule=linear"])
    assert code == 0, capsys.readouterr().err
    assert out.exists()
    code = main(["generate", PROMPT, "--model", str(folders / "animatediff"), "-o", str(out),
                 "--scheduler", "euler:timestep_spacing"])
    assert code == 2 and "must look like key=value" in capsys.readouterr().err
