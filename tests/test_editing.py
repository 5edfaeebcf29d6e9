"""Video-to-video and LoRAs: diffusers (AnimateDiffVideoToVideoPipeline, load_lora_weights + set_adapters)
and peft are the oracle, on tiny random folders built here."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vidiff import testing
from vidiff.testing import kill_when
from vidiff.app.cli import main
from vidiff.pipelines.pipeline import VideoPipeline

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT, NEG = "a red circle moving right", "a blue square"


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def ad(tmp_path_factory):
    return testing.tiny_animatediff_folder(tmp_path_factory.mktemp("editing") / "animatediff")


def clip(f=8, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (f, size, size, 3), dtype=np.uint8)


# ---- video-to-video ------------------------------------------------------------------------------

@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "EulerDiscreteScheduler"])
@pytest.mark.parametrize("strength", [0.5, 0.8])
def test_video_to_video_matches_diffusers(ad, strength, scheduler):
    """Same video, same generator: the VAE posterior sample is drawn first, then (b f c h w) noise."""
    ref = diffusers.AnimateDiffVideoToVideoPipeline.from_pretrained(ad)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = getattr(diffusers, scheduler).from_config(ref.scheduler.config)
    ours = VideoPipeline.from_pretrained(ad, scheduler=scheduler)
    frames = clip()
    kw = dict(strength=strength, num_inference_steps=6, guidance_scale=7.5, output_type="latent")
    expected = ref(video=[Image.fromarray(f) for f in frames], prompt=PROMPT, negative_prompt=NEG,
                   generator=torch.Generator().manual_seed(3), height=16, width=16, **kw).frames
    out = ours.video_to_video(frames, PROMPT, negative_prompt=NEG, seed=3, progress=False, **kw)
    assert out.shape == expected.shape == (1, 4, 8, 8, 8)
    assert rel(out, expected) <= 1e-4


def test_strength_zero_returns_the_input():
    pipe = testing.tiny_pipeline()
    frames = clip(6, 32, seed=1)
    video = pipe.video_to_video(frames, PROMPT, strength=0.0, progress=False, fps=12)
    assert np.array_equal(video.frames, frames)           # pixel codec: the round trip is exact
    assert video.fps == 12 and video.settings["strength"] == 0.0


def test_strength_one_redraws_and_small_strength_stays_close():
    pipe = testing.tiny_pipeline()
    frames = clip(6, 32, seed=1)
    near = pipe.video_to_video(frames, PROMPT, strength=0.2, num_inference_steps=5, seed=0, progress=False)
    far = pipe.video_to_video(frames, PROMPT, strength=1.0, num_inference_steps=5, seed=0, progress=False)
    err = [np.abs(v.frames.astype(float) - frames).mean() for v in (near, far)]
    assert err[0] < err[1] / 2


@pytest.mark.parametrize("mode", ["autoregressive", "windows"])
def test_video_to_video_in_long_video_modes(mode, tmp_path):
    """A long input goes window by window; its length and frame rate are kept."""
    from vidiff.data.io import read_video, write_video

    pipe = testing.tiny_pipeline()
    path = write_video(clip(20, 32, seed=2), tmp_path / "in.mp4", fps=10)
    frames, _ = read_video(path)
    video = pipe.video_to_video(path, PROMPT, strength=0.5, num_inference_steps=4, mode=mode, chunk=8,
                                context=2, stride=4, seed=0, progress=False)
    assert video.frames.shape == frames.shape and video.fps == 10
    assert video.seams                                         # several windows were used


def test_video_to_video_fits_the_size_with_a_warning():
    pipe = testing.tiny_pipeline()          # multiple of 4
    frames = clip(4, 34, seed=3)[:, :, :30]
    with pytest.warns(UserWarning, match="resized the 30x34 input video to 28x32"):
        video = pipe.video_to_video(frames, PROMPT, strength=0.3, num_inference_steps=3, seed=0, progress=False)
    assert video.frames.shape == (4, 32, 28, 3)


def test_cli_video_to_video(tmp_path, capsys):
    from vidiff.data.io import read_video, write_video

    model = testing.tiny_model(tmp_path / "m")
    src = write_video(clip(6, 32, seed=4), tmp_path / "in.mp4", fps=6)
    out = tmp_path / "out.mp4"
    assert main(["generate", PROMPT, "--model", str(model), "--video", str(src), "--strength", "0.5",
                 "--steps", "4", "--seed", "1", "-o", str(out)]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (6, 32, 32, 3) and fps == 6


# ---- LoRA files built here in each layout -----------------------------------------------------------

def random_lora(modules: dict, rank: int, seed: int) -> dict:
    """{layer: (down, up)} random LoRA halves for {layer: module}."""
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(rank, m.in_features, generator=g) * 0.3, torch.randn(m.out_features, rank, generator=g) * 0.3)
            for n, m in modules.items()}


def sd_layers(pipe):
    unet = {n: m for n, m in pipe.unet.named_modules()
            if re.search(r"attentions\.\d+\.transformer_blocks\.0\.attn[12]\.(to_q|to_v|to_out\.0)$", n)}
    text = {n: m for n, m in pipe.text_encoder.model.named_modules() if re.search(r"self_attn\.(q_proj|out_proj)$", n)}
    return random_lora(unet, 2, 0), random_lora(text, 2, 1)


def motion_layers(pipe):
    return random_lora({n: m for n, m in pipe.unet.named_modules()
                        if re.search(r"motion_modules\.\d+\.transformer_blocks\.0\.attn[12]\.(to_q|to_k|to_out\.0)$", n)},
                       4, 2)


def sd_file(unet, text, layout: str) -> dict:
    if layout == "diffusers":
        out = {}
        for prefix, table in (("unet", unet), ("text_encoder", text)):
            for n, (a, b) in table.items():
                out[f"{prefix}.{n}.lora_A.weight"], out[f"{prefix}.{n}.lora_B.weight"] = a, b
        return out
    out = {}                                  # kohya: alpha = rank / 2 scales by 0.5, so B is doubled to match
    for prefix, table in (("lora_unet_", unet), ("lora_te_", text)):
        for n, (a, b) in table.items():
            key = prefix + n.replace(".", "_")
            out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"] = a, 2 * b
            out[f"{key}.alpha"] = torch.tensor(a.shape[0] / 2)
    return out


def motion_file(table, layout: str) -> dict:
    out = {}
    for n, (a, b) in table.items():
        head, proj = n.removesuffix(".0").rsplit(".", 1)           # ...attn1, to_q / to_out
        key = f"{head}.processor.{proj}_lora"
        if layout == "original":
            key = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", key)
            key = key.replace(".attn1.", ".attention_blocks.0.").replace(".attn2.", ".attention_blocks.1.")
        else:
            key = "unet." + key
        out[f"{key}.down.weight"], out[f"{key}.up.weight"] = a, b
    return out


@pytest.fixture(scope="module")
def loras(ad, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    pipe = VideoPipeline.from_pretrained(ad)
    unet, text = sd_layers(pipe)
    motion = motion_layers(pipe)
    for layout in ("diffusers", "kohya"):
        save_file(sd_file(unet, text, layout), str(root / f"sd-{layout}.safetensors"))
    for layout in ("diffusers", "original"):
        save_file(motion_file(motion, layout), str(root / f"motion-{layout}.safetensors"))
    return root


@pytest.mark.parametrize("sd_layout", ["diffusers", "kohya"])
@pytest.mark.parametrize("motion_layout", ["diffusers", "original"])
def test_two_loras_match_diffusers_set_adapters(ad, loras, sd_layout, motion_layout):
    ref = diffusers.AnimateDiffPipeline.from_pretrained(ad)
    ref.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.load_lora_weights(str(loras / f"sd-{sd_layout}.safetensors"), adapter_name="style")
        ref.load_lora_weights(str(loras / "motion-diffusers.safetensors"), adapter_name="zoom")   # diffusers reads this one
    ref.set_adapters(["style", "zoom"], adapter_weights=[1.0, 0.6])
    lat = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(num_inference_steps=3, guidance_scale=7.5, output_type="latent")
    expected = ref(prompt=PROMPT, negative_prompt=NEG, latents=lat.clone(), num_frames=8, height=16, width=16,
                   generator=torch.Generator().manual_seed(1), **kw).frames
    pipe = VideoPipeline.from_pretrained(ad)
    base = pipe(PROMPT, negative_prompt=NEG, latents=lat.clone(), seed=1, progress=False, **kw)
    assert pipe.load_lora(loras / f"sd-{sd_layout}.safetensors", name="style") == "style"
    pipe.load_lora(loras / f"motion-{motion_layout}.safetensors", scale=0.6, name="zoom")
    out = pipe(PROMPT, negative_prompt=NEG, latents=lat.clone(), seed=1, progress=False, **kw)
    assert rel(base, expected) > 1e-2                    # the adapters matter
    assert rel(out, expected) <= 1e-4


def test_fuse_unfuse_is_bit_exact(ad, loras):
    pipe = VideoPipeline.from_pretrained(ad)
    before = {k: v.clone() for k, v in {**pipe.unet.state_dict(), **pipe.text_encoder.model.state_dict()}.items()}
    pipe.load_lora(loras / "sd-kohya.safetensors", name="style")
    pipe.load_lora(loras / "motion-original.safetensors", scale=0.6, name="zoom")
    lat = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(num_inference_steps=2, output_type="latent", seed=1, progress=False)
    live = pipe(PROMPT, latents=lat.clone(), **kw)
    pipe.fuse_lora()
    assert pipe.adapters.fused
    fused = pipe(PROMPT, latents=lat.clone(), **kw)
    assert rel(fused, live) <= 1e-4
    pipe.unfuse_lora()
    after = {**pipe.unet.state_dict(), **pipe.text_encoder.model.state_dict()}
    base_keys = {k.replace(".base_layer", ""): k for k in after if "lora_" not in k}
    assert set(base_keys) == set(before)
    assert all(torch.equal(before[k], after[base_keys[k]]) for k in before)
    assert rel(pipe(PROMPT, latents=lat.clone(), **kw), live) == 0
    pipe.unload_lora()
    plain = VideoPipeline.from_pretrained(ad)(PROMPT, latents=lat.clone(), **kw)
    assert torch.equal(pipe(PROMPT, latents=lat.clone(), **kw), plain)


def test_domain_adapter_layout_is_read(ad, loras, tmp_path):
    """The v3 domain adapter: spatial attention LoRA in the attn-processor layout, no prefix, plus a config entry."""
    pipe = VideoPipeline.from_pretrained(ad)
    unet, _ = sd_layers(pipe)
    adapter = {}
    for n, (a, b) in unet.items():
        head, proj = n.removesuffix(".0").rsplit(".", 1)
        adapter[f"{head}.processor.{proj}_lora.down.weight"] = a
        adapter[f"{head}.processor.{proj}_lora.up.weight"] = b
    adapter["animatediff_config"] = torch.zeros(1)
    save_file(adapter, str(tmp_path / "v3_adapter.safetensors"))
    save_file({f"unet.{n}.lora_A.weight": a for n, (a, _) in unet.items()}
              | {f"unet.{n}.lora_B.weight": b for n, (_, b) in unet.items()}, str(tmp_path / "same.safetensors"))
    lat = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(num_inference_steps=2, output_type="latent", seed=1, progress=False)
    pipe.load_lora(tmp_path / "v3_adapter.safetensors", scale=0.8)
    other = VideoPipeline.from_pretrained(ad)
    other.load_lora(tmp_path / "same.safetensors", scale=0.8)
    assert torch.equal(pipe(PROMPT, latents=lat.clone(), **kw), other(PROMPT, latents=lat.clone(), **kw))


def test_set_lora_scales_switches_one_off(ad, loras):
    pipe = VideoPipeline.from_pretrained(ad)
    lat = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(num_inference_steps=2, output_type="latent", seed=1, progress=False)
    plain = pipe(PROMPT, latents=lat.clone(), **kw)
    pipe.load_lora(loras / "sd-diffusers.safetensors", name="style")
    pipe.set_lora_scales({"style": 0.0})
    assert rel(pipe(PROMPT, latents=lat.clone(), **kw), plain) <= 1e-6
    with pytest.raises(ValueError, match="no LoRA named 'nope' is loaded; loaded: style"):
        pipe.set_lora_scales({"nope": 1.0})


# ---- bad inputs ------------------------------------------------------------------------------------

def cli_error(capsys, argv, out: Path):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()
    return err


def test_bad_editing_inputs_are_one_line_exit_2_nothing_written(ad, loras, tmp_path, capsys):
    from vidiff.data.io import write_video

    model = testing.tiny_model(tmp_path / "m")
    src = write_video(clip(4, 32), tmp_path / "in.mp4", fps=8)
    out = tmp_path / "out.mp4"
    base = ["generate", PROMPT, "--model", str(model), "--steps", "2", "-o", str(out)]
    assert "--strength must be in [0, 1]" in cli_error(capsys, base + ["--video", str(src), "--strength", "1.5"], out)
    assert "--strength must be in [0, 1]" in cli_error(capsys, base + ["--video", str(src), "--strength", "-0.1"], out)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 50)
    assert "broken.mp4" in cli_error(capsys, base + ["--video", str(broken)], out)
    err = cli_error(capsys, base + ["--lora", str(loras / "motion-original.safetensors")], out)
    assert "keys that fit no layer" in err and "motion_modules" in err          # a motion LoRA on a vidiff model
    pickle = tmp_path / "style.ckpt"
    torch.save({"a": torch.zeros(1)}, pickle)
    assert "pickles" in cli_error(capsys, base + ["--lora", str(pickle)], out)
    # a LoRA for another base: same layer names, other widths
    pipe = VideoPipeline.from_pretrained(model)
    name = next(n for n, m in pipe.unet.named_modules() if n.endswith("attn1.to_q"))
    save_file({f"unet.{name}.lora_A.weight": torch.zeros(2, 999), f"unet.{name}.lora_B.weight": torch.zeros(7, 2)},
              str(tmp_path / "other.safetensors"))
    err = cli_error(capsys, base + ["--lora", str(tmp_path / "other.safetensors") + ":0.5"], out)
    assert f"is for another base: layer {name}" in err
    with pytest.raises(ValueError, match="strength must be a number in"):
        pipe.video_to_video(clip(4, 32), PROMPT, strength=2)


# ---- training a LoRA --------------------------------------------------------------------------------

def test_lora_training_changes_only_lora_and_exports_for_diffusers(ad, tmp_path):
    from vidiff.training.config import load_config
    from vidiff.data.shapes import make_shapes_dataset
    from vidiff.training.train import train

    data = make_shapes_dataset(tmp_path / "data", clips=4, size=16, num_frames=6, progress=False)
    cfg = load_config(None, [
        f"train.init={ad}", f"data.path={data}", f"train.output_dir={tmp_path / 'run'}", "data.height=16",
        "data.width=16", "data.num_frames=4", "train.steps=3", "train.batch_size=2", "train.lr=3e-2",
        "train.lora.rank=4", "train.lora.alpha=8", "train.lora.targets=all", "train.ema_decay=0"])
    before = VideoPipeline.from_pretrained(ad).unet.state_dict()
    result = train(cfg, progress=False)
    after = result["unet"].state_dict()
    lora_keys = [k for k in after if ".lora_" in k]
    assert lora_keys and set(k.replace(".base_layer", "") for k in after if ".lora_" not in k) == set(before)
    assert all(torch.equal(after[k], before[k.replace(".base_layer", "")]) for k in after if ".lora_" not in k)
    path = result["model_dir"]
    sd = load_file(str(path))
    assert any(".motion_modules." in k for k in sd) and any(".attentions." in k for k in sd)
    assert all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in sd)

    ref = diffusers.AnimateDiffPipeline.from_pretrained(ad)
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(path), adapter_name="trained")
    pipe = VideoPipeline.from_pretrained(ad)
    lat = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(num_inference_steps=2, guidance_scale=7.5, output_type="latent")
    expected = ref(prompt=PROMPT, latents=lat.clone(), num_frames=4, height=16, width=16, **kw).frames
    base = pipe(PROMPT, latents=lat.clone(), progress=False, **kw)
    pipe.load_lora(path)
    assert rel(base, expected) > 1e-3                       # training moved the output
    assert rel(pipe(PROMPT, latents=lat.clone(), progress=False, **kw), expected) <= 1e-4


@pytest.mark.slow
def test_lora_resume_after_sigkill_is_bit_exact(tmp_path):
    from vidiff.data.shapes import make_shapes_dataset
    from vidiff.training.checkpoints import latest_checkpoint

    data = make_shapes_dataset(tmp_path / "data", clips=6, size=32, num_frames=8, progress=False)
    model = testing.tiny_model(tmp_path / "base")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = [f"train.init={model}", f"data.path={data}", "data.num_frames=4", "train.steps=9", "train.checkpoint_every=3",
            "train.keep_checkpoints=10", "data.num_workers=0", "train.lora={rank: 4, targets: temporal}"]

    def run(out):
        return subprocess.Popen([sys.executable, "-m", "vidiff.app.cli", "train", str(ROOT / "configs" / "tiny.yaml"),
                                 *args, f"train.output_dir={out}", "--quiet"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    full = run(tmp_path / "full")
    killed = tmp_path / "killed"
    proc = run(killed)
    kill_when(proc, (killed / "checkpoints" / "checkpoint-00000003" / "state.json").exists)
    assert latest_checkpoint(killed / "checkpoints").name != "checkpoint-00000009"
    resumed = run(killed)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    assert full.wait(timeout=300) == 0, full.stderr.read().decode()[-2000:]
    a, b = load_file(str(tmp_path / "full" / "lora.safetensors")), load_file(str(killed / "lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(".temp_" in k for k in a)
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        x = load_file(str(tmp_path / "full" / "checkpoints" / "checkpoint-00000009" / name))
        y = load_file(str(killed / "checkpoints" / "checkpoint-00000009" / name))
        assert all(torch.equal(x[k], y[k]) for k in x), name


def test_bad_lora_configs_are_one_line(tmp_path):
    from vidiff.training.config import load_config
    from vidiff.training.train import check

    for override, msg in (("train.lora.rank=0", "rank must be an integer >= 1"),
                          ("train.lora.targets=everything", "targets must be one of"),
                          ("train.lora.size=3", "must be a mapping of rank, alpha, targets")):
        cfg = load_config(None, ["data.path=x", "train.init=y", override])
        with pytest.raises(ValueError, match=msg):
            check(cfg)
    with pytest.raises(ValueError, match="set train.init"):
        check(load_config(None, ["data.path=x", "train.lora.rank=2"]))
