"""The space-time UNet: identity at inflation, temporal mixing, shapes, checkpointing, save/load, errors."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_config
from vidiff.models.inflate import inflate
from vidiff.models.layers import GroupNorm, TemporalConv, attention, resolve_backend, xformers_available
from vidiff.models.unet import UNet, is_temporal_key

CTX = 32


def image_unet(**kw) -> UNet:
    """A tiny random image UNet whose every weight (not just init) is non-trivial."""
    model = UNet(tiny_model_config(temporal=False, frame_conditioning=False, **kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def perturb_temporal(model: UNet, scale: float = 0.2) -> UNet:
    """Move every temporal / frame-conditioning parameter away from its zero init."""
    with torch.no_grad():
        for _, p in model.temporal_parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def per_frame(fn, x, t, ctx):
    """Apply an image model frame by frame."""
    return torch.stack([fn(x[:, :, i:i + 1], t, ctx)[:, :, 0] for i in range(x.shape[2])], dim=2)


@pytest.mark.parametrize("f,pooled", [(1, False), (2, False), (5, True), (16, False)])
def test_inflated_vidiff_unet_equals_image_unet_per_frame(f, pooled):
    image = image_unet(pooled_text=pooled)
    video = inflate(image).eval()
    x, t, ctx = torch.randn(2, 4, f, 16, 16), torch.tensor([3, 700]), torch.randn(2, 5, CTX)
    with torch.no_grad():
        out = video(x, t, ctx)
        ref = per_frame(image, x, t, ctx)
    assert out.shape == x.shape
    assert (out - ref).abs().max() < 1e-5


def diffusers_unet(linear_projection=False, scale_shift=False):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(1)
    return diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CTX,
        attention_head_dim=2, norm_num_groups=32, use_linear_projection=linear_projection,
        resnet_time_scale_shift="scale_shift" if scale_shift else "default").eval()


def diffusers_per_frame(d, x, t, ctx):
    return torch.stack([d(x[:, :, i], t, ctx).sample for i in range(x.shape[2])], dim=2)


@pytest.mark.parametrize("linear_projection,scale_shift", [(False, False), (True, False), (False, True)],
                         ids=["sd1", "sd2", "scale-shift"])
def test_inflated_diffusers_unet_matches_diffusers_per_frame(linear_projection, scale_shift):
    d = diffusers_unet(linear_projection, scale_shift)
    video = inflate(d).eval()
    ctx = torch.randn(2, 7, CTX)
    t = torch.tensor([10, 500])
    for f in (1, 2, 5, 16):
        x = torch.randn(2, 4, f, 16, 16)
        with torch.no_grad():
            out, ref = video(x, t, ctx), diffusers_per_frame(d, x, t, ctx)
        assert (out - ref).abs().max() < 1e-5, f


def test_every_diffusers_weight_is_copied_exactly():
    d = diffusers_unet()
    video = inflate(d)
    ours = video.state_dict()
    for k, v in d.state_dict().items():
        assert torch.equal(ours[k], v), k
    extra = [k for k in ours if k not in d.state_dict()]
    assert extra and all(is_temporal_key(k) for k in extra)


def test_inflate_from_diffusers_folder_and_safetensors_file(tmp_path):
    d = diffusers_unet()
    d.save_pretrained(tmp_path / "unet", safe_serialization=True)
    x, t, ctx = torch.randn(1, 4, 3, 16, 16), torch.tensor([42]), torch.randn(1, 4, CTX)
    with torch.no_grad():
        ref = diffusers_per_frame(d, x, t, ctx)
        from_folder = inflate(tmp_path / "unet").eval()(x, t, ctx)
        from_file = inflate(tmp_path / "unet" / "diffusion_pytorch_model.safetensors", num_heads=2).eval()(x, t, ctx)
    assert (from_folder - ref).abs().max() < 1e-5
    assert (from_file - ref).abs().max() < 1e-5


def test_temporal_layers_mix_frames_once_trained():
    video = perturb_temporal(inflate(image_unet())).eval()
    x, t, ctx = torch.randn(1, 4, 6, 16, 16), torch.tensor([300]), torch.randn(1, 5, CTX)
    x2 = x.clone()
    x2[:, :, 3] += 1.0
    with torch.no_grad():
        a, b = video(x, t, ctx), video(x2, t, ctx)
    diff = (a - b).abs().amax(dim=(0, 1, 3, 4))          # per frame
    assert diff[3] > 1e-3
    assert (diff[[0, 1, 2, 4, 5]] > 1e-5).all(), diff


def test_one_frame_skips_temporal_layers_exactly():
    image = image_unet()
    video = perturb_temporal(inflate(image)).eval()
    x, t, ctx = torch.randn(2, 4, 1, 16, 16), torch.tensor([3, 900]), torch.randn(2, 5, CTX)
    with torch.no_grad():
        assert torch.equal(video(x, t, ctx), image(x, t, ctx))


def test_per_frame_timesteps_equal_to_per_sample_form():
    video = perturb_temporal(inflate(image_unet())).eval()
    x, ctx = torch.randn(2, 4, 5, 16, 16), torch.randn(2, 5, CTX)
    t = torch.tensor([123, 456])
    with torch.no_grad():
        a = video(x, t, ctx)
        b = video(x, t[:, None].expand(2, 5), ctx)
        tf = t[:, None].expand(2, 5).clone()
        tf[:, 0] = 0
        c = video(x, tf, ctx)
    assert torch.allclose(a, b, atol=1e-6)
    assert (a - c).abs().max() > 1e-4      # per-frame levels do reach the model


@pytest.mark.parametrize("f", [48, 64])
def test_long_videos_beyond_any_training_length(f):
    video = perturb_temporal(inflate(image_unet())).eval()
    x, ctx = torch.randn(1, 4, f, 8, 8), torch.randn(1, 5, CTX)
    with torch.no_grad():
        out = video(x, torch.tensor([500]), ctx)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_gradient_checkpointing_gives_same_gradients():
    video = perturb_temporal(inflate(image_unet())).train()
    x, t, ctx = torch.randn(2, 4, 4, 16, 16), torch.tensor([5, 600]), torch.randn(2, 5, CTX)

    def grads():
        video.zero_grad()
        video(x, t, ctx).square().mean().backward()
        return {n: p.grad.clone() for n, p in video.named_parameters()}

    plain = grads()
    video.enable_gradient_checkpointing()
    ckpt = grads()
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-6, msg=n)


def test_save_load_round_trip_is_exact(tmp_path):
    video = perturb_temporal(UNet(tiny_model_config())).eval()
    video.save_pretrained(tmp_path)
    loaded = UNet.from_pretrained(tmp_path).eval()
    assert loaded.config == video.config
    for (k, a), (k2, b) in zip(video.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x, ctx = torch.randn(1, 4, 3, 16, 16), torch.randn(1, 5, CTX)
    with torch.no_grad():
        assert torch.equal(video(x, torch.tensor([9]), ctx), loaded(x, torch.tensor([9]), ctx))
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("bad, match", [
    (lambda: (torch.randn(1, 4, 16, 16), torch.tensor([1])), "5-D"),
    (lambda: (torch.randn(1, 3, 2, 16, 16), torch.tensor([1])), "channels"),
    (lambda: (torch.randn(1, 4, 2, 15, 16), torch.tensor([1])), "multiples of 2"),
    (lambda: (torch.randn(1, 4, 2, 16, 16), torch.tensor([1, 2, 3])), r"t must have shape"),
    (lambda: (torch.randn(2, 4, 2, 16, 16), torch.zeros(2, 3)), r"t must have shape"),
])
def test_bad_input_is_a_clear_value_error(bad, match):
    video = UNet(tiny_model_config())
    x, t = bad()
    with pytest.raises(ValueError, match=match):
        video(x, t, torch.randn(x.shape[0], 5, CTX))


def test_bad_context_is_a_clear_value_error():
    video = UNet(tiny_model_config())
    x = torch.randn(1, 4, 2, 16, 16)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        video(x, torch.tensor([1]), torch.randn(1, 5, CTX + 1))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        video(x, torch.tensor([1]), None)


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match="unknown UNet config keys"):
        UNet(tiny_model_config(block_channels=[32]))


def test_temporal_conv_is_a_kernel3_conv_over_frames():
    tc = TemporalConv(32)
    with torch.no_grad():
        for p in tc.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(2 * 5, 32, 4, 4)
    w, b = tc.conv1d_weight()
    h = F.silu(tc.norm(x))
    h = h.view(2, 5, 32, 4, 4).permute(0, 3, 4, 2, 1).reshape(-1, 32, 5)      # (b h w) c f
    ref = F.conv1d(h, w, b, padding=1).view(2, 4, 4, 32, 5).permute(0, 4, 3, 1, 2).reshape(10, 32, 4, 4)
    torch.testing.assert_close(tc(x, 5), x + ref, rtol=1e-5, atol=1e-5)


def test_new_layers_start_at_zero():
    video = inflate(image_unet(), frame_conditioning=True)
    last_layers = [n for n, _ in video.temporal_parameters()
                   if n.endswith((".conv.weight", ".temp_convs.0.bias", ".temp_convs.1.bias", ".to_out.weight",
                                  ".to_out.bias")) or n.startswith("frame_cond_in.")]
    assert len(last_layers) >= 10
    params = dict(video.named_parameters())
    for n in last_layers:
        assert not params[n].abs().sum(), n
    assert any(".temp_attentions." in n for n in last_layers) and any(".temp_convs." in n for n in last_layers)


def test_attention_everywhere_switch_adds_temporal_attention_to_plain_levels():
    plain = UNet(tiny_model_config())
    everywhere = UNet(tiny_model_config(temporal_attention_everywhere=True))
    assert not hasattr(plain.down_blocks[1], "temp_attentions")
    assert hasattr(everywhere.down_blocks[1], "temp_attentions")


def test_frame_conditioning_starts_inert_and_then_conditions():
    video = inflate(image_unet(), frame_conditioning=True).eval()
    x, t, ctx = torch.randn(1, 4, 4, 16, 16), torch.tensor([100]), torch.randn(1, 5, CTX)
    cond, mask = torch.randn_like(x), torch.tensor([[1.0, 0, 0, 0]])
    with torch.no_grad():
        assert torch.equal(video(x, t, ctx), video(x, t, ctx, cond=cond, cond_mask=mask))
        perturb_temporal(video)
        a = video(x, t, ctx, cond=cond, cond_mask=mask)
        b = video(x, t, ctx, cond=cond * 2, cond_mask=mask)
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError, match="cond_mask"):
        video(x, t, ctx, cond=cond, cond_mask=torch.ones(1, 3))


def test_attention_backends_agree_and_xformers_is_explicit():
    video = perturb_temporal(inflate(image_unet())).eval()
    x, t, ctx = torch.randn(1, 4, 3, 16, 16), torch.tensor([100]), torch.randn(1, 5, CTX)
    with torch.no_grad():
        a = video(x, t, ctx)
        video.set_attention_backend("math")
        b = video(x, t, ctx)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    if not xformers_available():
        video.set_attention_backend("xformers")
        with pytest.raises(ValueError, match="xformers"):
            video(x, t, ctx)
    with pytest.raises(ValueError, match="attention_backend"):
        video.set_attention_backend("flash9")


def test_cpu_fast_paths_match_the_reference_ops_forward_and_backward():
    # GroupNorm of a channels-last map runs contiguously and comes back channels-last
    ref, ours = torch.nn.GroupNorm(4, 16), GroupNorm(4, 16)
    with torch.no_grad():
        ref.weight.normal_(), ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 16, 5, 7).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), ours(xb)
    assert yb.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(yb, ya)
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    # bf16 attention over short sequences (8x8 maps, text) takes the matmul path: same result as SDPA
    for n, m in ((64, 64), (64, 12), (16, 12)):
        q, k, v = (torch.randn(2, 4, s, 32) for s in (n, m, m))
        want = F.scaled_dot_product_attention(q, k, v)
        got = attention(*(a.bfloat16() for a in (q, k, v)))
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.03)


def test_top_level_inflate_and_mismatched_weights_are_value_errors(tmp_path):
    import json
    import subprocess
    import sys

    import vidiff

    assert isinstance(vidiff.inflate(image_unet()), UNet)
    d = diffusers_unet()
    d.save_pretrained(tmp_path / "unet", safe_serialization=True)
    cfg = json.loads((tmp_path / "unet" / "config.json").read_text())
    cfg["cross_attention_dim"] = CTX + 16        # the config now lies about the weights
    (tmp_path / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="size mismatch"):
        vidiff.inflate(tmp_path / "unet")
    r = subprocess.run([sys.executable, "-m", "vidiff.app.cli", "inflate", str(tmp_path / "unet"), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2 and "size mismatch" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_frame_conditioning_inputs_are_checked():
    x, t, ctx = torch.randn(1, 4, 2, 16, 16), torch.tensor([1]), torch.randn(1, 5, CTX)
    with pytest.raises(ValueError, match="frame_conditioning=False"):
        image_unet()(x, t, ctx, cond=x, cond_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="cond .* is required"):
        UNet(tiny_model_config())(x, t, ctx, cond_mask=torch.ones(1, 2))


def test_backward_with_frozen_spatial_layers():
    """Only temporal layers trainable: gradients reach them (torch 2.13's CPU GroupNorm used to segfault here)."""
    model = UNet(tiny_model_config(frame_conditioning=False))
    for name, p in model.named_parameters():
        p.requires_grad_(is_temporal_key(name))
    x, ctx = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 5, CTX)
    model(x, torch.tensor([10]), ctx).pow(2).mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if is_temporal_key(n)]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if not is_temporal_key(n))


