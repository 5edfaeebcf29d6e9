"""Tiny random models for tests, demos and benchmarks: built locally, nothing downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

# Words the tiny tokenizer knows; every other word maps to <unk> (and the pipeline warns).
VOCAB = ("a an the and on of in with background shape moving left right up down still static staying "
         "red green blue yellow purple orange cyan magenta white black gray pink "
         "circle square triangle star ball box diamond cross ring").split()
TINY_YAML = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"


def tiny_tokenizer(max_length: int = 16):
    """A word-level tokenizer over `VOCAB`, built in memory."""
    from vidiff.models.text import word_tokenizer

    return word_tokenizer(VOCAB, max_length)


def tiny_text_encoder(dim: int = 32, seed: int = 0):
    """A 2-layer random CLIP text model with the tiny tokenizer, wrapped as `TextEncoder`."""
    from vidiff.models.text import TextEncoder

    torch.manual_seed(seed)
    return TextEncoder.build(VOCAB, dim=dim, layers=2, heads=2, max_length=16, seed=seed)


def tiny_unet_config(**overrides) -> dict:
    """The `model:` section of configs/tiny.yaml (shipped with the source tree) with overrides."""
    cfg = yaml.safe_load(TINY_YAML.read_text())["model"] if TINY_YAML.exists() else {
        "block_out_channels": [32, 64], "layers_per_block": 1, "attention_levels": [True, False],
        "num_heads": 2, "cross_attention_dim": 32, "temporal_heads": 2, "frame_conditioning": True}
    return {**cfg, **overrides}


def tiny_pipeline(factor: int = 2, seed: int = 0, perturb: float = 0.05, **unet_overrides):
    """A random `VideoPipeline` in pixel space (pixel-unshuffle `factor`), 64x64 by default."""
    from vidiff.models.codec import PixelCodec
    from vidiff.pipelines.pipeline import VideoPipeline
    from vidiff.diffusion.schedule import NoiseSchedule
    from vidiff.models.unet import UNet

    codec = PixelCodec(factor)
    torch.manual_seed(seed)
    unet = UNet(tiny_unet_config(in_channels=codec.channels, out_channels=codec.channels, **unet_overrides))
    with torch.no_grad():   # move temporal layers off zero so the random model mixes frames
        for _, p in unet.temporal_parameters():
            p.add_(torch.randn_like(p) * perturb)
    schedule = NoiseSchedule(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    return VideoPipeline(unet, tiny_text_encoder(seed=seed), schedule, codec,
                         {"height": 64, "width": 64, "num_frames": 16, "fps": 8})


def tiny_model(path: str | os.PathLike, **kwargs) -> Path:
    """Save a tiny random model folder (diffusers layout) at `path` and return it."""
    tiny_pipeline(**kwargs).save_pretrained(path)
    return Path(path)


def _perturbed(model, scale: float = 0.05, seed: int = 0):
    """Move every weight off its init (zero-initialised temporal outputs included) so parity means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def tiny_sd_parts(cross_attention_dim: int = 8, widths=(8, 16), seed: int = 0) -> dict:
    """Tiny random diffusers parts in the shapes diffusers' own AnimateDiff tests use (VAE, CLIP, tokenizer)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    tok = tiny_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=cross_attention_dim, intermediate_size=16,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                                        pad_token_id=0, bos_token_id=2, eos_token_id=3)).eval()
    return {"vae": vae.eval(), "text_encoder": text, "tokenizer": tok}


def _tiny_unet(kind: str, widths, cross_attention_dim: int, seed: int, **kw):
    """A tiny random diffusers UNet of class `kind` (2D or 3D blocks), weights perturbed off init."""
    import diffusers

    blocks = "2D" if kind == "UNet2DConditionModel" else "3D"
    torch.manual_seed(seed)
    unet = getattr(diffusers, kind)(block_out_channels=widths, sample_size=8, norm_num_groups=2,
                                    down_block_types=(f"CrossAttnDownBlock{blocks}", f"DownBlock{blocks}"),
                                    up_block_types=(f"UpBlock{blocks}", f"CrossAttnUpBlock{blocks}"),
                                    cross_attention_dim=cross_attention_dim, **kw)
    return _perturbed(unet, seed=seed)


def tiny_unet2d(widths=(8, 16), cross_attention_dim: int = 8, seed: int = 0):
    """A tiny random Stable-Diffusion-style `UNet2DConditionModel` (weights perturbed off init)."""
    return _tiny_unet("UNet2DConditionModel", widths, cross_attention_dim, seed, layers_per_block=2,
                      attention_head_dim=2)


def tiny_unet3d(widths=(8, 16), cross_attention_dim: int = 8, seed: int = 2):
    """A tiny random ModelScope-style `UNet3DConditionModel` (weights perturbed off init)."""
    return _tiny_unet("UNet3DConditionModel", widths, cross_attention_dim, seed, layers_per_block=1,
                      attention_head_dim=4)


def tiny_motion_adapter(widths=(8, 16), mid: bool = True, max_seq: int = 32, seed: int = 1):
    """A tiny random diffusers `MotionAdapter` (v2-style with `mid`, v1/v3-style without)."""
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    ad = MotionAdapter(block_out_channels=widths, motion_layers_per_block=2, motion_norm_num_groups=2,
                       motion_num_attention_heads=8, use_motion_mid_block=mid, motion_max_seq_length=max_seq)
    return _perturbed(ad, seed=seed)


def ddim_scheduler(**overrides):
    """AnimateDiff's scheduler: DDIM, linear betas 0.00085..0.012, steps_offset 1, no clipping."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**{"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear",
                            "clip_sample": False, "steps_offset": 1, **overrides})


