"""Weight files of a diffusers-layout folder: which variant to read and its state dict (safetensors only).
`load_weights` (in unet.py) then builds a UNet on the meta device that takes those tensors as its own."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vidiff.models.unet import WEIGHTS_NAME


def folder_variant(folder: str | os.PathLike, variant: str | None) -> str | None:
    """The variant to read in `folder`: the one asked for (which must be there), else None, or the only
    variant present when the folder has no plain weights."""
    folder = Path(folder)
    names = [p.name for p in folder.glob("*.safetensors")] if folder.is_dir() else []
    if variant:
        if names and not any(n.endswith(f".{variant}.safetensors") for n in names):
            raise FileNotFoundError(f"{folder}: no {variant} weights (*.{variant}.safetensors); found {', '.join(names)}")
        return variant
    plain = [n for n in names if n.count(".") == 1]
    found = sorted({n.split(".")[-2] for n in names if n.count(".") == 2})
    return found[0] if not plain and len(found) == 1 else None


def read_safetensors(folder: Path, variant: str | None = None) -> dict:
    """The state dict of a diffusers component folder (one file or shards; `variant` picks `*.fp16.*`)."""
    from safetensors.torch import load_file

    variant = folder_variant(folder, variant)
    name = WEIGHTS_NAME if not variant else WEIGHTS_NAME.replace(".safetensors", f".{variant}.safetensors")
    single = folder / name
    if single.exists():
        return load_file(str(single))
    index = folder / (WEIGHTS_NAME + (f".index.{variant}.json" if variant else ".index.json"))
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for s in shards for k, v in load_file(str(folder / s)).items()}
    if any(folder.glob("*.bin")) or any(folder.glob("*.ckpt")):
        raise ValueError(f"{folder} has only pickle weights (.bin/.ckpt); vidiff reads safetensors only "
                         "(re-save the model with safe_serialization=True)")
    raise FileNotFoundError(f"no {WEIGHTS_NAME} in {folder}")
