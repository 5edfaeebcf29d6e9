"""The headline speed table: vidiff against diffusers at the widths people run, on the same random weights.

An SD 1.5 + AnimateDiff-v2-shaped UNetMotionModel (widths 320/640/1280/1280, 8 heads, cross-attention 768, motion
modules with a middle one; 1.3B parameters) and a ModelScope-shaped UNet3DConditionModel (same widths), random
weights shared by both libraries (vidiff's UNet takes diffusers' tensors as its own). One process, cases interleaved,
2 threads. Reported:

- UNet forward, `--frames` frames of `--latent` x `--latent` latents, float32 and bfloat16, and the peak memory one
  forward adds (VmHWM);
- a whole `--steps`-step text-to-video run with CFG 7.5 (`--run-frames` frames of `--run-latent` latents; a tiny VAE
  and text encoder, the same on both sides, so the UNet is the cost): each library's defaults (diffusers: float32;
  vidiff: `dtype="auto"`, bfloat16 on this CPU), equal settings (both float32, no cache) and each one's fastest
  (diffusers bfloat16; vidiff bfloat16 + step caching), with the final latents' relative error against vidiff's
  float32 run as the quality cost.

Ratios > 1 mean vidiff is faster. Not a test.

    python benchmarks/real_width.py [--frames 16] [--latent 32] [--steps 25] [--skip-modelscope] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from community_speed import peak_memory      # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def build(family: str):
    """(diffusers UNet, vidiff UNet on the same tensors) at SD 1.5 widths, random weights."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel

    from vidiff.loaders.convert import config_from_motion_unet, config_from_unet3d
    from vidiff.models.unet import load_weights

    torch.manual_seed(0)
    if family == "animatediff":
        ref = UNetMotionModel.from_unet2d(UNet2DConditionModel(cross_attention_dim=768), MotionAdapter()).eval()
        cfg = config_from_motion_unet(dict(ref.config))
    else:
        ref = UNet3DConditionModel(cross_attention_dim=1024, attention_head_dim=64).eval()
        cfg = config_from_unet3d(dict(ref.config))
    ours = load_weights(cfg, dict(ref.state_dict())).eval()
    return ref, ours


def forward_table(ref, ours, frames: int, latent: int, ctx_dim: int, repeats: int) -> list[dict]:
    """Forward time (best of `repeats`, interleaved) and peak memory per library and precision."""
    rows = []
    x = torch.randn(1, 4, frames, latent, latent)
    ctx = torch.randn(1, 77, ctx_dim)
    t = torch.tensor([500])
    for dtype in (torch.float32, torch.bfloat16):
        models = {"diffusers": ref.to(dtype), "vidiff": ours.to(dtype)}
        xs, cs = x.to(dtype), ctx.to(dtype)
        per_frame = cs.repeat_interleave(frames, 0) if type(ref).__name__ == "UNetMotionModel" else cs
        calls = {"diffusers": lambda: models["diffusers"](xs, t, encoder_hidden_states=per_frame).sample,
                 "vidiff": lambda: models["vidiff"](xs, t, cs)}
        best = {k: float("inf") for k in calls}
        with torch.no_grad():
            out = {k: fn() for k, fn in calls.items()}             # also the warm-up
            for _ in range(repeats):
                for k, fn in calls.items():
                    t0 = time.perf_counter()
                    fn()
                    best[k] = min(best[k], time.perf_counter() - t0)
        err = float((out["vidiff"].float() - out["diffusers"].float()).abs().max() / out["diffusers"].float().abs().max())
        mem = {k: peak_memory(fn) for k, fn in calls.items()}
        rows.append({"dtype": str(dtype).removeprefix("torch."), **{f"{k}_s": round(v, 2) for k, v in best.items()},
                     "ratio": round(best["diffusers"] / best["vidiff"], 3), "max_rel_diff": err,
                     **{f"{k}_peak_mib": round(v) for k, v in mem.items()}})
        print(rows[-1], flush=True)
    ref.float(), ours.float()
    return rows