def tiny_animatediff_folder(path: str | os.PathLike, mid: bool = True, max_seq: int = 32) -> Path:
    """Save a tiny random diffusers `AnimateDiffPipeline` folder (unet/ is a UNetMotionModel)."""
    from diffusers import AnimateDiffPipeline

    pipe = AnimateDiffPipeline(unet=tiny_unet2d(), motion_adapter=tiny_motion_adapter(mid=mid, max_seq=max_seq),
                               scheduler=ddim_scheduler(), **tiny_sd_parts())
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def tiny_sd_folder(path: str | os.PathLike) -> Path:
    """Save a tiny random diffusers `StableDiffusionPipeline` folder (an image model)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(unet=tiny_unet2d(), scheduler=ddim_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False, **tiny_sd_parts())
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def tiny_modelscope_folder(path: str | os.PathLike) -> Path:
    """Save a tiny random diffusers `TextToVideoSDPipeline` folder (unet/ is a UNet3DConditionModel)."""
    from diffusers import TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline(unet=tiny_unet3d(), scheduler=ddim_scheduler(beta_schedule="scaled_linear",
                                                                                set_alpha_to_one=False),
                                 **tiny_sd_parts())
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def svd_scheduler():
    """SVD's scheduler: EDM Euler with Karras sigmas 0.002..700, v-prediction, continuous timesteps."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  interpolation_type="linear", num_train_timesteps=1000, prediction_type="v_prediction",
                                  sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
                                  timestep_type="continuous", trained_betas=None, use_karras_sigmas=True)


