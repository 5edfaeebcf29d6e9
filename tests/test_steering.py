"""Steering a video (issue 29): ControlNet, SparseCtrl and IP-Adapter, with diffusers' AnimateDiff pipelines as the
oracle on tiny random components built here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_cli

diffusers = pytest.importorskip("diffusers")
from PIL import Image  # noqa: E402

from vidiff import testing  # noqa: E402
from vidiff.pipelines.pipeline import VideoPipeline  # noqa: E402

KW = dict(num_frames=8, height=16, width=16, num_inference_steps=4, guidance_scale=7.5, output_type="latent")


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def pil(frames):
    return [Image.fromarray(f) for f in frames]


def clip(seed, f=8, size=16):
    return np.random.default_rng(seed).integers(0, 256, (f, size, size, 3), dtype=np.uint8)


def g():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("steering")
    ad = testing.tiny_animatediff_folder(root / "ad")
    for name, seed in (("cn1", 3), ("cn2", 7)):
        testing.tiny_controlnet(seed=seed).save_pretrained(root / name, safe_serialization=True)
    for rgb in (True, False):
        testing.tiny_sparsectrl(rgb=rgb).save_pretrained(root / f"sparse-{'rgb' if rgb else 'scribble'}",
                                                         safe_serialization=True)
    testing.tiny_image_encoder(root / "image_encoder")
    base = diffusers.AnimateDiffPipeline.from_pretrained(ad)
    ours = VideoPipeline.from_pretrained(ad, device="cpu")
    widths = [a.to_q.out_features for a in ours.unet.cross_attentions()]
    for plus in (False, True):
        testing.tiny_ip_adapter_file(root / f"ip{'-plus' if plus else ''}.safetensors", widths, plus=plus)
    return root, base, ours


def reference(parts, cls, **kw):
    ref = getattr(diffusers, cls)(**parts[1].components, **kw)
    ref.set_progress_bar_config(disable=True)
    return ref


# ---- ControlNet ----------------------------------------------------------------------------------

def test_controlnet_matches_diffusers(parts):
    """One ControlNet, scale 0.8, active from 25% to 75% of the steps: final latents as AnimateDiffControlNetPipeline."""
    root, _, ours = parts
    net = diffusers.ControlNetModel.from_pretrained(root / "cn1")
    frames = clip(0)
    a = reference(parts, "AnimateDiffControlNetPipeline", controlnet=net)(
        prompt="a red circle", conditioning_frames=pil(frames), controlnet_conditioning_scale=0.8,
        control_guidance_start=0.25, control_guidance_end=0.75, generator=g(), **KW).frames
    ours.load_controlnet(root / "cn1", name="pose")
    b = ours("a red circle", control={"pose": frames}, control_scale=0.8, control_start=0.25, control_end=0.75,
             generator=g(), progress=False, **KW)
    plain = ours("a red circle", generator=g(), progress=False, **KW)
    assert rel(b, a) <= 1e-4 and rel(plain, a) > 1e-3                  # parity, and the control did something


def test_two_controlnets_match_diffusers(parts):
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    root, _, ours = parts
    nets = MultiControlNetModel([diffusers.ControlNetModel.from_pretrained(root / n) for n in ("cn1", "cn2")])
    f1, f2 = clip(0), clip(1)
    a = reference(parts, "AnimateDiffControlNetPipeline", controlnet=nets)(
        prompt="a red circle", conditioning_frames=[pil(f1), pil(f2)], controlnet_conditioning_scale=[0.8, 0.5],
        control_guidance_start=[0.0, 0.25], control_guidance_end=[1.0, 0.75], generator=g(), **KW).frames
    ours.load_controlnet(root / "cn1", name="pose")
    ours.load_controlnet(root / "cn2", name="depth")
    b = ours("a red circle", control={"pose": f1, "depth": list(f2)}, control_scale={"pose": 0.8, "depth": 0.5},
             control_start={"depth": 0.25}, control_end={"depth": 0.75}, generator=g(), progress=False, **KW)
    assert rel(b, a) <= 1e-4


def test_controlnet_video_to_video_matches_diffusers(parts):
    root, _, ours = parts
    net = diffusers.ControlNetModel.from_pretrained(root / "cn1")
    video, frames = clip(2), clip(0)
    kw = dict(num_inference_steps=5, guidance_scale=7.5, output_type="latent", strength=0.6)
    a = reference(parts, "AnimateDiffVideoToVideoControlNetPipeline", controlnet=net)(
        video=pil(video), prompt="a red circle", conditioning_frames=pil(frames), height=16, width=16,
        generator=torch.Generator().manual_seed(3), **kw).frames
    ours.load_controlnet(root / "cn1", name="pose")
    b = ours.video_to_video(video, "a red circle", control={"pose": frames}, seed=3, progress=False, **kw)
    assert rel(b, a) <= 1e-4


@pytest.mark.parametrize("mode, windows", [("autoregressive", [range(0, 4), range(3, 7), range(6, 8)]),
                                           ("windows", [range(0, 8)])])
def test_controlnet_in_long_video_modes_sees_its_windows_frames(parts, monkeypatch, mode, windows):
    """Each window's ControlNet call gets the condition of that window's frames (autoregressive: chunk 4, context 1);
    in windows mode the UNet sees every frame, and so does the ControlNet."""
    from vidiff.pipelines import control

    root, _, ours = parts
    ours.load_controlnet(root / "cn1", name="pose")
    seen, real = [], control._pick
    monkeypatch.setattr(control, "_pick", lambda emb, frames: seen.append(frames) or real(emb, frames))
    video = ours("a red circle", control={"pose": clip(0)}, mode=mode, chunk=4, context=1, stride=2, seed=0,
                 progress=False, **{**KW, "output_type": "video", "num_inference_steps": 2})
    assert sorted(set(seen), key=lambda r: r.start) == windows and video.frames.shape == (8, 16, 16, 3)
    assert video.settings["control"]["pose"]["scale"] == 1.0


# ---- SparseCtrl ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rgb", "scribble"])
@pytest.mark.parametrize("indices", [[0], [0, 7]])
def test_sparsectrl_matches_diffusers(parts, monkeypatch, kind, indices):
    """Conditions at the given frames with the mask channel, as AnimateDiffSparseControlNetPipeline. RGB conditions are
    encoded with the VAE's posterior mean here (deterministic); diffusers draws a sample from the global RNG, so
    its pipeline is given the mean too."""
    from diffusers.pipelines.animatediff import pipeline_animatediff_sparsectrl as module

    monkeypatch.setattr(module, "retrieve_latents", lambda out, generator=None, sample_mode="sample":
                        out.latent_dist.mode())
    root, _, ours = parts
    folder = root / f"sparse-{kind}"
    images = clip(5, f=2)
    a = reference(parts, "AnimateDiffSparseControlNetPipeline",
                  controlnet=diffusers.SparseControlNetModel.from_pretrained(folder))(
        prompt="a red circle", conditioning_frames=pil(images[:len(indices)]), controlnet_frame_indices=indices,
        generator=g(), **KW).frames
    ours.load_sparsectrl(folder)
    b = ours("a red circle", keyframes={k: images[i] for i, k in enumerate(indices)}, generator=g(), progress=False,
             **KW)
    assert rel(b, a) <= 1e-4


@pytest.mark.parametrize("kind", ["rgb", "scribble"])
def test_sparsectrl_original_file_loads_the_same_weights(parts, tmp_path, kind):
    from safetensors.torch import load_file, save_file

    from vidiff.loaders.control import load_controlnet, original_sparsectrl_keys

    folder = parts[0] / f"sparse-{kind}"
    original = original_sparsectrl_keys(load_file(str(folder / "diffusion_pytorch_model.safetensors")))
    motion = [k for k in original if ".motion_modules." in k]
    assert any(".attention_blocks.0." in k for k in motion) and not any(".attn1." in k for k in motion)
    save_file(original, str(tmp_path / f"v3_sd15_sparsectrl_{kind}.safetensors"))
    a, _ = load_controlnet(folder)
    b, _ = load_controlnet(tmp_path / f"v3_sd15_sparsectrl_{kind}.safetensors")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.sparse and b.embedding == ("simple" if kind == "rgb" else "full")


# ---- IP-Adapter ----------------------------------------------------------------------------------

@pytest.mark.parametrize("plus", [False, True])
def test_ip_adapter_matches_diffusers(parts, plus):
    """Plain and Plus, scales 0.5 and 1.0, with guidance: final latents as AnimateDiffPipeline + load_ip_adapter."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    root, _, ours = parts
    name = f"ip{'-plus' if plus else ''}.safetensors"
    ref = diffusers.AnimateDiffPipeline.from_pretrained(
        root / "ad", image_encoder=CLIPVisionModelWithProjection.from_pretrained(root / "image_encoder"),
        feature_extractor=CLIPImageProcessor.from_pretrained(root / "image_encoder"))
    ref.set_progress_bar_config(disable=True)
    ref.load_ip_adapter(str(root), subfolder="", weight_name=name, image_encoder_folder=None, low_cpu_mem_usage=False)
    ours.load_ip_adapter(root / name, image_encoder=root / "image_encoder")
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    kw = {**KW, "num_inference_steps": 3}
    for scale in (0.5, 1.0):
        ref.set_ip_adapter_scale(scale)
        ours.set_ip_adapter_scale(scale)
        a = ref(prompt="a red circle", ip_adapter_image=Image.fromarray(image), generator=g(), **kw).frames
        assert rel(ours("a red circle", ip_image=image, generator=g(), progress=False, **kw), a) <= 1e-4
    plain = ours("a red circle", generator=g(), progress=False, **kw)
    assert rel(plain, a) > 1e-3


