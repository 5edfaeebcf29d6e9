"""What a pipeline returns: frames, frame rate and the settings that made them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidiff.data.io import write_video


@dataclass
class Video:
    """Generated frames (`f h w 3` uint8) and their frame rate."""

    frames: np.ndarray
    fps: float = 8.0
    settings: dict = field(default_factory=dict)   # what made it (seed included); saved inside the file
    seams: list | None = None                      # first frame of each window after the first (long-video modes)

    def save(self, path: str | os.PathLike, upscale: int = 1) -> Path:
        """Write MP4 / GIF / PNG / frame folder by suffix (atomically), with the settings as metadata.

        `upscale` enlarges each pixel to an n x n block, for looking at small videos.
        """
        from vidiff.data.io import upscale as _upscale

        return write_video(_upscale(self.frames, upscale), path, fps=self.fps, metadata=self.settings or None)

    def __len__(self) -> int:
        return len(self.frames)