def tiny_svd_parts(seed: int = 0, num_frames: int = 25) -> dict:
    """The components of a tiny random `StableVideoDiffusionPipeline` (diffusers' own test sizes), weights perturbed."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
        num_attention_heads=8, projection_class_embeddings_input_dim=96, addition_time_embed_dim=32,
        num_frames=num_frames)
    torch.manual_seed(seed)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                                       down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], latent_channels=4)
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=5, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=1))
    return {"unet": _perturbed(unet, seed=seed), "vae": vae, "image_encoder": encoder.eval(),
            "scheduler": svd_scheduler(), "feature_extractor": CLIPImageProcessor(crop_size=32, size=32)}


def tiny_svd_folder(path: str | os.PathLike, seed: int = 0, num_frames: int = 25) -> Path:
    """Save a tiny random diffusers `StableVideoDiffusionPipeline` folder."""
    from diffusers import StableVideoDiffusionPipeline

    StableVideoDiffusionPipeline(**tiny_svd_parts(seed, num_frames)).save_pretrained(path, safe_serialization=True)
    return Path(path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for test servers and torchrun rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_when(proc, done, timeout: float = 120.0) -> None:
    """SIGKILL subprocess `proc` as soon as `done()` is true (it must still be running then)."""
    import signal
    import time

    deadline = time.time() + timeout
    while not done():
        if proc.poll() is not None or time.time() > deadline:
            err = proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"process ended or timed out first: {(err.decode() if isinstance(err, bytes) else err)[-2000:]}")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        print("usage: python -m vidiff.testing OUT_DIR   (writes a tiny random model folder)", file=sys.stderr)
        sys.exit(2)
    print(f"wrote tiny random model to {tiny_model(sys.argv[1])}")


def tiny_lora_file(unet, path: str | os.PathLike, rank: int = 2, seed: int = 0) -> Path:
    """Save a random LoRA (diffusers layout, `unet.` prefix) on every first spatial self-attention's to_q of `unet`."""
    import re

    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    lora = {}
    for n, m in unet.named_modules():
        if re.search(r"attentions\.0\.transformer_blocks\.0\.attn1\.to_q$", n):
            lora[f"unet.{n}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=g) * 0.3
            lora[f"unet.{n}.lora_B.weight"] = torch.randn(m.out_features, rank, generator=g) * 0.3
    save_file(lora, str(path))
    return Path(path)


# ---- control (issue 29): ControlNet, SparseCtrl, IP-Adapter --------------------------------------

def tiny_controlnet(seed: int = 3, widths=(8, 16)):
    """A tiny random diffusers `ControlNetModel` for `tiny_unet2d` (cond embedding x2: the tiny VAE's factor)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel(block_out_channels=widths, layers_per_block=2, in_channels=4, norm_num_groups=2,
                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=8,
                          conditioning_embedding_out_channels=(8, 8), attention_head_dim=2)
    return _perturbed(net, seed=seed)


def tiny_sparsectrl(rgb: bool = True, seed: int = 4, widths=(8, 16)):
    """A tiny random diffusers `SparseControlNetModel` (RGB: latents + mask through one conv; else pixels)."""
    from diffusers import SparseControlNetModel

    torch.manual_seed(seed)
    net = SparseControlNetModel(block_out_channels=widths, layers_per_block=2, in_channels=4,
                                conditioning_channels=4 if rgb else 3, cross_attention_dim=8,
                                down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"), norm_num_groups=2,
                                conditioning_embedding_out_channels=(8, 8), attention_head_dim=2,
                                motion_num_attention_heads=8, use_simplified_condition_embedding=rgb)
    return _perturbed(net, seed=seed)


def tiny_image_encoder(path: str | os.PathLike, seed: int = 5, size: int = 32) -> Path:
    """Save a tiny random `CLIPVisionModelWithProjection` folder with its image processor (`size` pixels)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, projection_dim=12, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
        image_size=size, patch_size=8)).eval()
    model.save_pretrained(path, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)
    return Path(path)


def tiny_ip_adapter_file(path: str | os.PathLike, unet_widths: list[int], cross_dim: int = 8, embed_dim: int = 12,
                         hidden_dim: int = 16, plus: bool = False, queries: int = 4, seed: int = 6) -> Path:
    """Write an IP-Adapter file in the original layout (`image_proj.*`, `ip_adapter.{2j+1}.to_{k,v}_ip.weight`):
    plain (a projection of CLIP's `image_embeds` to 4 tokens) or Plus (a 4-block resampler over hidden states)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3                    # noqa: E731
    sd = {}
    if plus:
        dim, inner = 16, 64                                               # heads = inner // 64, as files infer
        sd.update({"latents": r(1, queries, dim), "proj_in.weight": r(dim, hidden_dim), "proj_in.bias": r(dim),
                   "proj_out.weight": r(cross_dim, dim), "proj_out.bias": r(cross_dim),
                   "norm_out.weight": 1 + r(cross_dim), "norm_out.bias": r(cross_dim)})
        for i in range(4):                                                # diffusers assumes 4 blocks
            p = f"layers.{i}."
            sd.update({p + "0.norm1.weight": 1 + r(dim), p + "0.norm1.bias": r(dim), p + "0.norm2.weight": 1 + r(dim),
                       p + "0.norm2.bias": r(dim), p + "0.to_q.weight": r(inner, dim), p + "0.to_kv.weight": r(2 * inner, dim),
                       p + "0.to_out.weight": r(dim, inner), p + "1.0.weight": 1 + r(dim), p + "1.0.bias": r(dim),
                       p + "1.1.weight": r(4 * dim, dim), p + "1.3.weight": r(dim, 4 * dim)})
    else:
        sd.update({"proj.weight": r(4 * cross_dim, embed_dim), "proj.bias": r(4 * cross_dim),
                   "norm.weight": 1 + r(cross_dim), "norm.bias": r(cross_dim)})
    out = {f"image_proj.{k}": v for k, v in sd.items()}
    for j, w in enumerate(unet_widths):
        out[f"ip_adapter.{2 * j + 1}.to_k_ip.weight"] = r(w, cross_dim)
        out[f"ip_adapter.{2 * j + 1}.to_v_ip.weight"] = r(w, cross_dim)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return Path(path)
