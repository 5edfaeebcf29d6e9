"""SVD at its real widths: vidiff's UNet against diffusers' UNetSpatioTemporalConditionModel, same weights.

The released SVD configuration (widths 320/640/1280/1280, 5/10/20/20 heads of 64, cross-attention 1024, 1.5B
parameters; random weights) at `--frames` frames of `--latent` x `--latent` latents, one process, runs
interleaved, fp32 and bf16. At these widths both libraries call the same big kernels, so this is where a
user's time goes. Ratios > 1 mean vidiff is faster. Not a test.

    python benchmarks/svd_real_width.py [--frames 14] [--latent 32] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

from unet_speed import timed_all      # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def main():
    """Build both UNets on shared weights, time their forwards, print one table."""
    from diffusers import UNetSpatioTemporalConditionModel

    from vidiff.loaders.svd import config_from_svd_unet, to_vidiff
    from vidiff.models.unet import load_weights

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=14)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ref = UNetSpatioTemporalConditionModel().eval()            # the released SVD shape
    ours = load_weights(config_from_svd_unet(dict(ref.config)), to_vidiff(dict(ref.state_dict()))).eval()
    n = sum(p.numel() for p in ref.parameters()) / 1e9
    x = torch.randn(1, 8, args.frames, args.latent, args.latent)
    t, ctx, ids = torch.tensor([0.5]), torch.randn(1, 1, 1024), torch.tensor([[6.0, 127.0, 0.02]])
    res = {"config": {"params_b": n, **vars(args)}}
    for dtype in (torch.float32, torch.bfloat16):
        ref.to(dtype)
        ours.to(dtype)
        xs, c, i = x.to(dtype), ctx.to(dtype), ids.to(dtype)
        fns = {"diffusers": lambda: ref(xs.transpose(1, 2), t, c, i).sample,
               "vidiff": lambda: ours(xs, t, c, added_time_ids=i)}
        with torch.no_grad():
            res[str(dtype)] = timed_all(fns, args.repeats)
        print(dtype, res[str(dtype)], flush=True)
    f32, b16 = res["torch.float32"], res["torch.bfloat16"]
    print(f"\nSVD UNet ({n:.2f}B parameters), {args.frames} frames, {args.latent}x{args.latent} latents, "
          f"{args.threads} threads, min of {args.repeats}")
    print("| forward fp32 s (diffusers / vidiff) | speed-up | forward bf16 s (diffusers / vidiff) | speed-up |")
    print("|---|---|---|---|")
    print(f"| {f32['diffusers']:.2f} / {f32['vidiff']:.2f} | {f32['diffusers'] / f32['vidiff']:.2f}x | "
          f"{b16['diffusers']:.2f} / {b16['vidiff']:.2f} | {b16['diffusers'] / b16['vidiff']:.2f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
