"""The `shapes` dataset: procedural text-to-video clips written as real MP4 files + `metadata.jsonl`.

Each clip shows one coloured shape on a dark, lightly textured background. The shape moves left,
right, up or down at a steady speed, or stays still, and the caption says exactly that
("a red circle moving left", "a blue square staying still"). The clips are plain H.264 MP4s, so
training reads them through the same decord path as anyone's videos.

Hold-out: the (colour, shape, motion) triples in `HOLDOUT` are never generated unless asked for
(`include_holdout=True`). Every colour, shape and motion still appears in other combinations, so a
model trained on the rest can be tested on compositions it never saw.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

# Well-separated hues (about 45 degrees or more apart) at high saturation, on a dark background.
COLORS = {
    "red": (220, 40, 40),
    "yellow": (235, 215, 45),
    "green": (45, 190, 65),
    "cyan": (40, 200, 215),
    "blue": (50, 85, 235),
    "purple": (170, 60, 215),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "still")
# (colour, shape, motion) combinations held out of training: each colour once, each shape twice.
HOLDOUT = (
    ("red", "triangle", "up"),
    ("yellow", "circle", "left"),
    ("green", "square", "down"),
    ("cyan", "triangle", "right"),
    ("blue", "circle", "still"),
    ("purple", "square", "left"),
)
VOCAB = ("a", "moving", "staying", *COLORS, *SHAPES, *MOTIONS)
OBJECT_SCALES = (0.5, 2.0)     # object radius: 0.14-0.19 of the frame times this; beyond 2 there is no room to move


def check_object_scale(scale: float) -> float:
    """`scale` if it is in OBJECT_SCALES, else a one-line ValueError naming it (`--object-scale`)."""
    lo, hi = OBJECT_SCALES
    if not lo <= scale <= hi:
        raise ValueError(f"--object-scale must be in [{lo:g}, {hi:g}], got {scale:g}")
    return scale


def caption(color: str, shape: str, motion: str) -> str:
    """The caption of one clip: 'a red circle moving left' or 'a red circle staying still'."""
    return f"a {color} {shape} " + ("staying still" if motion == "still" else f"moving {motion}")


def combinations(include_holdout: bool = False) -> list[tuple[str, str, str]]:
    """Every (colour, shape, motion) triple, without the held-out ones unless asked."""
    combos = list(itertools.product(COLORS, SHAPES, MOTIONS))
    return combos if include_holdout else [c for c in combos if c not in HOLDOUT]


def _distance(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) from each pixel centre to the shape's edge."""
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return np.sqrt(dx ** 2 + dy ** 2) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r     # same area feel as the circle
    # equilateral triangle pointing up, centred on (cy, cx): max over its three edge half-planes
    s3 = np.sqrt(3.0) / 2
    return np.maximum.reduce([dy - 0.5 * r, -s3 * dx - 0.5 * dy - 0.5 * r, s3 * dx - 0.5 * dy - 0.5 * r]) * 1.0


