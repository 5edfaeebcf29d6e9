"""vidiff's CPU fast paths (GroupNorm of channels-last maps, short-sequence attention) against torch's stock ops.

    python benchmarks/cpu_fast_paths.py            # ~3 minutes on 2 cores

The stock side is the same model with `nn.GroupNorm.forward` and `F.scaled_dot_product_attention`
put back (what vidiff ran before). Both sides run in the same process, interleaved round by round,
so the machine's load moves both alike; the figure is the ratio of medians. Rows: a bf16 training
step (objective forward + backward + AdamW) of the default recipe's image stage, of the small
recipe's image stage and of the default recipe's video stage, and an fp32 forward of the shipped
shapes-64 model on a 16-frame window (what sampling runs).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vidiff.models.layers as layers  # noqa: E402
from vidiff.training.config import load_config  # noqa: E402
from vidiff.models.inflate import inflate  # noqa: E402
from vidiff.training.train import Objective, build_models  # noqa: E402
from vidiff.models.unet import UNet  # noqa: E402


@contextlib.contextmanager
def stock_ops():
    """torch's own GroupNorm forward and SDPA everywhere (the paths before the fast ones)."""
    gn, attn = layers.GroupNorm.forward, layers.attention
    layers.GroupNorm.forward = torch.nn.GroupNorm.forward
    layers.attention = lambda q, k, v, backend="sdpa": F.scaled_dot_product_attention(q, k, v)
    try:
        yield
    finally:
        layers.GroupNorm.forward, layers.attention = gn, attn


def train_step(config: str, batch: int, frames: int, video_overrides: dict | None = None):
    """A closure running one bf16 training step of `config`'s UNet on random data."""
    cfg = load_config(ROOT / config, ["train.init=null"])
    unet, text, schedule, codec = build_models(cfg)
    if video_overrides is not None:
        unet = inflate(unet, **video_overrides)
    obj = Objective(unet, schedule, loss_floor=cfg.train.loss_floor).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    side = cfg.data.height // codec.factor
    x0, ctx = torch.randn(batch, codec.channels, frames, side, side), torch.randn(batch, 12, text.dim)

    def step():
        t = torch.randint(0, 1000, (batch, 1)).expand(batch, frames).contiguous()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = obj((x0, ctx, t, torch.randn_like(x0), torch.zeros(batch, frames)))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


def sample_forward(frames: int):
    """A closure running one fp32 guided forward (batch 2) of the shipped shapes-64 UNet."""
    unet = UNet.from_pretrained(ROOT / "vidiff" / "weights" / "shapes-64" / "unet").eval()
    x = torch.randn(2, unet.config.in_channels, frames, 16, 16)
    t, ctx = torch.tensor([500, 500]), torch.randn(2, 12, unet.config.cross_attention_dim)
    cond, mask = torch.zeros_like(x), torch.zeros(2, frames)

    def step():
        with torch.no_grad():
            unet(x, t, ctx, cond=cond, cond_mask=mask)
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each times both sides)")
    p.add_argument("--reps", type=int, default=3, help="steps timed per side per round")
    args = p.parse_args()
    torch.set_num_threads(2)
    video = {"frame_conditioning": True, "temporal_attention_everywhere": True, "temporal_heads": 4,
             "frame_position": True}
    rows = {
        "default image stage, bf16 train step, 32 x 64x64": train_step("configs/shapes-image.yaml", 32, 1),
        "small image stage, bf16 train step, 32 x 64x64": train_step("configs/small-image.yaml", 32, 1),
        "default video stage, bf16 train step, 4 x 16 frames": train_step("configs/shapes-image.yaml", 4, 16, video),
        "shapes-64 sampling, fp32 forward, 16 frames": sample_forward(16),
    }
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.rounds} rounds x "
          f"{args.reps} steps per side")
    print(f"| {'row':52s} | stock torch ops | vidiff | speed-up |")
    print(f"|{'-' * 54}|---|---|---|")
    for name, step in rows.items():
        for ctx in (stock_ops(), contextlib.nullcontext()):
            with ctx:
                step()                                            # warm-up (allocator, oneDNN primitives)
        times = {"stock": [], "vidiff": []}
        for _ in range(args.rounds):
            for side, ctx in (("stock", stock_ops()), ("vidiff", contextlib.nullcontext())):
                with ctx:
                    t0 = time.perf_counter()
                    for _ in range(args.reps):
                        step()
                    times[side].append((time.perf_counter() - t0) / args.reps)
        a, b = statistics.median(times["stock"]), statistics.median(times["vidiff"])
        print(f"| {name:52s} | {a * 1000:7.0f} ms | {b * 1000:7.0f} ms | {a / b:5.2f}x |")


if __name__ == "__main__":
    main()
