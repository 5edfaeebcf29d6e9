"""Steering a video: ControlNet, SparseCtrl and IP-Adapter as methods over the UNet's two steering inputs.

Each method is prepared once per call (its condition read, checked and embedded) and then, at every model call,
gives the UNet inputs for the frames and step the sampling plan is at (`Where`): ControlNet and SparseCtrl give
`residuals`, IP-Adapter gives `extra_kv`. `Steering` sums what the methods give. The plans know nothing of them:
they hand the model a `Where`, and the pipeline's runner asks the steering for the UNet's keyword arguments.
FreeInit (`vidiff/diffusion/free_init.py`) and looping (`mode="windows", loop=True`) are sampling plans.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from vidiff.data.io import fit_frame
from vidiff.pipelines.inputs import blend_keys, load_frames, to_tensor


def control_frames(source, f: int, h: int, w: int, what: str) -> np.ndarray:
    """A control input (`f h w 3` uint8 array, list of images, or a video path) as `f h w 3` at the video's size."""
    if isinstance(source, (list, tuple)):
        frames = np.concatenate([load_frames(im)[:1] for im in source]) if source else np.zeros((0, h, w, 3), np.uint8)
    else:
        frames = load_frames(source)
    if len(frames) != f:
        raise ValueError(f"{what} has {len(frames)} frames; the video has {f} (give one control frame per frame)")
    if frames.shape[1:3] != (h, w):
        warnings.warn(f"resized the {what} from {frames.shape[2]}x{frames.shape[1]} to {w}x{h}")
        frames = np.stack([fit_frame(fr, h, w, "stretch") for fr in frames])
    return frames


def _pick(embedded: torch.Tensor, frames: range) -> torch.Tensor:
    """The rows of a per-frame tensor for a window's frames (frames past the end repeat the last)."""
    idx = torch.tensor([min(i, embedded.shape[0] - 1) for i in frames], device=embedded.device)
    return embedded.index_select(0, idx)


class ControlMethod:
    """One ControlNet (or SparseCtrl net) with its embedded condition, scale and active step range."""

    def __init__(self, net, embedded: torch.Tensor, scale: float, start: float = 0.0, end: float = 1.0):
        self.net, self.embedded, self.scale, self.start, self.end = net, embedded, scale, start, end

    def __call__(self, x, t, ctx, where) -> dict:
        """`residuals` for this model call, or nothing outside [start, end] of the schedule (diffusers' keep)."""
        i, n = where.step, where.steps
        if i / n < self.start or (i + 1) / n > self.end or self.scale == 0:
            return {}
        return {"residuals": self.net(x, t, ctx, _pick(self.embedded, where.frames), self.scale)}


class IPMethod:
    """IP-Adapter keys and values, `(1 | f, q, c)` per layer for the negative and positive image, and a scale."""

    def __init__(self, layers: list, neg: list, pos: list, scale: float, batch: int):
        self.layers, self.neg, self.pos, self.scale, self.batch = layers, neg, pos, scale, batch

    def __call__(self, x, t, ctx, where) -> dict:
        """`extra_kv` for the model call's batch: [negative; positive] under guidance, each per frame or shared."""
        cfg = x.shape[0] == 2 * self.batch
        b = self.batch

        def side(kv):
            if kv.shape[0] > 1:                                   # per frame: (b f) rows for this window
                return _pick(kv, where.frames).repeat(b, 1, 1)
            return kv.expand(b, -1, -1)
        out = {}
        for layer, (nk, nv), (pk, pv) in zip(self.layers, self.neg, self.pos):
            k, v = side(pk), side(pv)
            if cfg:
                k, v = torch.cat([side(nk), k]), torch.cat([side(nv), v])
            out[layer] = [(k, v, self.scale)]
        return {"extra_kv": out}


class Steering:
    """The call's methods; `steering(x, t, ctx, where)` -> the UNet's steering keyword arguments, summed."""

    def __init__(self, methods: list):
        self.methods = methods

    def __call__(self, x, t, ctx, where) -> dict:
        """Residuals summed over the control methods; extra keys and values gathered per layer."""
        down = mid = None
        extra: dict = {}
        for method in self.methods:
            got = method(x, t, ctx, where)
            if "residuals" in got:
                d, m = got["residuals"]
                down = d if down is None else [a + c for a, c in zip(down, d)]
                mid = m if mid is None else mid + m
            for layer, items in got.get("extra_kv", {}).items():
                extra.setdefault(layer, []).extend(items)
        return {**({"residuals": (down, mid)} if down is not None else {}), **({"extra_kv": extra} if extra else {})}


