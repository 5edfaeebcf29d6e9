"""vidiff against diffusers on the *same* community weights: AnimateDiff (UNetMotionModel),
ModelScope (UNet3DConditionModel) and Stable Video Diffusion (UNetSpatioTemporalConditionModel) at one
medium config, in one process, runs interleaved.

Reports UNet forward time in fp32 and bf16, one 8-step pipeline run (CFG, output_type="latent")
and the peak memory of one forward at 16 and 32 frames. Ratios > 1 mean vidiff is faster. Not a test.

    python benchmarks/community_speed.py [--repeats 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import warnings

import torch

from vidiff import testing
from vidiff.loaders.convert import config_from_motion_unet, config_from_unet3d
from vidiff.models.unet import load_weights

from unet_speed import timed_all      # noqa: E402  (benchmarks/ is on sys.path when run as a script)

WIDTHS, LAYERS, HEADS, FRAMES, SIZE, CTX = (64, 128, 256), 2, 8, 16, 32, 64
ATTN = (True, True, False)


def build():
    """{family: (diffusers UNet, vidiff UNet with the same weights, diffusers takes per-frame text)}."""
    from diffusers import UNet3DConditionModel, UNetMotionModel, UNetSpatioTemporalConditionModel

    from vidiff.loaders.svd import config_from_svd_unet, to_vidiff

    common = dict(block_out_channels=WIDTHS, layers_per_block=LAYERS, norm_num_groups=32, cross_attention_dim=CTX)
    down = [("CrossAttnDownBlock" if a else "DownBlock") for a in ATTN]
    up = [("CrossAttnUpBlock" if a else "UpBlock") for a in reversed(ATTN)]
    torch.manual_seed(0)
    motion = testing._perturbed(UNetMotionModel(
        down_block_types=[b + "Motion" for b in down], up_block_types=[b + "Motion" for b in up],
        num_attention_heads=HEADS, motion_num_attention_heads=HEADS, motion_max_seq_length=32, **common), 0.02)
    unet3d = testing._perturbed(UNet3DConditionModel(
        down_block_types=[b + "3D" for b in down], up_block_types=[b + "3D" for b in up],
        attention_head_dim=WIDTHS[0] // HEADS, **common), 0.02)
    svd = testing._perturbed(UNetSpatioTemporalConditionModel(
        down_block_types=[b + "SpatioTemporal" for b in down], up_block_types=[b + "SpatioTemporal" for b in up],
        num_attention_heads=HEADS, in_channels=8, block_out_channels=WIDTHS, layers_per_block=LAYERS,
        cross_attention_dim=CTX), 0.02)
    return {
        "animatediff": (motion, load_weights(config_from_motion_unet(dict(motion.config)), motion.state_dict()).eval(), True),
        "modelscope": (unet3d, load_weights(config_from_unet3d(dict(unet3d.config)), unet3d.state_dict()).eval(), False),
        "svd": (svd, load_weights(config_from_svd_unet(dict(svd.config)), to_vidiff(dict(svd.state_dict()))).eval(),
                "svd"),
    }


def forward_fns(models, frames: int, dtype):
    x = torch.randn(1, 4, frames, SIZE, SIZE, dtype=dtype)
    t, ctx = torch.tensor([500]), torch.randn(1, 16, CTX, dtype=dtype)
    fns = {}
    for fam, (ref, ours, per_frame_ctx) in models.items():
        if per_frame_ctx == "svd":                       # 8 input channels, one image token, added time ids
            xs, c1, ids = torch.randn(1, 8, frames, SIZE, SIZE, dtype=dtype), ctx[:, :1], torch.tensor([[6.0, 127, 0.02]])
            ts = torch.tensor([0.5])
            fns[f"{fam} diffusers"] = lambda r=ref: r(xs.transpose(1, 2), ts, c1, ids.to(dtype)).sample
            fns[f"{fam} vidiff"] = lambda o=ours: o(xs, ts, c1, added_time_ids=ids.to(dtype))
            continue
        rctx = ctx.repeat_interleave(frames, 0) if per_frame_ctx else ctx
        fns[f"{fam} diffusers"] = lambda r=ref, c=rctx: r(x, t, c).sample
        fns[f"{fam} vidiff"] = lambda o=ours: o(x, t, ctx)
    return fns


def timed(fns: dict, repeats: int) -> dict:
    """Min wall time of each function over `repeats` interleaved rounds (after one warm-up each), no grad."""
    with torch.no_grad():
        return timed_all(fns, repeats)


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def peak_memory(fn) -> float:
    """MiB above the resident set that one call adds at its peak (Linux: VmHWM reset through clear_refs)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS")
    with torch.no_grad():
        out = fn()
    peak = _status("VmHWM")
    del out
    return (peak - base) / 2 ** 20


