"""Clip datasets: folders of videos (and images) with captions, decoded by decord (PyAV fallback).

Sources, in the order they are looked for:
  - a metadata file (`metadata.jsonl` or `metadata.csv`, columns `path`, `caption`, optional `fps`)
    given directly or found in the folder; paths are relative to the file's folder;
  - otherwise every video/image file under the folder, its caption in a sidecar `NAME.txt`.

Short-video policy (`short_videos`): a video with fewer frames than one clip needs is skipped
("skip", the default), read cyclically ("loop"), or padded by repeating its last frame ("pad").

Bad files (empty, truncated, not a video, unreadable) are skipped with one warning each and
counted in `skipped`; a file that fails later, while decoding a clip, is skipped the same way and
the next file is read instead, so one bad file never stops a run or a DataLoader worker.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidiff.data.io import IMAGE_SUFFIXES, probe_video, read_frames, read_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif")
SHORT_POLICIES = ("skip", "loop", "pad")
CROPS = ("center", "random")


@dataclass
class Entry:
    path: Path
    caption: str
    frames: int          # frame count (1 for an image)
    fps: float
    image: bool


def _rows(source: Path) -> tuple[Path, list[dict]]:
    """(base folder, rows with path/caption/fps) from a metadata file or a scanned folder."""
    meta = source
    if source.is_dir():
        meta = next((source / n for n in ("metadata.jsonl", "metadata.csv") if (source / n).exists()), None)
    if meta is None:
        rows = []
        for p in sorted(source.rglob("*")):
            if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
                side = p.with_suffix(".txt")
                rows.append({"path": str(p.relative_to(source)),
                             "caption": side.read_text().strip() if side.exists() else ""})
        return source, rows
    if meta.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{meta}:{n}: not valid JSON ({e.msg})") from None
    elif meta.suffix == ".csv":
        with open(meta, newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise ValueError(f"metadata file must be .jsonl or .csv, got {str(meta)!r}")
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "path" not in row:
            raise ValueError(f"{meta}: row {n} has no 'path' column (columns: path, caption, optional fps)")
    return meta.parent, rows


class ClipDataset(torch.utils.data.Dataset):
    """Clips of `num_frames` frames as `c f h w` float tensors in [-1, 1], with their captions.

    Index with an int for the deterministic evaluation clip (first frames, centre crop), or with
    `(index, seed)` for a training clip whose start and crop come from `seed` (see `ClipSampler`).
    """

    def __init__(self, source: str | os.PathLike, num_frames: int = 16, frame_stride: int = 1,
                 fps: float | None = None, size: int | tuple[int, int] = 64, crop: str = "center",
                 short_videos: str = "skip", images: bool | None = None, train: bool = True,
                 warn: bool = True):
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"dataset {str(source)!r} does not exist")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0 (or None to use frame_stride), got {fps}")
        if short_videos not in SHORT_POLICIES:
            raise ValueError(f"short_videos must be one of {SHORT_POLICIES}, got {short_videos!r}")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        self.source, self.num_frames, self.frame_stride, self.fps = source, num_frames, frame_stride, fps
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.crop, self.short_videos, self.train, self.warn = crop, short_videos, train, warn
        self.images = num_frames == 1 if images is None else images   # images are one-frame clips
        self.skipped: dict[str, str] = {}                                # path -> why
        self.entries: list[Entry] = []
        base, rows = _rows(source)
        for row in rows:
            self._add(base / str(row["path"]), str(row.get("caption") or ""), row.get("fps"))
        if not self.entries:
            detail = f"; {len(self.skipped)} skipped, e.g. {next(iter(self.skipped.values()))}" if self.skipped else ""
            raise ValueError(f"no usable clips in {str(source)!r}{detail}")

    # ---- indexing ----------------------------------------------------------------------------
    def _skip(self, path: Path, why: str) -> None:
        if str(path) not in self.skipped:
            self.skipped[str(path)] = why
            if self.warn:
                warnings.warn(f"skipping {path}: {why}", stacklevel=3)

    def _add(self, path: Path, caption: str, fps) -> None:
        is_image = path.suffix.lower() in IMAGE_SUFFIXES
        if is_image and not self.images:
            return
        try:
            if not path.is_file():
                raise ValueError("file not found")
            if is_image:
                from PIL import Image

                with Image.open(path) as im:
                    im.verify()
                n, native = 1, 0.0
            else:
                n, native, _, _ = probe_video(path)
            if n < 1:
                raise ValueError("no frames")
        except Exception as e:   # any failure to read a header is a bad file, never a crash
            self._skip(path, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return
        entry = Entry(path, caption, n, float(fps) if fps else native, is_image)
        if not is_image and self.short_videos == "skip" and n < self.span(entry):
            self._skip(path, f"{n} frames, a {self.num_frames}-frame clip at stride {self.stride(entry)} needs {self.span(entry)}")
            return
        self.entries.append(entry)

    def stride(self, entry: Entry) -> int:
        """Frame step for `entry`: `frame_stride`, or native fps / target fps when `fps` is set."""
        if self.fps is None or not entry.fps:
            return self.frame_stride
        return max(1, round(entry.fps / self.fps))

    def span(self, entry: Entry) -> int:
        """Frames of the source one clip covers."""
        return (self.num_frames - 1) * self.stride(entry) + 1

    def __len__(self) -> int:
        return len(self.entries)

    def frame_indices(self, entry: Entry, rng: np.random.Generator | None) -> np.ndarray:
        """Source frame indices of one clip: random start when training (`rng`), else the first frames."""
        if entry.image:
            return np.zeros(self.num_frames if self.num_frames == 1 else 1, dtype=np.int64)
        span, stride = self.span(entry), self.stride(entry)
        start = int(rng.integers(0, entry.frames - span + 1)) if rng is not None and entry.frames >= span else 0
        idx = start + stride * np.arange(self.num_frames)
        if self.short_videos == "loop":
            return idx % entry.frames
        return np.minimum(idx, entry.frames - 1)        # "pad" (and never past the end)

    # ---- loading -----------------------------------------------------------------------------
    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        rng = np.random.default_rng(seed) if seed is not None and self.train else None
        skipped = []
        for attempt in range(len(self.entries)):
            entry = self.entries[(index + attempt) % len(self.entries)]
            if str(entry.path) in self.skipped:
                continue
            try:
                idx = self.frame_indices(entry, rng)
                frames = read_image(entry.path)[None] if entry.image else read_frames(entry.path, idx)
                if len(frames) != len(idx):
                    raise ValueError(f"decoded {len(frames)} frames, expected {len(idx)}")
                video = self.preprocess(frames, rng)
            except Exception as e:   # decode failure mid-run: skip the file, read the next one
                self._skip(entry.path, str(e).splitlines()[0] if str(e) else type(e).__name__)
                skipped.append(str(entry.path))
                continue
            return {"video": video, "caption": entry.caption, "path": str(entry.path),
                    "key": [int(index), -1 if seed is None else int(seed)], "skipped": skipped}
        raise RuntimeError(f"every file in {str(self.source)!r} failed to decode")

    def preprocess(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        """`f h w 3` uint8 -> `c f H W` float in [-1, 1]: resize to cover, then centre or random crop."""
        H, W = self.size
        x = torch.from_numpy(np.require(frames, requirements=["C", "W"])).permute(0, 3, 1, 2).float()   # f c h w
        h, w = x.shape[-2:]
        scale = max(H / h, W / w)
        if (round(h * scale), round(w * scale)) != (h, w):
            nh, nw = max(H, round(h * scale)), max(W, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=scale < 1, align_corners=False)
        h, w = x.shape[-2:]
        if self.crop == "random" and rng is not None:
            top, left = int(rng.integers(0, h - H + 1)), int(rng.integers(0, w - W + 1))
        else:
            top, left = (h - H) // 2, (w - W) // 2
        x = x[:, :, top:top + H, left:left + W]
        return (x / 127.5 - 1).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()            # c f h w


class ClipSampler(torch.utils.data.Sampler):
    """An endless, resumable, rank-sharded stream of `(index, seed)` keys.

    Epoch `e` visits a seeded permutation of the dataset; the global stream is cut between ranks
    round-robin, so ranks never share a sample within an epoch. `start` skips that many samples of
    the global stream (resume: steps done x samples per step).
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world: int = 1, start: int = 0):
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world, start

    def __iter__(self):
        pos = self.start + self.rank
        perm_epoch, perm = -1, None
        while True:
            epoch, j = divmod(pos, self.n)
            if epoch != perm_epoch:
                perm_epoch, perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
            yield int(perm[j]), int(np.random.default_rng([self.seed, epoch, j]).integers(2**62))
            pos += self.world

    def __len__(self) -> int:      # endless; DataLoader only needs a number for its progress
        return math.ceil(self.n / self.world)


def collate(items: list[dict]) -> dict:
    """Stack clips of equal shape; captions, paths and keys as lists; skipped files merged."""
    return {"video": torch.stack([it["video"] for it in items]),
            "caption": [it["caption"] for it in items],
            "path": [it["path"] for it in items],
            "key": [it["key"] for it in items],
            "skipped": sorted({p for it in items for p in it["skipped"]})}


def _worker_init(_):
    torch.set_num_threads(1)       # decoding workers must not fight the training threads


def loader(dataset: ClipDataset, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
           start: int = 0, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """An endless DataLoader of training batches over `dataset` for this rank."""
    sampler = ClipSampler(len(dataset), seed, rank, world, start)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                       collate_fn=collate, worker_init_fn=_worker_init,
                                       persistent_workers=num_workers > 0,
                                       prefetch_factor=4 if num_workers > 0 else None)