def test_pooled_text_path_contributes_and_ignores_token_order():
    """pooled_text adds an MLP of the mean text state to the timestep embedding."""
    model = image_unet(pooled_text=True)
    assert hasattr(model, "text_embedding") and not hasattr(image_unet(), "text_embedding")
    x, t = torch.randn(1, 4, 1, 16, 16), torch.tensor([500])
    ctx = torch.randn(1, 5, CTX)
    with torch.no_grad():
        base = model(x, t, ctx)
        # same mean state, tokens reordered: cross-attention is order-free without positions, so equal
        assert torch.allclose(model(x, t, ctx.flip(1)), base, atol=1e-5)
        moved = model(x, t, ctx + 0.5)                 # a different prompt changes the output
        model.text_embedding.linear_2.weight.zero_(), model.text_embedding.linear_2.bias.zero_()
        silent = model(x, t, ctx)
    assert (moved - base).abs().max() > 1e-3
    assert (silent - base).abs().max() > 1e-4          # the pooled path contributed


def test_scale_shift_resblock_matches_diffusers():
    """time_scale_shift ResBlocks compute what diffusers' ResnetBlock2D(time_embedding_norm='scale_shift') does."""
    from diffusers.models.resnet import ResnetBlock2D

    from vidiff.models.layers import ResBlock

    ref = ResnetBlock2D(in_channels=32, out_channels=64, temb_channels=48, groups=8,
                        time_embedding_norm="scale_shift").eval()
    ours = ResBlock(32, 64, 48, groups=8, eps=1e-6, scale_shift=True).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours.load_state_dict(ref.state_dict())
    x, temb = torch.randn(2, 32, 8, 8), torch.randn(2, 48)
    with torch.no_grad():
        assert (ours(x, temb) - ref(x, temb)).abs().max() < 1e-5


