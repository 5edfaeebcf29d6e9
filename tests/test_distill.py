"""Progressive distillation: a student at N steps samples what its teacher samples at 2N."""

import json

import pytest
import torch

from vidiff.app.cli import main
from vidiff.training.config import load_config
from vidiff.training.distill import student_grid
from vidiff.pipelines.pipeline import VideoPipeline
from vidiff.diffusion.schedule import NoiseSchedule
from vidiff.data.shapes import make_shapes_dataset
from vidiff.training.train import train

from test_train import TINY


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = make_shapes_dataset(root / "data", clips=8, size=32, num_frames=12, progress=False)
    cfg = load_config(TINY, [f"data.path={data}", f"train.output_dir={root / 'teacher'}", "data.num_frames=4",
                             "train.steps=40", "train.checkpoint_every=40", "train.ema_decay=0",
                             "schedule.timestep_spacing=trailing"])
    return data, train(cfg, progress=False)["model_dir"]


def test_student_grid_halves_the_teacher_grid():
    sched = NoiseSchedule(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, timestep_spacing="trailing")
    s_from, s_mid, s_to = student_grid(sched, 4)
    teacher = sched.plan(8, "ddim").sigmas
    # trailing grids nest: the teacher's 8 levels are the student's 4 and their midpoints
    torch.testing.assert_close(s_from, teacher[0:8:2], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(s_mid, teacher[1:8:2], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(s_to, teacher[2:9:2], rtol=1e-4, atol=1e-6)
    assert float(s_to[-1]) == 0.0


def _latents(pipe, steps, prompts=("a red circle moving right", "a blue square moving up", "a green triangle")):
    return torch.cat([pipe(p, num_frames=4, num_inference_steps=steps, seed=i, guidance_scale=1.0,
                           output_type="latent", progress=False, sampler="ddim") for i, p in enumerate(prompts)])


@pytest.mark.slow
def test_distilled_student_at_n_steps_matches_its_teacher_at_2n(teacher, tmp_path, capsys):
    data, teacher_dir = teacher
    code = main(["distill", str(teacher_dir), "--data", str(data), "--steps", "2", "--out", str(tmp_path / "s"),
                 "--iters", "60", "--quiet", "train.lr=1e-3", "train.ema_decay=0", "train.batch_size=4",
                 "data.num_frames=4", "train.mixed_precision=no"])
    assert code in (0, None)
    assert "samples in 2 DDIM steps" in capsys.readouterr().out
    t_pipe, s_pipe = VideoPipeline.from_pretrained(teacher_dir), VideoPipeline.from_pretrained(tmp_path / "s" / "model")
    assert s_pipe.defaults["num_inference_steps"] == 2 and s_pipe.schedule.sampler == "ddim"
    ref = _latents(t_pipe, 4)
    teacher_2 = float((_latents(t_pipe, 2) - ref).pow(2).mean())
    student_2 = float((_latents(s_pipe, 2) - ref).pow(2).mean())
    assert student_2 < 0.5 * teacher_2, (student_2, teacher_2)
    # the student's own default is its 2 steps
    assert s_pipe("a red circle", num_frames=4, seed=0, progress=False).settings["num_inference_steps"] == 2
    log = [json.loads(x) for x in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 60


def test_distill_bad_arguments_are_one_line(teacher, tmp_path, capsys):
    data, teacher_dir = teacher
    assert main(["distill", str(tmp_path), "--data", str(data), "--steps", "2", "--out", str(tmp_path / "o")]) == 2
    assert main(["distill", str(teacher_dir), "--data", str(data), "--steps", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not a model folder" in err[0] and "--steps must be >= 1" in err[1]
    assert not (tmp_path / "o").exists()
