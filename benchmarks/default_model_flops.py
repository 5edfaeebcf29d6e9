"""FLOP/s of the shipped model's UNet against this CPU's matmul peak, measured in the same process.

    python benchmarks/default_model_flops.py [--repeats 5]

One guided denoising call of a default text-to-video step (16 frames, conditional and unconditional
halves in one batch of 2), its FLOPs counted by torch's FlopCounterMode (matmuls, convolutions and
attention; norms and pointwise ops are not counted), timed in float32 and under bfloat16 autocast,
next to a 2048^3 matmul in each precision: the fraction of the peak the UNet reaches.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vidiff.pipelines.pipeline import VideoPipeline  # noqa: E402


def best(fn, repeats: int) -> float:
    """Fastest of `repeats` timed calls of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    """Print the UNet's GFLOP per call, its GFLOP/s in fp32 and bf16, and the matmul peaks."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    pipe = VideoPipeline.from_pretrained()
    unet, d = pipe.unet, pipe.defaults
    r = pipe.codec.factor
    x = torch.randn(2, pipe.codec.channels, d["num_frames"], d["height"] // r, d["width"] // r)
    t = torch.full((2,), 500)
    ctx = pipe.text_encoder(["", "a red circle moving right"])
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            unet(x, t, ctx)
        flops = counter.get_total_flops()
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        rows = []
        for name, ctxm in (("float32", torch.autocast("cpu", enabled=False)),
                           ("bfloat16 autocast", torch.autocast("cpu", dtype=torch.bfloat16))):
            with ctxm:
                s_unet = best(lambda: unet(x, t, ctx), args.repeats)
                s_mm = best(lambda: a @ b, args.repeats)
            rows.append((name, flops / s_unet / 1e9, 2 * 2048 ** 3 / s_mm / 1e9, s_unet))
    print(f"shapes-64 UNet, one guided call (batch 2 x {d['num_frames']} frames): {flops / 1e9:.1f} GFLOP, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print("| precision | UNet s | UNet GFLOP/s | 2048^3 matmul GFLOP/s | share of matmul peak |")
    print("|---|---|---|---|---|")
    for name, unet_gf, mm_gf, s in rows:
        print(f"| {name} | {s:.3f} | {unet_gf:.0f} | {mm_gf:.0f} | {unet_gf / mm_gf:.0%} |")


if __name__ == "__main__":
    main()
