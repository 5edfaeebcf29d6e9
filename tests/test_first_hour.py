"""What a new user hit in the first hour (issue 18): one test per item, CLI refusals before any work."""

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from vidiff.app.cli import main
from vidiff.data.io import read_settings, read_video, write_video
from vidiff.testing import tiny_model

PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "tiny")


def cli(capsys, *args):
    """Run the CLI; (exit status, stdout, stderr lines)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip() and "%|" not in line]


def one_line_error(capsys, *args, pattern):
    t0 = time.perf_counter()
    code, _, err = cli(capsys, *args)
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert re.search(pattern, err[0]), err[0]
    return time.perf_counter() - t0


# 1 ------------------------------------------------------------------------------------------------
def test_punctuation_and_case_do_not_drop_known_words():
    from vidiff.pipelines.pipeline import DEFAULT_MODEL
    from vidiff.testing import tiny_text_encoder
    from vidiff.models.text import TextEncoder

    for enc in (TextEncoder.from_pretrained(DEFAULT_MODEL), tiny_text_encoder()):
        plain = enc.tokenizer("a red circle moving right")["input_ids"]
        assert enc.tokenizer("A red circle, moving RIGHT.")["input_ids"] == plain
        assert enc.unknown_words("A red circle, moving right.") == []
    assert tiny_text_encoder().unknown_words("blurry, noisy, low quality") == ["blurry", "noisy", "low", "quality"]


# 2 ------------------------------------------------------------------------------------------------
def test_numeric_overrides_parse_as_numbers_in_free_sections():
    from vidiff.training.config import load_config
    from vidiff.diffusion.schedule import NoiseSchedule

    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["schedule.terminal_snr=1e-8", "model.dropout=1e-1",
                                                       "train.lr=3e-4", "codec={type: pixel, factor: 2}"])
    assert cfg.schedule["terminal_snr"] == 1e-8 and cfg.model["dropout"] == 0.1 and cfg.train.lr == 3e-4
    assert NoiseSchedule.from_config(cfg.schedule).terminal_snr == 1e-8


# 3 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height", [31, 30])
def test_training_size_is_checked_in_pixels_before_anything_is_written(capsys, tmp_path, height):
    from vidiff.data.shapes import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", clips=2, size=32, num_frames=8, progress=False)
    out = tmp_path / "run"
    one_line_error(capsys, "train", ROOT / "configs" / "tiny.yaml", f"data.path={data}", f"train.output_dir={out}",
                   f"data.height={height}", pattern=rf"data.height={height} must be a multiple of 4 pixels")
    assert not out.exists()


# 4 ------------------------------------------------------------------------------------------------
def test_runaway_requests_are_refused_before_any_work(capsys, tmp_path, model_dir):
    out = tmp_path / "x.mp4"
    seconds = one_line_error(capsys, "generate", PROMPT, "--model", model_dir, "--frames", 100000, "-o", out,
                             pattern=r"100000 frames at 64x64 need about [\d.]+ GiB.*--mode autoregressive")
    assert seconds < 10 and not out.exists()
    one_line_error(capsys, "generate", PROMPT, "--model", model_dir, "--height", 4096, "--width", 4096, "-o", out,
                   pattern=r"at 4096x4096 need about [\d.]+ GiB \(estimate\).*--force tries anyway")
    assert not out.exists()
    shapes = tmp_path / "shapes"
    assert one_line_error(capsys, "data", "shapes", "--out", shapes, "--size", 100000, "--clips", 2,
                          pattern=r"100000x100000 needs about .* GiB.*smaller --size") < 10
    assert not shapes.exists()


def test_far_outside_is_a_warning_that_force_does_not_hide(capsys, tmp_path, model_dir):
    out = tmp_path / "big.png"
    code, _, err = cli(capsys, "generate", PROMPT, "--model", model_dir, "--height", 192, "--width", 192,
                       "--frames", 1, "--steps", 1, "--force", "-o", out)
    assert code == 0 and out.exists()
    assert any("192x192 (trained at 64x64) is far outside" in line for line in err)


def test_interrupted_dataset_leaves_nothing(tmp_path, monkeypatch):
    import vidiff.data.io
    from vidiff.data.shapes import make_shapes_dataset

    calls = []

    def failing(frames, path, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write_video(frames, path, **kw)
    monkeypatch.setattr(vidiff.data.io, "write_video", failing)
    with pytest.raises(KeyboardInterrupt):
        make_shapes_dataset(tmp_path / "d", clips=5, size=32, num_frames=4, progress=False)
    assert not (tmp_path / "d").exists()


# 5 ------------------------------------------------------------------------------------------------
def test_image_is_fitted_to_the_model_size_and_a_video_gives_its_first_frame(capsys, tmp_path, model_dir):
    from vidiff.data.io import fit_frame

    photo = np.random.default_rng(0).integers(0, 255, (272, 640, 3), dtype=np.uint8)
    assert fit_frame(photo, 64, 64, "crop").shape == (64, 64, 3)
    padded = fit_frame(photo, 64, 64, "pad")
    assert padded.shape == (64, 64, 3) and (padded[:18] == 0).all()          # 640x272 -> 64x27, bars
    assert fit_frame(photo, 64, 32, "stretch").shape == (64, 32, 3)
    write_video(photo[None], tmp_path / "photo.png")
    out = tmp_path / "i2v.mp4"
    code, _, err = cli(capsys, "generate", PROMPT, "--model", model_dir, "--image", tmp_path / "photo.png",
                       "--frames", 4, "--steps", 1, "--seed", 0, "-o", out)
    assert code == 0, err
    assert "vidiff: warning: resized the 640x272 image to 64x64 (crop)" in err
    assert read_video(out)[0].shape == (4, 64, 64, 3)
    clip = np.random.default_rng(1).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    write_video(clip, tmp_path / "clip", fps=8)                                # a frame folder: lossless
    code, _, err = cli(capsys, "generate", PROMPT, "--model", model_dir, "--image", tmp_path / "clip",
                       "--frames", 3, "--steps", 1, "--seed", 0, "-o", tmp_path / "v")
    assert code == 0, err
    assert (read_video(tmp_path / "v")[0][0] == clip[0]).all()                 # frame 0 is the clip's first


# 6 ------------------------------------------------------------------------------------------------
def test_fps_zero_is_rejected(capsys, tmp_path, model_dir):
    out = tmp_path / "x.mp4"
    one_line_error(capsys, "generate", PROMPT, "--model", model_dir, "--fps", 0, "-o", out,
                   pattern=r"--fps must be > 0, got 0")
    assert not out.exists()
    clip = tmp_path / "c.gif"
    write_video(np.zeros((4, 32, 32, 3), np.uint8), clip)
    one_line_error(capsys, "bench", "consistency", clip, "--fps", 0, "--json", tmp_path / "r.json",
                   pattern=r"--fps must be > 0, got 0")
    assert not (tmp_path / "r.json").exists()


# 7 ------------------------------------------------------------------------------------------------
def disc_clip(shift_px: float, frames: int = 24, size: int = 64, noise: float = 0.0, seed: int = 0):
    """A soft red disc moving `shift_px` in all over a faint fixed texture, optional sampling-like noise."""
    rng = np.random.default_rng(seed)
    bg = 30 + rng.normal(0, 3, (size, size, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for t in range(frames):
        cx = 16 + shift_px * t / (frames - 1)
        a = np.clip(8.5 - np.hypot(xx - cx, yy - 32), 0, 1)[..., None]
        img = bg * (1 - a) + np.array([220, 40, 40]) * a + rng.normal(0, noise, (size, size, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def test_static_guard_sees_slow_motion_and_ignores_noise():
    from vidiff.evaluation.bench import consistency

    slow = consistency(disc_clip(32), fps=8)               # 1.4 px a frame: under VBench's 1.5 px
    assert slow["metrics"]["dynamic_degree"]["value"] is False
    assert slow["static"] is False and slow["metrics"]["motion_guard"]["displacement_px"] > 25
    noisy_still = consistency(disc_clip(0, noise=33), fps=8)
    assert noisy_still["metrics"]["dynamic_degree"]["value"] is True      # VBench's rule reads noise as motion
    assert noisy_still["static"] is True and any("static" in n for n in noisy_still["notes"])
    assert consistency(disc_clip(32, noise=33), fps=8)["static"] is False
    assert consistency(disc_clip(0), fps=8)["static"] is True


def test_static_guard_on_shapes_clips_and_a_real_photo():
    from PIL import Image

    from vidiff.evaluation.bench import consistency
    from vidiff.data.shapes import render_clip

    for motion, static in (("right", False), ("down", False), ("still", True)):
        clip = render_clip("blue", "square", motion, np.random.default_rng(3), 64, 24)
        assert consistency(clip, fps=8)["static"] is static, motion
    cbook = pytest.importorskip("matplotlib.cbook")
    photo = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    pan = np.stack([np.asarray(Image.fromarray(photo[100:356, 50 + 4 * t:306 + 4 * t]).resize((128, 128)))
                    for t in range(16)])                   # a 2 px/frame camera pan over a real photo
    r = consistency(pan, fps=8)
    assert r["static"] is False and r["metrics"]["dynamic_degree"]["pairs_moving"] == 0
    still = np.repeat(pan[:1], 16, 0)
    noisy = np.clip(still + np.random.default_rng(0).normal(0, 8, still.shape), 0, 255).astype(np.uint8)
    assert consistency(noisy, fps=8)["static"] is True


# 8 ------------------------------------------------------------------------------------------------
def test_seed_is_printed_stored_and_reproduces(capsys, tmp_path, model_dir):
    a = tmp_path / "a.mp4"
    code, out, err = cli(capsys, "generate", PROMPT, "--model", model_dir, "--frames", 3, "--steps", 2, "-o", a)
    assert code == 0, err
    seed = int(re.search(r"seed (\d+) \(pass --seed \1", out).group(1))
    settings = read_settings(a)
    assert settings["seed"] == seed and settings["prompt"] == PROMPT and settings["num_inference_steps"] == 2
    b = tmp_path / "b.mp4"
    assert cli(capsys, "generate", PROMPT, "--model", model_dir, "--frames", 3, "--steps", 2, "--seed", seed,
               "-o", b)[0] == 0
    assert (read_video(a)[0] == read_video(b)[0]).all()
    for name in ("c.gif", "d.png", "e"):                  # every output kind carries the settings
        frames = 1 if name.endswith(".png") else 3
        assert cli(capsys, "generate", PROMPT, "--model", model_dir, "--frames", frames, "--steps", 1,
                   "--seed", 5, "-o", tmp_path / name)[0] == 0
        assert read_settings(tmp_path / name)["seed"] == 5


# 9 ------------------------------------------------------------------------------------------------
def test_resumed_run_does_not_repeat_log_steps(tmp_path):
    import shutil

    from vidiff.training.config import load_config
    from vidiff.data.shapes import make_shapes_dataset
    from vidiff.training.train import train

    data = make_shapes_dataset(tmp_path / "data", clips=4, size=32, num_frames=8, progress=False)
    cfg = lambda: load_config(ROOT / "configs" / "tiny.yaml", [          # noqa: E731
        f"data.path={data}", f"train.output_dir={tmp_path / 'run'}", "train.steps=6", "train.checkpoint_every=3",
        "train.log_every=1", "train.keep_checkpoints=3"])
    train(cfg(), progress=False)
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "checkpoint-00000006")   # as if killed after step 3's save
    train(cfg(), progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


# 10 -----------------------------------------------------------------------------------------------
def test_cli_warnings_are_one_line(capsys, tmp_path, model_dir):
    frame = np.full((64, 64, 3), 100, np.uint8)
    write_video(frame[None], tmp_path / "f.png")
    code, _, err = cli(capsys, "generate", "a zebra circle", "--model", model_dir, "--image", tmp_path / "f.png",
                       "--frames", 2, "--steps", 1, "--seed", 0, "-o", tmp_path / "o.gif")
    assert code == 0
    assert err == ["vidiff: warning: words outside the model's vocabulary are ignored: zebra"], err


# 11 -----------------------------------------------------------------------------------------------
def test_inflate_writes_a_model_folder_generate_accepts(capsys, tmp_path):
    pytest.importorskip("diffusers")
    from vidiff.testing import tiny_sd_folder

    sd = tiny_sd_folder(tmp_path / "sd")
    code, out, err = cli(capsys, "inflate", sd, "--out", tmp_path / "video")
    assert code == 0, err
    assert "a model folder" in out
    code, _, err = cli(capsys, "generate", PROMPT, "--model", tmp_path / "video", "--frames", 2, "--steps", 1,
                       "--height", 16, "--width", 16, "--seed", 0, "-o", tmp_path / "o.gif")
    assert code == 0, err
    import shutil

    shutil.copytree(sd / "unet", tmp_path / "just-a-unet")
    code, out, _ = cli(capsys, "inflate", tmp_path / "just-a-unet", "--out", tmp_path / "bare")
    assert code == 0 and "not a model: train it" in out


# 12 -----------------------------------------------------------------------------------------------
def test_cli_conveniences(capsys, tmp_path, model_dir):
    import shutil

    code, out, _ = cli(capsys)
    assert code == 0 and "usage: vidiff" in out and "generate" in out
    assert main(["--version"]) == 0 and re.match(r"vidiff \d+\.\d+", capsys.readouterr().out)
    one_line_error(capsys, "generate", PROMPT, "--model", model_dir / "model_index.json", "-o", tmp_path / "x.mp4",
                   pattern="is a file, not a model folder")
    eight = tmp_path / "eight"
    shutil.copytree(model_dir, eight)
    index = json.loads((eight / "model_index.json").read_text())
    index["vidiff"]["defaults"]["num_frames"] = 8
    (eight / "model_index.json").write_text(json.dumps(index))
    assert cli(capsys, "generate", PROMPT, "--model", eight, "--steps", 1, "--seed", 0, "-o", tmp_path / "g")[0] == 0
    assert len(read_video(tmp_path / "g")[0]) == 8                  # the model's own length
    code, _, err = cli(capsys, "extend", tmp_path / "g", "--prompt", PROMPT, "--model", eight, "--frames", 4,
                       "--chunk", 8, "--steps", 1, "--seed", 0, "-o", tmp_path / "ext")
    assert code == 0, err
    longer = read_video(tmp_path / "ext")[0]
    assert len(longer) == 12 and (longer[:8] == read_video(tmp_path / "g")[0]).all()
    g = read_video(tmp_path / "g")[0]
    write_video(g[:1], tmp_path / "a.png"), write_video(g[-1:], tmp_path / "b.png")
    code, _, err = cli(capsys, "interpolate", tmp_path / "a.png", tmp_path / "b.png", "--model", eight,
                       "--frames", 5, "--steps", 1, "--seed", 0, "-o", tmp_path / "mid")
    assert code == 0, err
    mid = read_video(tmp_path / "mid")[0]
    assert len(mid) == 5 and (mid[0] == g[0]).all() and (mid[-1] == g[-1]).all()


def test_python_m_cli_reports_usage_errors_as_one_line(tmp_path):
    """`python -m vidiff.app.cli` (how accelerate launch and torchrun start it) gives the same one-line errors,
    also from the bench group, which lives in its own module."""
    args = ["bench", "consistency", "x.mp4", "--json", "x.txt"]
    r = subprocess.run([sys.executable, "-m", "vidiff.app.cli", *args], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == "vidiff bench: error: --json x.txt: must end in .json"
