"""The video-making commands: generate (text-, image-, video-to-video, batches, --from-settings), extend, interpolate."""

from __future__ import annotations

import argparse
import os
import sys

from vidiff.app.common import UsageError, scheduler_arg, device_args
from vidiff.app.control_cli import control_args


def _load_pipeline(args: argparse.Namespace):
    """Check the output and model arguments (cheap, before any work), then load the model."""
    from pathlib import Path

    from vidiff.data.io import check_writable, output_kind

    out = Path(args.output)
    output_kind(out)                                  # suffix first: cheap and common
    for flag, value in (("--frames", args.frames), ("--steps", args.steps), ("--upscale", args.upscale)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.fps is not None and not args.fps > 0:
        raise UsageError(f"--fps must be > 0, got {args.fps:g}")
    if output_kind(out) == "png" and args.frames not in (None, 1):
        raise UsageError(f"-o {out}: a .png holds one frame; use --frames 1, or .mp4/.gif/a folder")
    check_writable(out)
    if out.exists() and output_kind(out) == "folder" and any(out.iterdir()):
        raise UsageError(f"-o {out}: folder exists and is not empty")
    if args.model is None:
        from vidiff.pipelines.pipeline import DEFAULT_MODEL

        if not (DEFAULT_MODEL / "model_index.json").exists():
            raise UsageError(f"the default model is not installed at {DEFAULT_MODEL}; pass --model DIR")
        args.model = str(DEFAULT_MODEL)
    from vidiff.loaders.hub import is_hub_id

    for flag, value in (("--model", args.model), ("--motion-adapter", args.motion_adapter)):
        if value is not None and not Path(value).exists() and not is_hub_id(value):
            raise UsageError(f"{flag} {value}: does not exist (a folder, a .safetensors file, or a hub id org/name)")
    from vidiff.devices import resolve_device
    from vidiff.loaders.lora import parse_spec
    from vidiff.pipelines.pipeline import VideoPipeline

    device = resolve_device(args.device)
    if getattr(args, "batch_rank", False) and args.device in ("auto", "cuda"):
        from vidiff.devices import process_state

        device = process_state().device            # each launched process on its own GPU, never all on cuda:0
    loras = [parse_spec(spec) for spec in args.lora]
    for path, _ in loras:
        if not Path(path).exists() and not is_hub_id(path):
            raise UsageError(f"--lora {path}: file does not exist (a .safetensors file or a hub id org/name)")
    pipe = VideoPipeline.from_pretrained(args.model, motion_adapter=args.motion_adapter, device=device,
                                         dtype=args.dtype, scheduler=scheduler_arg(args.scheduler),
                                         variant=args.variant, revision=args.revision)
    if hasattr(pipe, "conditioning"):          # Stable Video Diffusion: its own knobs (see _svd)
        if args.command != "generate" or getattr(args, "prompts", None) is not None or args.video is not None:
            raise UsageError(f"--model {args.model} is a Stable Video Diffusion model: it makes videos from an image "
                             "with `vidiff generate --image PATH` (extend, interpolate, --video and --prompts batches "
                             "are for the text-to-video models)")
        for flag, bad in (("--lora", loras), ("--offload", args.offload), ("--vae-tiling", args.vae_tiling)):
            if bad:
                raise UsageError(f"{flag} is not available for Stable Video Diffusion models (its temporal VAE has no "
                                 "tiling; bound decoding memory with --decode-chunk)")
        return pipe
    args.chunk = 16 if args.chunk is None else args.chunk
    args.context = 4 if args.context is None else args.context
    for path, scale in loras:
        pipe.load_lora(path, scale)
    from vidiff.app.control_cli import load_controls

    args.steer = load_controls(args, pipe)
    if getattr(args, "compile", False):
        pipe.compile()
    _memory_knobs(args, pipe, device)
    return pipe


def _memory_knobs(args: argparse.Namespace, pipe, device) -> None:
    """--offload, --decode-chunk and --vae-tiling on a loaded pipeline."""
    if args.decode_chunk is not None and args.decode_chunk < 1:
        raise UsageError(f"--decode-chunk must be >= 1, got {args.decode_chunk}")
    if args.offload == "model":
        pipe.enable_model_cpu_offload(device)
    elif args.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device)
    if args.vae_tiling:
        pipe.enable_vae_tiling()
    if args.decode_chunk is not None and hasattr(pipe.codec, "chunk"):
        pipe.codec.chunk = args.decode_chunk


