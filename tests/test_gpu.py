"""Diffusers parity on CUDA in float32 and float16 (skipped without a GPU; `make gpu-check` runs it)."""

import pytest
import torch

from vidiff import testing
from vidiff.pipelines.pipeline import VideoPipeline

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (make gpu-check)")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return testing.tiny_animatediff_folder(tmp_path_factory.mktemp("gpu") / "animatediff")


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "EulerAncestralDiscreteScheduler", "LCMScheduler"])
def test_cuda_latents_match_diffusers(folder, dtype, tol, scheduler):
    import diffusers

    ref = diffusers.AnimateDiffPipeline.from_pretrained(folder, torch_dtype=dtype).to("cuda")
    ref.scheduler = getattr(diffusers, scheduler).from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    ours = VideoPipeline.from_pretrained(folder, device="cuda", dtype=dtype, scheduler={"_class_name": scheduler})
    lat = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    r = ref(prompt="a red circle", latents=lat.clone().to("cuda", dtype), num_frames=8, height=16, width=16,
            num_inference_steps=4, output_type="latent", generator=torch.Generator("cuda").manual_seed(7)).frames
    o = ours("a red circle", latents=lat.clone(), num_inference_steps=4, output_type="latent",
             generator=torch.Generator("cuda").manual_seed(7), progress=False)
    assert o.device.type == "cuda"
    assert float((o.float() - r.float()).abs().max() / r.float().abs().max()) <= tol


def test_cpu_generator_gives_the_cpu_video_on_cuda(folder):
    kw = dict(num_frames=4, height=16, width=16, num_inference_steps=3, output_type="latent", progress=False)
    cpu = VideoPipeline.from_pretrained(folder, device="cpu")("a red circle", seed=3, sampler="euler_ancestral", **kw)
    gpu = VideoPipeline.from_pretrained(folder, device="cuda", dtype="float32")("a red circle", seed=3,
                                                                               sampler="euler_ancestral", **kw)
    assert float((gpu.cpu() - cpu).abs().max() / cpu.abs().max()) <= 1e-3


def test_training_step_with_ema_on_cuda(tmp_path):
    from vidiff.training.config import load_config
    from vidiff.data.shapes import make_shapes_dataset
    from vidiff.training.train import train

    data = make_shapes_dataset(tmp_path / "data", clips=4, size=32, num_frames=8, progress=False)
    cfg = load_config("configs/tiny.yaml", [f"data.path={data}", f"train.output_dir={tmp_path / 'run'}",
                                            "train.steps=20", "train.ema_decay=0.9", "train.cpu=false"])
    result = train(cfg, progress=False)
    assert result["step"] == 20
    assert all(v.device.type == "cuda" for v in result["ema"].values())


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 5e-2)])
def test_cuda_svd_matches_diffusers(tmp_path, dtype, tol):
    """Stable Video Diffusion on CUDA: same image, seed (a CUDA generator) and sizes as diffusers."""
    import diffusers

    from vidiff.pipelines.svd import SVDPipeline

    folder = testing.tiny_svd_folder(tmp_path / "svd")
    ref = diffusers.StableVideoDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).to("cuda")
    ref.set_progress_bar_config(disable=True)
    ours = SVDPipeline.from_pretrained(folder, device="cuda", dtype=dtype)
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    kw = dict(num_frames=4, height=32, width=32, num_inference_steps=3, min_guidance_scale=1.0, output_type="latent")
    r = ref(img.to("cuda", dtype), max_guidance_scale=2.5, generator=torch.Generator("cuda").manual_seed(0), **kw).frames
    o = ours.animate(img, guidance_scale=2.5, keep_first_frame=False, generator=torch.Generator("cuda").manual_seed(0),
                     **kw)
    assert o.device.type == "cuda"
    assert float((o.float() - r.float().transpose(1, 2)).abs().max() / r.float().abs().max()) <= tol
