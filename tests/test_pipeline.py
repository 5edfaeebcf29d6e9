"""VideoPipeline modes, determinism, memory bound, io and the `vidiff generate` CLI."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vidiff.data.io import read_video, write_video
from vidiff.pipelines.pipeline import VideoPipeline
from vidiff.testing import tiny_model, tiny_pipeline

FAST = dict(num_inference_steps=3, progress=False, height=32, width=32)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "tiny")


def test_same_seed_same_video_and_different_seeds_differ(pipe):
    a = pipe("a red circle moving right", num_frames=4, seed=1, **FAST)
    b = pipe("a red circle moving right", num_frames=4, seed=1, **FAST)
    c = pipe("a red circle moving right", num_frames=4, seed=2, **FAST)
    assert a.frames.shape == (4, 32, 32, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_autoregressive_with_one_chunk_equals_all(pipe, sampler):
    a = pipe("a blue square", num_frames=6, seed=3, sampler=sampler, **FAST)
    b = pipe("a blue square", num_frames=6, seed=3, sampler=sampler, mode="autoregressive", chunk=6, context=2, **FAST)
    assert np.array_equal(a.frames, b.frames)


def test_autoregressive_long_video_keeps_context(pipe):
    v = pipe("a blue square", num_frames=20, seed=3, mode="autoregressive", chunk=8, context=3, **FAST)
    assert v.frames.shape[0] == 20


def test_one_frame_is_an_image(pipe, tmp_path):
    v = pipe("a green star", num_frames=1, seed=0, **FAST)
    assert v.frames.shape == (1, 32, 32, 3)
    v.save(tmp_path / "x.png")
    assert read_video(tmp_path / "x.png")[0].shape == (1, 32, 32, 3)


@pytest.mark.parametrize("frame_conditioning", [True, False], ids=["framecond", "replacement"])
def test_animate_keeps_the_first_frame_exactly(frame_conditioning):
    pipe = tiny_pipeline(frame_conditioning=frame_conditioning)
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    v = pipe.animate(image, "a red circle moving left", num_frames=5, seed=0, num_inference_steps=3, progress=False)
    assert v.frames.shape == (5, 32, 32, 3)
    assert np.array_equal(v.frames[0], image)
    assert not np.array_equal(v.frames[1], image)


def test_interpolate_and_extend(pipe):
    rng = np.random.default_rng(1)
    a, b = ((rng.random((32, 32, 3)) * 255).astype(np.uint8) for _ in range(2))
    v = pipe.interpolate(a, b, "a red circle", num_frames=5, seed=0, num_inference_steps=3, progress=False)
    assert np.array_equal(v.frames[0], a) and np.array_equal(v.frames[-1], b)
    base = pipe("a red circle", num_frames=4, seed=0, **FAST)
    longer = pipe.extend(base, "a red circle", num_frames=6, chunk=5, context=2, seed=0, num_inference_steps=3,
                         progress=False)
    assert longer.frames.shape[0] == 10 and np.array_equal(longer.frames[:4], base.frames)


def test_guidance_ramp_and_negative_prompt(pipe):
    a = pipe("a red circle", negative_prompt="a blue square", num_frames=3, seed=0, guidance_scale=(1.0, 9.0), **FAST)
    b = pipe("a red circle", num_frames=3, seed=0, guidance_scale=(1.0, 9.0), **FAST)
    assert not np.array_equal(a.frames, b.frames)
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe("x", guidance_scale=(1, 2, 3), **FAST)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_frames=0), "num_frames"), (dict(height=30), "height must be a positive multiple of 4"),
    (dict(num_inference_steps=0), "num_inference_steps"), (dict(sampler="heun"), "unknown sampler"),
    (dict(mode="diagonal"), "mode"), (dict(mode="autoregressive", chunk=4, context=4), "context"),
])
def test_bad_arguments(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe("x", **{**FAST, **kwargs})


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert {"unet", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    loaded = VideoPipeline.from_pretrained(tmp_path / "m")
    a = pipe("a red circle", num_frames=3, seed=4, **FAST)
    b = loaded("a red circle", num_frames=3, seed=4, **FAST)
    assert np.array_equal(a.frames, b.frames)


def test_unknown_words_warn(pipe):
    with pytest.warns(UserWarning, match="zebra"):
        pipe("a zebra moving left", num_frames=1, seed=0, **FAST)


PEAK = textwrap.dedent("""
    import sys
    from vidiff.testing import tiny_pipeline
    # no spatial attention at the top level keeps this fast; memory is still activations per frame
    pipe = tiny_pipeline(attention_levels=[False, False], temporal_attention_everywhere=True)

    def kib(field):   # this process's own counters (ru_maxrss would carry the parent's over exec)
        line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
        return int(line.split()[1])

    def peak(frames, mode):
        open("/proc/self/clear_refs", "w").write("5")      # reset the high-water mark
        start = kib("VmRSS")
        pipe("a red circle", num_frames=frames, height=128, width=128, num_inference_steps=1, seed=0,
             guidance_scale=1.0, mode=mode, chunk=16, context=4, progress=False)
        return kib("VmHWM") - start

    peak(16, "all")                                          # warm-up: one-time allocations
    print(peak(16, "all"), peak(int(sys.argv[1]), sys.argv[2]))
