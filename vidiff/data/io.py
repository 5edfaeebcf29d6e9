"""Video files in and out. Frames at this edge are numpy `f h w 3` uint8.

Writes are atomic (temp file in the target folder, then rename): a failed or interrupted write
leaves nothing behind. MP4 is H.264 yuv420p. yuv420p needs even sizes and imageio-ffmpeg would
silently resize to multiples of 16 (or write an empty file for odd sizes with
`macro_block_size=1`), so odd sizes are padded by one edge pixel, on purpose and with a warning,
and the written file is checked to be non-empty.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
WRITE_FORMATS = ".mp4, .gif, .png (one frame) or a folder (PNG frames)"


def as_frames(video) -> np.ndarray:
    """Coerce frames to `f h w 3` uint8 (accepts `h w 3`, grayscale, or a `.frames` object)."""
    frames = getattr(video, "frames", video)
    frames = np.asarray(frames)
    if frames.ndim == 3 and frames.shape[-1] in (1, 3, 4):
        frames = frames[None]
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames must be f h w 3 (or h w 3), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return np.ascontiguousarray(frames[..., :3])


def output_kind(path: str | os.PathLike) -> str:
    """'mp4', 'gif', 'png' or 'folder' from the path's suffix; ValueError for anything else."""
    p = str(path)
    suffix = Path(p).suffix.lower()
    if suffix == ".mp4":
        return "mp4"
    if suffix == ".gif":
        return "gif"
    if suffix == ".png":
        return "png"
    if suffix == "" or p.endswith(os.sep):
        return "folder"
    raise ValueError(f"output {p!r}: unknown suffix {suffix!r}; allowed: {WRITE_FORMATS}")


def check_writable(path: str | os.PathLike) -> None:
    """Raise ValueError unless `path`'s folder exists and is writable (before any long work)."""
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise ValueError(f"output folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"output folder {str(parent)!r} is not writable")


def write_video(video, path: str | os.PathLike, fps: float = 8.0, quality: int = 18,
                metadata: dict | None = None) -> Path:
    """Write frames to `path`; the suffix picks MP4, GIF, PNG (one frame) or a PNG-frame folder.

    `metadata` (the settings that made the video) is stored as JSON inside the file: the MP4
    `comment` tag, the GIF comment, a PNG text chunk, or `settings.json` in a frame folder.
    """
    import json

    frames, path = as_frames(video), Path(path)
    meta = json.dumps(metadata, sort_keys=True) if metadata else None
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    kind = output_kind(path)
    if kind == "png" and len(frames) != 1:
        raise ValueError(f"{path}: a .png holds one frame, got {len(frames)}; use .mp4, .gif or a folder")
    check_writable(path)
    if kind == "folder":
        return _write_folder(frames, path, meta)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        {"mp4": _write_mp4, "gif": _write_gif, "png": _write_png}[kind](frames, tmp, fps, quality, meta)
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise RuntimeError(f"the encoder wrote an empty file for {path}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def even_size(frames: np.ndarray) -> np.ndarray:
    """Pad odd heights/widths by one replicated edge pixel (yuv420p needs even sizes)."""
    _, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        warnings.warn(f"MP4 (yuv420p) needs even sizes: padded {w}x{h} to {w + pw}x{h + ph} by edge replication")
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def _write_mp4(frames: np.ndarray, path: Path, fps: float, quality: int, meta: str | None = None) -> None:
    import imageio_ffmpeg

    frames = even_size(frames)
    _, h, w, _ = frames.shape
    # macro_block_size=1: never resize. -crf sets quality; yuv420p for every player.
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        macro_block_size=1, quality=None,
        output_params=["-crf", str(quality), "-preset", "medium"] + (["-metadata", f"comment={meta}"] if meta else []),
        ffmpeg_log_level="error")
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def _write_gif(frames: np.ndarray, path: Path, fps: float, quality: int, meta: str | None = None) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(1, round(1000 / fps)), loop=0, **({"comment": meta.encode()} if meta else {}))


def _write_png(frames: np.ndarray, path: Path, fps: float, quality: int, meta: str | None = None) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if meta:
        info.add_text("vidiff", meta)
    Image.fromarray(frames[0]).save(path, format="PNG", pnginfo=info)


def read_settings(path: str | os.PathLike) -> dict | None:
    """The settings `write_video` stored in a video or image (None if there are none)."""
    import json

    path = Path(path)
    raw = None
    if path.is_dir():
        file = path / "settings.json"
        raw = file.read_text() if file.exists() else None
    elif path.suffix.lower() in (".png", ".gif"):
        from PIL import Image

        with Image.open(path) as im:
            raw = im.info.get("vidiff") or im.info.get("comment")
    else:
        import av

        with av.open(str(path)) as container:
            raw = container.metadata.get("comment")
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return None


