"""The memory layout of feature maps on CPU: channels-last where it is faster, contiguous at wide levels.

Channels-last maps make convolutions ~1.4x (fp32) to 2x (bf16) faster at narrow widths and turn the spatial
transformer's `c h w -> (h w) c` into a view. At 1024 channels and more (SD's deepest levels, on small maps) oneDNN's
channels-last convolution is the slower one (1280 channels at 4x4: 0.66x fp32, 0.77x bf16; at 2x2 0.55x), so
those levels stay contiguous. Weights and maps of a level share a layout (mixed layouts are slower than either).
"""

from __future__ import annotations

import torch
from torch import nn

WIDE = 1024          # channels from which feature maps stay contiguous (not channels-last)


def memory_format_of(channels: int) -> torch.memory_format:
    """The faster layout on CPU for feature maps of this many channels."""
    return torch.contiguous_format if channels >= WIDE else torch.channels_last


def lay_out(model: nn.Module) -> None:
    """2-D convolution weights in the layout of the maps they make (`memory_format_of` their output width: the level
    they belong to); ModelScope's 5-D frame-convolution weights stay as they are."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.to(memory_format=memory_format_of(m.out_channels))
