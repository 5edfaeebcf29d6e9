"""Steering a video (issue 29): FreeInit (diffusers' AnimateDiffPipeline as the oracle) and looping windows."""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    import diffusers

    from vidiff import testing
    from vidiff.pipelines.pipeline import VideoPipeline

    folder = testing.tiny_animatediff_folder(tmp_path_factory.mktemp("control") / "ad")
    ref = diffusers.AnimateDiffPipeline.from_pretrained(folder)
    ref.set_progress_bar_config(disable=True)
    return folder, ref, VideoPipeline.from_pretrained(folder, device="cpu")


@pytest.mark.parametrize("method, fast", [("butterworth", False), ("gaussian", True), ("ideal", False)])
def test_free_init_matches_diffusers(animatediff, method, fast):
    """3 passes, CFG on: final latents as diffusers' enable_free_init (same seed, one fp32 draw per extra pass)."""
    _, ref, ours = animatediff
    ref.enable_free_init(num_iters=3, method=method, use_fast_sampling=fast, order=4, spatial_stop_frequency=0.25,
                         temporal_stop_frequency=0.25)
    try:
        kw = dict(num_frames=8, height=16, width=16, num_inference_steps=4, guidance_scale=7.5, output_type="latent",
                  generator=torch.Generator().manual_seed(0))
        a = ref(prompt="a red circle", **kw).frames
    finally:
        ref.disable_free_init()
    kw["generator"] = torch.Generator().manual_seed(0)
    b = ours("a red circle", progress=False, free_init={"iterations": 3, "method": method, "fast": fast}, **kw)
    assert float((a - b).abs().max() / a.abs().max()) <= 1e-4
    one = ours("a red circle", progress=False, free_init=1, **{**kw, "generator": torch.Generator().manual_seed(0)})
    plain = ours("a red circle", progress=False, **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert torch.equal(one, plain)                                     # one pass is plain sampling


def test_free_init_filters():
    from vidiff.diffusion.free_init import low_pass, mix

    m = low_pass(4, 8, 8, "butterworth", 4, 0.25, 0.25)
    assert m.shape == (4, 8, 8) and float(m.max()) == 1.0 and float(m[0, 0, 0]) < 1e-3   # 1 at the centre (DC)
    assert torch.equal(low_pass(4, 8, 8, "gaussian", 4, 0.0, 0.25), torch.zeros(4, 8, 8))
    x, n = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 4, 4, 8, 8)
    assert torch.allclose(mix(x, n, torch.ones(4, 8, 8)), x, atol=1e-5)          # all-pass keeps x
    assert torch.allclose(mix(x, n, torch.zeros(4, 8, 8)), n, atol=1e-5)         # nothing kept: the noise


@pytest.mark.parametrize("bad, msg", [({"iterations": 0}, "iterations must be"), ({"method": "box"}, "method must be"),
                                      ({"spatial": 2}, "stop frequency"), ({"passes": 2}, "unknown free_init keys"),
                                      (True, "free_init must be")])
def test_free_init_bad_options(animatediff, bad, msg):
    with pytest.raises(ValueError, match=msg):
        animatediff[2]("a red circle", num_frames=4, height=16, width=16, num_inference_steps=1, seed=0,
                       progress=False, free_init=bad)


def test_free_init_cli(animatediff, tmp_path, capsys):
    folder = animatediff[0]
    code, out, err = run_cli(capsys, "generate", "a red circle", "--model", folder, "--frames", "4", "--steps", "2",
                             "--free-init", "2", "--seed", "0", "-o", tmp_path / "fi.mp4")
    assert code == 0, err
    from vidiff.data.io import read_settings

    assert read_settings(tmp_path / "fi.mp4")["free_init"] == 2
    code, _, err = run_cli(capsys, "generate", "a red circle", "--model", folder, "--frames", "4", "--free-init", "2",
                           "--mode", "windows", "-o", tmp_path / "bad.mp4")
    assert code == 2 and "--free-init N needs" in err[-1] and not (tmp_path / "bad.mp4").exists()


