"""The shipped default model (vidiff/weights/shapes-64) and the shapes benchmark's pixel reader."""

import itertools
import warnings

import numpy as np
import pytest

from vidiff.bench import shapes_prompts
from vidiff.cli import main
from vidiff.pipeline import DEFAULT_MODEL, VideoPipeline
from vidiff.shapes import COLORS, HOLDOUT, MOTIONS, SHAPES, caption, detect, render_clip


def test_detector_reads_every_rendered_combination():
    wrong = []
    for i, combo in enumerate(itertools.product(COLORS, SHAPES, MOTIONS)):
        got = detect(render_clip(*combo, np.random.default_rng([7, i]))[:16])
        if (got["color"], got["shape"], got["motion"]) != combo:
            wrong.append((combo, got))
    assert not wrong, wrong[:3]


def test_detector_finds_nothing_on_a_grey_clip():
    assert detect(np.full((8, 64, 64, 3), 60, np.uint8))["found"] is False


def test_benchmark_prompts_cover_every_attribute():
    seen, held = shapes_prompts()
    assert held == list(HOLDOUT) and not set(seen) & set(HOLDOUT)
    assert {c for c, _, _ in seen} == set(COLORS) and {s for _, s, _ in seen} == set(SHAPES)
    assert {m for _, _, m in seen} == set(MOTIONS)


def test_shipped_model_is_small_safetensors_only():
    files = [p for p in DEFAULT_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 2 ** 20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert (DEFAULT_MODEL / "README.md").exists()


@pytest.fixture(scope="module")
def pipe():
    return VideoPipeline.from_pretrained()           # no argument: the shipped model


def test_default_model_generates_a_short_video(pipe):
    video = pipe("a red circle moving right", num_frames=4, num_inference_steps=4, seed=0, progress=False)
    assert video.frames.shape == (4, 64, 64, 3) and video.fps == 8


def test_unknown_words_are_named_in_a_warning(pipe):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe("a red dragon moving right", num_frames=1, num_inference_steps=1, progress=False)
    assert any("dragon" in str(w.message) for w in caught)


def test_cli_generate_uses_the_default_model(tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert main(["generate", "a blue square moving up", "--frames", "4", "--steps", "3", "-o", str(out)]) == 0
    assert out.stat().st_size > 0 and "4 frames 64x64" in capsys.readouterr().out


@pytest.mark.slow
def test_default_model_draws_the_prompted_colour_and_direction(pipe):
    hits, moves = 0, 0
    for color, shape, motion in [("red", "circle", "left"), ("yellow", "square", "right"), ("green", "triangle", "up"),
                                 ("cyan", "circle", "down"), ("blue", "square", "still"), ("purple", "triangle", "left")]:
        got = detect(pipe(caption(color, shape, motion), seed=0, progress=False).frames)
        hits, moves = hits + (got["color"] == color), moves + (got["motion"] == motion)
    # chance is 1 in 6 for colour and 1 in 5 for motion; `vidiff bench shapes` measures the full accuracy
    assert hits >= 5 and moves >= 3, (hits, moves)   # the shipped model: 6 and 4 of 6


def test_detector_tolerates_pixel_noise():
    """Generated frames are noisier than the dataset; colour and motion must still read right."""
    for i, combo in enumerate([("red", "circle", "left"), ("cyan", "square", "up"), ("purple", "triangle", "still")]):
        clip = render_clip(*combo, np.random.default_rng([8, i]))[:16].astype(np.float64)
        noisy = np.clip(clip + np.random.default_rng(i).normal(0, 20, clip.shape), 0, 255).astype(np.uint8)
        got = detect(noisy)
        assert (got["color"], got["motion"]) == (combo[0], combo[2]), (combo, got)
