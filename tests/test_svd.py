"""Stable Video Diffusion in vidiff's UNet: parity with diffusers' tiny SVD, conversion, CLI, long videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli


@pytest.fixture(scope="module")
def svd_folder(tmp_path_factory):
    from vidiff.testing import tiny_svd_folder

    return tiny_svd_folder(tmp_path_factory.mktemp("svd") / "svd")


@pytest.fixture(scope="module")
def pipes(svd_folder):
    from diffusers import StableVideoDiffusionPipeline

    from vidiff.pipelines.svd import SVDPipeline

    return StableVideoDiffusionPipeline.from_pretrained(svd_folder), SVDPipeline.from_pretrained(svd_folder, device="cpu")


def _rel(a, b):
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("frames", [1, 3, 8])
def test_unet_matches_diffusers(pipes, frames):
    """The svd family with a tiny UNetSpatioTemporalConditionModel's weights: same output, and with every frame
    marked image-only it is diffusers' model with its blends at 1 (the spatial path alone)."""
    import copy

    ref, ours = pipes[0].unet, pipes[1].unet
    g = torch.Generator().manual_seed(frames)
    x = torch.randn(2, frames, 8, 16, 16, generator=g)
    t, ctx = torch.tensor([0.7, -1.2]), torch.randn(2, 1, 32, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02], [5.0, 30.0, 0.1]])
    with torch.no_grad():
        a = ref(x, t, ctx, ids).sample
        b = ours(x.transpose(1, 2), t, ctx, added_time_ids=ids).transpose(1, 2)
        assert _rel(a, b) <= 1e-5
        spatial = copy.deepcopy(ref)
        for name, p in spatial.named_parameters():
            if name.endswith("mix_factor"):
                p.fill_(100.0)                                  # sigmoid = 1 exactly in float32
        a = spatial(x, t, ctx, ids).sample
        b = ours(x.transpose(1, 2), t, ctx, added_time_ids=ids,
                 image_only_indicator=torch.ones(2, frames)).transpose(1, 2)
        assert _rel(a, b) <= 1e-5


def test_unet_inputs_are_checked(pipes):
    unet = pipes[1].unet
    x = torch.randn(1, 8, 2, 16, 16)
    with pytest.raises(ValueError, match="added_time_ids"):
        unet(x, torch.tensor([0.5]), torch.randn(1, 1, 32))
    with pytest.raises(ValueError, match="image_only_indicator"):
        unet(x, torch.tensor([0.5]), torch.randn(1, 1, 32), added_time_ids=torch.zeros(1, 3),
             image_only_indicator=torch.ones(1, 3))


def _image():
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("chunk", [1, 8])
def test_pipeline_matches_diffusers(pipes, chunk):
    """Same image, seed and sizes, guidance ramp on: final latents and decoded frames as diffusers'."""
    ref, ours = pipes
    kw = dict(num_frames=3, height=32, width=32, num_inference_steps=3, min_guidance_scale=1.0)
    a = ref(_image(), max_guidance_scale=2.5, output_type="latent", generator=torch.Generator().manual_seed(0), **kw)
    b = ours.animate(_image(), guidance_scale=2.5, output_type="latent", keep_first_frame=False,
                     generator=torch.Generator().manual_seed(0), **kw)
    assert _rel(a.frames, b.transpose(1, 2)) <= 1e-4
    a = ref(_image(), max_guidance_scale=2.5, output_type="pt", decode_chunk_size=chunk,
            generator=torch.Generator().manual_seed(0), **kw).frames
    b = ours.animate(_image(), guidance_scale=2.5, output_type="pt", decode_chunk_size=chunk, keep_first_frame=False,
                     generator=torch.Generator().manual_seed(0), **kw)
    assert float((a - b.transpose(1, 2)).abs().max()) <= 1e-4


def test_given_latents_match_diffusers(pipes):
    ref, ours = pipes
    lat = torch.randn(1, 2, 4, 16, 16, generator=torch.Generator().manual_seed(5))     # diffusers' b f c h w
    kw = dict(height=32, width=32, num_inference_steps=2, min_guidance_scale=1.0)
    a = ref(_image(), num_frames=2, max_guidance_scale=3.0, latents=lat, output_type="latent",
            generator=torch.Generator().manual_seed(0), **kw).frames
    b = ours.animate(_image(), guidance_scale=3.0, latents=lat.transpose(1, 2), output_type="latent",
                     keep_first_frame=False, generator=torch.Generator().manual_seed(0), **kw)
    assert _rel(a, b.transpose(1, 2)) <= 1e-4


