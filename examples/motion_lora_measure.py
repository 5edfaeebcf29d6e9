"""Before/after of a motion LoRA on the shipped model, read from pixels.

For each prompt (colours x shapes x left/right) and seed, the video is generated without and with the LoRA;
`vidiff.data.shapes.detect` reads the object's displacement. Reported: mean vertical displacement (px, + is down),
the share of videos that move down by more than 6 px, and the share whose named (horizontal) direction still reads.
Videos where the object leaves the frame (no displacement) are left out of the mean.
"""

import argparse
import json
import time

import numpy as np

from vidiff.pipelines.pipeline import VideoPipeline
from vidiff.data.shapes import detect


def run(pipe, prompts, seeds):
    """[(prompt, motion, seed, detection)] for every prompt and seed."""
    out = []
    for text, motion in prompts:
        for s in seeds:
            out.append((text, motion, s, detect(pipe(text, seed=s, progress=False).frames)))
    return out


def summary(rows) -> dict:
    """Mean dy, share moving down, share keeping the named motion."""
    dy = [r[3]["displacement_px"][1] for r in rows if r[3]["found"] and r[3].get("displacement_px")
          and not np.isnan(r[3]["displacement_px"][1])]
    kept = [r[3]["motion"] == r[1] or (r[3].get("displacement_px") and
                                       np.sign(r[3]["displacement_px"][0]) == (1 if r[1] == "right" else -1))
            for r in rows if r[3]["found"]]
    return {"videos": len(rows), "found": len(dy), "mean_dy_px": float(np.mean(dy)) if dy else None,
            "moves_down": float(np.mean([d > 6 for d in dy])) if dy else None,
            "named_direction_kept": float(np.mean(kept)) if kept else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("lora")
    ap.add_argument("--model", default=None)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--scales", default="1.0,0.6", help="LoRA scales to measure, comma-separated")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    prompts = [(f"a {c} {s} moving {m}", m) for c in ("red", "blue") for s in ("circle", "square", "triangle")
               for m in ("left", "right")]
    seeds = list(range(args.seeds))
    pipe = VideoPipeline.from_pretrained(args.model)
    t0 = time.perf_counter()
    base = summary(run(pipe, prompts, seeds))
    rows = [("base", base)]
    name = pipe.load_lora(args.lora)
    for scale in (float(x) for x in args.scales.split(",")):
        pipe.set_lora_scales({name: scale})
        rows.append((f"lora x{scale:g}", summary(run(pipe, prompts, seeds))))
    result = {name: r for name, r in rows} | {"seconds": round(time.perf_counter() - t0, 1)}
    print(f"{'':10} {'videos':>6} {'mean dy px':>10} {'moves down':>10} {'named dir kept':>14}")
    for name, r in rows:
        print(f"{name:10} {r['videos']:>6} {r['mean_dy_px']:>10.2f} {r['moves_down']:>10.0%} {r['named_direction_kept']:>14.0%}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