def _read_frames(flag: str, path: str):
    """An image, or the frames of a video / GIF / frame folder, named on the command line."""
    from vidiff.pipelines.pipeline import load_frames

    if not os.path.exists(path):
        raise UsageError(f"{flag} {path}: file does not exist")
    return load_frames(path)


def _svd(args: argparse.Namespace, pipe) -> None:
    """generate --image on a Stable Video Diffusion model: its own knobs, no text."""
    import random
    import time

    if args.image is None:
        raise UsageError(f"--model {args.model} is an image-to-video model (Stable Video Diffusion, no text encoder): "
                         "give --image PATH")
    if args.prompt:
        print("vidiff: note: this SVD model has no text encoder; the prompt is ignored", file=sys.stderr)
    for flag, value in (("--motion-bucket", args.motion_bucket), ("--noise-aug", args.noise_aug)):
        if value is not None and value < 0:
            raise UsageError(f"{flag} must be >= 0, got {value:g}")
    if args.seed is None:
        args.seed = random.randrange(2 ** 31)
        print(f"seed {args.seed} (pass --seed {args.seed} to make this video again)")
    first = _read_frames("--image", args.image)[0]
    d = pipe.defaults
    resize = args.resize if (args.height or args.width or first.shape[0] % pipe.size_multiple
                             or first.shape[1] % pipe.size_multiple) else None
    t0 = time.perf_counter()
    video = pipe.animate(first, num_frames=args.frames, height=args.height or (d["height"] if resize else None),
                         width=args.width or (d["width"] if resize else None), num_inference_steps=args.steps,
                         guidance_scale=args.guidance, min_guidance_scale=args.min_guidance, fps=args.fps,
                         motion_bucket_id=127 if args.motion_bucket is None else args.motion_bucket,
                         noise_aug_strength=0.02 if args.noise_aug is None else args.noise_aug,
                         decode_chunk_size=args.decode_chunk, seed=args.seed, mode=args.mode,
                         chunk=args.chunk, context=1 if args.context is None else args.context, resize=resize,
                         keep_first_frame=args.keep_first_frame)
    _save(args, video, time.perf_counter() - t0)


def _save(args: argparse.Namespace, video, seconds: float) -> None:
    """Save with the settings (and what remakes it) inside; print what was written."""
    from vidiff.app.replay import record_inputs

    video.settings.update(command=args.command, inputs=record_inputs(args))    # --from-settings remakes it
    video.save(args.output, upscale=args.upscale)
    f, h, w, _ = video.frames.shape
    up = f", shown {args.upscale}x" if args.upscale > 1 else ""
    print(f"wrote {args.output}: {f} frame{'s' * (f != 1)} {w}x{h}{up} at {video.fps:g} fps in {seconds:.1f}s "
          f"(seed {args.seed}; settings stored in the file)")


def _run(args: argparse.Namespace, pipe, frames: int, height: int, width: int, make) -> None:
    """Guard memory, pick and print the seed, run `make(kwargs)`, save with the settings inside."""
    import random
    import time

    if args.steps is None:
        args.steps = int(pipe.defaults.get("num_inference_steps", 25))      # the model's own (distilled: fewer)
    pipe.check_args(frames, height, width, args.steps, args.sampler, args.mode, args.chunk, args.context,
                    1.0 if args.guidance is None else args.guidance, args.fps or 8, getattr(args, "stride", 4))
    if args.mode == "fifo":
        args.steps = None                                    # fifo walks partitions x chunk levels
        from vidiff.diffusion.plans import fifo_cost

        calls, per_frame = fifo_cost(frames, args.chunk, args.partitions, args.lookahead)
        print(f"vidiff: note: fifo runs {calls} UNet passes of {args.chunk} frames for {frames} frames ({per_frame} a "
              f"frame, plus {(args.partitions - 1) * args.chunk} warm-up frames); --mode windows or autoregressive "
              "are several times faster", file=sys.stderr)
    guidance = pipe.defaults.get("guidance_scale", 7.5) if args.guidance is None else args.guidance
    pipe.guard(frames, height, width, args.mode, args.chunk, max(guidance if isinstance(guidance, list) else [guidance]) > 1,
               args.force)
    if args.seed is None:
        args.seed = random.randrange(2 ** 31)
        print(f"seed {args.seed} (pass --seed {args.seed} to make this video again)")
    kwargs = dict(negative_prompt=args.negative_prompt, height=height, width=width, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, sampler=args.sampler, seed=args.seed, fps=args.fps, eta=args.eta,
                  **getattr(args, "steer", {}),
                  **({"cache": {"interval": args.cache, "depth": args.cache_depth}} if args.cache is not None else {}))
    t0 = time.perf_counter()
    video = make(kwargs)
    _save(args, video, time.perf_counter() - t0)


