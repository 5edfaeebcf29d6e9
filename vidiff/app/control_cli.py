"""generate's control options: --controlnet/--control, --sparsectrl/--keyframe, --ip-adapter/--ip-image."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vidiff.app.common import UsageError


def control_args(p: argparse.ArgumentParser) -> None:
    """Add the control options to a generate parser."""
    g = p.add_argument_group("control (AnimateDiff / SD models)")
    g.add_argument("--controlnet", action="append", default=[], metavar="DIR",
                   help="a diffusers ControlNetModel folder or hub id (repeatable; pair each with a --control)")
    g.add_argument("--control", action="append", default=[], metavar="VIDEO|FRAMES",
                   help="the condition video (or frame folder) of the --controlnet at the same position, one frame "
                        "per output frame")
    g.add_argument("--control-scale", action="append", type=float, default=[], metavar="S",
                   help="ControlNet strength: one for all, or one per --controlnet (default 1)")
    g.add_argument("--control-start", type=float, default=0.0, help="fraction of the steps where ControlNets start (0)")
    g.add_argument("--control-end", type=float, default=1.0, help="fraction of the steps where ControlNets stop (1)")
    g.add_argument("--sparsectrl", default=None, metavar="DIR|FILE",
                   help="SparseCtrl net: a SparseControlNetModel folder or the original rgb / scribble .safetensors")
    g.add_argument("--keyframe", action="append", default=[], metavar="FRAME:IMAGE",
                   help="with --sparsectrl: pin frame FRAME to IMAGE (repeatable)")
    g.add_argument("--ip-adapter", default=None, metavar="FILE",
                   help="IP-Adapter .safetensors (plain or Plus): an image as a prompt")
    g.add_argument("--image-encoder", default=None, metavar="DIR",
                   help="its CLIP vision folder (default: image_encoder/ beside the --ip-adapter file)")
    g.add_argument("--ip-image", action="append", default=[], metavar="[FRAME:]IMAGE",
                   help="the image prompt; FRAME:IMAGE (repeatable) gives frames their own, blended in between")
    g.add_argument("--ip-scale", type=float, default=1.0, help="IP-Adapter strength (default 1)")


def _frame_item(flag: str, item: str) -> tuple[int, str]:
    at, sep, path = item.partition(":")
    if not sep or not at.strip().isdigit():
        raise UsageError(f"{flag} {item!r}: must be FRAME:IMAGE, e.g. 0:first.png")
    if not os.path.exists(path):
        raise UsageError(f"{flag} {item!r}: {path} does not exist")
    return int(at), path


def load_controls(args: argparse.Namespace, pipe) -> dict:
    """Load what the control options name onto `pipe`; returns the pipeline call's control arguments."""
    from vidiff.loaders.hub import is_hub_id
    from vidiff.pipelines.inputs import load_frames

    out: dict = {}
    nets, videos, scales = getattr(args, "controlnet", []), getattr(args, "control", []), getattr(args, "control_scale", [])
    if len(nets) != len(videos):
        raise UsageError(f"--controlnet given {len(nets)} times and --control {len(videos)} times: pair each "
                         "ControlNet with its condition video")
    if scales and len(scales) not in (1, len(nets)):
        raise UsageError(f"--control-scale: give one value or one per --controlnet ({len(nets)}), got {len(scales)}")
    if nets:
        names = []
        for i, source in enumerate(nets):
            if not Path(source).exists() and not is_hub_id(source):
                raise UsageError(f"--controlnet {source}: does not exist (a ControlNet folder or a hub id org/name)")
            names.append(pipe.load_controlnet(source, name=f"{i}:{Path(source).name}"))
        for video in videos:
            if not os.path.exists(video):
                raise UsageError(f"--control {video}: does not exist (a video, GIF or frame folder)")
        out["control"] = {n: load_frames(v) for n, v in zip(names, videos)}
        out["control_scale"] = dict(zip(names, scales if len(scales) == len(names) else scales * len(names))) \
            if scales else 1.0
        out["control_start"], out["control_end"] = args.control_start, args.control_end
    keyframes = dict(_frame_item("--keyframe", k) for k in getattr(args, "keyframe", []))
    if getattr(args, "sparsectrl", None):
        if not keyframes:
            raise UsageError("--sparsectrl needs at least one --keyframe FRAME:IMAGE")
        pipe.load_sparsectrl(args.sparsectrl)
        out["keyframes"] = {k: load_frames(v)[0] for k, v in keyframes.items()}
    elif keyframes:
        raise UsageError("--keyframe needs a --sparsectrl net")
    images = getattr(args, "ip_image", [])
    if getattr(args, "ip_adapter", None):
        if not images:
            raise UsageError("--ip-adapter needs --ip-image IMAGE")
        encoder = args.image_encoder or Path(args.ip_adapter).parent / "image_encoder"
        if not Path(encoder).exists():
            raise UsageError(f"--ip-adapter needs --image-encoder DIR (a CLIP vision folder; {encoder} does not exist)")
        pipe.load_ip_adapter(args.ip_adapter, image_encoder=encoder, scale=args.ip_scale)
        if len(images) == 1 and os.path.exists(images[0]):          # one image for every frame
            out["ip_image"] = load_frames(images[0])[0]
        else:
            out["ip_image"] = {k: load_frames(v)[0] for k, v in (_frame_item("--ip-image", i) for i in images)}
    elif images:
        raise UsageError("--ip-image needs an --ip-adapter")
    return out
