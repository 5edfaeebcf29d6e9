"""Run by tests/test_train.py under torchrun: train, then save this rank's raw weights."""

import sys

from safetensors.torch import save_file

from vidiff.training.config import load_config
from vidiff.training.train import train

if __name__ == "__main__":
    out = sys.argv[1]
    result = train(load_config(sys.argv[2], sys.argv[3:]), progress=False)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    save_file({k: v.contiguous() for k, v in result["unet"].state_dict().items()}, f"{out}/rank{rank}.safetensors")
