"""The web UI command: vidiff serve."""

from __future__ import annotations

import argparse

from vidiff.app.common import UsageError, device_args


def _serve(args: argparse.Namespace) -> None:
    from vidiff.app.serve import find_models, port_free, serve

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    if not port_free(args.host, args.port):
        raise UsageError(f"--port {args.port}: in use on {args.host}; pick another with --port")
    from vidiff.devices import resolve_device, resolve_dtype

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


def serve_parser(sub) -> None:
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
