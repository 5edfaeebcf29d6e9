"""Copy a trained shapes model into the package as the default model (fp16 UNet weights, < 30 MB).

    python examples/ship_default_model.py runs/shapes-video/model [--guidance 2] [--first-frame-first] [--steps N] [--min-frames 2]

The model card (vidiff/weights/shapes-64/README.md) is written afterwards from the benchmark:
    vidiff bench shapes --json runs/bench-shapes.json --sheet docs/shapes-sheet.png
"""

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vidiff.pipelines.pipeline import DEFAULT_MODEL, VideoPipeline  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("source", help="trained model folder (train.output_dir/model)")
p.add_argument("--first-frame-first", action="store_true",
               help="text-to-video generates frame 0 first, then animates it (stored as the model's default)")
p.add_argument("--guidance", type=float, default=None, help="default guidance scale stored with the model")
p.add_argument("--steps", type=int, default=None, help="default sampling steps stored with the model")
p.add_argument("--min-frames", type=int, default=None,
               help="shortest window to sample (a shorter video is the start of one this long): a video stage "
                    "trained only on 16-frame clips draws garbled one-frame videos")
args = p.parse_args()
pipe = VideoPipeline.from_pretrained(args.source)
if args.first_frame_first:
    pipe.defaults["first_frame_first"] = True
if args.guidance is not None:
    pipe.defaults["guidance_scale"] = args.guidance
if args.steps is not None:
    pipe.defaults["num_inference_steps"] = args.steps
if args.min_frames is not None:
    pipe.defaults["min_frames"] = args.min_frames
card = DEFAULT_MODEL / "README.md"
kept = card.read_text() if card.exists() else None
shutil.rmtree(DEFAULT_MODEL, ignore_errors=True)
pipe.save_pretrained(DEFAULT_MODEL, dtype=torch.float16)
if kept is not None:
    card.write_text(kept)
size = sum(f.stat().st_size for f in DEFAULT_MODEL.rglob("*") if f.is_file())
print(f"wrote {DEFAULT_MODEL}: {size / 2**20:.1f} MiB, defaults {pipe.defaults}")