def run_table(ref, ours, frames: int, latent: int, steps: int, cache: int) -> list[dict]:
    """Whole text-to-video runs: defaults, equal settings, fastest; times and the quality cost."""
    import diffusers

    from vidiff import testing
    from vidiff.devices import resolve_dtype
    from vidiff.diffusion.schedule import NoiseSchedule
    from vidiff.models.codec import VaeCodec
    from vidiff.models.text import TextEncoder
    from vidiff.pipelines.pipeline import VideoPipeline

    parts = testing.tiny_sd_parts(cross_attention_dim=768)
    from diffusers import AutoencoderKL

    torch.manual_seed(0)              # a factor-8 VAE (4 levels) of small widths: 16x16 latents are 128x128 frames
    parts["vae"] = AutoencoderKL(block_out_channels=(8, 8, 8, 8), norm_num_groups=2, latent_channels=4,
                                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    sched = testing.ddim_scheduler(timestep_spacing="linspace")
    lat = torch.randn(1, 4, frames, latent, latent)
    dp = diffusers.AnimateDiffPipeline(unet=ref, motion_adapter=None, scheduler=sched, **parts)
    dp.set_progress_bar_config(disable=True)
    vp = VideoPipeline(ours, TextEncoder(parts["text_encoder"], parts["tokenizer"]),
                       NoiseSchedule.from_config({**sched.config, "_class_name": "DDIMScheduler"}), VaeCodec(parts["vae"]))
    kw = dict(num_inference_steps=steps, guidance_scale=7.5, output_type="latent")
    auto = resolve_dtype("auto", torch.device("cpu"))
    cases = [("diffusers default (float32)", "diffusers", torch.float32, None),
             (f"vidiff default ({str(auto).removeprefix('torch.')})", "vidiff", auto, None),
             ("vidiff float32", "vidiff", torch.float32, None),
             ("diffusers bfloat16", "diffusers", torch.bfloat16, None),
             (f"vidiff bfloat16 + cache {cache}", "vidiff", torch.bfloat16, cache)]
    rows, outs = [], {}
    for name, lib, dtype, c in cases:
        if lib == "diffusers":
            dp.unet.to(dtype)
            dp.text_encoder.to(dtype)
            fn = lambda: dp(prompt="a red circle", negative_prompt="blue", latents=lat.clone().to(dtype),  # noqa: E731
                            num_frames=frames, height=latent * 8, width=latent * 8, **kw).frames
        else:
            vp.to("cpu", dtype)
            fn = lambda: vp("a red circle", negative_prompt="blue", latents=lat.clone(), progress=False,  # noqa: E731
                            cache=c, **kw)
        t0 = time.perf_counter()
        with torch.no_grad():
            outs[name] = fn().float()
        rows.append({"case": name, "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    base = outs["vidiff float32"]
    for r in rows:
        r["rel_err_vs_fp32"] = float((outs[r["case"]] - base).abs().max() / base.abs().max())
    dp.unet.float(), vp.to("cpu", torch.float32)
    return rows


def main():
    """Print the forward and run tables (JSON with --json)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--run-frames", type=int, default=8)
    p.add_argument("--run-latent", type=int, default=16)
    p.add_argument("--cache", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-modelscope", action="store_true")
    p.add_argument("--skip-run", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    result = {}
    for family in ("animatediff",) + (() if args.skip_modelscope else ("modelscope",)):
        ref, ours = build(family)
        print(f"== {family}: {sum(p.numel() for p in ours.parameters()) / 1e6:.0f}M parameters", flush=True)
        result[family] = {"forward": forward_table(ref, ours, args.frames, args.latent,
                                                   768 if family == "animatediff" else 1024, args.repeats)}
        if family == "animatediff" and not args.skip_run:
            result[family]["run"] = run_table(ref, ours, args.run_frames, args.run_latent, args.steps, args.cache)
        del ref, ours
    print("\n| UNet | dtype | diffusers s | vidiff s | ratio | peak MiB diffusers / vidiff |")
    print("|---|---|---|---|---|---|")
    for fam, r in result.items():
        for row in r["forward"]:
            print(f"| {fam} | {row['dtype']} | {row['diffusers_s']} | {row['vidiff_s']} | {row['ratio']:.2f}x | "
                  f"{row['diffusers_peak_mib']} / {row['vidiff_peak_mib']} |")
    if "run" in result.get("animatediff", {}):
        rows = result["animatediff"]["run"]
        ref_s = rows[0]["seconds"]
        print(f"\n| {args.steps}-step run, CFG, {args.run_frames} frames of {args.run_latent}x{args.run_latent} "
              "latents | s | vs diffusers default | latents vs vidiff float32 |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['case']} | {r['seconds']} | {ref_s / r['seconds']:.2f}x | {r['rel_err_vs_fp32']:.1e} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
