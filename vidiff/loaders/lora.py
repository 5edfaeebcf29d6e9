"""LoRA adapters through peft: the community's file layouts onto a pipeline's UNet and text encoder.

vidiff's layer names are diffusers' names, so a LoRA's target is found by its key. Layouts read
(safetensors only; `W' = W + scale * alpha / r * up @ down`):

| layout | example key (the `up` / `B` half and `.alpha` alongside) |
|---|---|
| diffusers / peft | `unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight` |
| diffusers, older | `unet.….attn1.to_q.lora.down.weight`, `unet.….attn1.processor.to_q_lora.down.weight` |
| kohya (sd-scripts) | `lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight`, `lora_te_…` |
| AnimateDiff motion LoRA, original | `down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor.to_q_lora.down.weight` |
| AnimateDiff motion LoRA, diffusers | `unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight` |
| AnimateDiff v3 domain adapter | `down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight` |

Keys without a `unet.` / `text_encoder.` prefix are the UNet's. A file with `.alpha` entries (kohya)
scales by alpha / rank; the others by 1, as diffusers and AnimateDiff merge them.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vidiff.loaders.convert import refuse_pickle, rename_original

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
TARGETS = ("spatial", "temporal", "all")
_TEXT_RENAMES = (("to_q_lora", "q_proj"), ("to_k_lora", "k_proj"), ("to_v_lora", "v_proj"), ("to_out_lora", "out_proj"))


@dataclass
class LoraWeights:
    """One layer's low-rank update: `down` (r, in, ...), `up` (out, r, ...), `alpha` (None: = rank)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        """The update's rank."""
        return self.down.shape[0]


def read_lora(path: str | os.PathLike) -> dict:
    """The tensors of a LoRA `.safetensors` file (pickles are refused: loading one can run code)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LoRA file {str(path)!r} does not exist")
    refuse_pickle(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"LoRA folder {str(path)!r} must hold exactly one .safetensors file, has {len(files)}")
        path = files[0]
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a LoRA is a .safetensors file, got {path.suffix!r}")
    try:
        return load_file(str(path))
    except Exception as e:             # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None


def _layers(model: nn.Module) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, LAYERS)}


def _split_key(key: str):
    """(target, module path, part) of a non-kohya key; part is down | up | alpha, or None when not a LoRA key."""
    target = "unet"
    for prefix, name in (("unet.", "unet"), ("text_encoder.", "text_encoder"), ("module.", "unet")):
        if key.startswith(prefix):
            key, target = key[len(prefix):], name
            break
    if target == "unet":
        key = rename_original(key)
    key = key.replace(".processor.", ".")
    if target == "text_encoder":
        for a, b in _TEXT_RENAMES:
            key = key.replace(a, b)
    for suffix, part in ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora.down.weight", "down"),
                         (".lora.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
                         (".lora_linear_layer.up.weight", "up"), ("_lora.down.weight", "down"),
                         ("_lora.up.weight", "up"), (".alpha", "alpha")):
        if key.endswith(suffix):
            module = key[: -len(suffix)]
            if suffix.startswith("_lora") and module.endswith(".to_out"):
                module += ".0"                                     # to_out_lora -> to_out.0
            return target, module, part
    return target, None, None


