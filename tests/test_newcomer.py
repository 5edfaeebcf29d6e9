"""What a diffusers user and a newcomer hit: one scheduler option, the AnimateDiff preset, videos remade from their
settings, the web UI's first form, long-video messages, FIFO's cost, precision notes."""

import json
import shutil
import warnings
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from vidiff import testing
from conftest import run_cli
from vidiff.data.io import read_settings, read_video
from vidiff.pipelines.pipeline import VideoPipeline

PROMPT = "a red circle moving left"


cli = run_cli


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("newcomer")
    testing.tiny_animatediff_folder(root / "animatediff")
    testing.tiny_sd_folder(root / "sd")
    testing.tiny_modelscope_folder(root / "modelscope")
    testing.tiny_model(root / "vidiff")
    testing.tiny_lora_file(VideoPipeline.from_pretrained(root / "animatediff").unet, root / "style.safetensors")
    from PIL import Image

    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(root / "first.png")
    return root


SMALL = ["--frames", "4", "--height", "16", "--width", "16", "--steps", "2"]
FAMILIES = {
    "vidiff": lambda r: ["--model", r / "vidiff", "--frames", "4", "--steps", "2"],
    "sd+adapter+lora": lambda r: ["--model", r / "sd", "--motion-adapter", r / "animatediff" / "motion_adapter",
                                  "--scheduler", "animatediff", "--lora", f"{r / 'style.safetensors'}:0.7", *SMALL],
    "modelscope": lambda r: ["--model", r / "modelscope", "--sampler", "euler_ancestral", *SMALL],
    "animatediff-i2v": lambda r: ["--model", r / "animatediff", "--image", r / "first.png", *SMALL],
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_video_is_remade_bit_for_bit_from_its_settings(folders, family, tmp_path, capsys):
    first = tmp_path / "first.mp4"
    code, _, err = cli(capsys, "generate", PROMPT, *FAMILIES[family](folders), "--seed", "5", "-o", first)
    assert code == 0, err
    settings = read_settings(first)
    assert Path(settings["model"]).is_absolute() and settings["scheduler"]["_class_name"]
    if family == "sd+adapter+lora":
        assert settings["motion_adapter"] and settings["loras"][0]["scale"] == 0.7
        assert settings["scheduler"]["beta_schedule"] == "linear"
    again = tmp_path / "again.mp4"
    code, _, err = cli(capsys, "generate", "--from-settings", first, "-o", again)
    assert code == 0, err
    assert np.array_equal(read_video(first)[0], read_video(again)[0])
    assert read_settings(again) == settings


def test_extend_is_remade_from_its_settings(folders, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    assert cli(capsys, "generate", PROMPT, "--model", folders / "animatediff", *SMALL, "--seed", "1", "-o", clip)[0] == 0
    longer = tmp_path / "longer.mp4"
    code, _, err = cli(capsys, "extend", clip, "--prompt", PROMPT, "--model", folders / "animatediff", "--frames", "4",
                       "--chunk", "6", "--context", "2", "--steps", "2", "--seed", "2", "-o", longer)
    assert code == 0, err
    code, _, err = cli(capsys, "generate", "--from-settings", longer, "-o", tmp_path / "again.mp4")
    assert code == 0, err
    assert np.array_equal(read_video(longer)[0], read_video(tmp_path / "again.mp4")[0])


def test_from_settings_of_a_file_without_settings_is_one_line(tmp_path, capsys):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "plain.png", np.zeros((8, 8, 3), np.uint8))
    code, _, err = cli(capsys, "generate", "--from-settings", tmp_path / "plain.png", "-o", tmp_path / "x.mp4")
    assert code == 2 and len(err) == 1 and "holds no vidiff settings" in err[0]


# ---- one scheduler option ------------------------------------------------------------------------------

def test_every_model_command_takes_the_same_scheduler_option(folders, tmp_path, capsys):
    sd = tmp_path / "sd-pndm"
    shutil.copytree(folders / "sd", sd)
    diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                            steps_offset=1).save_pretrained(sd / "scheduler")
    adapter = folders / "animatediff" / "motion_adapter"
    code, _, err = cli(capsys, "convert", sd, "--motion-adapter", adapter, "--scheduler", "ddim", "--out", tmp_path / "c")
    assert code == 0, err
    code, _, err = cli(capsys, "inflate", sd, "--out", tmp_path / "i")
    assert code == 0, err                                   # the folder's PNDM is kept, not rewritten as DDIM
    assert json.loads((tmp_path / "i" / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"
    code, _, err = cli(capsys, "inflate", sd, "--scheduler", "animatediff", "--out", tmp_path / "i2")
    cfg = json.loads((tmp_path / "i2" / "scheduler" / "scheduler_config.json").read_text())
    assert code == 0 and cfg["_class_name"] == "DDIMScheduler" and cfg["beta_schedule"] == "linear"
    for flag in ("--sampler", "--scheduler"):               # both names work on an SD folder as it ships
        code, _, err = cli(capsys, "generate", PROMPT, "--model", sd, "--motion-adapter", adapter, flag, "ddim",
                           *SMALL, "--seed", "0", "-o", tmp_path / f"{flag[2:]}.mp4")
        assert code == 0, err


def test_animatediff_preset_matches_diffusers_animatediff_ddim(folders):
    sd_cfg = json.loads((folders / "sd" / "scheduler" / "scheduler_config.json").read_text())
    ref = diffusers.AnimateDiffPipeline.from_pretrained(folders / "animatediff")
    ref.scheduler = diffusers.DDIMScheduler.from_config(sd_cfg, clip_sample=False, timestep_spacing="linspace",
                                                        beta_schedule="linear", steps_offset=1)
    ref.set_progress_bar_config(disable=True)
    ours = VideoPipeline.from_pretrained(folders / "sd", motion_adapter=folders / "animatediff" / "motion_adapter",
                                         scheduler="animatediff")
    lat = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    r = ref(prompt=PROMPT, latents=lat.clone(), num_frames=8, height=16, width=16, num_inference_steps=5,
            output_type="latent").frames
    o = ours(PROMPT, latents=lat.clone(), num_inference_steps=5, guidance_scale=7.5, output_type="latent", seed=0,
             progress=False)
    assert float((o - r).abs().max() / r.abs().max()) <= 1e-4


# ---- long-video messages, FIFO's cost, precision -------------------------------------------------------------

def test_windows_mode_gives_no_one_window_warning(folders):
    pipe = VideoPipeline.from_pretrained(folders / "vidiff")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.guard(64, 64, 64, mode="windows", chunk=16)
        pipe.guard(64, 64, 64, mode="autoregressive", chunk=16)
    assert not [w for w in caught if "one window" in str(w.message)]
    with pytest.warns(UserWarning, match="64 frames in one window"):
        pipe.guard(64, 64, 64, mode="all")


def test_fifo_states_its_cost_when_it_starts(folders, tmp_path, capsys):
    from vidiff.app.cli import build_parser
    from vidiff.diffusion.plans import fifo_cost

    assert build_parser().parse_args(["generate", "x"]).partitions == 2       # not the slowest
    code, _, err = cli(capsys, "generate", "a red circle moving right", "--model", folders / "vidiff", "--mode", "fifo",
                       "--frames", "6", "--chunk", "4", "--seed", "0", "-o", tmp_path / "f.mp4")
    assert code == 0, err
    calls, per = fifo_cost(6, 4, 2)
    assert any(f"fifo runs {calls} UNet passes of 4 frames for 6 frames ({per} a frame" in line for line in err), err
    assert per == 4 and fifo_cost(6, 4, 4)[1] == 8                            # 2 x partitions (+ lookahead start)


def test_float16_on_cpu_warns_and_diffusers_float32_notice_is_silent(folders, capfd):
    with pytest.warns(UserWarning, match="float16 on a CPU is several times slower"):
        VideoPipeline.from_pretrained(folders / "vidiff", dtype="float16")
    capfd.readouterr()
    pipe = VideoPipeline.from_pretrained(folders / "sd", motion_adapter=folders / "animatediff" / "motion_adapter",
                                         scheduler="animatediff")
    pipe(PROMPT, num_frames=4, height=16, width=16, num_inference_steps=2, seed=0, progress=False)
    out, err = capfd.readouterr()
    assert "should be kept in float32" not in out + err


@pytest.mark.slow                          # 18 videos of the shipped model: ~40 s
def test_static_guard_flags_the_shipped_models_still_prompts():
    from vidiff.evaluation.bench import consistency

    pipe = VideoPipeline.from_pretrained(device="cpu")
    for prompt, static in (("a green triangle staying still", True), ("a red circle staying still", True),
                           ("a blue square staying still", True), ("a red circle moving right", False),
                           ("a blue square moving up", False), ("a yellow square moving left", False)):
        for seed in range(3):
            report = consistency(pipe(prompt, seed=seed, progress=False))
            assert report["static"] is static, (prompt, seed, report["metrics"]["motion_guard"]["displacement_px"])


def test_an_off_domain_image_is_said_to_be_replaced_not_animated():
    from vidiff.pipelines.pipeline import jump_warning
    from vidiff.data.shapes import render_clip

    clip = render_clip("blue", "square", "right", np.random.default_rng(0), 64, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jump_warning(clip)                                     # a video that moves evenly: no word
    photo_then_shapes = clip.copy()
    photo_then_shapes[0] = np.random.default_rng(1).integers(0, 256, clip.shape[1:], dtype=np.uint8)
    with pytest.warns(UserWarning, match="far from what this model learned"):
        jump_warning(photo_then_shapes)


@pytest.mark.slow                          # the shipped model animating a photo and a frame of its own domain: ~10 s
def test_shipped_model_warns_on_a_photo_and_not_on_its_own_frames():
    from PIL import Image

    from vidiff.data.shapes import render_clip

    cbook = pytest.importorskip("matplotlib.cbook")
    photo = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    pipe = VideoPipeline.from_pretrained(device="cpu")
    with pytest.warns(UserWarning, match="far from what this model learned"):
        pipe.animate(photo, "a red circle moving right", resize="crop", seed=0, progress=False)
    frame = render_clip("red", "circle", "right", np.random.default_rng(0), 64, 1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pipe.animate(frame, "a red circle moving right", seed=0, progress=False)
