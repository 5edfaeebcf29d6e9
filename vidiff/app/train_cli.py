"""Training commands: train, distill, and the shapes dataset maker."""

from __future__ import annotations

import argparse

from vidiff.app.common import UsageError


def _data_shapes(args: argparse.Namespace) -> None:
    import time

    from vidiff.data.shapes import HOLDOUT, make_shapes_dataset

    t0 = time.perf_counter()
    motions = tuple(m.strip() for m in args.motions.split(",")) if args.motions else None
    out = make_shapes_dataset(args.out, clips=args.clips, seed=args.seed, size=args.size,
                              num_frames=args.frames, fps=args.fps, include_holdout=args.include_holdout,
                              progress=not args.quiet, motions=motions, drift=args.drift,
                              scale=args.object_scale)
    held = "included" if args.include_holdout else f"{len(HOLDOUT)} held-out combinations left out"
    scale = f", objects x{args.object_scale:g}" if args.object_scale != 1 else ""
    print(f"wrote {out}: {args.clips} clips ({args.frames} frames {args.size}x{args.size} at {args.fps:g} fps{scale}), "
          f"metadata.jsonl; {held}; {time.perf_counter() - t0:.1f}s")


def _train(args: argparse.Namespace) -> None:
    from vidiff.training.config import load_config

    cfg = load_config(args.config, args.overrides)      # bad keys and values fail here, before any work
    from vidiff.training.train import train

    result = train(cfg, progress=not args.quiet)
    if result["main"]:
        print(f"wrote {result['model_dir']} after {result['step']} steps"
              + (f"; skipped {len(result['skipped'])} unreadable files" if result["skipped"] else ""))


def _distill(args: argparse.Namespace) -> None:
    from pathlib import Path

    from vidiff.training.config import load_config
    from vidiff.loaders.folders import read_index

    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if not Path(args.teacher).is_dir() or not (Path(args.teacher) / "model_index.json").is_file():
        raise UsageError(f"{args.teacher}: not a model folder (no model_index.json)")
    d = read_index(Path(args.teacher)).get("vidiff", {}).get("defaults", {})
    base = [f"train.teacher={args.teacher}", f"train.distill_steps={args.steps}", f"train.output_dir={args.out}",
            f"data.path={args.data}", f"data.num_frames={d.get('num_frames', 16)}", f"data.height={d.get('height', 64)}",
            f"data.width={d.get('width', 64)}", "data.crop=center", "train.stage=video", f"train.steps={args.iters}",
            "train.batch_size=4", "train.lr=1e-4", "train.mixed_precision=bf16", "train.ema_decay=0.99",
            "train.cond_first=0.3", "train.cond_prefix=0.15", "train.cond_first_last=0.05",
            "train.checkpoint_every=100", "train.log_every=10"]
    cfg = load_config(None, base + list(args.overrides))
    from vidiff.training.train import train

    result = train(cfg, progress=not args.quiet)
    if result["main"]:
        print(f"wrote {result['model_dir']}: samples in {args.steps} DDIM steps what {args.teacher} samples in "
              f"{2 * args.steps} (after {result['step']} distillation steps)")


def training_parsers(sub) -> None:
    """Subcommands of train, distill and the dataset makers."""
    tr = sub.add_parser("train", help="train (or resume) from a YAML config")
    tr.add_argument("config", help="YAML config, e.g. configs/tiny.yaml")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100 lr=3e-4")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(run=_train)

    dis = sub.add_parser("distill", help="halve a model's sampling steps (progressive distillation on clips)")
    dis.add_argument("teacher", help="model folder to distill")
    dis.add_argument("--data", required=True, help="clips to distill on (folder or metadata file)")
    dis.add_argument("--steps", type=int, required=True, help="the student's DDIM steps N (it learns the teacher's 2N)")
    dis.add_argument("--out", required=True, help="run folder (resumes if it holds checkpoints); the model is OUT/model")
    dis.add_argument("--iters", type=int, default=500, help="distillation steps (default 500)")
    dis.add_argument("overrides", nargs="*", help="key=value training overrides, e.g. train.lr=5e-5")
    dis.add_argument("--quiet", action="store_true", help="no progress bar")
    dis.set_defaults(run=_distill)

    data = sub.add_parser("data", help="make datasets")
    data_sub = data.add_subparsers(dest="dataset", required=True)
    sh = data_sub.add_parser("shapes", help="procedural text-to-video clips (MP4 + metadata.jsonl)")
    sh.add_argument("--out", required=True, help="folder to write (must not hold a dataset yet)")
    sh.add_argument("--clips", type=int, default=1000, help="number of clips (default 1000)")
    sh.add_argument("--seed", type=int, default=0, help="same seed, same dataset")
    sh.add_argument("--size", type=int, default=64, help="frame width and height in pixels (even)")
    sh.add_argument("--frames", type=int, default=24, help="frames per clip")
    sh.add_argument("--fps", type=float, default=8.0)
    sh.add_argument("--include-holdout", action="store_true", help="also generate the held-out combinations")
    sh.add_argument("--motions", default=None, help="only these motions, e.g. left,right,still")
    sh.add_argument("--drift", type=float, default=0.0,
                    help="add an unnamed downward motion of this fraction of the frame (left/right/still clips)")
    sh.add_argument("--object-scale", type=float, default=1.0,
                    help="object size: radius 0.14-0.19 of the frame times this (0.5-2; default 1)")
    sh.add_argument("--quiet", action="store_true", help="no progress bar")
    sh.set_defaults(run=_data_shapes)
