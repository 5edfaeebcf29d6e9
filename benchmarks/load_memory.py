"""Peak host RAM of loading Stable Diffusion 1.5 + an AnimateDiff v2 adapter (real widths, random weights, saved as
diffusers folders): vidiff against diffusers, each in a fresh process. Not a test.

    python benchmarks/load_memory.py [--dir /tmp/sd15-shaped]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

OURS = """
import resource, sys
from vidiff.pipelines.pipeline import VideoPipeline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
VideoPipeline.from_pretrained(sys.argv[1], motion_adapter=sys.argv[2], device="cpu")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""
THEIRS = """
import resource, sys
import diffusers
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ad = diffusers.MotionAdapter.from_pretrained(sys.argv[2])
diffusers.AnimateDiffPipeline.from_pretrained(sys.argv[1], motion_adapter=ad)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def build(root: Path) -> None:
    """Save an SD 1.5-shaped pipeline folder (tiny text encoder and VAE) and a v2-shaped MotionAdapter."""
    import torch
    from diffusers import MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel

    from vidiff import testing

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_speed import SD15

    torch.manual_seed(0)
    StableDiffusionPipeline(unet=UNet2DConditionModel(**SD15), scheduler=testing.ddim_scheduler(), safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False,
                            **testing.tiny_sd_parts(cross_attention_dim=768)).save_pretrained(root / "sd", safe_serialization=True)
    MotionAdapter(block_out_channels=SD15["block_out_channels"], motion_layers_per_block=2).save_pretrained(root / "adapter")


def main() -> None:
    """Build the folders once, then measure both loaders."""
    p = argparse.ArgumentParser()
    p.add_argument("--dir", default="/tmp/sd15-shaped")
    root = Path(p.parse_args().dir)
    if not (root / "adapter" / "config.json").exists():
        build(root)
    weights = sum(f.stat().st_size for f in root.rglob("*.safetensors"))
    for name, code in (("vidiff", OURS), ("diffusers", THEIRS)):
        out = subprocess.run([sys.executable, "-c", code, str(root / "sd"), str(root / "adapter")],
                             capture_output=True, text=True, check=True)
        peak = int(out.stdout.strip().splitlines()[-1])
        print(f"{name}: peak RAM while loading {peak / 2 ** 30:.2f} GiB for {weights / 2 ** 30:.2f} GiB of weights "
              f"({peak / weights:.2f}x)")


if __name__ == "__main__":
    main()