def test_frame_position_starts_inert_then_gives_frames_an_order():
    """frame_position: inflation stays exact; once trained, equal frames differ by their place and prompt."""
    image = image_unet(pooled_text=True)
    video = inflate(image, frame_position=True).eval()
    x, t, ctx = torch.randn(1, 4, 4, 16, 16), torch.tensor([600]), torch.randn(1, 5, CTX)
    with torch.no_grad():
        assert (video(x, t, ctx) - per_frame(image, x, t, ctx)).abs().max() < 1e-5
        for p in video.frame_embedding.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        same = x[:, :, :1].expand(-1, -1, 4, -1, -1)         # four identical frames
        out = video(same, t, ctx)
        other = video(same, t, ctx + 0.5)
    assert (out[:, :, 0] - out[:, :, -1]).abs().max() > 1e-3  # first and last frame are told apart
    # ... and how they differ depends on the prompt (the hook for "moving left" vs "moving right")
    assert ((out[:, :, -1] - out[:, :, 0]) - (other[:, :, -1] - other[:, :, 0])).abs().max() > 1e-3
    assert is_temporal_key("frame_embedding.linear_1.weight")


def test_frame_position_can_be_added_when_fine_tuning_a_video_model(tmp_path):
    """A train.init video model gains frame_position through model overrides, unchanged at first."""
    from vidiff.training.train import _with_overrides

    video = perturb_temporal(inflate(image_unet(pooled_text=True))).eval()
    grown = _with_overrides(video, {"frame_position": True}).eval()
    x, t, ctx = torch.randn(1, 4, 3, 16, 16), torch.tensor([400]), torch.randn(1, 5, CTX)
    with torch.no_grad():
        assert (grown(x, t, ctx) - video(x, t, ctx)).abs().max() < 1e-6
    with pytest.raises(ValueError, match="do not fit"):
        _with_overrides(video, {"block_out_channels": [64, 64]})


