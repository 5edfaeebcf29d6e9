"""Long videos: autoregressive chunks vs FreeNoise windows vs FIFO diagonal denoising, 128 frames.

For each mode: seconds per output frame, peak memory (VmHWM of a fresh process), the seam ratio
(flicker's mean abs difference at the known seams, or at the most outlying pair), VBench flicker,
drift from frame 0 (colour histogram at the last frame) and whether the object is still the prompted
colour at the end (the shapes detector). Every mode runs in its own process so peaks do not mix.

    python benchmarks/long_video.py [--frames 128] [--steps 25] [--json out.json]
    python benchmarks/long_video.py --model tiny-animatediff      # a tiny AnimateDiff folder, for timing
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {
    "autoregressive": dict(mode="autoregressive", chunk=16, context=4),
    "windows": dict(mode="windows", chunk=16, stride=4),
    "fifo": dict(mode="fifo", chunk=16, partitions=2),          # 32 steps: 4 windows per output frame
}

CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(2)
from vidiff.pipelines.pipeline import VideoPipeline
from vidiff.evaluation.bench import consistency
from vidiff.data.shapes import detect
args = json.loads(sys.argv[1])
pipe = VideoPipeline.from_pretrained(args["model"]) if args["model"] else VideoPipeline.from_pretrained()
kw = dict(args["mode"], num_frames=args["frames"], seed=0, progress=False, first_frame_first=False)
if args["mode"]["mode"] != "fifo":
    kw["num_inference_steps"] = args["steps"]
if args["size"]:
    kw.update(height=args["size"], width=args["size"])
t0 = time.perf_counter()
video = pipe(args["prompt"], **kw)
seconds = time.perf_counter() - t0
peak = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
rep = consistency(video)
end = detect(video.frames[-16:])
print(json.dumps({"s_per_frame": seconds / args["frames"], "peak_mib": peak,
                  "seam_ratio": rep["seams"]["flicker"]["ratio"], "seams_known": rep["seams"]["flicker"]["known"],
                  "seam_pairs": rep["seams"]["flicker"]["pairs"],
                  "flicker": rep["metrics"]["temporal_flickering"]["value"],
                  "drift_last": rep["seams"]["drift"]["histogram"][-1],
                  "colour_at_end": end["color"], "steps": video.settings["num_inference_steps"]}))
"""


def main():
    """Run each mode in a fresh process and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--steps", type=int, default=25, help="sampling steps of autoregressive / windows (fifo: partitions x chunk)")
    p.add_argument("--model", default=None, help="model folder (default: shipped shapes-64); 'tiny-animatediff' builds one")
    p.add_argument("--prompt", default="a red circle moving right")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    size, model = None, args.model
    if model == "tiny-animatediff":
        from vidiff import testing

        model = str(testing.tiny_animatediff_folder(Path(tempfile.mkdtemp()) / "ad"))
        size = 64
    rows = {}
    for name, mode in MODES.items():
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(
            {"model": model, "mode": mode, "frames": args.frames, "steps": args.steps, "prompt": args.prompt,
             "size": size})], capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, rows[name], flush=True)
    print(f"\n{args.frames} frames, model {args.model or 'shapes-64'}, prompt {args.prompt!r}, 2 threads")
    print("| mode | s / frame | peak MiB | seam ratio | flicker | colour drift (last vs first) | colour at end | steps |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        seam = "-" if r["seam_ratio"] is None else f"{r['seam_ratio']:.2f}" + ("" if r["seams_known"] else " (worst pair)")
        print(f"| {name} | {r['s_per_frame']:.2f} | {r['peak_mib']:.0f} | {seam} | {r['flicker']:.4f} | "
              f"{r['drift_last']:.3f} | {r['colour_at_end']} | {r['steps']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
