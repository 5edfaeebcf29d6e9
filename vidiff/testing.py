"""Tiny random models for tests, demos and benchmarks: built locally, nothing downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

# Words the tiny tokenizer knows; every other word maps to <unk> (and the pipeline warns).
VOCAB = ("a an the and on of in with background shape moving left right up down still static staying "
         "red green blue yellow purple orange cyan magenta white black gray pink "
         "circle square triangle star ball box diamond cross ring").split()
TINY_YAML = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"


def tiny_tokenizer(max_length: int = 16):
    """A word-level tokenizer over `VOCAB`, built in memory."""
    from .text import word_tokenizer

    return word_tokenizer(VOCAB, max_length)


def tiny_text_encoder(dim: int = 32, seed: int = 0):
    """A 2-layer random CLIP text model with the tiny tokenizer, wrapped as `TextEncoder`."""
    from .text import TextEncoder

    torch.manual_seed(seed)
    return TextEncoder.build(VOCAB, dim=dim, layers=2, heads=2, max_length=16, seed=seed)


def tiny_unet_config(**overrides) -> dict:
    """The `model:` section of configs/tiny.yaml (shipped with the source tree) with overrides."""
    cfg = yaml.safe_load(TINY_YAML.read_text())["model"] if TINY_YAML.exists() else {
        "block_out_channels": [32, 64], "layers_per_block": 1, "attention_levels": [True, False],
        "num_heads": 2, "cross_attention_dim": 32, "temporal_heads": 2, "frame_conditioning": True}
    return {**cfg, **overrides}


def tiny_pipeline(factor: int = 2, seed: int = 0, perturb: float = 0.05, **unet_overrides):
    """A random `VideoPipeline` in pixel space (pixel-unshuffle `factor`), 64x64 by default."""
    from .codec import PixelCodec
    from .pipeline import VideoPipeline
    from .schedule import NoiseSchedule
    from .unet import UNet

    codec = PixelCodec(factor)
    torch.manual_seed(seed)
    unet = UNet(tiny_unet_config(in_channels=codec.channels, out_channels=codec.channels, **unet_overrides))
    with torch.no_grad():   # move temporal layers off zero so the random model mixes frames
        for _, p in unet.temporal_parameters():
            p.add_(torch.randn_like(p) * perturb)
    schedule = NoiseSchedule(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    return VideoPipeline(unet, tiny_text_encoder(seed=seed), schedule, codec,
                         {"height": 64, "width": 64, "num_frames": 16, "fps": 8})


def tiny_model(path: str | os.PathLike, **kwargs) -> Path:
    """Save a tiny random model folder (diffusers layout) at `path` and return it."""
    tiny_pipeline(**kwargs).save_pretrained(path)
    return Path(path)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        print("usage: python -m vidiff.testing OUT_DIR   (writes a tiny random model folder)", file=sys.stderr)
        sys.exit(2)
    print(f"wrote tiny random model to {tiny_model(sys.argv[1])}")