@pytest.mark.parametrize("d, dtype", [(8, torch.float32), (7, torch.float32), (8, torch.bfloat16)])
def test_rope_turns_each_channel_pair_by_its_angle_and_depends_on_offsets_only(d, dtype):
    from vidiff.models.layers import rope

    x = torch.randn(3, 2, 5, d).to(dtype)
    pos = torch.arange(5)
    got = rope(x, pos).float()
    xf, half = x.float(), d // 2
    ang = pos[:, None] * 10000.0 ** (-torch.arange(0, 2 * half, 2) / d)[None]
    x1, x2 = xf[..., 0:2 * half:2], xf[..., 1:2 * half:2]
    assert torch.allclose(got[..., 0:2 * half:2], x1 * ang.cos() - x2 * ang.sin(), atol=2e-2 if dtype != torch.float32 else 1e-5)
    assert torch.allclose(got[..., 1:2 * half:2], x1 * ang.sin() + x2 * ang.cos(), atol=2e-2 if dtype != torch.float32 else 1e-5)
    assert torch.equal(got[..., 2 * half:], xf[..., 2 * half:])                  # an odd last channel is kept
    q, k = torch.randn(1, d), torch.randn(1, d)                                   # <R_i q, R_j k> depends on i - j
    dot = lambda i, j: (rope(q, torch.tensor([i])) * rope(k, torch.tensor([j]))).sum()
    assert torch.allclose(dot(3, 1), dot(12, 10), atol=1e-5) and torch.allclose(dot(40, 40), (q * k).sum(), atol=1e-5)
