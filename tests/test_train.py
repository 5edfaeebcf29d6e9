"""Training: loss goes down, freeze-spatial, EMA, bit-exact resume after SIGKILL, two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidiff.training.config import load_config
from vidiff.data.clips import ClipDataset
from vidiff.data.shapes import make_shapes_dataset
from vidiff.training.checkpoints import latest_checkpoint
from vidiff.training.train import Objective, build_models, check, draw, train
from vidiff.testing import free_port, kill_when
from vidiff.models.unet import UNet, is_temporal_key

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), clips=8, size=32, num_frames=12, progress=False)


def cfg_for(data, out, *overrides):
    return load_config(TINY, [f"data.path={data}", f"train.output_dir={out}", "data.num_frames=4", *overrides])


def fixed_loss(unet, cfg, data):
    """Loss on the first evaluation clips with fixed t, noise and masks."""
    _, text, schedule, codec = build_models(cfg)
    ds = ClipDataset(data, num_frames=4, size=32, train=False)
    x0 = codec.encode(torch.stack([ds[i]["video"] for i in range(4)]))
    g = torch.Generator().manual_seed(123)
    t, noise, mask, _ = draw(x0, cfg, schedule, g, True)
    ctx = text([ds[i]["caption"] for i in range(4)])
    with torch.no_grad():
        return float(Objective(unet.eval(), schedule).loss(x0, ctx, t, noise, mask))


def test_tiny_training_lowers_the_loss(data, tmp_path):
    cfg = cfg_for(data, tmp_path, "train.steps=30", "train.checkpoint_every=30", "train.ema_decay=0")
    before = fixed_loss(build_models(cfg)[0], cfg, data)
    result = train(cfg, progress=False)
    after = fixed_loss(result["unet"], cfg, data)
    assert after < 0.7 * before, (before, after)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30]
    assert all(r["clips_per_s"] > 0 and r["skipped_files"] == 0 for r in log)
    from vidiff.pipelines.pipeline import VideoPipeline

    pipe = VideoPipeline.from_pretrained(result["model_dir"])
    video = pipe("a red circle moving left", num_inference_steps=2, progress=False)
    assert video.frames.shape == (4, 32, 32, 3)


def test_sample_section_becomes_the_trained_models_defaults(data, tmp_path):
    """`sample:` in a config (how the result samples) lands in its model_index.json; bad values are one line."""
    from vidiff.pipelines.pipeline import VideoPipeline

    cfg = cfg_for(data, tmp_path, "train.steps=1", "train.checkpoint_every=1", "model.frame_conditioning=true",
                  "sample.first_frame_first=true", "sample.min_frames=4", "sample.num_inference_steps=3",
                  "sample.guidance_scale=2")
    pipe = VideoPipeline.from_pretrained(train(cfg, progress=False)["model_dir"])
    assert pipe.defaults == {"height": 32, "width": 32, "num_frames": 4, "fps": 8, "first_frame_first": True,
                             "min_frames": 4, "num_inference_steps": 3, "guidance_scale": 2.0}
    for bad, msg in (("sample.min_frames=0", "sample.min_frames must be >= 1, got 0"),
                     ("sample.num_inference_steps=-2", "sample.num_inference_steps must be >= 0, got -2"),
                     ("sample.min_frames=5", r"sample.min_frames must be <= data.num_frames \(4, the window")):
        with pytest.raises(ValueError, match=msg):
            check(cfg_for(data, tmp_path, bad))
    with pytest.raises(ValueError, match="sample.first_frame_first needs a video model with frame_conditioning"):
        check(cfg_for(data, tmp_path, "train.stage=image", "sample.first_frame_first=true"))
    with pytest.raises(ValueError, match="unknown config key sample.guidance"):
        cfg_for(data, tmp_path, "sample.guidance=2")


@pytest.mark.slow
@pytest.mark.parametrize("stages", [("small-image.yaml", "small.yaml"), ("shapes-image.yaml", "shapes-video.yaml")],
                         ids=["small", "default"])
def test_shipped_two_stage_recipes_run_end_to_end(tmp_path, stages):
    """Each shipped recipe's stage 1 feeds its stage 2 as written (2 steps each on a few clips), and the
    result samples with the recipe's `sample:` defaults."""
    from vidiff.pipelines.pipeline import VideoPipeline

    root = Path(__file__).resolve().parents[1] / "configs"
    clips = make_shapes_dataset(tmp_path / "d", clips=4, num_frames=24, progress=False, scale=1.6)
    quick = [f"data.path={clips}", "data.num_workers=0", "train.steps=2", "train.batch_size=2",
             "train.checkpoint_every=1000", "train.log_every=1"]
    image = train(load_config(root / stages[0], [*quick, f"train.output_dir={tmp_path / 'image'}"]), progress=False)
    video_cfg = load_config(root / stages[1], [*quick, f"train.output_dir={tmp_path / 'video'}",
                                               f"train.init={image['model_dir']}"])
    pipe = VideoPipeline.from_pretrained(train(video_cfg, progress=False)["model_dir"])
    assert pipe.unet.config.temporal and pipe.unet.config.frame_conditioning
    assert {k: pipe.defaults[k] for k in video_cfg.sample.defaults()} == video_cfg.sample.defaults()
    video = pipe("a red circle moving right", num_inference_steps=2, seed=0, progress=False)
    assert video.frames.shape == (video_cfg.data.num_frames, 64, 64, 3)


