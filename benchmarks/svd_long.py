"""SVD past its window: autoregressive windows vs overlapping temporal-attention windows, on a tiny SVD.

A tiny random SVD (diffusers' test sizes) is first fine-tuned on shapes clips (`configs/svd-finetune.yaml`,
`--train-steps`, reused when the run folder exists), so its videos have moving objects and a seam means
something. Then each mode makes `--frames` frames from the same first frame and seeds, each in its own process:
seconds per frame, the seam ratio (mean abs difference at the joins / median of the other pairs; windows mode has
no joins, so its worst pair stands in; pair 0, from the kept input to frame 1, is left out of both and reported as
its own ratio). Lower is a smoother join. Peak memory of long runs is in tests/test_svd.py. Not a test.

    python benchmarks/svd_long.py [--frames 64] [--train-steps 200] [--seeds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(2)
from vidiff.pipelines.svd import SVDPipeline
from vidiff.evaluation.metrics import mean_abs_difference, seam_ratio
model, image, frames, seed, mode = sys.argv[1:6]
kw = json.loads(sys.argv[6])
pipe = SVDPipeline.from_pretrained(model, device="cpu")
img = np.load(image)
t0 = time.perf_counter()
video = pipe.animate(img, num_frames=int(frames), num_inference_steps=12, seed=int(seed), mode=mode,
                     decode_chunk_size=8, **kw)
sec = (time.perf_counter() - t0) / int(frames)
pairs = mean_abs_difference(video.frames)
chunk, ctx = kw.get("chunk", 8), kw.get("context", 1)
seams = list(range(chunk, int(frames), chunk - ctx)) if mode == "autoregressive" else None
# pair 0 (the kept input -> frame 1) is scored on its own, so the windows mode's worst pair is a join, not it
print(json.dumps({"s_per_frame": sec, "seam": seam_ratio(pairs[1:], None if seams is None else [s - 1 for s in seams]),
                  "first_jump": float(pairs[0] / np.median(pairs[1:])), "mean_pair": float(pairs.mean())}))
"""

MODES = {"autoregressive (context 1)": dict(mode="autoregressive", chunk=8, context=1),
         "autoregressive (context 3)": dict(mode="autoregressive", chunk=8, context=3),
         "windows (stride 4)": dict(mode="windows", chunk=8, stride=4)}


def fine_tune(root: Path, steps: int) -> Path:
    """A tiny SVD fine-tuned on shapes clips (made once under `root`)."""
    from vidiff.data.shapes import make_shapes_dataset
    from vidiff.testing import tiny_svd_folder
    from vidiff.training.config import load_config
    from vidiff.training.train import train

    model = root / "run" / "model"
    if model.exists():
        return model
    data = make_shapes_dataset(root / "shapes", clips=64, size=32, num_frames=16, progress=False, scale=1.6)
    init = root / "svd-init"
    if not init.exists():
        tiny_svd_folder(init)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "svd-finetune.yaml", [
        f"data.path={data}", f"train.init={init}", f"train.output_dir={root / 'run'}", "data.num_frames=8",
        "data.height=32", "data.width=32", "data.num_workers=0", f"train.steps={steps}", "train.batch_size=2",
        "train.grad_accum=1", "train.lr=5e-4", "train.warmup_steps=20", "train.log_every=50", "train.mixed_precision=no",
        "train.gradient_checkpointing=false", "train.freeze_spatial=false", "train.ema_decay=0.99",
        "train.checkpoint_every=100"])
    train(cfg, progress=True)
    return model


def main():
    """Fine-tune (once), then run every mode x seed in fresh processes and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--root", default="runs/svd-long-bench")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import numpy as np

    from vidiff.data.clips import ClipDataset

    root = Path(args.root)
    model = fine_tune(root, args.train_steps)
    first = ClipDataset(root / "shapes", num_frames=1, size=32, train=False)[0]["video"]
    image = root / "first.npy"
    np.save(image, ((first[:, 0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))
    rows = {}
    for name, kw in MODES.items():
        runs = []
        for seed in range(args.seeds):
            kw_ = {k: v for k, v in kw.items() if k != "mode"}
            out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(image), str(args.frames), str(seed),
                                  kw["mode"], json.dumps(kw_)], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        ratios = [r["seam"]["ratio"] for r in runs if r["seam"]["ratio"] is not None]
        rows[name] = {"s_per_frame": min(r["s_per_frame"] for r in runs),
                      "first_jump": float(np.mean([r["first_jump"] for r in runs])),
                      "seam_ratio_mean": float(np.mean(ratios)) if ratios else None,
                      "seam_ratio_max": max(ratios) if ratios else None,
                      "mean_pair": float(np.mean([r["mean_pair"] for r in runs])), "runs": runs}
        print(name, {k: v for k, v in rows[name].items() if k != "runs"}, flush=True)
    print(f"\n{args.frames} frames, 12 steps, tiny SVD fine-tuned {args.train_steps} steps on shapes, {args.seeds} seeds")
    print("| mode | s / frame | seam ratio mean (max) | frame 0 -> 1 jump | mean pair difference |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        seam = f"{r['seam_ratio_mean']:.2f} ({r['seam_ratio_max']:.2f})" if r["seam_ratio_mean"] else "-"
        print(f"| {name} | {r['s_per_frame']:.3f} | {seam} | {r['first_jump']:.2f} | {r['mean_pair']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