def fit_frame(frame: np.ndarray, height: int, width: int, how: str = "crop") -> np.ndarray:
    """Resize `h w 3` uint8 to height x width: `crop` (cover, centre crop), `pad` (fit, black bars) or `stretch`."""
    from PIL import Image

    if how not in ("crop", "pad", "stretch"):
        raise ValueError(f"resize must be one of crop, pad, stretch, got {how!r}")
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    im = Image.fromarray(frame)
    if how == "stretch":
        return np.asarray(im.resize((width, height), Image.LANCZOS))
    scale = (max if how == "crop" else min)(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    im = np.asarray(im.resize((nw, nh), Image.LANCZOS))
    if how == "crop":
        top, left = (nh - height) // 2, (nw - width) // 2
        return np.ascontiguousarray(im[top:top + height, left:left + width])
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top:top + nh, left:left + nw] = im
    return out


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscale by an integer factor (for looking at small videos; adds no detail)."""
    if factor < 1:
        raise ValueError(f"upscale factor must be >= 1, got {factor}")
    return frames if factor == 1 else frames.repeat(factor, axis=1).repeat(factor, axis=2)


def write_folder_atomically(path: str | os.PathLike, write) -> Path:
    """Run `write(tmp)` into a temp folder beside `path`, then rename it into place: nothing half-written.

    `path` must not exist yet, or be an empty folder.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"output folder {str(path)!r} exists and is not empty")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    try:
        write(tmp)
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def _write_folder(frames: np.ndarray, path: Path, meta: str | None = None) -> Path:
    from PIL import Image

    def write(tmp):
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"frame_{i:05d}.png")
        if meta:
            (tmp / "settings.json").write_text(meta + "\n")
    return write_folder_atomically(path, write)


def contact_sheet(video, path: str | os.PathLike, columns: int = 8, max_frames: int = 32,
                  pad: int = 2) -> Path:
    """Write a PNG grid of (up to `max_frames`, evenly spaced) frames of a video."""
    frames = as_frames(video)
    if len(frames) > max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    n, h, w, _ = frames.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        sheet[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = frame
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"contact sheet path must end in .png, got {str(path)!r}")
    return write_video(sheet[None], path)


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a video file, GIF, image or folder of frames -> (`f h w 3` uint8, fps)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"folder {str(path)!r} holds no image frames ({', '.join(IMAGE_SUFFIXES)})")
        return np.stack([read_image(p) for p in files]), 8.0
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)[None], 8.0
    if path.suffix.lower() == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
            duration = im.info.get("duration", 125) or 125
        return np.stack(frames), 1000.0 / duration
    return _decode(path)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image as `h w 3` uint8; ValueError if it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {e}") from None


def _try_decord(path: Path, fn):
    """`fn(decord.VideoReader)`, or None when decord is missing or fails on the file.

    decord 0.6 fails on some frame widths (e.g. 48: its row padding mismatches), so every decord
    failure is retried with PyAV before a file is called unreadable.
    """
    if path.stat().st_size == 0:
        raise ValueError(f"cannot decode {str(path)!r}: empty file")
    try:
        import decord
    except ImportError:
        return None
    decord.logging.set_level(decord.logging.QUIET)      # ffmpeg's own log lines
    try:
        with _stderr_silenced():                          # decord's C++ "ERROR opening" line
            return fn(decord.VideoReader(str(path), ctx=decord.cpu(0)))
    except Exception:  # decord raises its own DECORDError and RuntimeError types
        return None


@contextlib.contextmanager
def _stderr_silenced():
    """Send file descriptor 2 to /dev/null for the block (native libraries print there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def probe_video(path: str | os.PathLike) -> tuple[int, float, int, int]:
    """(frame count, fps, height, width) of a video file, from its header; ValueError if unreadable."""
    path = Path(path)
    got = _try_decord(path, lambda vr: (len(vr), float(vr.get_avg_fps()), *vr[0].shape[:2]))
    if got is not None:
        return got
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            n = stream.frames or sum(1 for _ in container.decode(stream))
            return n, float(stream.average_rate or 8), stream.codec_context.height, stream.codec_context.width
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        raise ValueError(f"cannot decode {str(path)!r}: {_why(e)}") from None


def _why(e: Exception) -> str:
    """PyAV's reason without its errno and repeated path."""
    return (getattr(e, "strerror", None) or str(e).splitlines()[0] or type(e).__name__)[:200]


def read_frames(path: str | os.PathLike, indices) -> np.ndarray:
    """Decode only the frames at `indices` -> `f h w 3` uint8 (decord, PyAV fallback); ValueError if it cannot."""
    path = Path(path)
    indices = [int(i) for i in indices]
    frames = _try_decord(path, lambda vr: vr.get_batch(indices).asnumpy())
    if frames is not None:
        return frames
    frames = _decode_av(path, max(indices))[0]
    if max(indices) >= len(frames):
        raise ValueError(f"cannot decode {str(path)!r}: frame {max(indices)} asked, {len(frames)} decoded")
    return frames[indices]


def _decode(path: Path) -> tuple[np.ndarray, float]:
    """Decode every frame with decord; PyAV when decord is missing or fails on the file."""
    got = _try_decord(path, lambda vr: (vr.get_batch(list(range(len(vr)))).asnumpy(), float(vr.get_avg_fps())))
    return got if got is not None else _decode_av(path)


def _decode_av(path: Path, last: int | None = None) -> tuple[np.ndarray, float]:
    """Decode with PyAV, every frame or up to frame index `last`."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = []
            for f in container.decode(stream):
                frames.append(f.to_ndarray(format="rgb24"))
                if last is not None and len(frames) > last:
                    break
            fps = float(stream.average_rate or 8)
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        raise ValueError(f"cannot decode {str(path)!r}: {_why(e)}") from None
    if not frames:
        raise ValueError(f"cannot decode {str(path)!r}: no frames")
    return np.stack(frames), fps
