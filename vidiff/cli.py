"""The `vidiff` command line. Each subcommand imports its heavy modules only when it runs.

A bad argument or input is one line on stderr naming it, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="vidiff", description="Image diffusion models extended to video.")
    sub = p.add_subparsers(dest="command", required=True)

    inf = sub.add_parser("inflate", help="turn an image UNet (vidiff, diffusers, SD 1.x/2.x) into a space-time UNet")
    inf.add_argument("source", help="diffusers unet folder, SD model folder, .safetensors state dict, or vidiff image UNet folder")
    inf.add_argument("--out", required=True, help="folder to write the vidiff UNet to")
    inf.add_argument("--frame-conditioning", action="store_true", help="add [cond*mask, mask] inputs (i2v, continuation)")
    inf.add_argument("--temporal-attention-everywhere", action="store_true", help="temporal attention at attention-free levels too")
    inf.add_argument("--temporal-heads", type=int, default=8, help="heads of the temporal attention (default 8)")
    inf.add_argument("--num-heads", default=None, help="spatial heads (int or per-level list a,b,c) for a bare state dict")
    inf.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    inf.set_defaults(run=_inflate)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vidiff` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"vidiff {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidiff: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