def parse_lora(sd: dict, models: dict, source: str = "LoRA") -> dict:
    """{"unet" | "text_encoder": {module path: LoraWeights}} of a LoRA state dict, checked against `models`.

    Raises one clear ValueError when keys fit no layer (naming the first few) or a shape does not
    fit (naming the layer: a LoRA for another base).
    """
    layers = {name: _layers(m) for name, m in models.items() if m is not None}
    kohya = {name: {k.replace(".", "_"): k for k in table} for name, table in layers.items()}
    parts: dict = {}
    unmatched = []
    for key, value in sd.items():
        if not torch.is_tensor(value) or key == "animatediff_config":
            continue
        if key.startswith(("lora_unet_", "lora_te_", "lora_te1_")):
            head, _, tail = key.partition(".")
            target = "unet" if head.startswith("lora_unet_") else "text_encoder"
            module = kohya.get(target, {}).get(head.split("_", 2)[2])
            part = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}.get(tail)
        else:
            target, module, part = _split_key(key)
        if part is None or module is None or module not in layers.get(target, {}):
            unmatched.append(key)
            continue
        parts.setdefault(target, {}).setdefault(module, {})[part] = value
    if unmatched:
        more = f" (and {len(unmatched) - 3} more)" if len(unmatched) > 3 else ""
        raise ValueError(f"{source}: keys that fit no layer of this model: {', '.join(unmatched[:3])}{more}; "
                         "a LoRA for another model, or a layout vidiff does not read")
    if not parts:
        raise ValueError(f"{source} holds no LoRA weights")
    out: dict = {}
    for target, modules in parts.items():
        for module, p in modules.items():
            if "down" not in p or "up" not in p:
                raise ValueError(f"{source}: layer {module} has only the {'up' if 'up' in p else 'down'} half of its LoRA")
            w = LoraWeights(p["down"], p["up"], float(p["alpha"]) if "alpha" in p else None)
            _check_shape(layers[target][module], module, w, source)
            out.setdefault(target, {})[module] = w
    return out


def _check_shape(layer: nn.Module, module: str, w: LoraWeights, source: str) -> None:
    if isinstance(layer, nn.Linear):
        want_in, want_out = layer.in_features, layer.out_features
    else:
        want_in, want_out = layer.in_channels, layer.out_channels
    got_in, got_out = w.down.shape[1] if w.down.ndim > 1 else -1, w.up.shape[0]
    if got_in != want_in or got_out != want_out or w.up.shape[1] != w.rank:
        raise ValueError(f"{source} is for another base: layer {module} maps {want_in} -> {want_out} features, "
                         f"the LoRA {got_in} -> {got_out} (down {tuple(w.down.shape)}, up {tuple(w.up.shape)})")


def _pattern(names) -> str:
    return "|".join(re.escape(n) for n in names)


