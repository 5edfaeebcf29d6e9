"""Shared fixtures: tiny models built from configs/tiny.yaml, no network."""

import os
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The parity tests compare float32 runs against diffusers: `dtype="auto"` (bfloat16 on CPUs where it is faster) is
# pinned to float32 here and in the processes tests start; tests/test_speed.py checks the choice itself.
os.environ["VIDIFF_AUTO_DTYPE"] = "float32"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


def tiny_model_config(**overrides) -> dict:
    """The `model:` section of configs/tiny.yaml with overrides."""
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["model"]
    return {**cfg, **overrides}


def run_cli(capsys, *args):
    """Run the CLI in-process: (exit status, stdout, stderr lines without progress bars)."""
    from vidiff.app.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip() and "%|" not in line]
