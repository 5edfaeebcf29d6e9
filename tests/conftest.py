"""Shared fixtures: tiny models built from configs/tiny.yaml, no network."""

from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


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
