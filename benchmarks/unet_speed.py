"""Speed of vidiff's space-time UNet against diffusers' UNet3DConditionModel and UNetMotionModel.

All models are built in this one process at the same widths, depth and heads, with random weights,
and timed on the same inputs. Prints ratios (>1 means vidiff is faster). Not a test.

    python benchmarks/unet_speed.py [--configs tiny medium] [--repeats 5] [--batch 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from vidiff.models.unet import UNet

CONFIGS = {
    # name: widths, ResBlocks per level, attention per level, heads, frames, size
    "tiny": dict(ch=(32, 64), layers=1, attn=(True, False), heads=4, frames=8, size=32),
    "medium": dict(ch=(64, 128, 256), layers=2, attn=(True, True, False), heads=8, frames=16, size=32),
}
CTX_DIM, CTX_LEN = 64, 16


def build(name: str, cfg: dict):
    """Return {label: (model, takes_video)} for one config."""
    from diffusers import UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel

    n = len(cfg["ch"])
    down2 = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg["attn"])
    up2 = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg["attn"]))
    common = dict(block_out_channels=cfg["ch"], layers_per_block=cfg["layers"], norm_num_groups=32,
                  cross_attention_dim=CTX_DIM, in_channels=4, out_channels=4)
    ours = dict(block_out_channels=cfg["ch"], layers_per_block=cfg["layers"], attention_levels=cfg["attn"],
                num_heads=cfg["heads"], cross_attention_dim=CTX_DIM, in_channels=4, out_channels=4,
                temporal_heads=cfg["heads"])
    models = {
        "vidiff video": UNet(ours, temporal=True),
        "vidiff image": UNet(ours, temporal=False),
        "diffusers UNet3D": UNet3DConditionModel(
            down_block_types=tuple(b.replace("2D", "3D") for b in down2),
            up_block_types=tuple(b.replace("2D", "3D") for b in up2),
            attention_head_dim=cfg["heads"], **common),
        "diffusers UNetMotion": UNetMotionModel(
            down_block_types=tuple(b.replace("2D", "Motion") for b in down2),
            up_block_types=tuple(b.replace("2D", "Motion") for b in up2),
            num_attention_heads=cfg["heads"], motion_num_attention_heads=cfg["heads"],
            motion_max_seq_length=64, **common),
        "diffusers UNet2D": UNet2DConditionModel(down_block_types=down2, up_block_types=up2,
                                                 attention_head_dim=cfg["heads"], **common),
    }
    assert n == len(cfg["attn"])
    # Temporal branches start at zero; perturb them so no zero-skipping flatters anyone.
    for m in models.values():
        with torch.no_grad():
            for p in m.parameters():
                if not p.abs().sum():
                    p.normal_(0, 0.02)
    return models


def call(label: str, model, x, t, ctx):
    """Run one model the way it takes video: `b c f h w`, or frames as a batch of images."""
    b, c, f, h, w = x.shape
    if label == "diffusers UNet2D":
        xi = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        return model(xi, t.repeat_interleave(f), ctx.repeat_interleave(f, 0)).sample
    if label == "diffusers UNetMotion":  # it expects the text states already repeated per frame
        return model(x, t, ctx.repeat_interleave(f, 0)).sample
    if label.startswith("diffusers"):
        return model(x, t, ctx).sample
    return model(x, t, ctx)


def timed_all(fns: dict, repeats: int) -> dict:
    """Min wall time of each fn over `repeats` rounds, interleaved so that drift hits all alike."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def run(name: str, repeats: int, batch: int, heads: int | None) -> dict:
    """Time forward (fp32, bf16 autocast) and a bf16 training step for every model."""
    cfg = dict(CONFIGS[name])
    if heads:
        cfg["heads"] = heads
    torch.manual_seed(0)
    models = build(name, cfg)
    f, s = cfg["frames"], cfg["size"]
    x = torch.randn(batch, 4, f, s, s)
    t = torch.randint(0, 1000, (batch,))
    ctx = torch.randn(batch, CTX_LEN, CTX_DIM)

    def forward(label, model, bf16):
        def fn():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                call(label, model, x, t, ctx)
        return fn

    def step(label, model):
        def fn():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = call(label, model, x, t, ctx)
            out.float().square().mean().backward()
            model.zero_grad(set_to_none=True)
        return fn

    for m in models.values():
        m.eval()
    fp32 = timed_all({k: forward(k, m, False) for k, m in models.items()}, repeats)
    bf16 = timed_all({k: forward(k, m, True) for k, m in models.items()}, repeats)
    for m in models.values():
        m.train()
    train = timed_all({k: step(k, m) for k, m in models.items()}, max(2, repeats // 2))
    return {k: dict(fp32=fp32[k], bf16=bf16[k], train=train[k]) for k in models}


def main() -> None:
    """Print one table per config."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=None, help="override the heads of every config")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.configs:
        r = run(name, args.repeats, args.batch, args.heads)
        c = {**CONFIGS[name], **({"heads": args.heads} if args.heads else {})}
        print(f"\n## {name}: widths {c['ch']}, {c['layers']} layers/level, {c['frames']} frames, "
              f"{c['size']}x{c['size']}, {c['heads']} heads, batch {args.batch}, {args.threads} threads, "
              f"min of {args.repeats}")
        print("| model | fwd fp32 s | fwd bf16 s | train step bf16 s |")
        print("|---|---|---|---|")
        for label, v in r.items():
            print(f"| {label} | {v['fp32']:.4f} | {v['bf16']:.4f} | {v['train']:.4f} |")
        ours = r["vidiff video"]
        print(f"\nforward fp32 speed-up vs UNet3D: {r['diffusers UNet3D']['fp32'] / ours['fp32']:.2f}x, "
              f"vs UNetMotion: {r['diffusers UNetMotion']['fp32'] / ours['fp32']:.2f}x")
        print(f"forward bf16 speed-up vs UNet3D: {r['diffusers UNet3D']['bf16'] / ours['bf16']:.2f}x, "
              f"vs UNetMotion: {r['diffusers UNetMotion']['bf16'] / ours['bf16']:.2f}x")
        print(f"vidiff bf16 vs own fp32: {ours['fp32'] / ours['bf16']:.2f}x faster")
        print(f"train-step cost of video over image (same F frames): vidiff "
              f"{ours['train'] / r['vidiff image']['train']:.2f}x, diffusers UNet3D "
              f"{r['diffusers UNet3D']['train'] / r['diffusers UNet2D']['train']:.2f}x, UNetMotion "
              f"{r['diffusers UNetMotion']['train'] / r['diffusers UNet2D']['train']:.2f}x")


if __name__ == "__main__":
    main()