def _travel(args: argparse.Namespace, frames: int):
    """The prompt, or {0: prompt, frame: text, ...} with --prompt-at FRAME:TEXT (prompt travel)."""
    if not args.prompt_at:
        return args.prompt
    prompt = {0: args.prompt}
    for item in args.prompt_at:
        at, sep, text = item.partition(":")
        if not sep or not at.strip().isdigit() or not text.strip():
            raise UsageError(f"--prompt-at {item!r}: must be FRAME:TEXT, e.g. 16:a blue circle moving right")
        if not 0 <= int(at) < frames:
            raise UsageError(f"--prompt-at {item!r}: frame {int(at)} is outside 0..{frames - 1}")
        prompt[int(at)] = text.strip()
    return prompt


def _batch(args: argparse.Namespace) -> None:
    """generate --prompts FILE --seeds A-B --out-dir DIR: every prompt x seed, resumable, split between processes."""
    from pathlib import Path

    from vidiff.pipelines.batch import parse_seeds, plan_jobs, read_prompts, run_batch
    from vidiff.data.io import check_writable

    if args.prompt is not None or args.video is not None or args.image is not None:
        raise UsageError("--prompts makes a batch from its file; give no PROMPT, --image or --video with it")
    if args.out_dir is None:
        raise UsageError("--prompts needs --out-dir DIR (the videos and index.jsonl go there)")
    entries = read_prompts(args.prompts)
    jobs = plan_jobs(entries, parse_seeds(args.seeds), args.naming)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out-dir {out}: is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out-dir {out}: cannot be created ({e.strerror})") from None
    check_writable(out / "index.jsonl")
    args.output = str(out / "index.mp4")           # _load_pipeline checks an output name; the batch writes its own
    args.batch_rank = True                         # load onto this process's device (accelerate's PartialState)
    pipe = _load_pipeline(args)
    defaults = {k: v for k, v in dict(
        negative_prompt=args.negative_prompt, num_frames=args.frames, height=args.height, width=args.width,
        num_inference_steps=args.steps, guidance_scale=args.guidance, sampler=args.sampler, mode=args.mode,
        chunk=args.chunk, context=args.context, fps=args.fps, first_frame_first=args.first_frame_first).items()
        if v is not None}
    checks = ("num_frames", "height", "width", "num_inference_steps", "sampler", "mode", "chunk", "context",
              "guidance_scale", "fps")
    for job in jobs:                               # every job's settings are checked before the first video
        kw = {**defaults, **job["settings"]}
        try:
            pipe.check_args(**{k: kw[k] for k in checks if k in kw and kw[k] is not None})
        except ValueError as e:
            raise ValueError(f"prompt {job['prompt']!r}: {e}") from None
    result = run_batch(pipe, jobs, out, defaults)
    if result["rank"] == 0:
        print(f"{result['index']}: {len(jobs)} videos ({result['made']} made by process 0, {result['skipped']} "
              f"already there) in {out} by {result['world']} process{'es' * (result['world'] > 1)}")


