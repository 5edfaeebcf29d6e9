"""Does image-to-video follow the direction word, or where the first frame puts the object?

    python benchmarks/word_or_start.py                                          # the shipped shapes-64
    python benchmarks/word_or_start.py --model runs/small/model --object-scale 1.6

A rendered shapes clip moving right starts in the left part of the frame, so a first frame also says
which way its object will go, and a model can score well on image-to-video without reading the word.
This animates the same rendered first frames with each of the four direction words. It counts how
often the object moved the prompted way and how often it moved the way its clip went. A model that
reads the word scores high on the first and near a quarter on the second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidiff.pipelines.pipeline import VideoPipeline  # noqa: E402
from vidiff.data.shapes import caption, detect, render_clip  # noqa: E402

CLIPS = [("red", "circle", "right"), ("blue", "square", "down"), ("green", "triangle", "left"),
         ("yellow", "circle", "up"), ("purple", "square", "right")]
WORDS = ("left", "right", "up", "down")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: the shipped shapes-64)")
    p.add_argument("--object-scale", type=float, default=1.0, help="object size of the rendered clips")
    p.add_argument("--clips", type=int, default=10, help="first frames (each animated 4 times)")
    args = p.parse_args()
    pipe = VideoPipeline.from_pretrained(args.model)
    frames = pipe.defaults["num_frames"]
    prompted = clip_way = 0
    for i in range(args.clips):
        color, shape, motion = CLIPS[i % len(CLIPS)]
        first = render_clip(color, shape, motion, np.random.default_rng([99, i]), size=pipe.defaults["width"],
                            num_frames=frames, scale=args.object_scale)[0]
        got = []
        for word in WORDS:
            moved = detect(pipe.animate(first, caption(color, shape, word), seed=i, progress=False).frames)["motion"]
            prompted += moved == word
            clip_way += moved == motion
            got.append(f"{word}->{moved}")
        print(f"clip {i} (moving {motion}): " + ", ".join(got), flush=True)
    n = args.clips * len(WORDS)
    print(f"{pipe.source}: moved the prompted way {prompted}/{n}, the way its clip went {clip_way}/{n}")


if __name__ == "__main__":
    main()