def pipeline_fns(models, steps: int = 8):
    """One 8-step text-to-video run per family and side: CFG on, same latents, latents out."""
    import diffusers

    from vidiff.pipelines.pipeline import VideoPipeline
    from vidiff.diffusion.schedule import NoiseSchedule
    from vidiff.models.text import TextEncoder

    parts = testing.tiny_sd_parts(cross_attention_dim=CTX)
    sched = testing.ddim_scheduler(timestep_spacing="linspace")
    lat = torch.randn(1, 4, FRAMES, SIZE, SIZE)
    fns = _svd_pipeline_fns(models["svd"], steps)
    for fam, (ref, ours, _) in models.items():
        if fam == "svd":
            continue
        cls = diffusers.AnimateDiffPipeline if fam == "animatediff" else diffusers.TextToVideoSDPipeline
        extra = {"motion_adapter": None} if fam == "animatediff" else {}
        dp = cls(unet=ref, scheduler=sched, **parts, **extra)
        dp.set_progress_bar_config(disable=True)
        from vidiff.models.codec import VaeCodec

        vp = VideoPipeline(ours, TextEncoder(parts["text_encoder"], parts["tokenizer"]),
                           NoiseSchedule.from_config({**sched.config, "_class_name": "DDIMScheduler"}),
                           VaeCodec(parts["vae"]))
        kw = dict(num_inference_steps=steps, guidance_scale=7.5, output_type="latent")
        fns[f"{fam} diffusers"] = lambda dp=dp: dp(prompt="a red circle", negative_prompt="blue", latents=lat.clone(),
                                                   num_frames=FRAMES, height=SIZE * 2, width=SIZE * 2, **kw).frames
        fns[f"{fam} vidiff"] = lambda vp=vp: vp("a red circle", negative_prompt="blue", latents=lat.clone(),
                                                progress=False, **kw)
    return fns


def _svd_pipeline_fns(svd, steps: int):
    """One 8-step image-to-video run each side: guidance ramp 1 -> 3, same image and latents, latents out."""
    import diffusers
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from vidiff.diffusion.edm import EDMSchedule
    from vidiff.pipelines.svd import SVDPipeline

    parts = testing.tiny_svd_parts()
    torch.manual_seed(0)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, projection_dim=CTX, num_hidden_layers=2,
                                                         num_attention_heads=4, image_size=SIZE * 2, patch_size=8,
                                                         intermediate_size=37)).eval()
    ref, ours, _ = svd
    dp = diffusers.StableVideoDiffusionPipeline(unet=ref, vae=parts["vae"], image_encoder=enc,
                                                scheduler=parts["scheduler"], feature_extractor=parts["feature_extractor"])
    dp.set_progress_bar_config(disable=True)
    vp = SVDPipeline(ours, parts["vae"], enc, EDMSchedule.from_config(dict(parts["scheduler"].config)))
    img, lat = torch.rand(1, 3, SIZE * 2, SIZE * 2), torch.randn(1, FRAMES, 4, SIZE, SIZE)
    kw = dict(num_inference_steps=steps, min_guidance_scale=1.0, height=SIZE * 2, width=SIZE * 2, output_type="latent")
    return {"svd diffusers": lambda: dp(img, max_guidance_scale=3.0, latents=lat.clone(), num_frames=FRAMES, **kw).frames,
            "svd vidiff": lambda: vp.animate(img, guidance_scale=3.0, latents=lat.transpose(1, 2).clone(),
                                             keep_first_frame=False, seed=0, **kw)}


def main():
    """Run every measurement and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    models = build()
    res = {"config": dict(widths=WIDTHS, layers=LAYERS, heads=HEADS, frames=FRAMES, latent=SIZE, threads=args.threads,
                          repeats=args.repeats)}
    res["fp32"] = timed(forward_fns(models, FRAMES, torch.float32), args.repeats)
    print("fp32", {k: round(v, 3) for k, v in res["fp32"].items()}, flush=True)
    for ref, ours, _ in models.values():
        ref.to(torch.bfloat16), ours.to(torch.bfloat16)
    res["bf16"] = timed(forward_fns(models, FRAMES, torch.bfloat16), args.repeats)
    for ref, ours, _ in models.values():
        ref.float(), ours.float()
    res["pipeline_8_steps"] = timed(pipeline_fns(models), 1)
    res["peak_mib"] = {f: {k: peak_memory(fn) for k, fn in forward_fns(models, f, torch.float32).items()}
                       for f in (16, 32)}

    print(f"widths {WIDTHS}, {LAYERS} layers, {FRAMES} frames, {SIZE}x{SIZE} latents, {HEADS} heads, "
          f"{args.threads} threads, min of {args.repeats}")
    print("| family | forward fp32 s (diffusers / vidiff) | speed-up | forward bf16 s (diffusers / vidiff) | "
          "vidiff bf16 vs own fp32 | 8-step pipeline s (diffusers / vidiff) | speed-up | peak MiB 16 f | peak MiB 32 f |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fam in models:
        d, v = f"{fam} diffusers", f"{fam} vidiff"
        f32, b16, pipe, mem = res["fp32"], res["bf16"], res["pipeline_8_steps"], res["peak_mib"]
        print(f"| {fam} | {f32[d]:.3f} / {f32[v]:.3f} | {f32[d] / f32[v]:.2f}x | {b16[d]:.3f} / {b16[v]:.3f} | "
              f"{f32[v] / b16[v]:.2f}x | {pipe[d]:.2f} / {pipe[v]:.2f} | {pipe[d] / pipe[v]:.2f}x | "
              f"{mem[16][d]:.0f} / {mem[16][v]:.0f} | {mem[32][d]:.0f} / {mem[32][v]:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