def _generate(args: argparse.Namespace) -> None:
    if args.from_settings is not None:
        from vidiff.data.io import read_settings
        from vidiff.app.replay import apply_settings

        if not os.path.exists(args.from_settings):
            raise UsageError(f"--from-settings {args.from_settings}: file does not exist")
        args.command = apply_settings(args, read_settings(args.from_settings), args.from_settings)
        args.from_settings = None
        {"generate": _generate, "extend": _extend, "interpolate": _interpolate}[args.command](args)
        return
    if args.prompts is not None:
        _batch(args)
        return
    if args.prompt is None and args.image is None:
        raise UsageError("give a PROMPT (or --image FILE for image-to-video, --prompts FILE for a batch)")
    pipe = _load_pipeline(args)
    if hasattr(pipe, "conditioning"):                       # Stable Video Diffusion
        _svd(args, pipe)
        return
    args.prompt = args.prompt or ""
    d = pipe.defaults
    frames = d["num_frames"] if args.frames is None else args.frames     # the model's own length by default
    height, width = args.height or d["height"], args.width or d["width"]
    prompt = _travel(args, frames)
    if args.strength is not None and args.video is None:
        raise UsageError("--strength goes with --video (video-to-video)")
    if args.video is not None:
        _video_to_video(args, pipe, prompt)
        return
    if args.image is None:
        if args.loop and args.mode != "windows":
            raise UsageError(f"--loop makes a looping video with --mode windows, got --mode {args.mode}")
        if args.free_init is not None and (args.free_init < 1 or args.mode != "all"):
            raise UsageError(f"--free-init N needs N >= 1 and --mode all, got N={args.free_init}, mode {args.mode}")
        _run(args, pipe, frames, height, width, lambda kw: pipe(
            prompt, num_frames=frames, mode=args.mode, chunk=args.chunk, context=args.context, stride=args.stride,
            weighting=args.weighting, noise_type=args.noise_type, partitions=args.partitions, lookahead=args.lookahead,
            first_frame_first=args.first_frame_first, free_init=args.free_init, loop=args.loop, **kw))
        return
    first = _read_frames("--image", args.image)[0]
    _run(args, pipe, frames, height, width, lambda kw: pipe.animate(
        first, prompt, resize=args.resize, num_frames=frames, mode=args.mode, chunk=args.chunk,
        context=args.context, **kw))


