"""Devices, precisions, noise and free memory: the rules every part follows on any device.

- `resolve_device("auto")` is CUDA when present, else the CPU; `cuda:N` is checked against the GPUs there.
- `resolve_dtype("auto", device)` is float16 on CUDA, float32 elsewhere.
- Noise is drawn on the generator's own device and then moved (diffusers' `randn_tensor` does the same),
  so a CPU generator gives the same video on CPU and GPU up to float rounding, and a CUDA generator works.
- Free memory is read from the device that will hold the work: `torch.cuda.mem_get_info` for a GPU,
  MemAvailable for the CPU.
"""

from __future__ import annotations

import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:N` or `meta` -> a torch.device; one-line errors."""
    if isinstance(name, torch.device):
        name = str(name)
    name = "auto" if name is None else str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {name!r}") from None
    if device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available here; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto` (float16 on CUDA, float32 elsewhere), a dtype name or a torch.dtype -> torch.dtype."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {name}")
        return name
    name = "auto" if name is None else str(name).removeprefix("torch.")
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {name!r}")
    return DTYPES[name]


def randn(shape, generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32):
    """Standard normal noise drawn on `generator`'s device (CPU without one), then moved to `device`."""
    source = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(tuple(shape), generator=generator, device=source, dtype=dtype)
    return noise if device is None else noise.to(device)


def randperm(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation of 0..n-1 drawn on `generator`'s device, returned on the CPU (it indexes)."""
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=source).cpu()


def free_memory(device: torch.device | str) -> int | None:
    """Bytes free on `device` for a new allocation: the GPU's free memory for CUDA, MemAvailable for the
    CPU, None where unknown (meta)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        return available_memory()
    return None


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux MemAvailable), or None where unknown."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def process_state():
    """accelerate's PartialState; on a machine without a GPU, launched processes join over gloo."""
    import os

    from accelerate import PartialState

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    return PartialState(cpu=launched > 1 and not torch.cuda.is_available())