def test_image_stage_then_frozen_video_stage(data, tmp_path):
    image = train(cfg_for(data, tmp_path / "img", "train.stage=image", "data.num_frames=1", "train.steps=3",
                          "model.frame_conditioning=false", "train.cond_first=0", "train.cond_prefix=0",
                          "train.cond_first_last=0"), progress=False)
    assert not image["unet"].config.temporal
    cfg = cfg_for(data, tmp_path / "vid", f"train.init={image['model_dir']}", "train.freeze_spatial=true",
                  "train.steps=3", "train.lr=1e-2", "train.image_batch_size=2", "model={frame_conditioning: true, temporal_heads: 2}")
    start = build_models(cfg)[0].state_dict()
    shipped = UNet.from_pretrained(image["model_dir"] / "unet").state_dict()      # the image stage's EMA
    assert all(start[k].equal(v) for k, v in shipped.items())                       # inflated exactly
    end = train(cfg, progress=False)["unet"].state_dict()
    spatial = [k for k in start if not is_temporal_key(k)]
    temporal = [k for k in start if is_temporal_key(k)]
    assert spatial and temporal
    assert all(torch.equal(start[k], end[k]) for k in spatial)
    assert sum(not torch.equal(start[k], end[k]) for k in temporal) > len(temporal) // 2