def _video_to_video(args: argparse.Namespace, pipe, prompt) -> None:
    """generate --video IN --strength S: restyle IN, keeping its motion, length (or --frames) and fps."""
    from vidiff.data.io import read_video
    from vidiff.pipelines.pipeline import Video

    strength = 0.6 if args.strength is None else args.strength
    if not 0 <= strength <= 1:
        raise UsageError(f"--strength must be in [0, 1] (0 keeps the input, 1 redraws it), got {strength:g}")
    if args.image is not None:
        raise UsageError("--image and --video are two different modes; give one")
    if args.mode == "fifo":
        raise UsageError("--video runs in --mode all, autoregressive or windows, not fifo")
    if not os.path.exists(args.video):
        raise UsageError(f"--video {args.video}: file does not exist")
    frames, fps = read_video(args.video)
    frames = frames[:args.frames] if args.frames else frames
    m = pipe.size_multiple
    h, w = frames.shape[1:3]
    height, width = args.height or max(m, h // m * m), args.width or max(m, w // m * m)
    if isinstance(prompt, dict) and max(prompt) >= len(frames):
        raise UsageError(f"--prompt-at frame {max(prompt)} is outside the input's {len(frames)} frames")
    _run(args, pipe, len(frames), height, width, lambda kw: pipe.video_to_video(
        Video(frames, fps), prompt, strength=strength, resize=args.resize, mode=args.mode, chunk=args.chunk,
        context=args.context, stride=args.stride, weighting=args.weighting, **kw))


def _extend(args: argparse.Namespace) -> None:
    pipe = _load_pipeline(args)
    video = _read_frames("video", args.video)
    h, w = video.shape[1:3]
    if (h, w) != (args.height or h, args.width or w):
        raise UsageError(f"{args.video} is {w}x{h}; extend keeps the video's size (drop --height/--width)")
    frames = pipe.defaults["num_frames"] if args.frames is None else args.frames
    args.mode = "autoregressive"
    prompt = _travel(args, len(video) + frames)           # frames count from the start of the input video
    _run(args, pipe, len(video) + frames, h, w, lambda kw: pipe.extend(
        video, prompt, num_frames=frames, chunk=args.chunk, context=args.context,
        **{k: v for k, v in kw.items() if k not in ("height", "width")}))


def _interpolate(args: argparse.Namespace) -> None:
    pipe = _load_pipeline(args)
    first, last = _read_frames("first", args.first)[-1], _read_frames("last", args.last)[0]
    if first.shape != last.shape:
        raise UsageError(f"first is {first.shape[1]}x{first.shape[0]}, last is {last.shape[1]}x{last.shape[0]}; "
                         "they must be the same size")
    frames = pipe.defaults["num_frames"] if args.frames is None else args.frames
    if frames < 3:
        raise UsageError(f"--frames must be >= 3 for interpolation (first, at least one between, last), got {frames}")
    prompt = _travel(args, frames)
    _run(args, pipe, frames, first.shape[0], first.shape[1], lambda kw: pipe.interpolate(
        first, last, prompt, num_frames=frames, **kw))


def _generation_args(p: argparse.ArgumentParser, frames_help: str) -> None:
    """The options generate / extend / interpolate share."""
    p.add_argument("-o", "--output", default="out.mp4", help="output: .mp4, .gif, .png (one frame) or a folder")
    p.add_argument("--model", default=None, help="model folder, hub id (org/name) or single-file SD .safetensors "
                   "(default: the shipped shapes-64 model)")
    p.add_argument("--frames", type=int, default=None, help=frames_help)
    p.add_argument("--height", type=int, default=None, help="pixels (default: the model's); a multiple of its factor")
    p.add_argument("--width", type=int, default=None, help="pixels (default: the model's); a multiple of its factor")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the output (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, else 25)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's, else 7.5)")
    p.add_argument("--negative-prompt", default=None, help="what to steer away from")
    p.add_argument("--prompt-at", action="append", default=[], metavar="FRAME:TEXT",
                   help="prompt travel: from FRAME on the prompt becomes TEXT (blended in between); repeatable")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed and stored)")
    p.add_argument("--eta", type=float, default=0.0, help="ddim / euler_ancestral: stochasticity (0: deterministic DDIM)")
    p.add_argument("--sampler", default=None, choices=["ddim", "euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde",
                                                       "plms", "unipc", "lcm"],
                   help="walk the schedule with another sampler on the same grid (default: the one the model "
                        "folder's scheduler names); --scheduler changes the scheduler itself")
    p.add_argument("--scheduler", default=None,
                   help="replace the folder's scheduler: NAME[:key=value,...], NAME a preset (animatediff), a sampler "
                        "(ddim, plms, unipc, dpmpp_2m_sde, ...) or a class, e.g. "
                        "EulerDiscreteScheduler:use_karras_sigmas=true")
    p.add_argument("--motion-adapter", default=None,
                   help="AnimateDiff motion module for a Stable Diffusion --model: MotionAdapter folder, .safetensors "
                        "or hub id")
    p.add_argument("--chunk", type=int, default=None,
                   help="frames per window (autoregressive, windows; default 16, SVD: the model's frames)")
    p.add_argument("--context", type=int, default=None,
                   help="autoregressive: frames carried into each new window (default 4, SVD: 1)")
    p.add_argument("--stride", type=int, default=4, help="windows: frames between window starts (default 4)")
    p.add_argument("--weighting", default="pyramid", choices=["flat", "pyramid", "delayed_reverse_sawtooth"],
                   help="windows: how overlapping windows are averaged (default pyramid)")
    p.add_argument("--partitions", type=int, default=2,
                   help="fifo: queue length in windows (steps = partitions x chunk; default 2). The slowest mode: each "
                        "frame takes 2 x partitions window passes, after (partitions - 1) x chunk warm-up frames; shapes-64, 32 "
                        "frames: 1.61 s a frame at 2, 0.58 at 1, against 0.16 autoregressive and 0.14 windows")
    p.add_argument("--no-lookahead", dest="lookahead", action="store_false", help="fifo: without lookahead denoising")
    p.add_argument("--noise-type", default=None, choices=["shuffle_context", "repeat_context", "random"],
                   help="windows: starting noise (default shuffle_context, FreeNoise; with --loop random)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="LoRA .safetensors to apply (repeatable; SD, AnimateDiff motion LoRA, v3 adapter), scale 1 by default")
    p.add_argument("--upscale", type=int, default=1, help="save each pixel as an n x n block (for viewing small videos)")
    p.add_argument("--force", action="store_true", help="run even when the memory estimate says it will not fit")
    device_args(p)
    p.add_argument("--variant", default=None, help="read the folder's *.VARIANT.safetensors weights, e.g. fp16")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of a hub-id --model")
    p.add_argument("--offload", default=None, choices=["model", "sequential"],
                   help="keep weights in host RAM: model (each model moves to the GPU while it runs) or sequential "
                        "(each layer; least GPU memory, slowest)")
    p.add_argument("--decode-chunk", type=int, default=None, help="frames the VAE decodes at once (default 8; fewer: less memory)")
    p.add_argument("--vae-tiling", action="store_true", help="decode large frames in overlapping VAE tiles")
    p.add_argument("--cache", type=int, default=None, metavar="N",
                   help="step caching (DeepCache): the whole UNet every N steps, only its outer level between")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet (the first video pays the compile; see README for when it pays)")
    p.add_argument("--cache-depth", type=int, default=1, metavar="D",
                   help="with --cache: how many outer UNet levels run on the cached steps (default 1)")


def make_parsers(sub) -> None:
    """Subcommands of the video-making commands: generate, extend, interpolate."""
    gen = sub.add_parser("generate", help="text-to-video (or image-to-video with --image)")
    gen.add_argument("prompt", nargs="?", default=None, help="what the video shows")
    _generation_args(gen, frames_help="number of frames (default: the model's; 1 = an image)")
    gen.add_argument("--mode", default="all", choices=["all", "autoregressive", "windows", "fifo"])
    gen.add_argument("--image", default=None, help="first frame (image-to-video): an image, or a video's first frame")
    gen.add_argument("--prompts", default=None, help="batch: a .txt (one prompt per line) or .jsonl file "
                     "({\"prompt\": ..., other settings}); with --seeds and --out-dir")
    gen.add_argument("--seeds", default="0", help="batch: seeds per prompt, e.g. 0-4 or 1,3,5 (default 0)")
    gen.add_argument("--out-dir", default=None, help="batch: folder for the videos and index.jsonl (reruns resume)")
    gen.add_argument("--naming", default="slug", choices=["slug", "vbench"],
                     help="batch file names: slug ({slug}-{seed}.mp4) or vbench ({prompt}-{index}.mp4)")
    gen.add_argument("--video", default=None, help="input video to restyle (video-to-video); keeps its motion and fps")
    gen.add_argument("--from-settings", default=None, metavar="VIDEO",
                     help="make a vidiff video again from the settings stored in it (model, adapter, scheduler, "
                          "LoRAs, seed, inputs); -o names the new file")
    gen.add_argument("--strength", type=float, default=None,
                     help="with --video: how far the input is noised, 0 (kept) .. 1 (redrawn); default 0.6")
    gen.add_argument("--resize", default="crop", choices=["crop", "pad", "stretch"],
                     help="fit --image / --video to the output size (default crop: cover, then centre crop)")
    gen.add_argument("--loop", action="store_true",
                     help="with --mode windows: a looping video (windows and temporal convolutions wrap round)")
    gen.add_argument("--free-init", type=int, default=None, metavar="N",
                     help="FreeInit: sample N times, each pass from the last one's low frequencies (butterworth, "
                          "stop 0.25/0.25; mode all); N times the time, steadier motion")
    gen.add_argument("--motion-bucket", type=int, default=None,
                     help="SVD: how much motion, 0..255 (default 127; higher moves more)")
    gen.add_argument("--noise-aug", type=float, default=None,
                     help="SVD: noise added to the image before encoding (default 0.02; more lets the video drift from it)")
    gen.add_argument("--min-guidance", type=float, default=None,
                     help="SVD: guidance at frame 0, rising to --guidance at the last frame (default the model's, 1.0)")
    gen.add_argument("--keep-first-frame", action=argparse.BooleanOptionalAction, default=True,
                     help="SVD: frame 0 is the image itself, held while sampling (default on; off: diffusers' sampling)")
    gen.add_argument("--first-frame-first", action=argparse.BooleanOptionalAction, default=None,
                     help="text-to-video as frame 0 first, then image-to-video from it "
                          "(default: the model's setting; shapes-64: on)")
    control_args(gen)
    gen.set_defaults(run=_generate)

    ext = sub.add_parser("extend", help="continue a video by new frames, chunk by chunk")
    ext.add_argument("video", help="video, GIF or frame folder to continue")
    ext.add_argument("--prompt", default="", help="what the continuation shows")
    _generation_args(ext, frames_help="new frames to add (default: the model's length)")
    ext.set_defaults(run=_extend, mode="autoregressive")

    itp = sub.add_parser("interpolate", help="frames between a first and a last image (both kept)")
    itp.add_argument("first", help="first frame (an image, or a video's last frame)")
    itp.add_argument("last", help="last frame (an image, or a video's first frame)")
    itp.add_argument("--prompt", default="", help="what the video shows")
    _generation_args(itp, frames_help="frames in all, first and last included (default: the model's)")
    itp.set_defaults(run=_interpolate, mode="all")
