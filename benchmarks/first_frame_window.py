"""Cost of shapes-64's sampling defaults against the previous ones, interleaved in one process.

    python benchmarks/first_frame_window.py [--rounds 3] [--videos 4]

Text-to-video is first-frame-first: frame 0 is drawn, then animated. The previous defaults drew frame 0 as
the first of a 2-frame window at 10 steps; the shipped ones draw it as the first frame of a whole 16-frame
window (`min_frames: 16`, where a clip moving that way starts) at 6 steps. The two settings alternate in
rounds on the same prompts and seeds so that the machine's drift hits both; prints the median seconds per
16-frame video of each and their ratio.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vidiff.pipelines.pipeline import VideoPipeline  # noqa: E402

SETTINGS = {"previous (frame 0 of 2 frames, 10 steps)": {"min_frames": 2, "num_inference_steps": 10},
            "shipped (frame 0 of 16 frames, 6 steps)": {"min_frames": 16, "num_inference_steps": 6}}


def main() -> None:
    """Time both settings in alternating rounds and print their medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--videos", type=int, default=4, help="videos per setting per round")
    args = ap.parse_args()
    pipe = VideoPipeline.from_pretrained()
    base = dict(pipe.defaults)
    pipe("a red circle moving left", seed=0, progress=False)                 # warm-up
    times = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, setting in SETTINGS.items():
            pipe.defaults = {**base, **setting}
            for seed in range(args.videos):
                t = time.perf_counter()
                pipe("a blue square moving up", seed=seed, progress=False)
                times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, m in med.items():
        print(f"{name}: median {m:.2f} s per 16-frame video ({len(times[name])} videos)")
    old, new = med.values()
    print(f"shipped / previous: {new / old:.2f}x")


if __name__ == "__main__":
    main()
