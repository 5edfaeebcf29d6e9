"""Steering a video (issue 29): FreeInit so far, with diffusers' AnimateDiffPipeline as the oracle."""

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
