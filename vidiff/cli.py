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
                    temporal_heads=args.temporal_heads, num_heads=heads, temporal_family=args.family)
    n_new = sum(p.numel() for _, p in model.temporal_parameters())
    n_all = sum(p.numel() for p in model.parameters())
    src = Path(args.source)
    folder = next((d for d in (src, src.parent) if (d / "text_encoder").is_dir() and (d / "tokenizer").is_dir()
                   and (d / "scheduler").is_dir()), None) if src.is_dir() else None
    what = f"space-time UNet ({args.family}), {n_all / 1e6:.2f}M parameters ({n_new / 1e6:.2f}M new temporal)"
    if folder is None:                                # a bare UNet: say what it is and what comes next
        model.save_pretrained(out)
        print(f"wrote {out}: {what}. It is a UNet folder, not a model: train it with `vidiff train CONFIG "
              f"train.init=...`, or place it as unet/ in a folder with text_encoder/, tokenizer/, scheduler/")
        return
    import json

    from .codec import load_codec
    from .pipeline import VideoPipeline
    from .schedule import NoiseSchedule
    from .text import TextEncoder

    from .folders import scheduler_config

    raw = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    schedule = NoiseSchedule.from_config(scheduler_config(raw, _scheduler_arg(args.scheduler)))   # never silently changed
    codec = load_codec(None, folder)
    size = json.loads((folder / "unet" / "config.json").read_text()).get("sample_size") \
        if (folder / "unet" / "config.json").exists() else None
    defaults = {"height": size * codec.factor, "width": size * codec.factor} if size else None
    pipe = VideoPipeline(model, TextEncoder.from_pretrained(folder), schedule, codec, defaults)
    pipe.save_pretrained(out)
    print(f"wrote {out}: a model folder with the {what}, and {folder}'s text encoder, tokenizer, "
          f"scheduler{' and VAE' if (folder / 'vae').is_dir() else ''}. Its temporal layers start as the "
          f"identity: `vidiff generate PROMPT --model {out}` makes still videos until it is trained")