def test_ip_image_per_frame_changes_only_the_frames_it_names(parts, tmp_path):
    """On an image model (frames independent): a {frame: image} naming every frame, one of them different, changes
    that frame only; two keys blend the frames between them as prompt travel does."""
    from vidiff.models.unet import UNet

    root, _, ours = parts
    image = UNet(ours.unet.config, temporal=False)
    image.load_state_dict(ours.unet.state_dict(), strict=False)      # the spatial layers: an image model
    pipe = VideoPipeline(image, ours.text_encoder, ours.schedule, ours.codec)
    widths = [a.to_q.out_features for a in pipe.unet.cross_attentions()]
    pipe.load_ip_adapter(testing.tiny_ip_adapter_file(tmp_path / "ip.safetensors", widths),
                         image_encoder=root / "image_encoder")
    a, b = clip(7, f=1, size=40)[0], clip(8, f=1, size=40)[0]
    kw = {**KW, "num_frames": 6}
    same = pipe("a red circle", ip_image=a, generator=g(), progress=False, **kw)
    named = pipe("a red circle", ip_image={i: (b if i == 3 else a) for i in range(6)}, generator=g(), progress=False,
                 **kw)
    diff = [(named[:, :, i] - same[:, :, i]).abs().max().item() for i in range(6)]
    changed = [d > 1e-2 for d in diff]                               # per-frame vs shared tokens: rounding only
    assert changed == [False, False, False, True, False, False]
    held = pipe("a red circle", ip_image={0: a, 5: a}, generator=g(), progress=False, **kw)
    assert rel(held, same) <= 1e-4                      # two keys of one image: that image throughout
    method = pipe._ip_method({0: a, 5: b}, 6, 1)
    k = method.pos[0][0]                                              # layer 0 keys, per frame
    assert torch.allclose(k[2], 0.6 * k[0] + 0.4 * k[5], atol=1e-5)  # frame 2 of 0..5: 2/5 of the way


