"""Speed (issue 31): step caching (DeepCache), the automatic precision, compile. Timings live in benchmarks/."""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli


@pytest.fixture(scope="module")
def counted():
    """A tiny pipeline whose ResBlock calls are counted."""
    from vidiff import testing
    from vidiff.models.layers import ResBlock

    pipe = testing.tiny_pipeline()
    calls = [0]
    for m in pipe.unet.modules():
        if isinstance(m, ResBlock):
            m.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return pipe, calls


def _run(pipe, calls, mode, cache):
    kw = dict(num_frames=8, num_inference_steps=6, seed=0, progress=False, mode=mode, chunk=4, context=1)
    if mode != "fifo":
        kw["output_type"] = "latent"
    else:
        kw.update(num_frames=3, partitions=1)
    calls[0] = 0
    out = pipe("a red circle moving right", cache=cache, **kw)
    return torch.as_tensor(getattr(out, "frames", out)).float(), calls[0]


@pytest.mark.parametrize("mode", ["all", "windows", "autoregressive", "fifo"])
def test_cache_interval_one_is_the_uncached_run(counted, mode):
    pipe, calls = counted
    plain, n = _run(pipe, calls, mode, None)
    same, m = _run(pipe, calls, mode, {"interval": 1, "depth": 1})
    assert torch.equal(plain, same) and n == m


@pytest.mark.parametrize("mode, tolerance", [("all", 0.05), ("windows", 0.05), ("autoregressive", 0.05),
                                             ("fifo", 12.0)])
def test_cached_run_skips_blocks_and_stays_close(counted, mode, tolerance):
    """Interval 3 at depth 1: a third of the calls run the whole UNet, the rest the outer level only. Latents stay
    within 5% (relative max) of the uncached run; fifo (frames out) within 12/255 mean."""
    pipe, calls = counted
    plain, n = _run(pipe, calls, mode, None)
    cached, m = _run(pipe, calls, mode, 3)
    assert m < 0.7 * n
    assert pipe.step_cache.reused >= pipe.step_cache.full > 0
    if mode == "fifo":
        assert float((cached - plain).abs().mean()) <= tolerance
    else:
        assert float((cached - plain).abs().max() / plain.abs().max()) <= tolerance


def test_cache_with_guidance_and_free_init(counted):
    """With CFG both halves share a call (one cache entry); a FreeInit pass starts its cache afresh."""
    pipe, calls = counted
    kw = dict(num_frames=6, num_inference_steps=4, seed=1, progress=False, output_type="latent", guidance_scale=3.0)
    plain = pipe("a red circle", free_init=2, **kw)
    cached = pipe("a red circle", free_init=2, cache=2, **kw)
    assert pipe.step_cache.full == 4 and pipe.step_cache.reused == 4         # 2 passes x (steps 0, 2 full; 1, 3 reused)
    assert float((cached - plain).abs().max() / plain.abs().max()) <= 0.05


@pytest.mark.parametrize("bad, msg", [(0, "interval must be"), ({"depth": 0}, "cache depth must be"),
                                      ({"depth": 9}, "cache depth must be"), ({"every": 2}, "unknown cache keys"),
                                      ("3", "cache must be")])
def test_bad_cache_options(counted, bad, msg):
    with pytest.raises(ValueError, match=msg):
        counted[0]("a red circle", num_frames=2, num_inference_steps=1, seed=0, progress=False, cache=bad)


def test_cache_cli(tmp_path, capsys):
    from vidiff import testing
    from vidiff.data.io import read_settings

    folder = testing.tiny_model(tmp_path / "m")
    code, _, err = run_cli(capsys, "generate", "a red circle", "--model", folder, "--frames", "4", "--steps", "3",
                           "--cache", "2", "--seed", "0", "-o", tmp_path / "c.mp4")
    assert code == 0, err
    assert read_settings(tmp_path / "c.mp4")["cache"] == {"interval": 2, "depth": 1}
    code, _, err = run_cli(capsys, "generate", "a red circle", "--model", folder, "--frames", "4", "--cache", "0",
                           "-o", tmp_path / "bad.mp4")
    assert code == 2 and "cache interval must be" in err[-1] and not (tmp_path / "bad.mp4").exists()


def test_auto_dtype_picks_bf16_only_where_it_is_faster(monkeypatch):
    """`dtype="auto"` on a CPU: float32 without native bfloat16 (the capability probe patched), bfloat16 with it
    when the probe matmul agrees; float16 on CUDA; VIDIFF_AUTO_DTYPE pins it."""
    from vidiff import devices

    monkeypatch.delenv("VIDIFF_AUTO_DTYPE", raising=False)
    for native, probe, expected in ((False, True, torch.float32), (True, False, torch.float32),
                                    (True, True, torch.bfloat16)):
        monkeypatch.setattr(devices, "_BF16", [])
        monkeypatch.setattr(devices, "cpu_bf16_native", lambda: native)
        monkeypatch.setattr(devices, "bf16_probe", lambda: probe)
        assert devices.resolve_dtype("auto", torch.device("cpu")) == expected
    assert devices.resolve_dtype("auto", torch.device("cuda")) == torch.float16
    monkeypatch.setenv("VIDIFF_AUTO_DTYPE", "float32")
    assert devices.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setenv("VIDIFF_AUTO_DTYPE", "half")
    with pytest.raises(ValueError, match="VIDIFF_AUTO_DTYPE must be one of"):
        devices.resolve_dtype("auto", torch.device("cpu"))


def test_auto_dtype_pipeline_runs_its_unet_in_bf16_and_decodes_in_float32(monkeypatch, tmp_path):
    from vidiff import devices, testing
    from vidiff.pipelines.pipeline import VideoPipeline

    monkeypatch.delenv("VIDIFF_AUTO_DTYPE", raising=False)
    monkeypatch.setattr(devices, "_BF16", [True])
    pipe = VideoPipeline.from_pretrained(testing.tiny_model(tmp_path / "m"), device="cpu")
    assert pipe.dtype == torch.bfloat16 and next(pipe.unet.parameters()).dtype == torch.bfloat16
    video = pipe("a red circle", num_frames=4, num_inference_steps=2, seed=0, progress=False)
    assert video.frames.shape[0] == 4 and video.settings["dtype"] == "bfloat16"


@pytest.mark.slow
def test_compile_gives_the_eager_output(tmp_path, capsys):
    """torch.compile (inductor) on a tiny model: the same latents within 1e-4; --compile on the command line."""
    from vidiff import testing

    pipe = testing.tiny_pipeline()
    kw = dict(num_frames=4, num_inference_steps=2, seed=0, progress=False, output_type="latent")
    eager = pipe("a red circle", **kw)
    compiled = pipe.compile()("a red circle", **kw)
    assert float((compiled - eager).abs().max() / eager.abs().max()) <= 1e-4
    folder = testing.tiny_model(tmp_path / "m")
    code, _, err = run_cli(capsys, "generate", "a red circle", "--model", folder, "--frames", "4", "--steps", "2",
                           "--compile", "--seed", "0", "-o", tmp_path / "c.mp4")
    assert code == 0, err