def _fresh_dir(path) -> None:
    """An output folder must not exist yet, or be empty."""
    from pathlib import Path

    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder")


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _convert(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .io import write_folder_atomically
    from .pipeline import VideoPipeline

    _fresh_dir(args.out)
    source = args.source
    if args.config is not None:                      # a single file with a diffusers folder's configs and tokenizer
        from .hub import converted_folder

        if not Path(source).is_file() or not Path(args.config).is_dir():
            raise UsageError("--config DIR goes with a single-file checkpoint SOURCE and names a diffusers model folder")
        source = converted_folder(Path(source), config=args.config)
    pipe = VideoPipeline.from_pretrained(source, motion_adapter=args.motion_adapter, device="cpu", dtype="float32",
                                         scheduler=_scheduler_arg(args.scheduler), variant=args.variant,
                                         revision=args.revision)
    cast = None if args.dtype == "float32" else _dtype(args.dtype)
    write_folder_atomically(args.out, lambda tmp: pipe.save_pretrained(tmp, dtype=cast))
    cfg = pipe.unet.config
    print(f"wrote {args.out}: vidiff model folder ({cfg.temporal_family if cfg.temporal else 'image'} family, "
          f"{sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f}M UNet parameters, {args.dtype})")


def _export(args: argparse.Namespace) -> None:
    from .folders import export_diffusers
    from .io import write_folder_atomically
    from .pipeline import VideoPipeline

    if args.to != "diffusers":
        raise UsageError(f"--to must be 'diffusers', got {args.to!r}")
    _fresh_dir(args.out)
    pipe = VideoPipeline.from_pretrained(args.model)
    kind = []
    write_folder_atomically(args.out, lambda tmp: kind.append(export_diffusers(pipe, tmp)))
    print(f"wrote {args.out}: diffusers {kind[0]} folder")


def _scheduler_arg(text):
    """`--scheduler NAME[:key=value,...]` -> a name, or a dict of scheduler config keys (NAME: a class, a
    sampler or a preset; `folders.scheduler_config` applies it). A dict (from --from-settings) is kept."""
    if text is None or isinstance(text, dict) or ":" not in text:
        return text
    import yaml

    name, _, rest = text.partition(":")
    out = {"_class_name": name} if name else {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"--scheduler {text}: {item!r} must look like key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load_pipeline(args: argparse.Namespace):
    """Check the output and model arguments (cheap, before any work), then load the model."""
    from pathlib import Path

    from .io import check_writable, output_kind

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
        from .pipeline import DEFAULT_MODEL

        if not (DEFAULT_MODEL / "model_index.json").exists():
            raise UsageError(f"the default model is not installed at {DEFAULT_MODEL}; pass --model DIR")
        args.model = str(DEFAULT_MODEL)
    from .hub import is_hub_id

    for flag, value in (("--model", args.model), ("--motion-adapter", args.motion_adapter)):
        if value is not None and not Path(value).exists() and not is_hub_id(value):
            raise UsageError(f"{flag} {value}: does not exist (a folder, a .safetensors file, or a hub id org/name)")
    from .devices import resolve_device
    from .lora import parse_spec
    from .pipeline import VideoPipeline

    device = resolve_device(args.device)
    if getattr(args, "batch_rank", False) and args.device in ("auto", "cuda"):
        from .devices import process_state

        device = process_state().device            # each launched process on its own GPU, never all on cuda:0
    loras = [parse_spec(spec) for spec in args.lora]
    for path, _ in loras:
        if not Path(path).exists() and not is_hub_id(path):
            raise UsageError(f"--lora {path}: file does not exist (a .safetensors file or a hub id org/name)")
    pipe = VideoPipeline.from_pretrained(args.model, motion_adapter=args.motion_adapter, device=device,
                                         dtype=args.dtype, scheduler=_scheduler_arg(args.scheduler),
                                         variant=args.variant, revision=args.revision)
    for path, scale in loras:
        pipe.load_lora(path, scale)
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
    from .pipeline import load_frames

    if not os.path.exists(path):
        raise UsageError(f"{flag} {path}: file does not exist")
    return load_frames(path)


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
        from .plans import fifo_cost

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
                  guidance_scale=args.guidance, sampler=args.sampler, seed=args.seed, fps=args.fps, eta=args.eta)
    t0 = time.perf_counter()
    video = make(kwargs)
    seconds = time.perf_counter() - t0
    from .replay import record_inputs

    video.settings.update(command=args.command, inputs=record_inputs(args))    # --from-settings remakes it
    video.save(args.output, upscale=args.upscale)
    f, h, w, _ = video.frames.shape
    up = f", shown {args.upscale}x" if args.upscale > 1 else ""
    print(f"wrote {args.output}: {f} frame{'s' * (f != 1)} {w}x{h}{up} at {video.fps:g} fps in {seconds:.1f}s "
          f"(seed {args.seed}; settings stored in the file)")


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

    from .batch import parse_seeds, plan_jobs, read_prompts, run_batch
    from .io import check_writable

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
        from .io import read_settings
        from .replay import apply_settings

        if not os.path.exists(args.from_settings):
            raise UsageError(f"--from-settings {args.from_settings}: file does not exist")
        args.command = apply_settings(args, read_settings(args.from_settings), args.from_settings)
        args.from_settings = None
        {"generate": _generate, "extend": _extend, "interpolate": _interpolate}[args.command](args)
        return
    if args.prompts is not None:
        _batch(args)
        return
    if args.prompt is None:
        raise UsageError("give a PROMPT (or --prompts FILE for a batch)")
    pipe = _load_pipeline(args)
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
        _run(args, pipe, frames, height, width, lambda kw: pipe(
            prompt, num_frames=frames, mode=args.mode, chunk=args.chunk, context=args.context, stride=args.stride,
            weighting=args.weighting, noise_type=args.noise_type, partitions=args.partitions, lookahead=args.lookahead,
            first_frame_first=args.first_frame_first, **kw))
        return
    first = _read_frames("--image", args.image)[0]
    _run(args, pipe, frames, height, width, lambda kw: pipe.animate(
        first, prompt, resize=args.resize, num_frames=frames, mode=args.mode, chunk=args.chunk,
        context=args.context, **kw))


def _video_to_video(args: argparse.Namespace, pipe, prompt) -> None:
    """generate --video IN --strength S: restyle IN, keeping its motion, length (or --frames) and fps."""
    from .io import read_video
    from .pipeline import Video

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


def _data_shapes(args: argparse.Namespace) -> None:
    import time

    from .shapes import HOLDOUT, make_shapes_dataset

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
    from .config import load_config

    cfg = load_config(args.config, args.overrides)      # bad keys and values fail here, before any work
    from .train import train

    result = train(cfg, progress=not args.quiet)
    if result["main"]:
        print(f"wrote {result['model_dir']} after {result['step']} steps"
              + (f"; skipped {len(result['skipped'])} unreadable files" if result["skipped"] else ""))


def _distill(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .config import load_config
    from .folders import read_index

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
    from .train import train

    result = train(cfg, progress=not args.quiet)
    if result["main"]:
        print(f"wrote {result['model_dir']}: samples in {args.steps} DDIM steps what {args.teacher} samples in "
              f"{2 * args.steps} (after {result['step']} distillation steps)")


def _serve(args: argparse.Namespace) -> None:
    from .serve import find_models, port_free, serve

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    if not port_free(args.host, args.port):
        raise UsageError(f"--port {args.port}: in use on {args.host}; pick another with --port")
    from .devices import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    models = find_models(args.models)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("vidiff serve needs gradio: pip install 'vidiff[app]'") from None
    print(f"vidiff serve: {len(models)} model{'s' * (len(models) != 1)} ({', '.join(models)}); results in {args.outputs}; "
          f"http://{args.host}:{args.port}", flush=True)
    serve(models, args.outputs, args.host, args.port, args.queue, device=device, dtype=dtype)


def device_args(p: argparse.ArgumentParser) -> None:
    """--device and --dtype, as every command that runs a model takes them."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: float16 on CUDA, float32 on CPU (bfloat16 is faster on CPUs with AMX)")


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
    p.add_argument("--chunk", type=int, default=16, help="frames per window (autoregressive, windows)")
    p.add_argument("--context", type=int, default=4, help="autoregressive: frames carried into each new window")
    p.add_argument("--stride", type=int, default=4, help="windows: frames between window starts (default 4)")
    p.add_argument("--weighting", default="pyramid", choices=["flat", "pyramid", "delayed_reverse_sawtooth"],
                   help="windows: how overlapping windows are averaged (default pyramid)")
    p.add_argument("--partitions", type=int, default=2,
                   help="fifo: queue length in windows (steps = partitions x chunk; default 2). The slowest mode: each "
                        "frame takes 2 x partitions window passes, after (partitions - 1) x chunk warm-up frames; shapes-64, 32 "
                        "frames: 1.61 s a frame at 2, 0.58 at 1, against 0.16 autoregressive and 0.14 windows")
    p.add_argument("--no-lookahead", dest="lookahead", action="store_false", help="fifo: without lookahead denoising")
    p.add_argument("--noise-type", default="shuffle_context", choices=["shuffle_context", "repeat_context", "random"],
                   help="windows: starting noise (default shuffle_context, FreeNoise)")
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


def _make_parsers(sub) -> None:
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
    gen.add_argument("--first-frame-first", action=argparse.BooleanOptionalAction, default=None,
                     help="text-to-video as frame 0 first, then image-to-video from it "
                          "(default: the model's setting; shapes-64: on)")
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


def _model_parsers(sub) -> None:
    """Subcommands of the model-folder commands: convert, export, inflate."""
    conv = sub.add_parser("convert", help="write a community model (AnimateDiff, ModelScope, SD + adapter) as a vidiff folder")
    conv.add_argument("source", help="diffusers AnimateDiffPipeline / TextToVideoSDPipeline / SD folder, a vidiff "
                      "folder, a single-file SD .safetensors checkpoint, or a hub id")
    conv.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    conv.add_argument("--motion-adapter", default=None, help="MotionAdapter folder, .safetensors or hub id (with an SD source)")
    conv.add_argument("--config", default=None, help="single file: a diffusers SD folder whose configs and tokenizer "
                      "to use (default: inferred from the keys; the tokenizer from the hub cache)")
    conv.add_argument("--scheduler", default=None, help="replace the source's scheduler (as generate --scheduler)")
    conv.add_argument("--variant", default=None, help="read *.VARIANT.safetensors weights, e.g. fp16")
    conv.add_argument("--revision", default=None, help="hub revision of a hub-id source")
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
    inf.add_argument("--family", default="vidiff", choices=["vidiff", "animatediff", "modelscope"],
                     help="temporal layers to add (default vidiff; animatediff = a fresh motion module)")
    inf.add_argument("--num-heads", default=None, help="spatial heads (int or per-level list a,b,c) for a bare state dict")
    inf.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    inf.add_argument("--scheduler", default=None, help="replace the source folder's scheduler (as generate --scheduler)")
    inf.set_defaults(run=_inflate)


def _training_parsers(sub) -> None:
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


def _serve_parser(sub) -> None:
    """Subcommands of the web UI."""
    srv = sub.add_parser("serve", help="a local web UI (gradio): generate, history, bench")
    srv.add_argument("--models", nargs="*", default=[], help="folders holding model folders (or model folders); "
                     "the shipped model is always offered")
    srv.add_argument("--outputs", default="outputs", help="where results and their settings are kept (default outputs/)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=7860)
    srv.add_argument("--queue", type=int, default=8, help="requests that may wait for the one running (default 8)")
    device_args(srv)
    srv.set_defaults(run=_serve)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from . import __version__

    p = Parser(prog="vidiff", description="Image diffusion models extended to video.")
    p.add_argument("--version", action="version", version=f"vidiff {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    _make_parsers(sub)
    _model_parsers(sub)
    _training_parsers(sub)
    _serve_parser(sub)
    from .cli_bench import bench_parsers

    bench_parsers(sub)
    return p


def _one_line_warnings() -> None:
    """Warnings on the command line are one line each: `vidiff: warning: ...`."""
    import logging
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"vidiff: warning: {str(message).strip().splitlines()[0]}", file=sys.stderr)
    warnings.showwarning = show
    for name in ("diffusers", "transformers"):       # their notices are for library users, not this CLI
        logging.getLogger(name).setLevel(logging.ERROR)


def _close_process_group() -> None:
    """Under torchrun / accelerate launch: meet the other processes, then close the group together. A process
    that exits while a peer is still reading its last message makes gloo abort that peer (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vidiff` console script."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        parser.print_help()
        return 0
    _one_line_warnings()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:          # key=value overrides may also follow the options (train, distill)
            if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.overrides = list(args.overrides) + extra
    except SystemExit as e:     # argparse prints its own one-line usage error
        return int(e.code or 0)
    try:
        status = args.run(args)
        _close_process_group()
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"vidiff {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidiff: interrupted", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":        # python -m vidiff.cli (accelerate launch, torchrun): run the imported module,
    from vidiff.cli import main as _main    # so that vidiff.cli_bench and this file share one UsageError

    sys.exit(_main())
