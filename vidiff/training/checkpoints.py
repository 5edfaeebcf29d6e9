"""Checkpoints of a training run: atomic, fsynced folders holding the weights, the EMA, the optimizer state (no
pickle), the generator and the sample counters; resume picks the latest complete one, bit-exact. The EMA of the
trainable weights lives on each weight's own device.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch


def truncate_log(log_file: Path, step: int) -> None:
    """Keep only the log lines of steps <= `step` (atomically)."""
    keep = []
    for line in log_file.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue                            # a line cut off by a kill
    tmp = log_file.with_name(log_file.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, log_file)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_tensors(tensors: dict, path: Path, meta: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
              metadata={k: json.dumps(v) for k, v in (meta or {}).items()})
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def optimizer_tensors(optimizer) -> tuple[dict, dict]:
    """An optimizer's state as (flat tensors, JSON-able rest), so it is saved without pickle."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{name}"] = v
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer, tensors: dict, rest: dict) -> None:
    """Inverse of `optimizer_tensors`."""
    state: dict = {}
    for key, v in list(tensors.items()) + list(rest["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint under `folder` (one with state.json), or None."""
    done = [p for p in folder.glob("checkpoint-*") if (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(folder: Path, step: int, unet, ema, optimizer, g, accelerator, state: dict, keep: int):
    """Write checkpoint-STEP atomically: every file into a temp folder, then one rename."""
    final, tmp = folder / f"checkpoint-{step:08d}", folder / f".checkpoint-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_tensors({"generator": g.get_state(), "torch": torch.get_rng_state()},
                  tmp / f"rng-{accelerator.process_index}.safetensors")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_tensors(unet.state_dict(), tmp / "model.safetensors")
        save_tensors(ema, tmp / "ema.safetensors")
        tensors, rest = optimizer_tensors(optimizer)
        save_tensors(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(rest))
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))   # last: marks complete
        for name in ("optimizer.json", "state.json"):
            with open(tmp / name, "rb+") as fh:
                os.fsync(fh.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(folder)
        old = sorted((p for p in folder.glob("checkpoint-*") if p != final), key=lambda p: p.name)
        for p in old[:max(0, len(old) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(path: Path, unet, ema, optimizer, g, rank: int) -> dict:
    """Restore model, EMA, optimizer and this rank's RNG from checkpoint folder `path`."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    try:
        unet.load_state_dict(load_file(str(path / "model.safetensors")))
        saved_ema = load_file(str(path / "ema.safetensors"))
        if saved_ema.keys() != ema.keys():
            raise RuntimeError("the EMA holds other parameters (freeze_spatial changed?)")
        for k, v in saved_ema.items():
            ema[k].copy_(v)
        load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")),
                       json.loads((path / "optimizer.json").read_text()))
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"cannot resume from {path}: it does not fit this config "
                         f"({str(e).strip().splitlines()[0][:200]}); use a new train.output_dir") from None
    rng_file = path / f"rng-{rank}.safetensors"
    if rng_file.exists():
        rng = load_file(str(rng_file))
        g.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
    else:     # more processes than the run that wrote it: a fresh, still deterministic stream
        g.manual_seed(1_000_003 * state["step"] + rank)
    return state


# ---- the loop --------------------------------------------------------------------------------------
@torch.no_grad()
def make_ema(trainable: list) -> dict:
    """Float32 copies of the trainable weights, each on its own parameter's device."""
    return {n: p.detach().clone().float() for n, p in trainable}


@torch.no_grad()
def update_ema(ema: dict, trainable: list, decay: float, step: int) -> None:
    """EMA of the trainable weights after `step` optimizer steps (warmed up); a copy when decay is 0."""
    if decay:
        decay = min(decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(ema.values()), [p.detach().float() for _, p in trainable], 1 - decay)
    else:
        for (n, p) in trainable:
            ema[n].copy_(p.detach())


def resume(ckpt_dir: Path, unet, ema: dict, optimizer, g: torch.Generator, accelerator) -> tuple[int, dict]:
    """(step, state) from the latest complete checkpoint, loaded into the weights, EMA, optimizer and
    generator; (0, a fresh state) when there is none."""
    rank, world = accelerator.process_index, accelerator.num_processes
    last = latest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
    if last is None:
        return 0, {"samples": 0, "image_samples": 0, "runtime_skipped": []}
    state = load_checkpoint(last, unet, ema, optimizer, g, rank)
    accelerator.print(f"resuming from {last} (step {state['step']})")
    if state.get("world", world) != world:
        accelerator.print(f"note: {last} was written by {state['world']} processes, this run has {world}; "
                          "training goes on, but only a resume on the same count is bit-exact")
    return state["step"], state
