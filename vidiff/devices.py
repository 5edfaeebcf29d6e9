"""Devices, precisions, noise and free memory: the rules every part follows on any device.

- `resolve_device("auto")` is CUDA when present, else the CPU; `cuda:N` is checked against the GPUs there.
- `resolve_dtype("auto", device)` is float16 on CUDA; on a CPU bfloat16 where it is faster (native bf16 matmuls,
  AVX512-BF16 or AMX, and a probe matmul beats float32), float32 elsewhere. `VIDIFF_AUTO_DTYPE=float32` (or another
  dtype name) pins what `auto` means on a CPU.
- Noise is drawn on the generator's own device and then moved (diffusers' `randn_tensor` does the same),
  so a CPU generator gives the same video on CPU and GPU up to float rounding, and a CUDA generator works.
- Free memory is read from the device that will hold the work: `torch.cuda.mem_get_info` for a GPU,
  MemAvailable for the CPU.
"""

from __future__ import annotations

import os

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
    """`auto` (float16 on CUDA; bfloat16 on a CPU where it is faster, else float32), a dtype name or a torch.dtype."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {name}")
        return name
    name = "auto" if name is None else str(name).removeprefix("torch.")
    if name == "auto":
        kind = torch.device(device).type
        if kind == "cuda":
            return torch.float16
        pinned = os.environ.get("VIDIFF_AUTO_DTYPE")
        if pinned:
            if pinned not in DTYPES:
                raise ValueError(f"VIDIFF_AUTO_DTYPE must be one of {', '.join(DTYPES)}, got {pinned!r}")
            return DTYPES[pinned]
        return torch.bfloat16 if kind == "cpu" and cpu_prefers_bf16() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {name!r}")
    return DTYPES[name]


def cpu_bf16_native() -> bool:
    """True when the CPU reports native bfloat16 dot products (the avx512_bf16 or amx_bf16 flag in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(fh.read().split())
    except OSError:                    # not Linux: no flags to read, so no claim
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bf16_probe(n: int = 512, k: int = 2048, repeats: int = 3) -> bool:
    """True when a bfloat16 matmul (`n x k` by `k x n`) runs in under 3/4 of float32's time here (best of `repeats`)."""
    import time

    a, b = torch.randn(n, k), torch.randn(k, n)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y                                                    # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t0)
        best[dtype] = min(times)
    return best[torch.bfloat16] < 0.75 * best[torch.float32]


_BF16: list = []


def cpu_prefers_bf16() -> bool:
    """Native bfloat16 and the probe agrees (measured once per process)."""
    if not _BF16:
        _BF16.append(cpu_bf16_native() and bf16_probe())
    return _BF16[0]


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

