"""Looping videos: the wrap pair (last frame -> frame 0) with and without `loop=True`, on the shipped model.

For each prompt and seed, the same 48-frame windows-mode video is made three times (loop off with the model's
defaults, loop off without first_frame_first, loop on: which turns first_frame_first off) and scored by the wrap
pair's mean abs difference over the median of the other pairs (1 = as smooth as any pair). Not a test.

    python benchmarks/loop_seam.py [--frames 48] [--seeds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

PROMPTS = ("a red circle moving right", "a blue square moving down")


def main():
    """Make every prompt x seed x loop video and print the table."""
    from vidiff import VideoPipeline
    from vidiff.evaluation.metrics import mean_abs_difference

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    pipe = VideoPipeline.from_pretrained(device="cpu")
    rows = []
    for prompt in PROMPTS:
        for seed in range(args.seeds):
            ratio = {}
            for name, kw in (("plain", {}), ("plain_fff_off", {"first_frame_first": False}), ("loop", {"loop": True})):
                f = pipe(prompt, num_frames=args.frames, mode="windows", chunk=16, stride=4, seed=seed, progress=False,
                         **kw).frames
                pairs = mean_abs_difference(np.concatenate([f, f[:1]]))
                ratio[name] = float(pairs[-1] / np.median(pairs[:-1]))
            rows.append({"prompt": prompt, "seed": seed, **ratio})
            print(rows[-1], flush=True)
    print(f"\n{args.frames} frames, windows 16 / stride 4, shipped model; wrap pair / median pair")
    print("| prompt | seed | without loop | without loop, first_frame_first off | with loop |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['prompt']} | {r['seed']} | {r['plain']:.2f} | {r['plain_fff_off']:.2f} | {r['loop']:.2f} |")
    print("| mean | | " + " | ".join(f"{np.mean([r[k] for r in rows]):.2f}" for k in ("plain", "plain_fff_off", "loop"))
          + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
