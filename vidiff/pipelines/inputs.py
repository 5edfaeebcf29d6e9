"""What goes into a pipeline and comes out of it: prompts (with prompt travel) to text states, given frames and
input videos to latents, latents back to uint8 frames. `PipelineInputs` is mixed into `VideoPipeline` (it reads
its text_encoder, codec, device, dtype and schedule).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from einops import rearrange

from vidiff.data.io import as_frames, read_video
from vidiff.devices import randn
from vidiff.models.codec import VaeCodec


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """`f h w 3` uint8 -> `1 3 f h w` float in [-1, 1]."""
    x = torch.from_numpy(np.require(as_frames(frames), requirements=["C", "W"])).float() / 127.5 - 1
    return rearrange(x, "f h w c -> 1 c f h w")


def to_frames(video: torch.Tensor) -> np.ndarray:
    """`1 3 f h w` in [-1, 1] -> `f h w 3` uint8."""
    x = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "c f h w -> f h w c").cpu().numpy()


def load_frames(source) -> np.ndarray:
    """An image or video given as path, PIL image, numpy array or Video -> `f h w 3` uint8."""
    if isinstance(source, (str, os.PathLike)):
        return read_video(source)[0]
    if hasattr(source, "convert") and hasattr(source, "size"):      # PIL image
        return np.asarray(source.convert("RGB"))[None]
    return as_frames(source)


def travel(text_encoder, prompt, num_frames: int) -> torch.Tensor:
    """Per-frame text states `(f, n, d)` for `prompt` = text or {frame: text} (prompt travel).

    Key frames get their prompt's states; frames between two keys get the linear blend, and the last
    key holds to the end, as diffusers interpolates dict prompts (`AnimateDiffFreeNoiseMixin`).
    """
    if isinstance(prompt, str):
        return text_encoder([prompt])[0].expand(num_frames, -1, -1)
    if not isinstance(prompt, dict) or not prompt:
        raise ValueError(f"prompt must be a text or a non-empty {{frame: text}} dict, got {type(prompt).__name__}")
    bad = [k for k, v in prompt.items() if not isinstance(k, int) or isinstance(k, bool) or not isinstance(v, str)]
    if bad:
        raise ValueError(f"prompt travel needs {{frame: text}} with integer frames, got key {bad[0]!r}")
    keys = sorted(prompt)
    if keys[0] != 0 or keys[-1] >= num_frames:
        raise ValueError(f"prompt travel frames must start at 0 and stay below num_frames={num_frames}, got {keys}")
    return blend_keys(keys, text_encoder([prompt[k] for k in keys]), num_frames)


def blend_keys(keys: list[int], states: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per-frame states `(f, ...)` from states at sorted key frames: linear between two keys, the last key held to
    the end (prompt travel; IP-Adapter's {frame: image})."""
    out = states[-1:].expand(num_frames, *states.shape[1:]).clone()
    if keys[-1] != num_frames - 1:                    # the last key holds to the last frame
        keys, states = keys + [num_frames - 1], torch.cat([states, states[-1:]])
    for i in range(len(keys) - 1):
        a, b = keys[i], keys[i + 1]
        w = torch.linspace(0, 1, b - a + 1, dtype=states.dtype, device=states.device)
        w = w.view(-1, *([1] * (states.ndim - 1)))
        out[a:b + 1] = (1 - w) * states[i] + w * states[i + 1]
    return out


def check_strength(strength) -> None:
    """ValueError unless strength is a number in [0, 1]."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0, 1] (0 keeps the input, 1 redraws it), got {strength!r}")


class PipelineInputs:
    """Encoding a request's prompts and frames, decoding its latents."""

    def _text(self, prompt, negative_prompt, guidance_scale, num_frames: int = 1):
        cfg = bool(torch.as_tensor(guidance_scale, dtype=torch.float32).gt(1).any())   # as diffusers: CFG when > 1
        if isinstance(prompt, dict) or isinstance(negative_prompt, dict):             # prompt travel: a text per frame
            parts = ([negative_prompt or ""] if cfg else []) + [prompt]
            return torch.stack([travel(self.text_encoder, p, num_frames) for p in parts]).to(self.device, self.dtype)
        prompts = ([negative_prompt or ""] if cfg else []) + [prompt]
        return self.text_encoder(prompts).to(self.device, self.dtype)

    def _encode_given(self, given: dict, f: int, h: int, w: int, b: int = 1):
        if not given:
            return None
        r = self.codec.factor
        lat = torch.zeros(b, self.codec.channels, f, h // r, w // r, device=self.device)
        mask = torch.zeros(b, f)                            # host-side: it decides, per frame, what is sampled
        for i, img in given.items():
            img = as_frames(img)[0]
            if not 0 <= i < f:
                raise ValueError(f"given frame index {i} is outside 0..{f - 1}")
            if img.shape[:2] != (h, w):
                raise ValueError(f"given frame {i} is {img.shape[1]}x{img.shape[0]}, the video is {w}x{h}")
            lat[:, :, i:i + 1] = self.codec.encode(to_tensor(img[None]).to(self.device))
            mask[:, i] = 1
        return lat, mask

    def _encode_video(self, frames: np.ndarray, shape, strength: float, steps: int, sampler: str, g):
        """(clean latents, noise, first step) of video-to-video, drawn as diffusers' video-to-video draws them:
        the VAE posterior sample first, then noise laid out `b f c h w`."""
        check_strength(strength)
        b, c, f, hh, ww = shape
        frames = as_frames(frames)
        if frames.shape[:3] != (f, hh * self.codec.factor, ww * self.codec.factor):
            raise ValueError(f"the input video is {frames.shape[2]}x{frames.shape[1]} x {frames.shape[0]} frames, "
                             f"the request {ww * self.codec.factor}x{hh * self.codec.factor} x {f}")
        video = to_tensor(frames).to(self.device).repeat(b, 1, 1, 1, 1)
        if isinstance(self.codec, VaeCodec):
            init = self.codec.encode_sample(video, g)
        else:
            init = self.codec.encode(video).float()
        noise = rearrange(randn((b, f, c, hh, ww), g), "b f c h w -> b c f h w")
        start = steps - min(int(steps * strength), steps)            # diffusers' get_timesteps
        return init, noise, start

    def _decode(self, latents: torch.Tensor, chunk: int | None = None) -> np.ndarray:
        # 16 frames at a time straight to uint8: decoding never holds the whole video in float
        kw = {"chunk": chunk} if chunk and isinstance(self.codec, VaeCodec) else {}
        return np.concatenate([to_frames(self.codec.decode(latents[:, :, i:i + 16].float(), **kw))
                               for i in range(0, latents.shape[2], 16)])