def test_loop_windows_wrap_and_weigh_every_frame_alike():
    """With loop, windows start every `stride` frames all the way round; identity per window gives x back, and a
    window function that sees the wrap (frames 14, 15, 0, 1 together) is called."""
    from vidiff.models.layers import fuse_windows

    x = torch.randn(2, 16, 3)
    assert torch.allclose(fuse_windows(x, lambda w: w, 4, 2, "pyramid", loop=True), x, atol=1e-6)
    seen = []
    fuse_windows(x, lambda w: seen.append(w[0, :, 0].clone()) or w, 4, 2, "flat", loop=True)
    assert len(seen) == 8 and torch.equal(seen[-1], x[0, [14, 15, 0, 1], 0])


def test_circular_frame_convolutions_wrap():
    """In a looping video the temporal convolutions see frame 0 and the last frame as neighbours."""
    import torch.nn.functional as F

    from vidiff.models.frames import FrameConv
    from vidiff.models.layers import TemporalConv

    fc = FrameConv(8, 8)
    h = torch.randn(2, 6, 5, 8)                                       # b f n c
    fc.circular = True
    ref = F.conv1d(F.pad(h.permute(0, 2, 3, 1).reshape(10, 8, 6), (1, 1), mode="circular"), fc.weight[..., 0, 0],
                   fc.bias).reshape(2, 5, 8, 6).permute(0, 3, 1, 2)
    assert torch.allclose(fc(h), ref, atol=1e-5)
    tc = TemporalConv(8, 4)
    torch.nn.init.normal_(tc.conv.weight)
    x = torch.randn(12, 8, 3, 3)                                      # (b f) c h w, f = 6
    rolled = torch.roll(x.view(2, 6, 8, 3, 3), 2, dims=1).reshape(12, 8, 3, 3)
    tc.circular = True
    out = tc(x, 6)
    assert torch.allclose(torch.roll(out.view(2, 6, 8, 3, 3), 2, 1).reshape(12, 8, 3, 3), tc(rolled, 6), atol=1e-5)
    tc.circular = False
    assert not torch.allclose(tc(x, 6), out)


def test_loop_needs_windows_and_joins_the_ends(animatediff, tmp_path, capsys):
    from vidiff import testing
    from vidiff.evaluation.bench import consistency
    from vidiff.pipelines.pipeline import VideoPipeline

    pipe = VideoPipeline.from_pretrained(testing.tiny_model(tmp_path / "m"), device="cpu")
    with pytest.raises(ValueError, match="loop=True works with mode 'windows'"):
        pipe("a red circle", num_frames=8, loop=True, num_inference_steps=1, seed=0, progress=False)
    kw = dict(num_frames=12, mode="windows", chunk=4, stride=2, num_inference_steps=2, seed=0, progress=False)
    looped, plain = pipe("a red circle", loop=True, **kw), pipe("a red circle", **kw)
    assert looped.settings["loop"] is True and not torch.equal(torch.from_numpy(looped.frames),
                                                               torch.from_numpy(plain.frames))
    record = consistency(looped, loop=True)
    assert record["frames"] == 13 and record["seams"]["given"] == [12]
    code, _, err = run_cli(capsys, "generate", "a red circle", "--model", animatediff[0], "--frames", "4", "--loop",
                           "-o", tmp_path / "bad.mp4")
    assert code == 2 and "--loop makes a looping video with --mode windows" in err[-1]


def test_shipped_model_loop_closes_the_wrap():
    """The rendered case of benchmarks/loop_seam.py: 48 frames, windows of 16, stride 4. With loop the wrap pair
    (last frame -> frame 0) changes about as much as any other pair; without it, several times more."""
    import numpy as np

    from vidiff.evaluation.metrics import mean_abs_difference
    from vidiff.pipelines.pipeline import VideoPipeline

    pipe = VideoPipeline.from_pretrained(device="cpu")
    ratio = {}
    for loop in (False, True):
        f = pipe("a red circle moving right", num_frames=48, mode="windows", chunk=16, stride=4, loop=loop, seed=0,
                 progress=False, cache=1).frames                 # float32 (the suite's auto), no step caching
        pairs = mean_abs_difference(np.concatenate([f, f[:1]]))
        ratio[loop] = float(pairs[-1] / np.median(pairs[:-1]))
    assert ratio[True] <= 1.3 < 2 * ratio[True] < ratio[False], ratio
