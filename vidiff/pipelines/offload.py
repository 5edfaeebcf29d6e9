"""Memory knobs of a pipeline, named as diffusers names them.

- `enable_model_cpu_offload()`: each model (text encoder, UNet, VAE) lives in host RAM and moves to the GPU
  while it runs; the previous one goes back when the next starts (accelerate's `cpu_offload_with_hook`).
  Costs a few seconds a video; the GPU holds the largest model, not all three.
- `enable_sequential_cpu_offload()`: every layer moves to the GPU only for its own forward (accelerate's
  `cpu_offload`); the GPU holds one layer. Much slower; for cards that cannot hold the UNet.
- `enable_vae_slicing()` decodes one frame at a time; `enable_vae_tiling()` decodes frames larger than the
  VAE's tile in overlapping tiles; `decode_chunk_size=` (per call) sets the frames per decode.
"""

from __future__ import annotations

from vidiff.devices import resolve_device


class PipelineMemory:
    """Offload and VAE knobs, mixed into `VideoPipeline` (reads its unet, text_encoder, codec, device)."""

    _offload = None            # None | "model" | "sequential"
    _offload_hooks: tuple = ()         # accelerate hooks under model offload (set per pipeline, never shared)

    def _models(self) -> list:
        vae = getattr(self.codec, "vae", None)
        return [m for m in (self.text_encoder.model, self.unet, vae) if m is not None]

    def enable_model_cpu_offload(self, device="auto") -> "PipelineMemory":
        """Keep the models in host RAM and move each to `device` (default: CUDA when present) while it runs."""
        from accelerate import cpu_offload_with_hook

        device = resolve_device(device)
        self._remove_offload()
        self.to("cpu")
        hook, hooks = None, []
        for model in self._models():
            _, hook = cpu_offload_with_hook(model, device, prev_module_hook=hook)
            hooks.append(hook)
        self.device, self._offload, self._offload_hooks = device, "model", tuple(hooks)
        return self

    def enable_sequential_cpu_offload(self, device="auto") -> "PipelineMemory":
        """Move each layer to `device` only for its own forward: the least GPU memory, the slowest."""
        from accelerate import cpu_offload

        device = resolve_device(device)
        self._remove_offload()
        self.to("cpu")
        for model in self._models():
            cpu_offload(model, device)
        self.device, self._offload = device, "sequential"
        return self

    def _remove_offload(self) -> None:
        if self._offload is None:
            return
        from accelerate.hooks import remove_hook_from_module

        for model in self._models():
            remove_hook_from_module(model, recurse=True)
        self._offload, self._offload_hooks = None, ()

    def offload_idle(self) -> None:
        """Under model offload: send every model back to host RAM (called before a generation starts)."""
        for hook in self._offload_hooks:
            hook.offload()

    def enable_vae_slicing(self) -> "PipelineMemory":
        """Decode one frame at a time (least VAE memory)."""
        if hasattr(self.codec, "vae"):
            self.codec.chunk = 1
        return self

    def enable_vae_tiling(self) -> "PipelineMemory":
        """Decode frames larger than the VAE's tile in overlapping tiles (diffusers' tiled VAE)."""
        if not hasattr(self.codec, "vae"):
            raise ValueError("VAE tiling needs a model with a VAE; this one works in pixel space")
        self.codec.vae.enable_tiling()
        return self

    @property
    def offload(self) -> str | None:
        """None, "model" or "sequential": how the weights are kept."""
        return self._offload