def test_keep_first_frame_starts_at_the_image(pipes):
    """By default frame 0 is held to the image's latents while sampling and is the image itself in the output."""
    ours = pipes[1]
    img = (np.random.RandomState(1).rand(32, 32, 3) * 255).astype(np.uint8)
    video = ours.animate(img, num_frames=4, num_inference_steps=2, seed=0)
    assert video.frames.shape == (4, 32, 32, 3)
    assert np.array_equal(video.frames[0], img)
    lat = ours.animate(img, num_frames=4, num_inference_steps=2, seed=0, output_type="latent")
    want = ours.conditioning.latents(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert torch.allclose(lat[:, :, 0], want)


def test_gm_layout_converts_to_the_same_weights(svd_folder):
    """generative-models names (as diffusers' convert_svd_to_diffusers.py maps them) -> the folder's own weights."""
    from safetensors.torch import load_file

    from vidiff.loaders.svd import diffusers_to_gm, gm_to_diffusers

    sd = load_file(str(svd_folder / "unet" / "diffusion_pytorch_model.safetensors"))
    gm = diffusers_to_gm(sd)
    spots = {   # fixed points of the published map
        "input_blocks.1.0.time_stack.in_layers.0.weight": "down_blocks.0.resnets.0.temporal_res_block.norm1.weight",
        "input_blocks.1.0.time_mixer.mix_factor": "down_blocks.0.resnets.0.time_mixer.mix_factor",
        "input_blocks.1.1.time_stack.0.attn1.to_q.weight": "down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1.to_q.weight",
        "input_blocks.1.1.time_pos_embed.0.weight": "down_blocks.0.attentions.0.time_pos_embed.linear_1.weight",
        "input_blocks.3.0.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "middle_block.1.proj_in.weight": "mid_block.attentions.0.proj_in.weight",
        "middle_block.2.emb_layers.1.weight": "mid_block.resnets.1.spatial_res_block.time_emb_proj.weight",
        "output_blocks.2.1.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.3.0.skip_connection.weight": "up_blocks.1.resnets.0.spatial_res_block.conv_shortcut.weight",
        "label_emb.0.0.weight": "add_embedding.linear_1.weight", "time_embed.2.bias": "time_embedding.linear_2.bias",
        "out.0.weight": "conv_norm_out.weight", "input_blocks.0.0.weight": "conv_in.weight"}
    for g, d in spots.items():
        assert gm["model.diffusion_model." + g] is sd[d], g
    back = gm_to_diffusers({**gm, "conditioner.embedders.0.x": torch.zeros(1)})
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_single_file_convert_and_export_round_trip(svd_folder, tmp_path, capsys):
    """`vidiff convert svd.safetensors --config DIR` loads the same UNet; `export --to diffusers` is bit-exact."""
    from safetensors.torch import load_file, save_file

    from vidiff.loaders.svd import diffusers_to_gm

    sd = load_file(str(svd_folder / "unet" / "diffusion_pytorch_model.safetensors"))
    save_file(diffusers_to_gm(sd), str(tmp_path / "svd.safetensors"))
    code, _, err = run_cli(capsys, "convert", tmp_path / "svd.safetensors", "--out", tmp_path / "conv")
    assert code == 2 and len(err) == 1 and "--config DIR" in err[0]
    code, _, err = run_cli(capsys, "convert", tmp_path / "svd.safetensors", "--config", svd_folder, "--out",
                           tmp_path / "conv")
    assert code == 0, err
    code, _, err = run_cli(capsys, "export", tmp_path / "conv", "--to", "diffusers", tmp_path / "exp")
    assert code == 0, err
    out = load_file(str(tmp_path / "exp" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert set(out) == set(sd) and all(torch.equal(out[k], sd[k]) for k in sd)
    cfg = json.loads((tmp_path / "exp" / "unet" / "config.json").read_text())
    ref = json.loads((svd_folder / "unet" / "config.json").read_text())
    assert {k: cfg[k] for k in cfg if not k.startswith("_")} == {k: ref[k] for k in cfg if not k.startswith("_")}
    from diffusers import StableVideoDiffusionPipeline

    StableVideoDiffusionPipeline.from_pretrained(tmp_path / "exp")          # diffusers reads it back


def test_cli_generate_image_to_video(svd_folder, tmp_path, capsys):
    from vidiff.data.io import read_video, write_video

    yy, xx = np.mgrid[0:32, 0:32] / 31.0                   # a smooth picture: H.264 keeps it closely
    img = (np.stack([xx, yy, 1 - xx * yy], -1) * 255).round().astype(np.uint8)
    write_video(img[None], tmp_path / "x.png")
    code, _, err = run_cli(capsys, "generate", "--image", tmp_path / "x.png", "--model", svd_folder, "--frames", "8",
                           "--steps", "2", "--seed", "0", "-o", tmp_path / "out.mp4")
    assert code == 0, err
    frames, fps = read_video(tmp_path / "out.mp4")
    assert frames.shape == (8, 32, 32, 3) and fps == 7
    assert np.abs(frames[0].astype(int) - img).mean() < 4           # frame 0 is the image (up to H.264)
    code, _, err = run_cli(capsys, "generate", "--image", tmp_path / "x.png", "--model", svd_folder, "--frames", "8",
                           "--steps", "2", "--seed", "0", "--no-keep-first-frame", "-o", tmp_path / "free.mp4")
    assert code == 0, err
    assert np.abs(read_video(tmp_path / "free.mp4")[0][0].astype(int) - img).mean() > 10   # a random model's frame 0
    bad = [(["generate", "a cat", "--model", str(svd_folder)], "--image PATH"),
           (["generate", "--image", str(tmp_path / "x.png"), "--model", str(svd_folder), "--motion-bucket", "-1"],
            "--motion-bucket must be >= 0"),
           (["generate", "--image", str(tmp_path / "x.png"), "--model", str(svd_folder), "--height", "33"],
            "multiples of"),
           (["generate", "--image", str(tmp_path / "x.png"), "--model", str(svd_folder), "--offload", "model"],
            "not available for Stable Video Diffusion"),
           (["extend", str(tmp_path / "x.png"), "--model", str(svd_folder)], "is a Stable Video Diffusion model"),
           (["interpolate", str(tmp_path / "x.png"), str(tmp_path / "x.png"), "--model", str(svd_folder)],
            "is a Stable Video Diffusion model")]
    for argv, msg in bad:
        code, _, err = run_cli(capsys, *argv, "-o", tmp_path / "bad.mp4")
        assert code == 2 and msg in err[-1] and f"vidiff {argv[0]}: error:" in err[-1], (argv, err)
        assert not (tmp_path / "bad.mp4").exists()


def test_prompt_is_ignored_with_a_warning(pipes):
    with pytest.warns(UserWarning, match="no text encoder"):
        pipes[1].animate(_image(), prompt="a cat", num_frames=2, num_inference_steps=1, seed=0)
    with pytest.raises(ValueError, match="image-to-video"):
        pipes[1]("a cat")


def test_vidiff_loader_gives_the_svd_pipeline(svd_folder):
    from vidiff import VideoPipeline
    from vidiff.pipelines.svd import SVDPipeline

    assert isinstance(VideoPipeline.from_pretrained(svd_folder, device="cpu"), SVDPipeline)


@pytest.mark.parametrize("mode", ["autoregressive", "windows"])
def test_long_modes(pipes, mode):
    """Past the window: autoregressive windows share `context` frames (kept as made); windows fuse attention."""
    ours = pipes[1]
    short = ours.animate(_image(), num_frames=4, num_inference_steps=2, seed=0, output_type="latent")
    long = ours.animate(_image(), num_frames=10, num_inference_steps=2, seed=0, output_type="latent", mode=mode,
                        chunk=4, context=1)
    assert long.shape[2] == 10 and torch.isfinite(long).all()
    if mode == "autoregressive":     # the first window is the short video itself
        assert torch.allclose(long[:, :, :4], short, atol=1e-5)


def test_long_autoregressive_memory_is_one_window(svd_folder, tmp_path):
    """64 frames autoregressive peak within 1.3x of 16 frames (fresh processes, resident-set peak)."""
    import subprocess
    import sys

    code = ("import resource, torch; from vidiff.pipelines.svd import SVDPipeline; "
            f"p = SVDPipeline.from_pretrained({str(svd_folder)!r}, device='cpu'); "
            "img = torch.rand(1, 3, 64, 64); "
            "p.animate(img, num_frames=2, num_inference_steps=1, seed=0); "
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "p.animate(img, num_frames={n}, num_inference_steps=1, seed=0, mode='autoregressive', chunk=16, "
            "decode_chunk_size=4); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)")
    import os

    # large blocks straight from mmap, so freed windows leave the resident set (else glibc's heap keeps them
    # and the peak is allocator noise: 95 / 103 / 204 / 127 MiB at 16 / 32 / 64 / 128 frames in one trial)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    grow = {n: int(subprocess.run([sys.executable, "-c", code.format(n=n)], capture_output=True, text=True,
                                  check=True, env=env).stdout.split()[-1]) for n in (16, 64)}
    assert grow[64] <= 1.3 * max(grow[16], 1) + 4096, grow           # KiB; 4 MiB of allocator slack
