"""Long videos: prompt travel (per-frame text), against diffusers and on the shipped model."""

import warnings

import pytest
import torch

from vidiff import testing
from vidiff.pipelines.inputs import travel
from vidiff.pipelines.pipeline import VideoPipeline

diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", category=FutureWarning)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    return testing.tiny_animatediff_folder(tmp_path_factory.mktemp("long") / "animatediff")


def test_travel_blends_between_key_frames_and_holds_the_last():
    enc = lambda texts: torch.stack([torch.full((2, 3), float(len(t))) for t in texts])   # noqa: E731
    out = travel(enc, {0: "a", 4: "abcde"}, 8)                     # states 1 at frame 0, 5 from frame 4 on
    assert out.shape == (8, 2, 3)
    assert out[:, 0, 0].tolist() == [1, 2, 3, 4, 5, 5, 5, 5]
    assert torch.equal(travel(enc, "abc", 3), torch.full((3, 2, 3), 3.0))
    for bad, match in (({1: "a"}, "start at 0"), ({0: "a", 8: "b"}, "below num_frames"), ({"0": "a"}, "integer")):
        with pytest.raises(ValueError, match=match):
            travel(enc, bad, 8)


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_prompt_travel_matches_diffusers_dict_prompts(animatediff, guidance):
    f = 8
    ref = diffusers.AnimateDiffPipeline.from_pretrained(animatediff)
    ref.set_progress_bar_config(disable=True)
    ref.enable_free_noise(context_length=f, context_stride=4)       # one window: dict prompts, plain attention
    prompt, neg = {0: "a red circle moving right", 5: "a blue square moving up"}, {0: "green", 3: "still"}
    lat = torch.randn(1, 4, f, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(num_inference_steps=3, guidance_scale=guidance, output_type="latent")
    expected = ref(prompt=prompt, negative_prompt=neg, latents=lat.clone(), num_frames=f, height=16, width=16,
                   generator=torch.Generator().manual_seed(1), **kw).frames
    ours = VideoPipeline.from_pretrained(animatediff)
    got = ours(prompt, negative_prompt=neg, latents=lat.clone(), seed=1, progress=False, **kw)
    assert rel(got, expected) <= 1e-4
    # a dict with one prompt is that prompt
    one = ours({0: "a red circle moving right"}, latents=lat.clone(), progress=False, **kw)
    plain = ours("a red circle moving right", latents=lat.clone(), progress=False, **kw)
    assert rel(one, plain) <= 1e-5


def test_prompt_travel_changes_colour_on_the_shipped_model():
    from vidiff.data.shapes import detect

    pipe = VideoPipeline.from_pretrained()
    video = pipe({0: "a red circle moving right", 16: "a blue circle moving right"}, num_frames=32,
                 mode="autoregressive", chunk=16, context=4, seed=0, progress=False)
    assert detect(video.frames[:6])["color"] == "red"
    assert detect(video.frames[-8:])["color"] == "blue"
    assert video.settings["prompt"] == {0: "a red circle moving right", 16: "a blue circle moving right"}


@pytest.mark.parametrize("weighting", ["flat", "pyramid", "delayed_reverse_sawtooth"])
@pytest.mark.parametrize("frames", [12, 11])          # windows that end on the last frame, and a tail window
def test_windows_match_diffusers_free_noise(animatediff, weighting, frames):
    length, stride = 8, 2
    ref = diffusers.AnimateDiffPipeline.from_pretrained(animatediff)
    ref.set_progress_bar_config(disable=True)
    ref.enable_free_noise(context_length=length, context_stride=stride, weighting_scheme=weighting,
                          noise_type="shuffle_context")
    kw = dict(num_inference_steps=3, guidance_scale=7.5, output_type="latent")
    prompt, neg = "a red circle moving right", "blue square"
    expected = ref(prompt=prompt, negative_prompt=neg, num_frames=frames, height=16, width=16,
                   generator=torch.Generator().manual_seed(3), **kw).frames
    ours = VideoPipeline.from_pretrained(animatediff)
    got = ours(prompt, negative_prompt=neg, num_frames=frames, height=16, width=16, mode="windows", chunk=length,
               stride=stride, weighting=weighting, seed=3, progress=False, **kw)
    assert rel(got, expected) <= 1e-4


def test_one_window_over_all_frames_is_plain_sampling(animatediff):
    pipe = VideoPipeline.from_pretrained(animatediff)
    x, t, ctx = torch.randn(1, 4, 8, 8, 8), torch.tensor([500]), torch.randn(1, 5, 8)
    with torch.no_grad():
        plain = pipe.unet(x, t, ctx)
        with pipe.unet.temporal_windows(8, 2, "pyramid"):
            assert torch.equal(pipe.unet(x, t, ctx), plain)
        with pipe.unet.temporal_windows(4, 2, "pyramid"):          # smaller windows do change it
            assert not torch.allclose(pipe.unet(x, t, ctx), plain)
    kw = dict(num_frames=8, height=16, width=16, seed=0, num_inference_steps=2, output_type="latent", progress=False)
    assert torch.equal(pipe("a red circle", mode="windows", chunk=8, **kw), pipe("a red circle", **kw))


def test_window_weights_are_diffusers_schemes():
    from vidiff.models.layers import window_weights

    assert window_weights(4, "flat") == [1, 1, 1, 1]
    assert window_weights(4, "pyramid") == [1, 2, 2, 1] and window_weights(5, "pyramid") == [1, 2, 3, 2, 1]
    assert window_weights(4, "delayed_reverse_sawtooth") == [0.01, 2, 2, 1]
    assert window_weights(5, "delayed_reverse_sawtooth") == [0.01, 0.01, 3, 2, 1]
    with pytest.raises(ValueError, match="weighting must be one of"):
        window_weights(4, "gauss")


def test_windows_run_the_shipped_model_past_its_length():
    from vidiff.data.shapes import detect

    pipe = VideoPipeline.from_pretrained()
    video = pipe("a red circle moving right", num_frames=32, mode="windows", chunk=16, stride=4, seed=0,
                 num_inference_steps=10, first_frame_first=False, progress=False)
    assert video.frames.shape[0] == 32 and video.seams == [4, 8, 12, 16]
    assert detect(video.frames)["color"] == "red"


# ---- fifo ---------------------------------------------------------------------------------------
def _recording(pipe):
    """Record the per-frame timesteps of every UNet call."""
    calls, forward = [], pipe.unet.forward

    def record(x, t, *a, **kw):
        calls.append(torch.as_tensor(t)[0].clone())
        return forward(x, t, *a, **kw)
    pipe.unet.forward = record
    return calls


def test_fifo_walks_the_diagonal_by_its_definition():
    """partitions=1, no lookahead, N = f: every pass sees the f frames at the f levels of an f-step DDIM grid,
    head least noisy; frame i of the output entered at level i and left clean after i + 1 passes."""
    pipe = testing.tiny_pipeline()
    f = 4
    grid = pipe.schedule.timesteps(f).flip(0)                     # ascending: the head's level first
    calls = _recording(pipe)
    video = pipe("a red circle", num_frames=f, height=16, width=16, mode="fifo", chunk=f, partitions=1,
                 lookahead=False, guidance_scale=1.0, seed=0, progress=False)
    assert video.frames.shape == (f, 16, 16, 3)
    queue_calls = calls[f:]                                        # after the base clip's f steps
    assert len(queue_calls) == f                                   # one pass per output frame (no warm-up)
    for t in queue_calls:
        torch.testing.assert_close(t.double(), grid, atol=0.51, rtol=0)
    # the base clip itself took the same f-step grid, one level for all frames per step
    assert [float(c) for c in calls[:f]] == pytest.approx(grid.flip(0).tolist(), abs=0.51)


def test_fifo_queue_holds_one_frame_per_level_with_lookahead_and_partitions():
    pipe = testing.tiny_pipeline()
    f, n = 4, 3
    grid = pipe.schedule.timesteps(n * f).flip(0)
    calls = _recording(pipe)
    pipe("a red circle", num_frames=5, height=16, width=16, mode="fifo", chunk=f, partitions=n,
         guidance_scale=1.0, seed=0, progress=False)
    windows = 2 * n                                                # with lookahead: 2n windows of f, stride f/2
    first_pass = calls[n * f:n * f + windows]
    assert all(len(t) == f for t in first_pass)
    written = torch.cat([t[f // 2:] for t in reversed(first_pass)])   # each window writes its noisier half
    torch.testing.assert_close(written.double(), grid, atol=0.51, rtol=0)   # every level exactly once, in order


@pytest.mark.parametrize("frames", [1, 7, 19])
def test_fifo_output_length_is_exact(frames):
    pipe = testing.tiny_pipeline()
    video = pipe("a red circle", num_frames=frames, height=16, width=16, mode="fifo", chunk=4, partitions=2,
                 seed=0, progress=False, guidance_scale=1.0)
    assert video.frames.shape[0] == frames and video.settings["num_inference_steps"] == 8


@pytest.mark.slow
def test_fifo_memory_does_not_grow_with_length(tmp_path):
    import subprocess
    import sys

    testing.tiny_model(tmp_path / "m")
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from vidiff.pipelines.pipeline import VideoPipeline\n"
        "p = VideoPipeline.from_pretrained(sys.argv[1])\n"
        "p('a red circle', num_frames=int(sys.argv[2]), height=32, width=32, mode='fifo', chunk=4, partitions=2,"
        " guidance_scale=1.0, seed=0, progress=False)\n"
        "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n")
    peak = {n: int(subprocess.run([sys.executable, "-c", script, str(tmp_path / "m"), str(n)], capture_output=True,
                                  text=True, check=True).stdout.split()[-1]) for n in (32, 256)}
    assert peak[256] <= 1.3 * peak[32], peak


def test_fifo_and_windows_run_a_community_model(animatediff):
    pipe = VideoPipeline.from_pretrained(animatediff)
    kw = dict(height=16, width=16, seed=0, progress=False, guidance_scale=7.5, chunk=4)
    fifo = pipe({0: "a red circle", 5: "a blue square"}, num_frames=9, mode="fifo", partitions=2, **kw)
    assert fifo.frames.shape == (9, 16, 16, 3) and fifo.seams is None
    win = pipe("a red circle", num_frames=40, mode="windows", stride=2, num_inference_steps=2, **kw)
    assert win.frames.shape[0] == 40                 # past the motion module's 32-frame table: windows of 4


def test_cli_long_video_modes_and_prompt_travel(tmp_path, capsys):
    from vidiff.app.cli import main
    from vidiff.data.io import read_settings

    model = testing.tiny_model(tmp_path / "m")
    base = ["generate", "a red circle", "--model", str(model), "--height", "16", "--width", "16", "--seed", "1"]
    assert main(base + ["--frames", "10", "--mode", "fifo", "--chunk", "4", "--partitions", "2", "--no-lookahead",
                        "-o", str(tmp_path / "f.mp4")]) == 0
    s = read_settings(tmp_path / "f.mp4")
    assert s["mode"] == "fifo" and s["lookahead"] is False and s["num_inference_steps"] == 8
    assert main(base + ["--frames", "12", "--mode", "windows", "--chunk", "8", "--stride", "2", "--steps", "2",
                        "--prompt-at", "6:a blue square", "-o", str(tmp_path / "w.mp4")]) == 0
    s = read_settings(tmp_path / "w.mp4")
    assert s["prompt"] == {"0": "a red circle", "6": "a blue square"} and s["seams"] == [2, 4]
    capsys.readouterr()
    assert main(base + ["--prompt-at", "99:a blue square", "-o", str(tmp_path / "x.mp4")]) == 2
    assert main(base + ["--prompt-at", "blue", "-o", str(tmp_path / "y.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "outside 0..15" in err[0] and "FRAME:TEXT" in err[1]
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "y.mp4").exists()
