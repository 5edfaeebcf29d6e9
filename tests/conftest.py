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
