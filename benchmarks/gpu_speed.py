"""SD 1.5 + AnimateDiff v2 on a GPU: vidiff against diffusers with the same random weights at real widths.

UNet widths 320/640/1280/1280, 8 heads, cross-attention 768, the v2 motion module, 16 frames of 64x64 latents
(512x512 video), CFG batch of 2, float16: time per denoising step and peak VRAM for each library (SDPA; xformers
too when installed), interleaved. Then a 20-step training run of configs/tiny.yaml with EMA on the GPU, and a
2-rank batch when 2 GPUs exist. Exits 0 with one line where there is no CUDA. Not a test.

    python benchmarks/gpu_speed.py [--repeats 5] [--frames 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch

SD15 = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, sample_size=64)


def build(dtype):
    """(diffusers UNetMotionModel, vidiff UNet) holding the same random weights, on CUDA in `dtype`."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from vidiff.loaders.convert import config_from_motion_unet
    from vidiff.models.unet import load_weights

    torch.manual_seed(0)
    ref = UNetMotionModel.from_unet2d(UNet2DConditionModel(**SD15), MotionAdapter(block_out_channels=SD15["block_out_channels"],
                                                                                   motion_layers_per_block=2))
    ours = load_weights(config_from_motion_unet(dict(ref.config)), {k: v.clone() for k, v in ref.state_dict().items()})
    return ref.to("cuda", dtype).eval(), ours.to("cuda", dtype).eval()


def step_time(fn, repeats: int) -> tuple[float, int]:
    """(median seconds of fn(), peak bytes allocated during it)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated()


def main() -> int:
    """Run the GPU benchmark and print its table."""
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_speed: no CUDA device here; nothing measured")
        return 0
    dtype, f = torch.float16, args.frames
    ref, ours = build(dtype)
    x = torch.randn(2, 4, f, 64, 64, device="cuda", dtype=dtype)
    t = torch.full((2,), 500, device="cuda")
    ctx = torch.randn(2, 77, 768, device="cuda", dtype=dtype)
    rows = {}
    with torch.no_grad():
        for backend in ["sdpa"] + (["xformers"] if _has_xformers() else []):
            if backend == "xformers":
                ref.enable_xformers_memory_efficient_attention()
            ours.set_attention_backend(backend)
            d_s, d_m = step_time(lambda: ref(x, t, ctx), args.repeats)
            v_s, v_m = step_time(lambda: ours(x, t, ctx), args.repeats)
            rows[backend] = {"diffusers_s": d_s, "vidiff_s": v_s, "speedup": d_s / v_s,
                             "diffusers_peak_gib": d_m / 2 ** 30, "vidiff_peak_gib": v_m / 2 ** 30}
            print(f"{backend}: UNet step ({f} frames, 512x512, CFG batch 2, fp16) diffusers {d_s * 1e3:.0f} ms, "
                  f"vidiff {v_s * 1e3:.0f} ms ({d_s / v_s:.2f}x); peak VRAM {d_m / 2 ** 30:.2f} / {v_m / 2 ** 30:.2f} GiB")
    del ref, ours
    torch.cuda.empty_cache()
    rows["train"] = _train()
    if torch.cuda.device_count() >= 2:
        rows["batch"] = _batch()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, fh, indent=2)
    return 0


def _has_xformers() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        return False
    return True


def _train() -> dict:
    """20 steps of configs/tiny.yaml with EMA on the GPU: seconds and where the EMA lives."""
    from vidiff.training.config import load_config
    from vidiff.data.shapes import make_shapes_dataset
    from vidiff.training.train import train

    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_dataset(f"{tmp}/data", clips=8, size=32, num_frames=8, progress=False)
        cfg = load_config("configs/tiny.yaml", [f"data.path={data}", f"train.output_dir={tmp}/run", "train.steps=20"])
        t0 = time.perf_counter()
        result = train(cfg, progress=False)
        seconds = time.perf_counter() - t0
    devices = sorted({str(v.device) for v in result["ema"].values()})
    print(f"train: 20 steps of configs/tiny.yaml with EMA in {seconds:.1f}s; EMA on {devices}")
    return {"seconds": seconds, "ema_devices": devices}


def _batch() -> dict:
    """A 2-rank batch with accelerate launch: each rank on its own GPU."""
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/p.txt", "w") as fh:
            fh.write("a red circle moving right\na blue square moving up\n")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "-m", "vidiff.app.cli",
               "generate", "--prompts", f"{tmp}/p.txt", "--seeds", "0-1", "--out-dir", f"{tmp}/out"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    print(f"batch: 2 ranks, 4 videos, exit {out.returncode} in {seconds:.1f}s")
    return {"returncode": out.returncode, "seconds": seconds}


if __name__ == "__main__":
    sys.exit(main())