# ---- the command line and bad inputs --------------------------------------------------------------

def test_cli_control_sparsectrl_and_ip_adapter(parts, tmp_path, capsys):
    from vidiff.data.io import read_settings, write_video

    root = parts[0]
    write_video(clip(0), tmp_path / "pose.mp4", fps=8)
    Image.fromarray(clip(5, f=1)[0]).save(tmp_path / "key.png")
    Image.fromarray(clip(6, f=1, size=40)[0]).save(tmp_path / "look.png")
    base = ["generate", "a red circle", "--model", root / "ad", "--frames", "8", "--steps", "2", "--seed", "0"]
    code, _, err = run_cli(capsys, *base, "--controlnet", root / "cn1", "--control", tmp_path / "pose.mp4",
                           "--control-scale", "0.7", "--sparsectrl", root / "sparse-rgb", "--keyframe",
                           f"0:{tmp_path / 'key.png'}", "--ip-adapter", root / "ip.safetensors", "--ip-image",
                           tmp_path / "look.png", "-o", tmp_path / "all.mp4")
    assert code == 0, err
    s = read_settings(tmp_path / "all.mp4")
    assert list(s["control"].values())[0]["scale"] == 0.7 and s["keyframes"]["frames"] == [0]
    assert s["ip_adapter"]["scale"] == 1.0