def attach(model: nn.Module, modules: dict, name: str, trainable: bool = False) -> None:
    """Add adapter `name` with `modules` ({path: LoraWeights}) to `model` through peft's LoRA layers."""
    from peft import LoraConfig, inject_adapter_in_model

    ranks = {m: w.rank for m, w in modules.items()}
    alphas = {m: (w.alpha if w.alpha is not None else w.rank) for m, w in modules.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    a = Counter(alphas.values()).most_common(1)[0][0]
    config = LoraConfig(r=r, lora_alpha=a, target_modules=_pattern(modules), init_lora_weights=False,
                        rank_pattern={re.escape(m): v for m, v in ranks.items() if v != r},
                        alpha_pattern={re.escape(m): v for m, v in alphas.items() if v != a})
    flags = [(p, p.requires_grad) for p in model.parameters()]     # peft freezes the base: keep the model as it was
    with warnings.catch_warnings():          # a second adapter on the same model is what we want
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(config, model, adapter_name=name)
    for p, flag in flags:
        p.requires_grad_(flag)
    table = dict(model.named_modules())
    with torch.no_grad():
        for m, w in modules.items():
            layer = table[m]
            down, up = layer.lora_A[name].weight, layer.lora_B[name].weight
            down.copy_(w.down.reshape(down.shape))
            up.copy_(w.up.reshape(up.shape))
            down.requires_grad_(trainable)
            up.requires_grad_(trainable)


def lora_layers(model: nn.Module):
    """(path, layer) of the peft LoRA layers in `model`."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def set_weights(model: nn.Module, weights: dict) -> None:
    """Activate the adapters named in `weights` ({name: scale}), each at its scale; the others are off."""
    names = list(weights)
    for _, layer in lora_layers(model):
        layer.set_adapter(names, inference_mode=True)
        for n, s in weights.items():
            layer.set_scale(n, s)


def target_layers(model: nn.Module, targets: str, is_temporal) -> list[str]:
    """Layer paths a trained LoRA adapts: `spatial` (attention and feed-forward projections of the
    spatial transformers), `temporal` (the layers of the temporal modules; in a motion module its
    attention and feed-forward), or `all` (both)."""
    if targets not in TARGETS:
        raise ValueError(f"train.lora.targets must be one of {TARGETS}, got {targets!r}")
    out = []
    for n, m in _layers(model).items():
        temporal = is_temporal(n + ".weight") and not n.startswith(("frame_cond_in", "frame_embedding")) \
            and not (".motion_modules." in n and n.endswith((".proj_in", ".proj_out")))   # diffusers calls these
        # with input=..., which peft's LoRA layer does not take, so a LoRA there would not load in diffusers
        spatial = ".attentions." in n and isinstance(m, nn.Linear) and not temporal
        if (targets in ("temporal", "all") and temporal) or (targets in ("spatial", "all") and spatial):
            out.append(n)
    if not out:
        raise ValueError(f"this model has no {targets} layers for a LoRA"
                         + (" (an image model has no temporal layers)" if targets == "temporal" else ""))
    return out


def add_trainable(model: nn.Module, layers: list[str], rank: int, alpha: float | None, seed: int = 0,
                  name: str = "default") -> None:
    """Freeze `model` and give `layers` a trainable LoRA (peft's init: down random, up zero)."""
    from peft import LoraConfig, inject_adapter_in_model

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"train.lora.rank must be an integer >= 1, got {rank!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=_pattern(layers))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=name)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_A." in n or ".lora_B." in n)


def export_state(model: nn.Module, prefix: str = "unet", name: str = "default", values: dict | None = None) -> dict:
    """A trained adapter in diffusers' layout: `{prefix}.{layer}.lora_A.weight` / `lora_B.weight`, with
    alpha / rank folded into B (so any loader's default scale of 1 gives the trained model).

    `values` ({parameter name: tensor}, e.g. the EMA) replaces the live weights where given.
    """
    values = values or {}
    out = {}
    for path, layer in lora_layers(model):
        if name not in layer.lora_A:
            continue
        a_key, b_key = f"{path}.lora_A.{name}.weight", f"{path}.lora_B.{name}.weight"
        down = values.get(a_key, layer.lora_A[name].weight).detach().float().cpu()
        up = values.get(b_key, layer.lora_B[name].weight).detach().float().cpu() * layer.scaling[name]
        out[f"{prefix}.{path}.lora_A.weight"] = down.contiguous()
        out[f"{prefix}.{path}.lora_B.weight"] = up.contiguous()
    return out


class Adapters:
    """The LoRAs loaded onto a pipeline's UNet and text encoder: names, scales, fuse / unfuse."""

    def __init__(self, models: dict):
        self.models = models                 # {"unet": module, "text_encoder": module}
        self.scales: dict = {}
        self.sources: dict = {}              # name -> the path (absolute) or hub id it was loaded from
        self._saved: dict | None = None      # weights before fuse, restored bit for bit by unfuse

    def load(self, path, scale: float = 1.0, name: str | None = None, source: str | None = None) -> str:
        """Load a LoRA file as adapter `name` (default: the file's stem) at `scale`; returns the name.
        `source` is how it was named (a hub id), recorded for the settings; default: the file's path."""
        if self._saved is not None:
            raise ValueError("LoRAs are fused; unfuse_lora() before loading another")
        name = name or Path(path).stem
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            name = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "lora"
        if name in self.scales:
            raise ValueError(f"a LoRA named {name!r} is loaded already; pass another name")
        _check_scale(scale, name)
        parts = parse_lora(read_lora(path), self.models, source=f"LoRA {str(path)!r}")
        for target, modules in parts.items():
            attach(self.models[target], modules, name)
        self.scales[name] = float(scale)
        self.sources[name] = source or str(Path(path).resolve())
        self.apply()
        return name

    def set(self, scales: dict) -> None:
        """Set the scales of loaded adapters ({name: scale}); one left out is switched off (scale 0)."""
        unknown = [n for n in scales if n not in self.scales]
        if unknown:
            raise ValueError(f"no LoRA named {unknown[0]!r} is loaded; loaded: {', '.join(self.scales) or 'none'}")
        for n, s in scales.items():
            _check_scale(s, n)
        self.scales = {n: float(scales.get(n, 0.0)) for n in self.scales}
        self.apply()

    def apply(self) -> None:
        """Push the adapters and scales into the peft layers."""
        for model in self.models.values():
            if model is not None:
                set_weights(model, {n: s for n, s in self.scales.items() if s != 0})

    def fuse(self) -> None:
        """Merge the active adapters into the base weights (faster sampling); `unfuse` undoes it exactly."""
        if self._saved is not None:
            return
        self._saved = {}
        for target, model in self.models.items():
            for path, layer in lora_layers(model) if model is not None else []:
                active = [n for n in layer.active_adapters if n in layer.lora_A]
                if active:
                    self._saved[(target, path)] = layer.get_base_layer().weight.detach().clone()
                    layer.merge(adapter_names=active)

    def unfuse(self) -> None:
        """Restore the weights saved by `fuse`, bit for bit."""
        if self._saved is None:
            return
        for target, model in self.models.items():
            for path, layer in lora_layers(model) if model is not None else []:
                if (target, path) in self._saved:
                    layer.unmerge()
                    with torch.no_grad():
                        layer.get_base_layer().weight.copy_(self._saved[(target, path)])
        self._saved = None

    def unload(self, name: str | None = None) -> None:
        """Remove adapter `name` (default: all of them); the base weights are untouched."""
        self.unfuse()
        names = [name] if name is not None else list(self.scales)
        for n in names:
            if n not in self.scales:
                raise ValueError(f"no LoRA named {n!r} is loaded; loaded: {', '.join(self.scales) or 'none'}")
            for model in self.models.values():
                for _, layer in lora_layers(model) if model is not None else []:
                    if n in layer.lora_A:
                        layer.delete_adapter(n)
            del self.scales[n]
            self.sources.pop(n, None)
        for model in self.models.values():
            if model is not None:
                _strip(model)
        self.apply()

    @property
    def fused(self) -> bool:
        """True between `fuse` and `unfuse`."""
        return self._saved is not None


class PipelineLoras:
    """A pipeline's LoRA methods (mixed into `VideoPipeline`): they act on its `unet` and `text_encoder`."""

    @property
    def adapters(self):
        """The LoRAs loaded onto this pipeline (`vidiff.loaders.lora.Adapters`)."""
        if getattr(self, "_adapters", None) is None:
            self._adapters = Adapters({"unet": self.unet, "text_encoder": self.text_encoder.model})
        return self._adapters

    def load_lora(self, path: str | os.PathLike, scale: float = 1.0, name: str | None = None) -> str:
        """Load a LoRA `.safetensors` (SD: diffusers or kohya layout; AnimateDiff motion LoRA: original or
        diffusers layout; the v3 domain adapter) at `scale`; several combine. `path` may be a hub id
        (`org/name` or `org/name/file.safetensors`, read from the hub cache offline). Returns its name."""
        from vidiff.loaders.hub import resolve_file

        local = Path(str(path)).exists()
        return self.adapters.load(resolve_file(path, "LoRA"), scale, name or (None if local else Path(str(path)).stem),
                                  source=None if local else str(path))

    def set_lora_scales(self, scales: dict) -> None:
        """{name: scale} of the loaded LoRAs; one left out is off."""
        self.adapters.set(scales)

    def fuse_lora(self) -> None:
        """Merge the active LoRAs into the weights (faster); `unfuse_lora` restores them bit for bit."""
        self.adapters.fuse()

    def unfuse_lora(self) -> None:
        """Undo `fuse_lora` exactly."""
        self.adapters.unfuse()

    def unload_lora(self, name: str | None = None) -> None:
        """Remove one LoRA (default: all)."""
        self.adapters.unload(name)


def _strip(model: nn.Module) -> None:
    """Put back the plain layer wherever a peft LoRA layer holds no adapter any more."""
    for path, layer in lora_layers(model):
        if not layer.lora_A:
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    if not lora_layers(model) and hasattr(model, "peft_config"):
        del model.peft_config


def _check_scale(scale, name: str) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not torch.isfinite(torch.tensor(float(scale))):
        raise ValueError(f"LoRA {name!r}: scale must be a finite number, got {scale!r}")


def parse_spec(spec: str) -> tuple[str, float]:
    """`PATH[:SCALE]` (the CLI's --lora) -> (path, scale)."""
    path, sep, scale = spec.rpartition(":")
    if sep and path and re.fullmatch(r"-?\d+(\.\d*)?|-?\.\d+", scale):
        return path, float(scale)
    return spec, 1.0
