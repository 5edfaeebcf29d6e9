"""What every command-line module shares: the one-line-error parser, UsageError, device and scheduler options."""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), exit status 2."""

    def error(self, message: str):
        """Print `prog: error: message` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


class UsageError(Exception):
    """A bad argument or input: reported as one line, exit status 2."""


def fresh_dir(path) -> None:
    """An output folder must not exist yet, or be empty."""
    from pathlib import Path

    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder")


def dtype_of(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def scheduler_arg(text):
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


def device_args(p: argparse.ArgumentParser) -> None:
    """--device and --dtype, as every command that runs a model takes them."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: float16 on CUDA, float32 on CPU (bfloat16 is faster on CPUs with AMX)")