def test_bad_control_inputs_are_one_line_each(parts, tmp_path, capsys):
    from vidiff.data.io import write_video

    root = parts[0]
    testing.tiny_controlnet(widths=(16, 32)).save_pretrained(tmp_path / "wide", safe_serialization=True)
    write_video(clip(0), tmp_path / "pose.mp4", fps=8)
    write_video(clip(0, f=5), tmp_path / "short.mp4", fps=8)
    Image.fromarray(clip(5, f=1)[0]).save(tmp_path / "key.png")
    testing.tiny_ip_adapter_file(tmp_path / "ip-wide.safetensors", [8] * 7, cross_dim=16)
    base = ["generate", "a red circle", "--model", root / "ad", "--frames", "8", "--steps", "1", "-o"]
    cases = [
        (["--controlnet", tmp_path / "wide", "--control", tmp_path / "pose.mp4"], "made for a base model with widths"),
        (["--controlnet", root / "cn1", "--control", tmp_path / "short.mp4"], "has 5 frames; the video has 8"),
        (["--sparsectrl", root / "sparse-rgb", "--keyframe", f"8:{tmp_path / 'key.png'}"],
         "keyframe index 8 is outside the video's frames 0..7"),
        (["--ip-adapter", tmp_path / "ip-wide.safetensors", "--image-encoder", root / "image_encoder", "--ip-image",
          tmp_path / "key.png"], "IP-Adapter was made for another base model"),
    ]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"bad{i}.mp4"
        code, _, err = run_cli(capsys, *base, out, *extra)
        assert code == 2 and message in err[-1] and len(err) == 1, err
        assert not out.exists()


def test_from_settings_makes_a_controlled_video_again(parts, tmp_path, capsys):
    """The control options (with absolute paths) are stored in the video and --from-settings loads them again."""
    from vidiff.data.io import read_video, write_video

    root = parts[0]
    write_video(clip(0), tmp_path / "pose.mp4", fps=8)
    Image.fromarray(clip(5, f=1)[0]).save(tmp_path / "key.png")
    code, _, err = run_cli(capsys, "generate", "a red circle", "--model", root / "ad", "--frames", "8", "--steps", "2",
                           "--seed", "1", "--controlnet", root / "cn1", "--control", tmp_path / "pose.mp4",
                           "--sparsectrl", root / "sparse-scribble", "--keyframe", f"3:{tmp_path / 'key.png'}",
                           "-o", tmp_path / "a.mp4")
    assert code == 0, err
    code, _, err = run_cli(capsys, "generate", "--from-settings", tmp_path / "a.mp4", "-o", tmp_path / "b.mp4")
    assert code == 0, err
    assert np.array_equal(read_video(tmp_path / "a.mp4")[0], read_video(tmp_path / "b.mp4")[0])
    from vidiff.data.io import read_settings

    again = read_settings(tmp_path / "b.mp4")
    assert again["keyframes"]["frames"] == [3] and len(again["control"]) == 1


@pytest.mark.parametrize("mode", ["windows", "autoregressive"])
def test_sparsectrl_past_its_positional_table(parts, mode):
    """40 frames with keyframes at both ends: the SparseCtrl net's motion modules (a 32-frame table) run on the same
    windows as the UNet's, or on each autoregressive window."""
    root, _, ours = parts
    ours.load_sparsectrl(root / "sparse-rgb")
    images = clip(5, f=2)
    out = ours("a red circle", keyframes={0: images[0], 39: images[1]}, mode=mode, chunk=16, context=4, seed=0,
               progress=False, **{**KW, "num_frames": 40, "num_inference_steps": 1})
    assert out.shape == (1, 4, 40, 8, 8) and torch.isfinite(out).all()
