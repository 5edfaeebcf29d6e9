"""The `vidiff` command line: the parser of every command group (make_cli, model_cli, train_cli, serve_cli,
bench_cli) and `main`. Each subcommand imports its heavy modules only when it runs.

A bad argument or input is one line on stderr naming it, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys

from vidiff.app.bench_cli import bench_parsers
from vidiff.app.common import Parser, UsageError
from vidiff.app.make_cli import make_parsers
from vidiff.app.model_cli import model_parsers
from vidiff.app.serve_cli import serve_parser
from vidiff.app.train_cli import training_parsers


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from vidiff import __version__

    p = Parser(prog="vidiff", description="Image diffusion models extended to video.")
    p.add_argument("--version", action="version", version=f"vidiff {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    make_parsers(sub)
    model_parsers(sub)
    training_parsers(sub)
    serve_parser(sub)
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


if __name__ == "__main__":        # python -m vidiff.app.cli (accelerate launch, torchrun)
    sys.exit(main())
