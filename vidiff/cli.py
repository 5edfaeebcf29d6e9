"""The `vidiff` command line. Each subcommand imports its heavy modules only when it runs.

A bad argument or input is one line on stderr naming it, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), exit status 2."""

    def error(self, message: str):
        """Print `prog: error: message` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


class UsageError(Exception):
    """A bad argument or input: reported as one line, exit status 2."""


def _inflate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .inflate import inflate

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"--out {out} exists and is not empty (pass --overwrite to replace its UNet)")
    heads = None
    if args.num_heads:
        heads = tuple(int(h) for h in args.num_heads.split(","))
        heads = heads[0] if len(heads) == 1 else heads
    model = inflate(args.source, frame_conditioning=args.frame_conditioning,
                    temporal_attention_everywhere=args.temporal_attention_everywhere,
                    temporal_heads=args.temporal_heads, num_heads=heads)
    model.save_pretrained(out)
    n_new = sum(p.numel() for _, p in model.temporal_parameters())
    n_all = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: space-time UNet, {n_all / 1e6:.2f}M parameters ({n_new / 1e6:.2f}M new temporal)")


def _fresh_dir(path) -> None:
    """An output folder must not exist yet, or be empty."""
    from pathlib import Path

    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder")


def _write_dir(out, write) -> None:
    """Write a folder through a temp folder beside it (vidiff.io), so nothing is left half-written."""
    from .io import write_folder_atomically

    write_folder_atomically(out, write)


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _convert(args: argparse.Namespace) -> None:
    from .pipeline import VideoPipeline

    _fresh_dir(args.out)
    pipe = VideoPipeline.from_pretrained(args.source, motion_adapter=args.motion_adapter)
    cast = None if args.dtype == "float32" else _dtype(args.dtype)
    _write_dir(args.out, lambda tmp: pipe.save_pretrained(tmp, dtype=cast))
    cfg = pipe.unet.config
    print(f"wrote {args.out}: vidiff model folder ({cfg.temporal_family if cfg.temporal else 'image'} family, "
          f"{sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f}M UNet parameters, {args.dtype})")


def _export(args: argparse.Namespace) -> None:
    from .folders import export_diffusers
    from .pipeline import VideoPipeline

    if args.to != "diffusers":
        raise UsageError(f"--to must be 'diffusers', got {args.to!r}")
    _fresh_dir(args.out)
    pipe = VideoPipeline.from_pretrained(args.model)
    kind = []
    _write_dir(args.out, lambda tmp: kind.append(export_diffusers(pipe, tmp)))
    print(f"wrote {args.out}: diffusers {kind[0]} folder")


def _scheduler_arg(text: str | None):
    """`--scheduler NAME[:key=value,...]` -> a name, or a dict of scheduler config keys."""
    if text is None or ":" not in text:
        return text
    import yaml

    name, _, rest = text.partition(":")
    out = {"_class_name": name} if name else {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"--scheduler {text}: {item!r} must look like key=value")
        out[key.strip()] = yaml.safe_load(value)
    if name:
        from .schedule import SAMPLER_SCHEDULERS

        out["_class_name"] = SAMPLER_SCHEDULERS.get(name, name)
    return out


def _generate(args: argparse.Namespace) -> None:
    import os
    import time
    from pathlib import Path

    from .io import check_writable, output_kind

    out = Path(args.output)
    output_kind(out)                                  # suffix first: cheap and common
    if args.frames < 1:
        raise UsageError(f"--frames must be >= 1, got {args.frames}")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if output_kind(out) == "png" and args.frames != 1:
        raise UsageError(f"-o {out}: a .png holds one frame; use --frames 1, or .mp4/.gif/a folder")
    check_writable(out)
    if out.exists() and output_kind(out) == "folder" and any(out.iterdir()):
        raise UsageError(f"-o {out}: folder exists and is not empty")
    if args.model is None:
        from .pipeline import DEFAULT_MODEL

        if not (DEFAULT_MODEL / "model_index.json").exists():
            raise UsageError(f"the default model is not installed at {DEFAULT_MODEL}; pass --model DIR")
        args.model = str(DEFAULT_MODEL)
    if not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model}: folder does not exist")
    if args.motion_adapter is not None and not Path(args.motion_adapter).exists():
        raise UsageError(f"--motion-adapter {args.motion_adapter}: does not exist")
    image = None
    if args.image is not None:
        from .io import read_image

        if not os.path.isfile(args.image):
            raise UsageError(f"--image {args.image}: file does not exist")
        image = read_image(args.image)
    import torch

    from .pipeline import VideoPipeline

    dtype = _dtype(args.dtype)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available here; use --device cpu")
    pipe = VideoPipeline.from_pretrained(args.model, motion_adapter=args.motion_adapter, device=args.device,
                                         dtype=dtype, scheduler=_scheduler_arg(args.scheduler))
    kwargs = dict(negative_prompt=args.negative_prompt, num_frames=args.frames, height=args.height,
                  width=args.width, num_inference_steps=args.steps, guidance_scale=args.guidance,
                  sampler=args.sampler, seed=args.seed, mode=args.mode, chunk=args.chunk,
                  context=args.context, fps=args.fps)
    t0 = time.perf_counter()
    if image is None:
        video = pipe(args.prompt, first_frame_first=args.first_frame_first, **kwargs)  # validates every argument first
    else:
        kwargs["height"], kwargs["width"] = args.height or image.shape[0], args.width or image.shape[1]
        if image.shape[:2] != (kwargs["height"], kwargs["width"]):
            raise UsageError(f"--image is {image.shape[1]}x{image.shape[0]}; it must match "
                             f"--width/--height {kwargs['width']}x{kwargs['height']}")
        video = pipe.animate(image, args.prompt, **kwargs)
    seconds = time.perf_counter() - t0
    video.save(out)
    f, h, w, _ = video.frames.shape
    print(f"wrote {out}: {f} frame{'s' * (f != 1)} {w}x{h} at {video.fps:g} fps in {seconds:.1f}s")


def _data_shapes(args: argparse.Namespace) -> None:
    import time

    from .shapes import HOLDOUT, make_shapes_dataset

    t0 = time.perf_counter()
    out = make_shapes_dataset(args.out, clips=args.clips, seed=args.seed, size=args.size,
                              num_frames=args.frames, fps=args.fps, include_holdout=args.include_holdout,
                              progress=not args.quiet)
    held = "included" if args.include_holdout else f"{len(HOLDOUT)} held-out combinations left out"
    print(f"wrote {out}: {args.clips} clips ({args.frames} frames {args.size}x{args.size} at {args.fps:g} fps), "
          f"metadata.jsonl; {held}; {time.perf_counter() - t0:.1f}s")


def _train(args: argparse.Namespace) -> None:
    from .config import load_config

    cfg = load_config(args.config, args.overrides)      # bad keys and values fail here, before any work
    from .train import train

    result = train(cfg, progress=not args.quiet)
    if result["main"]:
        print(f"wrote {result['model_dir']} after {result['step']} steps"
              + (f"; skipped {len(result['skipped'])} unreadable files" if result["skipped"] else ""))


def _check_outputs(*outputs) -> None:
    """Each optional (flag, path, suffix) output: the right suffix and a writable folder, before any work."""
    from .io import check_writable

    for flag, path, suffix in outputs:
        if path is not None:
            if not str(path).lower().endswith(suffix):
                raise UsageError(f"{flag} {path}: must end in {suffix}")
            check_writable(path)


def _bench_consistency(args: argparse.Namespace) -> int:
    from types import SimpleNamespace

    from .io import read_video

    _check_outputs(("--json", args.json, ".json"), ("--plot", args.plot, ".png"))
    if not args.analysis_fps > 0:
        raise UsageError(f"--analysis-fps must be > 0, got {args.analysis_fps}")
    if args.clip_model is not None and not os.path.isdir(args.clip_model):
        raise UsageError(f"--clip-model {args.clip_model}: folder does not exist")
    reference = None
    if args.reference is not None:
        frames, fps = read_video(args.reference)          # a bad reference fails before any scoring
        reference = SimpleNamespace(frames=frames, fps=fps)
    from .bench import SCHEMA_ID, consistency, plot, table, write_json

    records, errors = [], []
    for video in args.videos:
        try:
            records.append(consistency(video, reference=reference, fps=args.fps, analysis_fps=args.analysis_fps,
                                       flow=args.flow, clip_model=args.clip_model))
        except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            errors.append({"video": video, "error": msg})
            print(f"vidiff bench: error: {video}: {msg}", file=sys.stderr)
    if records:
        print(table(records))
        for r in records:
            for note in r["notes"]:
                print(f"  {r['video']}: {note}")
    if args.json is not None:
        write_json({"schema": SCHEMA_ID, "reports": records, "errors": errors}, args.json)
        print(f"wrote {args.json}")
    if args.plot is not None and records:
        print(f"wrote {plot(records, args.plot)}")
    return 2 if errors else 0


def _bench_shapes(args: argparse.Namespace) -> None:
    _check_outputs(("--json", args.json, ".json"), ("--sheet", args.sheet, ".png"))
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    import torch

    from .bench import shapes_benchmark, shapes_table, write_json
    from .pipeline import VideoPipeline

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    pipe = VideoPipeline.from_pretrained(args.model, dtype=dtype)
    result = shapes_benchmark(pipe, seeds=args.seeds, steps=args.steps, guidance=args.guidance,
                              i2v_clips=args.i2v_clips, progress=not args.quiet, sheet=args.sheet)
    print(f"model {result['model']}: {args.steps} steps, guidance {pipe.defaults.get('guidance_scale', 7.5) if args.guidance is None else args.guidance}, "
          f"{args.seeds} seeds, {result['seconds_per_t2v_video']:.1f} s per 16-frame video ({args.dtype})")
    print(shapes_table(result))
    print(f"mean flicker {result['flicker_mean']:.4f}; first frame kept exactly in image-to-video: "
          f"{result['i2v']['first_frame_kept']:.0%}")
    if args.json is not None:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.sheet is not None:
        print(f"wrote {args.sheet}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = Parser(prog="vidiff", description="Image diffusion models extended to video.")
    sub = p.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="text-to-video (or image-to-video with --image)")
    gen.add_argument("prompt", help="what the video shows")
    gen.add_argument("-o", "--output", default="out.mp4", help="output: .mp4, .gif, .png (one frame) or a folder")
    gen.add_argument("--model", default=None, help="model folder (diffusers layout; default: the shipped shapes-64 model)")
    gen.add_argument("--frames", type=int, default=16, help="number of frames (1 = an image)")
    gen.add_argument("--height", type=int, default=None, help="pixels; a multiple of the model's factor")
    gen.add_argument("--width", type=int, default=None, help="pixels; a multiple of the model's factor")
    gen.add_argument("--fps", type=float, default=None, help="frame rate of the output (default: the model's)")
    gen.add_argument("--steps", type=int, default=25, help="sampling steps")
    gen.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's, else 7.5)")
    gen.add_argument("--negative-prompt", default=None, help="what to steer away from")
    gen.add_argument("--seed", type=int, default=None, help="random seed (same seed, same video)")
    gen.add_argument("--sampler", default=None, choices=["ddim", "euler", "euler_ancestral", "dpmpp_2m", "lcm"],
                     help="default: the one the model folder's scheduler names")
    gen.add_argument("--scheduler", default=None,
                     help="replace the folder's scheduler: NAME[:key=value,...], e.g. ddim, LCMScheduler, "
                          "EulerDiscreteScheduler:timestep_spacing=trailing,beta_schedule=linear")
    gen.add_argument("--motion-adapter", default=None,
                     help="AnimateDiff motion module for a Stable Diffusion --model: MotionAdapter folder or .safetensors")
    gen.add_argument("--mode", default="all", choices=["all", "autoregressive"])
    gen.add_argument("--chunk", type=int, default=16, help="frames per window in autoregressive mode")
    gen.add_argument("--context", type=int, default=4, help="frames carried into each new window")
    gen.add_argument("--image", default=None, help="first frame (image-to-video)")
    gen.add_argument("--first-frame-first", action=argparse.BooleanOptionalAction, default=None,
                     help="text-to-video as frame 0 first, then image-to-video from it "
                          "(default: the model's setting; shapes-64: on)")
    gen.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    gen.set_defaults(run=_generate)

    conv = sub.add_parser("convert", help="write a community model (AnimateDiff, ModelScope, SD + adapter) as a vidiff folder")
    conv.add_argument("source", help="diffusers AnimateDiffPipeline / TextToVideoSDPipeline / SD folder, or a vidiff folder")
    conv.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    conv.add_argument("--motion-adapter", default=None, help="MotionAdapter folder or .safetensors (with an SD source)")
    conv.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="UNet weights on disk")
    conv.set_defaults(run=_convert)

    exp = sub.add_parser("export", help="write a vidiff model's temporal weights back for diffusers")
    exp.add_argument("model", help="vidiff model folder (animatediff or modelscope family)")
    exp.add_argument("--to", required=True, choices=["diffusers"], help="target format")
    exp.add_argument("out", help="folder to write: a MotionAdapter (animatediff) or a TextToVideoSDPipeline (modelscope)")
    exp.set_defaults(run=_export)

    inf = sub.add_parser("inflate", help="turn an image UNet (vidiff, diffusers, SD 1.x/2.x) into a space-time UNet")
    inf.add_argument("source", help="diffusers unet folder, SD model folder, .safetensors state dict, or vidiff image UNet folder")
    inf.add_argument("--out", required=True, help="folder to write the vidiff UNet to")
    inf.add_argument("--frame-conditioning", action="store_true", help="add [cond*mask, mask] inputs (i2v, continuation)")
    inf.add_argument("--temporal-attention-everywhere", action="store_true", help="temporal attention at attention-free levels too")
    inf.add_argument("--temporal-heads", type=int, default=8, help="heads of the temporal attention (default 8)")
    inf.add_argument("--num-heads", default=None, help="spatial heads (int or per-level list a,b,c) for a bare state dict")
    inf.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    inf.set_defaults(run=_inflate)

    tr = sub.add_parser("train", help="train (or resume) from a YAML config")
    tr.add_argument("config", help="YAML config, e.g. configs/tiny.yaml")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100 lr=3e-4")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(run=_train)

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
    sh.add_argument("--quiet", action="store_true", help="no progress bar")
    sh.set_defaults(run=_data_shapes)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    cons = bench_sub.add_parser("consistency", help="temporal consistency of videos (flicker, warping error, motion, ...)")
    cons.add_argument("videos", nargs="+", help="MP4/GIF files or folders of frames")
    cons.add_argument("--json", default=None, help="write every per-video report to this .json file")
    cons.add_argument("--plot", default=None, help="write the per-pair curves to this .png")
    cons.add_argument("--reference", default=None, help="reference video for TecoGAN's tOF")
    cons.add_argument("--clip-model", default=None, help="local transformers CLIP folder: CLIP frame consistency")
    cons.add_argument("--analysis-fps", type=float, default=8.0, help="frame rate the flow metrics run at (default 8)")
    cons.add_argument("--fps", type=float, default=None, help="override the videos' native frame rate")
    cons.add_argument("--flow", default="dis", choices=["dis", "farneback"], help="OpenCV optical flow (default DIS)")
    cons.set_defaults(run=_bench_consistency)

    shp = bench_sub.add_parser("shapes", help="prompt faithfulness of a shapes model (colour, shape, motion read from pixels)")
    shp.add_argument("--model", default=None, help="model folder (default: the shipped shapes-64 model)")
    shp.add_argument("--seeds", type=int, default=3, help="seeds per prompt (default 3)")
    shp.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    shp.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    shp.add_argument("--i2v-clips", type=int, default=12, help="dataset clips animated / extended (default 12)")
    shp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    shp.add_argument("--json", default=None, help="write the full result (every video) to this .json")
    shp.add_argument("--sheet", default=None, help="write a contact sheet of generated videos to this .png")
    shp.add_argument("--quiet", action="store_true", help="no progress bar")
    shp.set_defaults(run=_bench_shapes)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vidiff` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:     # argparse prints its own one-line usage error
        return int(e.code or 0)
    try:
        status = args.run(args)
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"vidiff {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidiff: interrupted", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
