"""Does torch.compile pay on this CPU? vidiff's UNet eager against `UNet.compile()` (inductor) at SD 1.5 +
AnimateDiff-v2 widths (random weights), one process: the first compiled call (compile included), then the best of
`--repeats` calls each way. Not a test.

    python benchmarks/compile_speed.py [--frames 8] [--latent 16] [--dtype bfloat16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch


def main():
    """Time eager and compiled forwards and print them."""
    from real_width import build      # noqa: E402  (benchmarks/ is on sys.path when run as a script)

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    ref, unet = build("animatediff")
    del ref
    unet = unet.to(dtype)
    x = torch.randn(2, 4, args.frames, args.latent, args.latent, dtype=dtype)       # a CFG batch
    ctx, t = torch.randn(2, 77, 768, dtype=dtype), torch.tensor([500, 500])

    def best(fn):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.no_grad():
        eager_out = unet(x, t, ctx)
        eager = best(lambda: unet(x, t, ctx))
        unet.compile()
        t0 = time.perf_counter()
        out = unet(x, t, ctx)
        first = time.perf_counter() - t0
        compiled = best(lambda: unet(x, t, ctx))
    err = float((out.float() - eager_out.float()).abs().max() / eager_out.float().abs().max())
    print(f"{args.dtype}, {args.frames} frames of {args.latent}x{args.latent}, CFG batch: eager {eager:.2f} s, "
          f"first compiled call {first:.1f} s, compiled {compiled:.2f} s ({eager / compiled:.2f}x), "
          f"max rel diff {err:.1e}")


if __name__ == "__main__":
    main()
