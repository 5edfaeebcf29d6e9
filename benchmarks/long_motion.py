"""Does a long video keep moving, and how do its joins look? Motion and seams of the long-video modes on the
shipped model, over several prompts and seeds (a spread, not one number). Not a test.

For each mode: the object's mean speed along the prompted direction (pixels per frame, from its centroid; the
training clips move about SPEED), the share of frames where it is found, and the seam ratio (flicker at the
joins over flicker elsewhere; 1 = invisible joins; fifo has no joins, so its worst pair), as mean and min-max over
prompts x seeds.

    python benchmarks/long_motion.py [--frames 64] [--seeds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

PROMPTS = {"a red circle moving left": (-1, 0), "a blue square moving right": (1, 0), "a green triangle moving up": (0, -1)}
MODES = {
    "all (16 frames)": dict(mode="all", num_frames=16),
    "autoregressive": dict(mode="autoregressive", chunk=16, context=4),
    "windows (shuffle_context)": dict(mode="windows", chunk=16, stride=4, noise_type="shuffle_context"),
    "windows (random noise)": dict(mode="windows", chunk=16, stride=4, noise_type="random"),
    "fifo (2 partitions)": dict(mode="fifo", chunk=16, partitions=2),
}


def speed(frames: np.ndarray, direction) -> tuple[float, float]:
    """(mean px/frame along `direction` between consecutive frames where the object is found, share found)."""
    from vidiff.data.shapes import object_mask

    cents = []
    for fr in frames:
        m = object_mask(fr)
        if m.sum() >= 6:
            ys, xs = np.nonzero(m)
            cents.append((xs.mean(), ys.mean()))
        else:
            cents.append(None)
    steps = [np.dot(np.subtract(b, a), direction) for a, b in zip(cents, cents[1:]) if a is not None and b is not None]
    return (float(np.mean(steps)) if steps else 0.0), sum(c is not None for c in cents) / len(cents)


def main() -> None:
    """Run every mode over prompts x seeds and print the table."""
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--modes", default=None, help="comma-separated substrings of the mode names to run (default: all)")
    args = p.parse_args()
    import torch

    from vidiff.evaluation.bench import consistency
    from vidiff.pipelines.pipeline import VideoPipeline

    torch.set_num_threads(2)
    pipe = VideoPipeline.from_pretrained(device="cpu")
    rows = {}
    for name, mode in MODES.items():
        if args.modes and not any(m.strip() in name for m in args.modes.split(",")):
            continue
        runs = []
        for prompt, direction in PROMPTS.items():
            for seed in range(args.seeds):
                kw = {"num_frames": args.frames, **mode}
                t0 = time.perf_counter()
                video = pipe(prompt, seed=seed, progress=False, **kw)
                seconds = time.perf_counter() - t0
                v, found = speed(video.frames, direction)
                seam = consistency(video)["seams"]["flicker"]["ratio"] if kw["mode"] != "all" else None   # fifo: worst pair
                runs.append({"prompt": prompt, "seed": seed, "speed": v, "found": found, "seam": seam,
                             "s_per_frame": seconds / len(video.frames)})
        rows[name] = runs
        sp = [r["speed"] for r in runs]
        seams = [r["seam"] for r in runs if r["seam"] is not None]
        print(f"| {name} | {np.mean(sp):.2f} ({min(sp):.2f} to {max(sp):.2f}) | "
              f"{np.mean([r['found'] for r in runs]):.0%} | "
              + (f"{np.mean(seams):.2f} ({min(seams):.2f} to {max(seams):.2f})" if seams else "-")
              + f" | {np.mean([r['s_per_frame'] for r in runs]):.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    print("| mode | speed along the prompt, px/frame: mean (min to max) | object found | seam ratio: mean (min to max) | s / frame |")
    print("|---|---|---|---|---|")
    main()
