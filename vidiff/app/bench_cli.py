"""`vidiff bench`: consistency, compare and shapes (handlers and their parser), the CLI's benchmark group."""

from __future__ import annotations

import argparse
import os
import sys

from vidiff.app.common import UsageError, device_args


def check_outputs(*outputs) -> None:
    """Each optional (flag, path, suffix) output: the right suffix and a writable folder, before any work."""
    from vidiff.data.io import check_writable

    for flag, path, suffix in outputs:
        if path is not None:
            if not str(path).lower().endswith(suffix):
                raise UsageError(f"{flag} {path}: must end in {suffix}")
            check_writable(path)


def _bench_consistency(args: argparse.Namespace) -> int:
    from types import SimpleNamespace

    from vidiff.data.io import read_video

    check_outputs(("--json", args.json, ".json"), ("--plot", args.plot, ".png"))
    if not args.analysis_fps > 0:
        raise UsageError(f"--analysis-fps must be > 0, got {args.analysis_fps}")
    if args.fps is not None and not args.fps > 0:
        raise UsageError(f"--fps must be > 0, got {args.fps:g}")
    if args.clip_model is not None and not os.path.isdir(args.clip_model):
        raise UsageError(f"--clip-model {args.clip_model}: folder does not exist")
    seams = None
    if args.seams is not None:
        try:
            seams = [int(x) for x in args.seams.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--seams {args.seams}: must be frame numbers separated by commas, e.g. 16,32") from None
        if not seams or min(seams) < 1:
            raise UsageError(f"--seams {args.seams}: frame numbers >= 1 (the first frame of each new window)")
    reference = None
    if args.reference is not None:
        frames, fps = read_video(args.reference)          # a bad reference fails before any scoring
        reference = SimpleNamespace(frames=frames, fps=fps)
    from vidiff.evaluation.bench import SCHEMA_ID, consistency, plot, table, write_json

    from vidiff.evaluation.compare import score_shared, videos_in
    from vidiff.devices import process_state

    videos = []
    for v in args.videos:          # a folder of video files is a batch; a folder of images is one video
        videos += [str(p) for p in videos_in(v)] if os.path.isdir(v) and videos_in(v) else [v]
    records, errors = score_shared(videos, lambda video: consistency(
        video, reference=reference, fps=args.fps, analysis_fps=args.analysis_fps, flow=args.flow,
        clip_model=args.clip_model, seams=seams, loop=args.loop))
    if not process_state().is_main_process:
        return 2 if errors else 0
    for e in errors:
        print(f"vidiff bench: error: {e['video']}: {e['error']}", file=sys.stderr)
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


def _bench_compare(args: argparse.Namespace) -> None:
    from vidiff.evaluation.compare import compare, compare_plot, compare_table

    check_outputs(("--plot", args.plot, ".png"), ("--json", args.json, ".json"))
    rows = compare(args.reports)
    print(compare_table(rows))
    if args.json is not None:
        from vidiff.evaluation.bench import write_json

        write_json({"rows": rows}, args.json)
        print(f"wrote {args.json}")
    if args.plot is not None:
        print(f"wrote {compare_plot(rows, args.plot)}")


def _bench_shapes(args: argparse.Namespace) -> None:
    check_outputs(("--json", args.json, ".json"), ("--sheet", args.sheet, ".png"))
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    from vidiff.evaluation.bench import shapes_benchmark, shapes_table, write_json
    from vidiff.pipelines.pipeline import VideoPipeline

    pipe = VideoPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    result = shapes_benchmark(pipe, seeds=args.seeds, steps=args.steps, guidance=args.guidance,
                              i2v_clips=args.i2v_clips, progress=not args.quiet, sheet=args.sheet,
                              object_scale=args.object_scale, cache=args.cache)
    print(f"model {result['model']}: {result['steps']} steps, guidance {pipe.defaults.get('guidance_scale', 7.5) if args.guidance is None else args.guidance}, "
          f"{args.seeds} seeds, {result['seconds_per_t2v_video']:.1f} s per {pipe.defaults['num_frames']}-frame video "
          f"({pipe.dtype}, {pipe.device})".replace("torch.", ""))
    print(shapes_table(result))
    print(f"mean flicker {result['flicker_mean']:.4f}; first frame kept exactly in image-to-video: "
          f"{result['i2v']['first_frame_kept']:.0%}")
    if args.json is not None:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.sheet is not None:
        print(f"wrote {args.sheet}")


def bench_parsers(sub) -> None:
    """Subcommands of the benchmarks: consistency, compare, shapes."""
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    cons = bench_sub.add_parser("consistency", help="temporal consistency of videos (flicker, warping error, motion, ...)")
    cons.add_argument("videos", nargs="+", help="MP4/GIF files, folders of them (a batch), or folders of frames; "
                      "under accelerate launch the videos are split between the processes")
    cons.add_argument("--json", default=None, help="write every per-video report to this .json file")
    cons.add_argument("--plot", default=None, help="write the per-pair curves to this .png")
    cons.add_argument("--reference", default=None, help="reference video for TecoGAN's tOF")
    cons.add_argument("--clip-model", default=None, help="local transformers CLIP folder: CLIP frame consistency")
    cons.add_argument("--loop", action="store_true",
                      help="a looping video: score the wrap pair (last frame -> frame 0) as its seam")
    cons.add_argument("--seams", default=None, help="frames where new windows start, e.g. 16,32 (default: what a "
                      "vidiff video records; else the most outlying pair)")
    cons.add_argument("--analysis-fps", type=float, default=8.0, help="frame rate the flow metrics run at (default 8)")
    cons.add_argument("--fps", type=float, default=None, help="override the videos' native frame rate")
    cons.add_argument("--flow", default="dis", choices=["dis", "farneback"], help="OpenCV optical flow (default DIS)")
    cons.set_defaults(run=_bench_consistency)

    cmp_ = bench_sub.add_parser("compare", help="side-by-side table of consistency reports (one row per model/sampler/mode)")
    cmp_.add_argument("reports", nargs="+", help="vidiff bench consistency --json files; each is one row, named by its stem")
    cmp_.add_argument("--plot", default=None, help="write the metric means (± std) as bars to this .png")
    cmp_.add_argument("--json", default=None, help="write the rows to this .json")
    cmp_.set_defaults(run=_bench_compare)

    shp = bench_sub.add_parser("shapes", help="prompt faithfulness of a shapes model (colour, shape, motion read from pixels)")
    shp.add_argument("--model", default=None, help="model folder (default: the shipped shapes-64 model)")
    shp.add_argument("--seeds", type=int, default=3, help="seeds per prompt (default 3)")
    shp.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, else 25)")
    shp.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    shp.add_argument("--i2v-clips", type=int, default=12, help="dataset clips animated / extended (default 12)")
    shp.add_argument("--object-scale", type=float, default=1.0,
                     help="object size of the clips animated / extended, as `vidiff data shapes --object-scale` "
                          "(default 1; configs/small.yaml: 1.6)")
    device_args(shp)
    shp.add_argument("--json", default=None, help="write the full result (every video) to this .json")
    shp.add_argument("--sheet", default=None, help="write a contact sheet of generated videos to this .png")
    shp.add_argument("--quiet", action="store_true", help="no progress bar")
    shp.add_argument("--cache", type=int, default=None, metavar="N",
                     help="step caching: the whole UNet every N steps (default: the model's setting)")
    shp.set_defaults(run=_bench_shapes)
