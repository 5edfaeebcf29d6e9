"""Speed plans over the model function: step caching (DeepCache) and compiling the UNet.

Step caching (Ma et al. 2024): the deep UNet features change little between neighbouring steps, so every
`interval`-th model call of a window runs the whole UNet and keeps the features its `depth` outer up levels start
from; the calls between run only those outer levels around the kept features (`UNet.forward(step_cache=...)`).
`interval=1` is the uncached run, bit for bit.
"""

from __future__ import annotations

from collections import OrderedDict

DEFAULTS = {"interval": 3, "depth": 1}


def check_cache(options) -> dict:
    """`options` (an int: the interval, or {"interval", "depth"}) with the defaults filled in; one line otherwise."""
    if isinstance(options, bool) or not isinstance(options, (int, dict)):
        raise ValueError(f"cache must be an interval (int >= 1) or a dict of {sorted(DEFAULTS)}, got {options!r}")
    opts = {**DEFAULTS, **({"interval": options} if isinstance(options, int) else options)}
    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown cache keys {unknown}; allowed: {sorted(DEFAULTS)}")
    if isinstance(opts["interval"], bool) or not isinstance(opts["interval"], int) or opts["interval"] < 1:
        raise ValueError(f"cache interval must be an integer >= 1 (1: every step runs the whole UNet), "
                         f"got {opts['interval']!r}")
    return opts


class StepCache:
    """Per window of frames (and batch shape), which model calls refresh the deep features and which reuse them.

    `cache(x, where)` gives the UNet's `step_cache` argument for one call. A window's calls are counted; every
    `interval`-th (from its first) refreshes, and a new sampling pass over the same frames (its step goes back, as
    in FreeInit) starts afresh. fifo's windows are told apart by their queue slots. `full` and `reused` count calls.
    """

    def __init__(self, options, levels: int):
        from vidiff.models.unet import check_depth

        opts = check_cache(options)
        self.interval, self.depth = opts["interval"], check_depth(opts["depth"], levels)
        self.entries: OrderedDict = OrderedDict()
        self.full = self.reused = 0

    def __call__(self, x, where) -> dict:
        """The `step_cache` dict for this call (a fresh one to fill on a refresh, the filled one to reuse)."""
        key = (None if where is None else (where.frames.start, where.frames.stop), tuple(x.shape))
        entry = self.entries.pop(key, None) or {"calls": 0, "step": -1}
        self.entries[key] = entry
        while len(self.entries) > 64:                       # windows long done (autoregressive) are dropped
            self.entries.popitem(last=False)
        step = where.step if where is not None else entry["calls"]
        if step < entry["step"]:                            # a new pass over these frames
            entry["calls"] = 0
        refresh = entry["calls"] % self.interval == 0
        entry["calls"] += 1
        entry["step"] = step
        if refresh:
            entry["arg"] = {"depth": self.depth}
            self.full += 1
        else:
            self.reused += 1
        return entry["arg"]


class PipelineSpeed:
    """`pipe.compile()`: the UNet through torch.compile."""

    def compile(self, mode: str | None = None, dynamic: bool | None = None):
        """Compile the UNet in place with torch.compile (inductor; a C++ compiler on CPU). The first call of each new
        shape compiles (tens of seconds to minutes); later calls reuse it. Returns the pipeline."""
        import torch

        if not hasattr(torch, "compile"):
            raise ValueError("this torch has no torch.compile")
        self.unet.compile(mode=mode, dynamic=dynamic)
        self.compiled = True
        return self
