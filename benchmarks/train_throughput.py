"""Training throughput of a config (clips/s) against its data loader alone (clips/s), same run.

    python benchmarks/train_throughput.py                        # configs/shapes-video.yaml
    python benchmarks/train_throughput.py --config configs/tiny.yaml

Builds a shapes dataset in a temp folder. A video-stage config whose `train.init` is an image
model gets one from a 1-step image stage first (the weights do not matter for speed). The loader
must outrun training by a wide margin (>= 5x) so decoding is never the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidiff.training.config import load_config  # noqa: E402
from vidiff.data.clips import ClipDataset, loader  # noqa: E402
from vidiff.data.shapes import make_shapes_dataset  # noqa: E402
from vidiff.training.train import train  # noqa: E402


def loader_rate(cfg, batches: int, workers: int) -> float:
    """Clips/s of the data loader alone (decode + resize/crop + collate), after a warm-up batch."""
    d = cfg.data
    ds = ClipDataset(d.path, num_frames=d.num_frames, frame_stride=d.frame_stride, fps=d.fps,
                     size=(d.height, d.width), crop=d.crop, short_videos=d.short_videos)
    it = iter(loader(ds, cfg.train.batch_size, seed=0, num_workers=workers))
    next(it)
    t0 = time.perf_counter()
    n = sum(len(next(it)["caption"]) for _ in range(batches))
    return n / (time.perf_counter() - t0)


def train_rate(cfg, steps: int, out: Path) -> float:
    """Clips/s of training, from the run's own log, leaving out the first window (warm-up)."""
    cfg.train.output_dir = str(out)
    cfg.train.steps, cfg.train.log_every, cfg.train.checkpoint_every = steps, max(1, steps // 3), 10 ** 9
    train(cfg, progress=False)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    return sum(r["clips_per_s"] for r in later) / len(later)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "shapes-video.yaml"))
    p.add_argument("--clips", type=int, default=96, help="size of the synthetic dataset")
    p.add_argument("--steps", type=int, default=12, help="training steps timed (first third is warm-up)")
    p.add_argument("--batches", type=int, default=30, help="loader batches timed")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_shapes_dataset(tmp / "shapes", clips=args.clips, progress=False)
        cfg = load_config(args.config, [f"data.path={data}", *args.overrides])
        if cfg.train.stage == "video" and cfg.train.init:
            image_cfg = load_config(ROOT / "configs" / "shapes-image.yaml",
                                    [f"data.path={data}", f"train.output_dir={tmp / 'image'}", "train.steps=1"])
            train(image_cfg, progress=False)
            cfg.train.init = str(tmp / "image" / "model")
        workers = cfg.data.num_workers
        rates = {f"loader, {workers} worker(s)": loader_rate(cfg, args.batches, workers)}
        if workers:
            rates["loader, in-process"] = loader_rate(cfg, args.batches, 0)
        rates["training"] = train_rate(cfg, args.steps, tmp / "run")
    d, t = cfg.data, cfg.train
    print(f"config {Path(args.config).name}: {d.num_frames} frames {d.width}x{d.height}, batch {t.batch_size}, "
          f"precision {t.mixed_precision}, {torch.get_num_threads()} threads")
    for name, rate in rates.items():
        print(f"  {name:28s} {rate:8.2f} clips/s   {rate / rates['training']:6.1f}x training")


if __name__ == "__main__":
    main()