def test_ema_follows_the_update_rule(data, tmp_path):
    cfg = cfg_for(data, tmp_path, "train.steps=1", "train.ema_decay=0.9", "train.checkpoint_every=1")
    start = {n: p.detach().clone() for n, p in build_models(cfg)[0].named_parameters()}
    result = train(cfg, progress=False)
    raw = dict(result["unet"].named_parameters())
    decay = min(0.9, 2 / 11)                                   # warm-up rule after one step
    name = "conv_in.weight"
    assert not torch.equal(result["ema"][name], raw[name].detach())
    torch.testing.assert_close(result["ema"][name], decay * start[name] + (1 - decay) * raw[name].detach())
    shipped = load_file(str(tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(shipped[name], result["ema"][name])     # the model folder holds the EMA weights


def test_gradient_checkpointing_and_v_prediction_train_the_same(data, tmp_path):
    args = ("train.steps=2", "schedule.prediction_type=v_prediction", "train.mixed_precision=no")
    a = train(cfg_for(data, tmp_path / "a", *args), progress=False)["unet"].state_dict()
    b = train(cfg_for(data, tmp_path / "b", *args, "train.gradient_checkpointing=true"), progress=False)["unet"].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_bf16_mixed_precision_runs_on_cpu(data, tmp_path):
    result = train(cfg_for(data, tmp_path, "train.steps=2", "train.mixed_precision=bf16"), progress=False)
    assert all(torch.isfinite(p).all() for p in result["unet"].parameters())
    assert next(result["unet"].parameters()).dtype == torch.float32          # master weights stay fp32


def _run(args, config=TINY, **kw):
    return subprocess.Popen([sys.executable, "-m", "vidiff.app.cli", "train", str(config), *args, "--quiet"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


SVD_RUN = ["data.height=32", "data.width=32", "train.mixed_precision=no", "train.grad_accum=1", "train.batch_size=2",
           "train.gradient_checkpointing=false", "train.ema_decay=0.99"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tiny", "svd"])
def test_resume_after_sigkill_matches_uninterrupted_run(data, tmp_path, kind):
    args = [f"data.path={data}", "data.num_frames=4", "train.steps=12", "train.checkpoint_every=3",
            "train.keep_checkpoints=10", "data.num_workers=0"]
    config = TINY
    if kind == "svd":                      # configs/svd-finetune.yaml on a tiny SVD folder
        from vidiff.testing import tiny_svd_folder

        config = ROOT / "configs" / "svd-finetune.yaml"
        args += SVD_RUN + [f"train.init={tiny_svd_folder(tmp_path / 'svd')}"]
    full = _run(args + [f"train.output_dir={tmp_path / 'full'}"], config)
    killed = tmp_path / "killed"
    proc = _run(args + [f"train.output_dir={killed}"], config)
    kill_when(proc, (killed / "checkpoints" / "checkpoint-00000003" / "state.json").exists)
    assert latest_checkpoint(killed / "checkpoints").name != "checkpoint-00000012"   # really cut short
    resumed = _run(args + [f"train.output_dir={killed}"], config)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    assert full.wait(timeout=300) == 0, full.stderr.read().decode()[-2000:]
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(str(tmp_path / "full" / "checkpoints" / "checkpoint-00000012" / name))
        b = load_file(str(killed / "checkpoints" / "checkpoint-00000012" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_partial_checkpoints_are_ignored(tmp_path):
    (tmp_path / "checkpoint-00000004").mkdir()
    (tmp_path / "checkpoint-00000004" / "model.safetensors").write_bytes(b"half")   # no state.json
    (tmp_path / ".checkpoint-00000006.tmp").mkdir()
    (tmp_path / "checkpoint-00000002").mkdir()
    (tmp_path / "checkpoint-00000002" / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000002"


@pytest.mark.slow
def test_two_processes_hold_identical_weights_and_see_different_samples(data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(ROOT / "tests" / "dist_worker.py"), str(tmp_path), str(TINY), f"data.path={data}",
           f"train.output_dir={tmp_path}", "data.num_frames=4", "train.steps=3", "train.checkpoint_every=3",
           "train.log_samples=true"]       # no GPU here: train() must join the ranks over gloo by itself
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    start = build_models(cfg_for(data, tmp_path))[0].state_dict()
    assert not torch.equal(start["conv_in.weight"], w0["conv_in.weight"])          # it did train
    seen = [[json.loads(line) for line in (tmp_path / f"samples-rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    for s0, s1 in zip(*seen):
        assert s0["step"] == s1["step"]
        assert not {tuple(k) for k in s0["keys"]} & {tuple(k) for k in s1["keys"]}
    assert (tmp_path / "model" / "model_index.json").exists()


def tiny_sd_folder(path: Path) -> Path:
    """A diffusers Stable-Diffusion-layout folder (unet, vae, text encoder, tokenizer, scheduler), tiny and random."""
    diffusers = pytest.importorskip("diffusers")
    from vidiff.testing import tiny_text_encoder

    torch.manual_seed(0)
    diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=32).save_pretrained(path / "unet")
    diffusers.AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                            norm_num_groups=32).save_pretrained(path / "vae")
    diffusers.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                            steps_offset=1, skip_prk_steps=True).save_pretrained(path / "scheduler")
    tiny_text_encoder().save_pretrained(path)
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return path


def test_sd15_motion_config_trains_temporal_layers_of_a_diffusers_folder(data, tmp_path):
    sd = tiny_sd_folder(tmp_path / "sd")
    cfg = load_config(ROOT / "configs" / "sd15-motion.yaml", [
        f"train.init={sd}", f"data.path={data}", f"train.output_dir={tmp_path / 'run'}", "data.height=32",
        "data.width=32", "data.num_frames=4", "data.num_workers=0", "train.steps=2", "train.grad_accum=2",
        "train.mixed_precision=no", "model.temporal_heads=2"])
    result = train(cfg, progress=False)
    import diffusers

    source = diffusers.UNet2DConditionModel.from_pretrained(sd / "unet").state_dict()
    trained = result["unet"].state_dict()
    assert all(torch.equal(trained[k], v) for k, v in source.items())       # spatial frozen, copied exactly
    assert any(not torch.equal(trained[k], torch.zeros_like(trained[k]))
               for k in trained if ".temp_attentions." in k and "to_out" in k)
    from vidiff.pipelines.pipeline import VideoPipeline

    pipe = VideoPipeline.from_pretrained(result["model_dir"])
    assert pipe.codec.kind == "vae" and pipe.schedule.beta_schedule == "scaled_linear"
    assert pipe("a red circle", num_frames=2, height=32, width=32, num_inference_steps=1,
                progress=False).frames.shape == (2, 32, 32, 3)


def test_resume_into_a_folder_of_another_model_is_a_clear_error(data, tmp_path):
    train(cfg_for(data, tmp_path, "train.steps=1"), progress=False)
    with pytest.raises(ValueError, match="cannot resume from .*checkpoint-00000001: it does not fit"):
        train(cfg_for(data, tmp_path, "train.steps=2", "model.block_out_channels=[32, 32]"), progress=False)
    done = train(cfg_for(data, tmp_path, "train.steps=1"), progress=False)    # finished run: just re-exports
    assert done["step"] == 1


def test_skipped_files_are_counted_in_the_training_log(data, tmp_path):
    import shutil

    folder = tmp_path / "clips"
    shutil.copytree(data / "clips", folder)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("not a video")
    result = train(cfg_for(folder, tmp_path / "run", "train.steps=1", "train.log_every=1"), progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["skipped_files"] == 2 and len(result["skipped"]) == 2


def test_high_noise_fraction_moves_clips_to_the_top_levels(tmp_path):
    """train.high_noise_fraction: that share of clips (one level per video) from the top tenth."""
    from vidiff.diffusion.schedule import NoiseSchedule

    schedule, x0 = NoiseSchedule(), torch.zeros(4000, 1, 3, 2, 2)
    for frac in (0.0, 0.5):
        cfg = cfg_for(tmp_path, tmp_path / "o", f"train.high_noise_fraction={frac}")
        t, *_ = draw(x0, cfg, schedule, torch.Generator().manual_seed(0), True)
        assert (t == t[:, :1]).all()                                    # frames of a clip share it
        top = (t[:, 0] >= 900).float().mean().item()
        assert abs(top - (0.1 + 0.9 * frac)) < 0.03
    with pytest.raises(ValueError, match="train.high_noise_fraction must be in"):
        check(cfg_for(tmp_path, tmp_path / "o", "train.high_noise_fraction=1.5"))


def test_loss_floor_caps_the_x_prediction_weight(tmp_path):
    """train.loss_floor: sqrt(1 - a) is floored there, so no level weighs more than 1 / floor^2."""
    from vidiff.diffusion.schedule import NoiseSchedule
    from vidiff.training.train import Objective

    schedule = NoiseSchedule(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="sample")
    t = torch.tensor([[0], [99], [500]])
    x = torch.zeros(3, 1, 1, 1, 1)
    for floor in (0.05, 0.3):
        w = schedule.loss_weight(t, x, floor=floor).flatten()
        assert float(w.max()) == pytest.approx(1 / floor ** 2, rel=1e-5)
        assert float(w[2]) == pytest.approx(1 / (1 - float(schedule.alphas_cumprod[500])), rel=1e-5)   # above it: unchanged
    cfg = cfg_for(tmp_path, tmp_path / "o", "train.loss_floor=0.3")
    assert cfg.train.loss_floor == 0.3
    for bad in ("0", "1.5"):
        with pytest.raises(ValueError, match="train.loss_floor must be in"):
            check(cfg_for(tmp_path, tmp_path / "o", f"train.loss_floor={bad}"))
    # the objective uses it: at level 0 the loss scales by (0.3 / 0.05)^2
    unet = UNet(block_out_channels=[32], layers_per_block=1, attention_levels=[False], num_heads=2, norm_num_groups=8,
                cross_attention_dim=16, in_channels=3, out_channels=3)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 3, 1, 8, 8, generator=g), torch.randn(1, 3, 1, 8, 8, generator=g)
    ctx, t0, mask = torch.randn(1, 4, 16, generator=g), torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1)
    with torch.no_grad():
        lo, hi = (Objective(unet, schedule, f).loss(x0, ctx, t0, noise, mask) for f in (0.3, 0.05))
    assert float(hi / lo) == pytest.approx(36, rel=1e-4)


def test_level_band_moves_that_share_of_levels_into_the_band(tmp_path):
    """train.level_band_fraction: that share of clips (one level per video) or images drawn from level_band."""
    from vidiff.diffusion.schedule import NoiseSchedule

    schedule, x0 = NoiseSchedule(), torch.zeros(4000, 1, 3, 2, 2)
    for frac, video in ((0.0, True), (0.5, True), (0.5, False)):
        cfg = cfg_for(tmp_path, tmp_path / "o", f"train.level_band_fraction={frac}", "train.level_band=[400,650]")
        t, *_ = draw(x0, cfg, schedule, torch.Generator().manual_seed(0), video)
        inside = ((t >= 400) & (t < 650)).float().mean().item()
        assert abs(inside - (0.25 + 0.75 * frac)) < 0.03
    for bad in ("train.level_band=[650,400]", "train.level_band=[400]", "train.level_band_fraction=2"):
        with pytest.raises(ValueError, match="train.level_band"):
            check(cfg_for(tmp_path, tmp_path / "o", bad))


def test_svd_finetune_lowers_the_loss(data, tmp_path):
    """20 steps of configs/svd-finetune.yaml on a tiny SVD folder and 4 clips: the loss on fixed draws goes down,
    and the result is an SVD folder the pipeline loads."""
    from vidiff.pipelines.svd import SVDPipeline
    from vidiff.testing import tiny_svd_folder
    from vidiff.training.svd_train import SVDObjective, svd_draw, svd_models

    init = tiny_svd_folder(tmp_path / "svd")
    cfg = load_config(ROOT / "configs" / "svd-finetune.yaml", [
        f"data.path={data}", f"train.init={init}", f"train.output_dir={tmp_path / 'run'}", "data.num_frames=4",
        "train.steps=20", "data.num_workers=0", "train.lr=1e-3", "train.warmup_steps=0", *SVD_RUN])
    result = train(cfg, progress=False)
    x = torch.stack([ClipDataset(data, num_frames=4, size=32, train=False)[i]["video"] for i in range(4)])

    def loss(unet):
        _, cond, schedule, codec = svd_models(init)
        draws = svd_draw(x, schedule, codec.factor, torch.Generator().manual_seed(7), 0.0)
        with torch.no_grad():
            return float(SVDObjective(unet.eval(), cond, schedule, 7.0)((x, *draws)))

    before = loss(svd_models(init)[0])
    after = loss(SVDPipeline.from_pretrained(result["model_dir"], device="cpu").unet)
    assert after < 0.9 * before, (before, after)
