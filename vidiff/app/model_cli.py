"""The model-folder commands: convert (community folders, hub ids, single files), export, inflate."""

from __future__ import annotations

import argparse

from vidiff.app.common import UsageError, fresh_dir, dtype_of, scheduler_arg


def _inflate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from vidiff.models.inflate import inflate

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

    from vidiff.models.codec import load_codec
    from vidiff.pipelines.pipeline import VideoPipeline
    from vidiff.diffusion.schedule import NoiseSchedule
    from vidiff.models.text import TextEncoder

    from vidiff.loaders.folders import scheduler_config

    raw = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    schedule = NoiseSchedule.from_config(scheduler_config(raw, scheduler_arg(args.scheduler)))   # never silently changed
    codec = load_codec(None, folder)
    size = json.loads((folder / "unet" / "config.json").read_text()).get("sample_size") \
        if (folder / "unet" / "config.json").exists() else None
    defaults = {"height": size * codec.factor, "width": size * codec.factor} if size else None
    pipe = VideoPipeline(model, TextEncoder.from_pretrained(folder), schedule, codec, defaults)
    pipe.save_pretrained(out)
    print(f"wrote {out}: a model folder with the {what}, and {folder}'s text encoder, tokenizer, "
          f"scheduler{' and VAE' if (folder / 'vae').is_dir() else ''}. Its temporal layers start as the "
          f"identity: `vidiff generate PROMPT --model {out}` makes still videos until it is trained")


def _convert(args: argparse.Namespace) -> None:
    from pathlib import Path

    from vidiff.data.io import write_folder_atomically
    from vidiff.pipelines.pipeline import VideoPipeline

    fresh_dir(args.out)
    source = args.source
    if args.config is not None:                      # a single file with a diffusers folder's configs and tokenizer
        from vidiff.loaders.hub import converted_folder

        if not Path(source).is_file() or not Path(args.config).is_dir():
            raise UsageError("--config DIR goes with a single-file checkpoint SOURCE and names a diffusers model folder")
        source = converted_folder(Path(source), config=args.config)
    pipe = VideoPipeline.from_pretrained(source, motion_adapter=args.motion_adapter, device="cpu", dtype="float32",
                                         scheduler=scheduler_arg(args.scheduler), variant=args.variant,
                                         revision=args.revision)
    cast = None if args.dtype == "float32" else dtype_of(args.dtype)
    write_folder_atomically(args.out, lambda tmp: pipe.save_pretrained(tmp, dtype=cast))
    cfg = pipe.unet.config
    kind = "StableVideoDiffusionPipeline folder (diffusers' layout" if cfg.temporal_family == "svd" else \
        "vidiff model folder ("
    print(f"wrote {args.out}: {kind}{cfg.temporal_family if cfg.temporal else 'image'} family, "
          f"{sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f}M UNet parameters, {args.dtype})")


def _export(args: argparse.Namespace) -> None:
    from vidiff.loaders.folders import export_diffusers
    from vidiff.data.io import write_folder_atomically
    from vidiff.pipelines.pipeline import VideoPipeline

    if args.to != "diffusers":
        raise UsageError(f"--to must be 'diffusers', got {args.to!r}")
    fresh_dir(args.out)
    pipe = VideoPipeline.from_pretrained(args.model)
    kind = []
    write_folder_atomically(args.out, lambda tmp: kind.append(export_diffusers(pipe, tmp)))
    print(f"wrote {args.out}: diffusers {kind[0]} folder")


def model_parsers(sub) -> None:
    """Subcommands of the model-folder commands: convert, export, inflate."""
    conv = sub.add_parser("convert", help="write a community model (AnimateDiff, ModelScope, SD + adapter) as a vidiff folder")
    conv.add_argument("source", help="diffusers AnimateDiffPipeline / TextToVideoSDPipeline / SD folder, a vidiff "
                      "folder, a single-file SD .safetensors checkpoint, or a hub id")
    conv.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    conv.add_argument("--motion-adapter", default=None, help="MotionAdapter folder, .safetensors or hub id (with an SD source)")
    conv.add_argument("--config", default=None, help="single file: a diffusers SD folder whose configs and tokenizer "
                      "to use (default: inferred from the keys; the tokenizer from the hub cache); for an SVD "
                      "file (svd.safetensors, svd_xt.safetensors), a diffusers SVD folder giving VAE and image encoder")
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
