"""How much a shapes model uses the shape word: its x0 predictions with "square" vs "circle" prompts, and single images.

    python benchmarks/shape_signal.py                                   # the shipped model
    python benchmarks/shape_signal.py --model runs/shapes-image/model

Two readings, both on the model's own domain:

- *prompt effect*: rendered still squares (one frame for an image model, a clip for a video model) are noised to level t and the model predicts x0
  twice, with the caption saying "square" and saying "circle". The RMS difference of the two
  predictions (in [-1, 1] units) is what the shape word changes. For scale, a rendered square and a
  circle of the same size and place differ by `rendered` (0.107): a model that draws the shape the
  word names must change its prediction by a good part of that where the noise hides the edges.
- *samples*: 10-step samples (one frame for an image model, a clip for a video model) of "a COLOUR SHAPE staying still", every colour and shape, read back
  by `vidiff.data.shapes.detect`; and how far apart the "circle" and "square" images of one seed are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidiff.pipelines.pipeline import VideoPipeline  # noqa: E402
from vidiff.data.shapes import COLORS, SHAPES, detect, render_clip  # noqa: E402

LEVELS = (50, 150, 300, 450, 600, 750, 900, 999)


def frames_of(pipe) -> int:
    """One frame for an image model, the model's own clip length for a video model."""
    return pipe.defaults["num_frames"] if pipe.unet.config.temporal else 1


def prompt_effect(pipe, clips: int = 12) -> tuple[dict, float]:
    """RMS difference of x0 predictions, "square" vs "circle" captions, on rendered squares, per level t."""
    f = frames_of(pipe)
    colours = [list(COLORS)[i % len(COLORS)] for i in range(clips)]
    rng = lambda i: np.random.default_rng([7, i])                              # noqa: E731
    squares = np.stack([render_clip(c, "square", "still", rng(i), pipe.defaults["width"], f) for i, c in enumerate(colours)])
    circles = np.stack([render_clip(c, "circle", "still", rng(i), pipe.defaults["width"], f) for i, c in enumerate(colours)])
    rendered = float(np.sqrt(((squares / 127.5 - circles / 127.5) ** 2).mean()))
    x = torch.tensor(squares).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)                # b 3 f h w
    z0 = pipe.codec.encode(x)
    ctx = {w: pipe.text_encoder([f"a {c} {w} staying still" for c in colours]) for w in ("square", "circle")}
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    kw = {"cond": torch.zeros_like(z0), "cond_mask": torch.zeros(z0.shape[0], f)} if pipe.unet.config.frame_conditioning else {}
    sched, out = pipe.schedule, {}
    with torch.no_grad():
        for t in LEVELS:
            tt = torch.full((z0.shape[0], f), t)
            xt = sched.add_noise(z0, noise, tt)
            pred = {w: pipe.unet(xt, tt.float(), c, **kw) for w, c in ctx.items()}          # x-prediction: x0 itself
            out[t] = {"effect": float((pred["square"] - pred["circle"]).pow(2).mean().sqrt()),
                      "x0_error": float((pred["square"] - z0).pow(2).mean().sqrt())}
    return out, rendered


def single_images(pipe, seeds: int = 2, steps: int = 10) -> dict:
    """Shape read back from samples of every colour and shape; circle-vs-square distance per seed."""
    hits, images = {s: [] for s in SHAPES}, {}
    for ci, colour in enumerate(COLORS):
        for shape in SHAPES:
            for seed in range(seeds):
                v = pipe(f"a {colour} {shape} staying still", seed=seed + 10 * ci, num_frames=frames_of(pipe),
                         num_inference_steps=steps, progress=False)
                hits[shape].append(detect(v.frames)["shape"] == shape)
                images[colour, shape, seed] = v.frames.astype(np.float64) / 127.5
    apart = [np.sqrt(((images[c, "square", s] - images[c, "circle", s]) ** 2).mean()) for c in COLORS for s in range(seeds)]
    return {"shape_read": {s: float(np.mean(h)) for s, h in hits.items()}, "square_vs_circle_rms": float(np.mean(apart))}


def main(argv=None) -> int:
    """Print the prompt effect per noise level and the single-image shape reading."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "vidiff" / "weights" / "shapes-64"))
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args(argv)
    pipe = VideoPipeline.from_pretrained(args.model)
    if pipe.schedule.prediction_type != "sample":
        raise SystemExit(f"{args.model}: this probe reads x-prediction models (prediction_type 'sample')")
    effect, rendered = prompt_effect(pipe)
    print(f"model {args.model}\nrendered square vs circle, same size and place: RMS {rendered:.4f}")
    print("| t | prompt effect (square vs circle) | x0 error |\n|---|---|---|")
    for t, r in effect.items():
        print(f"| {t} | {r['effect']:.4f} | {r['x0_error']:.4f} |")
    img = single_images(pipe, args.seeds)
    print("samples (10 steps), shape read back: " + ", ".join(f"{s} {v:.0%}" for s, v in img["shape_read"].items())
          + f"; same seed, 'square' vs 'circle' image RMS {img['square_vs_circle_rms']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
