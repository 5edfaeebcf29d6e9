"""The generation modes over `VideoPipeline.__call__`: image-to-video, interpolation, video-to-video, continuation.

Each reads and fits its inputs, then makes one call with given frames (`given`), an input video (`init_video`) or
the autoregressive plan; the sampling itself is `__call__`'s.
"""

from __future__ import annotations

import os

import numpy as np

from vidiff.data.io import fit_frame, read_video
from vidiff.pipelines.inputs import check_strength, load_frames
from vidiff.pipelines.video import Video


def jump_warning(frames: np.ndarray, factor: float = 8.0) -> None:
    """Warn when frame 1 breaks from the given frame 0 far more than later frames change: the image is outside
    what the model learned, and it replaced the image's look instead of animating it."""
    if len(frames) < 3:
        return
    steps = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    rest = float(np.median(steps[1:]))
    if steps[0] > factor * max(rest, 1.0):
        import warnings

        warnings.warn(f"frame 1 differs from the given image {steps[0] / max(rest, 1.0):.0f}x more than later frames "
                      f"differ from each other: the image is far from what this model learned, and its look is not "
                      f"kept past frame 0")


class PipelineModes:
    """animate, interpolate, video_to_video, extend."""

    def animate(self, image, prompt: str | dict = "", resize: str | None = None, **kwargs) -> Video:
        """Image-to-video: frame 0 is `image` (path, PIL, numpy `h w 3` uint8; a video gives its first frame).

        `resize` (crop / pad / stretch) fits the image to `height` x `width` (default: the model's
        size); without it the image's own size is used.
        """
        import warnings

        frame = load_frames(image)[0]
        h, w = frame.shape[:2]
        if resize is not None:
            th, tw = kwargs.get("height") or self.defaults["height"], kwargs.get("width") or self.defaults["width"]
            if (h, w) != (th, tw):
                warnings.warn(f"resized the {w}x{h} image to {tw}x{th} ({resize})")
                frame = fit_frame(frame, th, tw, resize)
            h, w = th, tw
        kwargs["height"], kwargs["width"] = h, w
        video = self(prompt, given={0: frame}, **kwargs)
        if isinstance(video, Video):
            jump_warning(video.frames)
        return video

    def interpolate(self, first, last, prompt: str | dict = "", num_frames: int | None = None, **kwargs) -> Video:
        """Frames between `first` and `last` (both kept)."""
        a, b = load_frames(first)[-1], load_frames(last)[0]
        f = num_frames or self.defaults["num_frames"]
        kwargs.setdefault("height", a.shape[0])
        kwargs.setdefault("width", a.shape[1])
        return self(prompt, num_frames=f, given={0: a, f - 1: b}, **kwargs)

    def video_to_video(self, video, prompt: str | dict = "", strength: float = 0.6, resize: str = "crop",
                       **kwargs) -> Video:
        """Restyle or re-prompt `video` (path, `Video` or `f h w 3` array), keeping its motion (SDEdit).

        The input is noised to `strength` of the way up the schedule (0: returned as it is, 1: only its
        length is kept) and denoised toward `prompt`. Its frame rate is kept. A size that is not the
        requested `height` x `width` (default: the input's own, rounded down to the model's multiple)
        is fitted with `resize` (crop / pad / stretch), with a warning. `mode` may be all,
        autoregressive or windows, so a long input goes through the long-video modes.
        """
        import warnings

        check_strength(strength)
        if isinstance(video, (str, os.PathLike)):
            frames, fps = read_video(video)
        else:
            frames, fps = load_frames(video), getattr(video, "fps", None)
        fps = kwargs.pop("fps", None) or fps or self.defaults["fps"]
        h, w = frames.shape[1:3]
        m = self.size_multiple
        th = kwargs.pop("height", None) or max(m, h // m * m)
        tw = kwargs.pop("width", None) or max(m, w // m * m)
        if (h, w) != (th, tw):
            warnings.warn(f"resized the {w}x{h} input video to {tw}x{th} ({resize}): this model needs multiples of {m}")
            frames = np.stack([fit_frame(fr, th, tw, resize) for fr in frames])
        return self(prompt, num_frames=len(frames), height=th, width=tw, fps=fps, init_video=frames,
                    strength=strength, **kwargs)

    def extend(self, video, prompt: str | dict = "", num_frames: int = 16, context: int = 4, chunk: int = 16,
               **kwargs) -> Video:
        """Continue `video` by `num_frames` new frames, autoregressively; returns the whole video."""
        frames = load_frames(video)
        fps = kwargs.pop("fps", None) or getattr(video, "fps", None) or self.defaults["fps"]
        context = min(context, len(frames))
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        total = len(frames) + num_frames
        h, w = frames.shape[1:3]
        # The whole clip is "given" up front; only the window covering new frames is sampled.
        given = {i: fr for i, fr in enumerate(frames)}
        out = self(prompt, num_frames=total, height=h, width=w, given=given, mode="autoregressive",
                   chunk=max(chunk, context + 1), context=context, fps=fps, **kwargs)
        out.frames[:len(frames)] = frames      # the input as it was (a VAE round trip is lossy)
        return out