def render_clip(color: str, shape: str, motion: str, rng: np.random.Generator, size: int = 64,
                num_frames: int = 24, drift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Draw one clip as `f h w 3` uint8 (anti-aliased edges, sub-pixel motion).

    The object's radius is 0.14-0.19 of the frame times `scale` (0.5-2; the travel shrinks as it grows).
    `drift` adds a steady downward motion of that fraction of the frame over the clip (negative: upward),
    for left / right / still clips: a motion the captions do not name (what a motion LoRA learns).
    """
    if color not in COLORS or shape not in SHAPES or motion not in MOTIONS:
        raise ValueError(f"unknown combination {(color, shape, motion)}; colours {list(COLORS)}, "
                         f"shapes {list(SHAPES)}, motions {list(MOTIONS)}")
    check_object_scale(scale)
    if drift and (motion in ("up", "down") or not -0.5 <= drift <= 0.5):
        raise ValueError(f"drift goes with left / right / still clips and |drift| <= 0.5, got {drift} with {motion!r}")
    # background: a dark grey with a faint low-frequency texture, fixed over the clip
    base = rng.uniform(20, 70) + rng.uniform(-6, 6, size=3)
    coarse = rng.uniform(-6, 6, size=(size // 8 + 1, size // 8 + 1, 1))
    texture = np.kron(coarse, np.ones((8, 8, 1)))[:size, :size]
    background = base + texture

    r = size * rng.uniform(0.14, 0.19) * scale
    lo, hi = r + 1, size - r - 1                                   # centre keeps the shape inside
    travel = (hi - lo) * rng.uniform(0.6, 0.95) if motion != "still" else 0.0
    start = rng.uniform(lo, hi - travel)
    d = abs(drift) * size
    across = rng.uniform(lo, hi - d) + (d if drift < 0 else 0)
    along = start + travel * np.linspace(0, 1, num_frames)
    if motion in ("left", "up"):
        along = along[::-1]                                        # decreasing coordinate
    cys, cxs = (along, np.full(num_frames, across)) if motion in ("up", "down") else (np.full(num_frames, across), along)
    if drift:
        cys = cys + drift * size * np.linspace(0, 1, num_frames)
    rgb = np.clip(np.array(COLORS[color]) + rng.uniform(-12, 12, size=3), 0, 255)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for i in range(num_frames):
        alpha = np.clip(0.5 - _distance(shape, yy, xx, cys[i], cxs[i], r), 0, 1)[..., None]
        frames[i] = np.clip(background * (1 - alpha) + rgb * alpha + 0.5, 0, 255).astype(np.uint8)
    return frames


def clip_spec(index: int, seed: int = 0, include_holdout: bool = False) -> tuple[str, str, str]:
    """The combination of clip `index`: a seeded shuffle of all combinations, cycled (balanced)."""
    combos = combinations(include_holdout)
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(len(combos))
    return combos[order[index % len(combos)]]


def make_shapes_dataset(out: str | os.PathLike, clips: int = 1000, seed: int = 0, size: int = 64,
                        num_frames: int = 24, fps: float = 8.0, include_holdout: bool = False,
                        progress: bool = True, motions: tuple | None = None, drift: float = 0.0,
                        scale: float = 1.0) -> Path:
    """Write `clips` MP4s under `out/clips/` and `out/metadata.jsonl`; deterministic for `seed`.

    `motions` keeps only those motions; `drift` adds an unnamed downward motion and `scale` sizes the
    object (see `render_clip`).
    """
    from tqdm.auto import tqdm

    from vidiff.data.io import write_video

    if clips < 1:
        raise ValueError(f"--clips must be >= 1, got {clips}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16, got {size}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    check_object_scale(scale)                         # before anything is written
    out = Path(out)
    if (out / "metadata.jsonl").exists():
        raise ValueError(f"{str(out)!r} already holds a dataset (metadata.jsonl); choose another --out")
    need = size * size * 3 * num_frames * 4 * 4        # one clip rendered in float32, a few copies
    from vidiff.devices import available_memory

    free = available_memory()
    if free is not None and need > 0.5 * free:
        raise ValueError(f"one {num_frames}-frame clip at {size}x{size} needs about {need / 2 ** 30:.1f} GiB to "
                         f"render, more than half the {free / 2 ** 30:.1f} GiB free; use a smaller --size (64 is the default)")
    if motions is not None and (not motions or set(motions) - set(MOTIONS)):
        raise ValueError(f"motions must be some of {MOTIONS}, got {motions}")
    combos = [c for c in combinations(include_holdout) if motions is None or c[2] in motions]
    created = [p for p in (out, out / "clips") if not p.exists()]
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for i in tqdm(range(clips), desc="shapes", disable=not progress):
            color, shape, motion = clip_spec(i, seed, include_holdout) if motions is None else \
                combos[np.random.default_rng([seed, 2**31 - 1]).permutation(len(combos))[i % len(combos)]]
            frames = render_clip(color, shape, motion, np.random.default_rng([seed, i]), size, num_frames, drift,
                                 scale)
            rel = f"clips/{i:06d}.mp4"
            write_video(frames, out / rel, fps=fps, quality=12)
            rows.append({"path": rel, "caption": caption(color, shape, motion), "fps": fps,
                         "color": color, "shape": shape, "motion": motion})
    except BaseException:                              # nothing partial: remove what this call wrote
        for r in rows:
            (out / r["path"]).unlink(missing_ok=True)
        for p in reversed(created):
            shutil.rmtree(p, ignore_errors=True)
        raise
    # metadata last, atomically: a dataset folder with metadata.jsonl is complete
    tmp = out / f".metadata.jsonl.tmp{os.getpid()}"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, out / "metadata.jsonl")
    return out


# ---- reading a clip back: what colour, shape and motion does it show? --------------------------------
def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees [0, 360) and saturation, value in [0, 1] of `... 3` uint8 pixels."""
    x = rgb.astype(np.float64) / 255
    mx, mn = x.max(-1), x.min(-1)
    d = np.where(mx - mn == 0, 1e-9, mx - mn)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    h = np.where(mx == r, (g - b) / d % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60
    s = np.where(mx == 0, 0, (mx - mn) / np.where(mx == 0, 1, mx))
    return h % 360, s, mx


COLOR_HUES = {name: float(_hue(np.array(rgb, np.uint8))[0]) for name, rgb in COLORS.items()}


def object_mask(frame: np.ndarray) -> np.ndarray:
    """Pixels of the shape: saturated and bright (the background is a dim grey).

    A 3x3 median filter first and the largest connected blob last, so that pixel noise in a
    generated frame (which is saturated too) does not count as object.
    """
    import cv2

    _, s, v = _hue(cv2.medianBlur(np.ascontiguousarray(frame), 3))
    mask = ((s > 0.4) & (v > 0.35)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def detect(frames: np.ndarray, still_px: float = None) -> dict:
    """Colour, shape and motion of the object in a clip `f h w 3`, read from pixels (None if no object).

    Colour: nearest reference hue to the median hue of object pixels. Shape: how much of its
    bounding box the object fills (square ~1, circle ~0.79, triangle ~0.5). Motion: centroid
    displacement from the first to the last quarter of the clip; below `still_px` (default 6% of
    the frame size) it is "still".
    """
    f, h, w, _ = frames.shape
    still_px = 0.06 * min(h, w) if still_px is None else still_px
    masks = [object_mask(fr) for fr in frames]
    areas = np.array([m.sum() for m in masks])
    out = {"color": None, "shape": None, "motion": None, "found": bool((areas >= 6).mean() >= 0.5)}
    if not out["found"]:
        return out
    hues = np.concatenate([_hue(fr[m])[0] for fr, m in zip(frames, masks) if m.sum() >= 6])
    ang = np.deg2rad(hues)                                         # circular median ~ circular mean here
    mean_hue = np.rad2deg(np.arctan2(np.sin(ang).mean(), np.cos(ang).mean())) % 360
    dist = {c: min(abs(mean_hue - hh), 360 - abs(mean_hue - hh)) for c, hh in COLOR_HUES.items()}
    out["color"] = min(dist, key=dist.get)
    fills = []
    for m in masks:
        if m.sum() >= 20:
            ys, xs = np.nonzero(m)
            fills.append(m.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))
    if fills:
        fill = float(np.median(fills))
        out["shape"] = "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"
    cents = np.array([np.argwhere(m).mean(0) if m.sum() >= 6 else (np.nan, np.nan) for m in masks])
    q = max(1, f // 4)
    with warnings.catch_warnings():                     # a quarter with no object frame: NaN, read as "still"
        warnings.simplefilter("ignore", RuntimeWarning)
        start, end = np.nanmean(cents[:q], 0), np.nanmean(cents[-q:], 0)
    dy, dx = end - start
    if np.isnan([dy, dx]).any() or max(abs(dx), abs(dy)) < still_px:
        out["motion"] = "still"
    elif abs(dx) >= abs(dy):
        out["motion"] = "right" if dx > 0 else "left"
    else:
        out["motion"] = "down" if dy > 0 else "up"
    out["displacement_px"] = [round(float(dx), 2), round(float(dy), 2)]
    return out


def background_noise(frames: np.ndarray) -> float | None:
    """Temporal std (0-255) of the pixels the object never covers, averaged over them and the channels.

    The shapes background is a still texture, so on a rendered clip this is 0: anything above it is
    noise the model left in. The object's pixels in any frame, grown by 2 px, are left out. None for a
    one-frame clip or when the object covers everything.
    """
    import cv2

    if len(frames) < 2:
        return None
    covered = np.zeros(frames.shape[1:3], bool)
    for fr in frames:
        covered |= object_mask(fr)
    covered = cv2.dilate(covered.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    if covered.all():
        return None
    return float(frames.astype(np.float64).std(0)[~covered].mean())