""")


def peak_kib(frames, mode):
    """(peak KiB above the start of a 16-frame run, same for the run under test), fresh process."""
    # large blocks through mmap: freed memory leaves the RSS at once, so the RSS follows live memory
    env = {**os.environ, "MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", PEAK, str(frames), mode], capture_output=True, text=True,
                         check=True, env=env)
    one, other = out.stdout.split()[-2:]
    return int(one), int(other)


@pytest.mark.slow
def test_autoregressive_peak_memory_is_one_chunk():
    one, ar = peak_kib(64, "autoregressive")
    _, full = peak_kib(64, "all")
    assert full > 2 * one, (one, full)       # the measure does see the frame count
    assert ar < 1.3 * one, (one, ar)         # 64 frames in chunks of 16: about one chunk


# ---- io -------------------------------------------------------------------------------------

def test_mp4_round_trip_and_odd_sizes(tmp_path):
    frames = np.zeros((10, 40, 56, 3), np.uint8)
    frames[:, 10:30, 10:30] = [200, 30, 30]
    write_video(frames, tmp_path / "a.mp4", fps=12)
    back, fps = read_video(tmp_path / "a.mp4")
    assert back.shape == frames.shape and fps == 12
    assert np.abs(back.astype(int) - frames).mean() < 3
    odd = np.zeros((4, 33, 47, 3), np.uint8)
    with pytest.warns(UserWarning, match="padded 47x33 to 48x34"):
        write_video(odd, tmp_path / "odd.mp4")
    assert read_video(tmp_path / "odd.mp4")[0].shape == (4, 34, 48, 3)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_video(np.zeros((3, 8, 8, 3), np.float32), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="one frame"):
        write_video(np.zeros((3, 8, 8, 3), np.uint8), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_gif_folder_and_contact_sheet(tmp_path):
    from vidiff.data.io import contact_sheet

    frames = (np.random.default_rng(0).random((5, 16, 16, 3)) * 255).astype(np.uint8)
    write_video(frames, tmp_path / "a.gif", fps=10)
    assert read_video(tmp_path / "a.gif")[0].shape == (5, 16, 16, 3)
    write_video(frames, tmp_path / "frames")
    assert np.array_equal(read_video(tmp_path / "frames")[0], frames)
    contact_sheet(frames, tmp_path / "sheet.png", columns=3)
    sheet = read_video(tmp_path / "sheet.png")[0][0]
    assert sheet.shape == (2 * 18 + 2, 3 * 18 + 2, 3)


# ---- CLI ------------------------------------------------------------------------------------

def vidiff(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vidiff.app.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_cli_writes_mp4_that_decord_reads_back(model_dir, tmp_path):
    decord = pytest.importorskip("decord")
    out = tmp_path / "v.mp4"
    r = vidiff("generate", "a red circle moving right", "--model", str(model_dir), "--frames", "6", "--steps", "2",
               "--height", "32", "--width", "64", "--fps", "12", "--seed", "0", "-o", str(out))
    assert r.returncode == 0, r.stderr
    vr = decord.VideoReader(str(out))
    assert len(vr) == 6 and vr[0].shape == (32, 64, 3) and vr.get_avg_fps() == 12
    r = vidiff("generate", "a red circle", "--model", str(model_dir), "--frames", "1", "--steps", "2",
               "-o", str(tmp_path / "x.png"))
    assert r.returncode == 0, r.stderr
    assert read_video(tmp_path / "x.png")[0].shape == (1, 64, 64, 3)


def test_cli_image_to_video(model_dir, tmp_path):
    img = (np.random.default_rng(0).random((1, 32, 32, 3)) * 255).astype(np.uint8)
    write_video(img, tmp_path / "first.png")
    r = vidiff("generate", "a red circle", "--model", str(model_dir), "--frames", "4", "--steps", "2",
               "--image", str(tmp_path / "first.png"), "--height", "32", "--width", "32", "-o", str(tmp_path / "i2v"))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read_video(tmp_path / "i2v")[0][0], img[0])


@pytest.mark.parametrize("args, word", [
    (["--frames", "0"], "--frames"), (["--steps", "0"], "--steps"), (["--height", "30"], "height"),
    (["--model", "/no/such/model"], "--model"), (["--sampler", "heun"], "--sampler"),
    (["-o", "/no/such/dir/x.mp4"], "does not exist"), (["--image", "NOTANIMAGE"], "--image"),
    (["--image", "BADIMAGE"], "cannot read image"), (["-o", "x.avi"], "suffix"),
])
def test_cli_bad_arguments_exit_2_with_one_line_and_no_file(model_dir, tmp_path, args, word):
    (tmp_path / "bad.png").write_text("not an image")
    args = [a.replace("NOTANIMAGE", str(tmp_path / "nope.png")).replace("BADIMAGE", str(tmp_path / "bad.png"))
            for a in args]
    out = ["-o", str(tmp_path / "out.mp4")] if "-o" not in args else []
    r = vidiff("generate", "a red circle", "--model", str(model_dir), "--steps", "2", *out, *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.png"]


def test_cli_non_writable_output(model_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere")
        r = vidiff("generate", "a", "--model", str(model_dir), "-o", str(ro / "x.mp4"))
        assert r.returncode == 2 and "not writable" in r.stderr
    finally:
        ro.chmod(0o700)


def test_write_interrupted_mid_file_leaves_nothing(tmp_path, monkeypatch):
    import vidiff.data.io as vio

    def broken(frames, path, fps, quality, meta=None):
        path.write_bytes(b"\x00" * 1000)            # half a file, then the encoder dies
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(vio, "_write_mp4", broken)
    (tmp_path / "keep.mp4").write_bytes(b"previous good file")
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "keep.mp4")
    assert sorted(os.listdir(tmp_path)) == ["keep.mp4"]
    assert (tmp_path / "keep.mp4").read_bytes() == b"previous good file"


def test_first_frame_first_is_the_image_then_image_to_video(tmp_path):
    """first_frame_first: frame 0 is exactly the image the same seed makes, the rest animate it."""
    pipe = tiny_pipeline(frame_conditioning=True)
    kw = dict(num_frames=4, num_inference_steps=3, seed=7, progress=False)
    image = pipe("a red circle", **{**kw, "num_frames": 1}).frames[0]
    video = pipe("a red circle", first_frame_first=True, **kw).frames
    assert video.shape[0] == 4 and np.array_equal(video[0], image)
    assert not np.array_equal(video, pipe("a red circle", **kw).frames)     # off by default
    pipe.defaults["first_frame_first"] = True                              # or the model's default
    assert np.array_equal(pipe("a red circle", **kw).frames, video)
    with pytest.raises(ValueError, match="needs a model with frame_conditioning"):
        tiny_pipeline(frame_conditioning=False)("a red circle", first_frame_first=True, **kw)


def test_min_frames_draws_short_videos_as_the_start_of_a_longer_window():
    """defaults["min_frames"]: an image (and first_frame_first's frame 0) is frame 0 of a window that long."""
    pipe = tiny_pipeline(frame_conditioning=True)
    kw = dict(num_inference_steps=3, seed=7, progress=False)
    alone = pipe("a red circle", num_frames=1, **kw).frames
    pair = pipe("a red circle", num_frames=2, **kw).frames
    pipe.defaults["min_frames"] = 2
    image = pipe("a red circle", num_frames=1, **kw)
    assert image.frames.shape[0] == 1 and image.settings["num_frames"] == 1
    assert np.array_equal(image.frames, pair[:1]) and not np.array_equal(image.frames, alone)
    assert np.array_equal(pipe("a red circle", num_frames=2, **kw).frames, pair)      # long enough: unchanged
    video = pipe("a red circle", num_frames=4, first_frame_first=True, **kw).frames
    assert np.array_equal(video[0], pair[0])
    pipe.defaults["min_frames"] = 16                                       # the memory estimate sees that window
    assert pipe.estimate_memory(1, 32, 32) == pipe.estimate_memory(16, 32, 32) > pipe.estimate_memory(16, 32, 32,
                                                                                                     "autoregressive", 8)