def _per_name(value, names, what: str, default: float) -> dict:
    """A number for every name, or {name: number} (unnamed ones get `default`)."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"{what} names {unknown} are not loaded; loaded: {sorted(names)}")
        out = {n: value.get(n, default) for n in names}
    else:
        out = {n: value for n in names}
    for n, v in out.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{what} for {n!r} must be a number, got {v!r}")
    return {n: float(v) for n, v in out.items()}


class PipelineControls:
    """`load_controlnet`, `load_sparsectrl`, `load_ip_adapter` on a pipeline, and the steering of one call."""

    _controlnets: dict
    _sparsectrl = None
    _ip = None

    def load_controlnet(self, source, name: str | None = None) -> str:
        """Load a ControlNet (a diffusers ControlNetModel folder or hub id) under `name` (default: the folder's
        name); returns the name. Several may be loaded: `pipe(control={name: frames, ...})` uses them together."""
        from vidiff.loaders.control import load_controlnet

        net, recorded = load_controlnet(source)
        if net.sparse:
            raise ValueError(f"{source} is a SparseCtrl net: load it with load_sparsectrl (keyframes=)")
        net.check_fits(self.unet.config, "ControlNet")
        name = name or Path(str(source).rstrip("/")).name
        if not hasattr(self, "_controlnets") or self._controlnets is None:
            self._controlnets, self._control_sources = {}, {}
        self._controlnets[name] = net.to(self.device, self.dtype)
        self._control_sources[name] = recorded
        return name

    def load_sparsectrl(self, source) -> None:
        """Load a SparseCtrl net (a SparseControlNetModel folder, or the original rgb / scribble .safetensors):
        `pipe(prompt, keyframes={frame: image})` then pins those frames."""
        from vidiff.loaders.control import load_controlnet

        net, recorded = load_controlnet(source)
        if not net.sparse:
            raise ValueError(f"{source} is a ControlNet, not a SparseCtrl net: load it with load_controlnet")
        net.check_fits(self.unet.config, "SparseCtrl net")
        self._sparsectrl, self._sparsectrl_source = net.to(self.device, self.dtype), recorded

    def load_ip_adapter(self, file, image_encoder, scale: float = 1.0) -> None:
        """Load an IP-Adapter (.safetensors, plain or Plus) and the CLIP vision folder it was trained with;
        `pipe(prompt, ip_image=image | [one per frame] | {frame: image})` then uses an image as a prompt."""
        from vidiff.loaders.control import load_image_encoder, load_ip_adapter

        layers = self.unet.cross_attentions()
        adapter = load_ip_adapter(file, self.unet.config.cross_attention_dim, [a.to_q.out_features for a in layers])
        encoder, processor = load_image_encoder(image_encoder)
        self._ip = {"adapter": adapter.to(self.device, self.dtype), "encoder": encoder.to(self.device),
                    "processor": processor, "scale": float(scale), "source": str(file)}

    def set_ip_adapter_scale(self, scale: float) -> None:
        """How strongly the IP-Adapter image steers (0: not at all, as if unloaded)."""
        if self._ip is None:
            raise ValueError("no IP-Adapter is loaded (load_ip_adapter first)")
        self._ip["scale"] = float(scale)

    def controls_to(self, device, dtype) -> None:
        """Move the loaded control models with the pipeline."""
        for name, net in (getattr(self, "_controlnets", None) or {}).items():
            self._controlnets[name] = net.to(device, dtype)
        if self._sparsectrl is not None:
            self._sparsectrl = self._sparsectrl.to(device, dtype)
        if self._ip is not None:
            self._ip["adapter"].to(device, dtype)
            self._ip["encoder"].to(device)

    # ---- one call ----------------------------------------------------------------------------
    def steering(self, f: int, h: int, w: int, b: int, control=None, control_scale=1.0, control_start=0.0,
                 control_end=1.0, ip_image=None, keyframes=None) -> Steering | None:
        """The call's steering methods, each condition read, checked and embedded once; None when there are none."""
        methods = []
        with torch.no_grad():
            if control is not None:
                methods += self._controlnet_methods(control, control_scale, control_start, control_end, f, h, w)
            if keyframes is not None:
                methods.append(self._sparse_method(keyframes, control_scale, f, h, w))
            if ip_image is not None:
                methods.append(self._ip_method(ip_image, f, b))
        return Steering(methods) if methods else None

    def steering_settings(self, control, control_scale, control_start, control_end, ip_image, keyframes) -> dict:
        """What steered a video, for its settings (sources and scales; conditions by frame index)."""
        out = {}
        if control is not None:
            out["control"] = {n: {"source": self._control_sources.get(n), "start": control_start, "end": control_end,
                                  "scale": _per_name(control_scale, list(control), "control_scale", 1.0)[n]}
                              for n in control}
        if keyframes is not None:
            out["keyframes"] = {"frames": sorted(keyframes), "source": self._sparsectrl_source}
        if ip_image is not None:
            out["ip_adapter"] = {"source": self._ip["source"], "scale": self._ip["scale"],
                                 **({"frames": sorted(ip_image)} if isinstance(ip_image, dict) else {})}
        return out

    def _controlnet_methods(self, control, scale, start, end, f, h, w) -> list:
        nets = getattr(self, "_controlnets", None) or {}
        if not isinstance(control, dict) or not control:
            raise ValueError("control must be {name: frames} naming loaded ControlNets (pipe.load_controlnet)")
        unknown = sorted(set(control) - set(nets))
        if unknown:
            raise ValueError(f"control names {unknown} are not loaded ControlNets; loaded: {sorted(nets)}")
        scales = _per_name(scale, list(control), "control_scale", 1.0)
        starts = _per_name(start, list(control), "control_start", 0.0)
        ends = _per_name(end, list(control), "control_end", 1.0)
        methods = []
        for name, source in control.items():
            if not 0 <= starts[name] < ends[name] <= 1:
                raise ValueError(f"control_start and control_end for {name!r} must satisfy 0 <= start < end <= 1, "
                                 f"got {starts[name]} and {ends[name]}")
            frames = control_frames(source, f, h, w, f"control video {name!r}")
            cond = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(255)
            net = nets[name]
            methods.append(ControlMethod(net, net.embed(cond.to(self.device)), scales[name], starts[name], ends[name]))
        return methods

    def _sparse_method(self, keyframes, scale, f, h, w) -> ControlMethod:
        net = self._sparsectrl
        if net is None:
            raise ValueError("keyframes need a SparseCtrl net (pipe.load_sparsectrl / --sparsectrl)")
        if not isinstance(keyframes, dict) or not keyframes:
            raise ValueError("keyframes must be a non-empty {frame: image}")
        for k in keyframes:
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < f:
                raise ValueError(f"keyframe index {k!r} is outside the video's frames 0..{f - 1}")
        scale = scale.get("sparsectrl", 1.0) if isinstance(scale, dict) else scale
        latent = net.embedding == "simple"                # RGB: the condition is latents; scribble: pixels
        r = self.codec.factor if latent else 1
        cond = torch.zeros(f, net.cond_channels - 1, h // r, w // r, device=self.device)
        mask = torch.zeros(f, 1, h // r, w // r, device=self.device)
        for k, image in keyframes.items():
            frame = load_frames(image)[0]
            if frame.shape[:2] != (h, w):
                warnings.warn(f"resized keyframe {k} from {frame.shape[1]}x{frame.shape[0]} to {w}x{h}")
                frame = fit_frame(frame, h, w, "stretch")
            pixels = to_tensor(frame[None]).to(self.device)                       # 1 3 1 h w in [-1, 1]
            # RGB SparseCtrl takes latents (the posterior mean: deterministic; diffusers draws a sample)
            cond[k] = self.codec.encode(pixels)[0, :, 0] if latent else (pixels[0, :, 0] + 1) / 2
            mask[k] = 1
        return ControlMethod(net, net.embed(torch.cat([cond, mask], 1)), float(scale))

    def _ip_method(self, ip_image, f: int, b: int) -> IPMethod:
        ip = self._ip
        if ip is None:
            raise ValueError("ip_image needs an IP-Adapter (pipe.load_ip_adapter / --ip-adapter)")
        if isinstance(ip_image, dict):
            keys = sorted(ip_image)
            bad = [k for k in keys if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < f]
            if bad:
                raise ValueError(f"ip_image frame {bad[0]!r} is outside the video's frames 0..{f - 1}")
            images = [ip_image[k] for k in keys]
        elif isinstance(ip_image, (list, tuple)):
            if len(ip_image) != f:
                raise ValueError(f"ip_image has {len(ip_image)} images; give one, one per frame ({f}) or {{frame: image}}")
            images = list(ip_image)
        else:
            images = [ip_image]
        pos, neg = self._ip_tokens(images)
        if isinstance(ip_image, dict):
            pos, neg = blend_keys(keys, pos, f), blend_keys(keys, neg, f)
        adapter = ip["adapter"]
        layers = self.unet.cross_attentions()
        return IPMethod(layers, adapter.keys_values(neg), adapter.keys_values(pos), ip["scale"], b)

    def _ip_tokens(self, images: list) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive, negative) image tokens `(n, q, c)`: CLIP image embeddings (Plus: penultimate hidden states)
        projected; the negative is zero embeddings (Plus: the hidden states of zero pixels), as diffusers does."""
        from PIL import Image

        ip = self._ip
        pil = [Image.fromarray(load_frames(im)[0]) for im in images]
        pixels = ip["processor"](images=pil, return_tensors="pt").pixel_values.to(self.device)
        enc, adapter = ip["encoder"], ip["adapter"]
        pixels = pixels.to(next(enc.parameters()).dtype)
        if adapter.plus:
            pos = enc(pixels, output_hidden_states=True).hidden_states[-2]
            neg = enc(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        else:
            pos = enc(pixels).image_embeds
            neg = torch.zeros_like(pos)
        proj = adapter.image_proj
        dtype = next(proj.parameters()).dtype
        return proj(pos.to(dtype)), proj(neg.to(dtype))

