"""Batch generation (resumable, split between processes) and batch scoring / comparison."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vidiff import testing
from vidiff.testing import free_port, kill_when
from vidiff.pipelines.batch import parse_seeds, plan_jobs
from vidiff.evaluation.compare import compare
from vidiff.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
PROMPTS = ["a red circle moving right", "a blue square moving up", "a green triangle moving left"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    model = testing.tiny_model(root / "model")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    return root, model


def generate(root, model, out, *extra, procs: int = 1, wait: bool = True):
    args = ["generate", "--prompts", str(root / "prompts.txt"), "--seeds", "0-1", "--out-dir", str(out),
            "--model", str(model), "--steps", "2", "--frames", "4", "--height", "32", "--width", "32", *extra]
    cmd = [sys.executable, "-m", "vidiff.app.cli", *args] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", f"--master_port={free_port()}",
         "-m", "vidiff.app.cli", *args]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out_, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    return proc


@pytest.mark.slow
def test_two_processes_write_the_same_files_as_one(setup, tmp_path):
    root, model = setup
    generate(root, model, tmp_path / "one")
    generate(root, model, tmp_path / "two", procs=2)
    one = sorted(p.name for p in (tmp_path / "one").glob("*.mp4"))
    assert one == sorted(p.name for p in (tmp_path / "two").glob("*.mp4")) and len(one) == 6
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    for folder in ("one", "two"):
        index = [json.loads(line) for line in (tmp_path / folder / "index.jsonl").read_text().splitlines()]
        assert [e["file"] for e in index] == [f"{s}-{seed}.mp4" for s in
                                             ("a-red-circle-moving-right", "a-blue-square-moving-up",
                                              "a-green-triangle-moving-left") for seed in (0, 1)]
        assert all(e["settings"]["seed"] == e["seed"] and e["seconds"] > 0 for e in index)
        assert not list((tmp_path / folder).glob(".*"))                       # no parts or temp files left


def videos(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.mp4") if not p.name.startswith(".")] if folder.exists() else []


@pytest.mark.slow
def test_killed_batch_resumes_with_every_file_once(setup, tmp_path):
    root, model = setup
    out = tmp_path / "out"
    proc = generate(root, model, out, wait=False)
    kill_when(proc, lambda: len(videos(out)) >= 2)
    assert len(videos(out)) < 6
    first = {p.name: p.stat().st_mtime_ns for p in videos(out)}
    generate(root, model, out)
    files = sorted(p.name for p in videos(out))
    assert len(files) == 6 and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert all((out / n).stat().st_mtime_ns == t for n, t in first.items())     # finished files were skipped
    index = [json.loads(line)["file"] for line in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(index) == files


def test_vbench_naming_and_jsonl_settings(setup, tmp_path):
    root, model = setup
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red circle / moving right", "num_frames": 3}\n'
                                      '{"prompt": "a blue square moving up", "seeds": [5]}\n')
    assert main(["generate", "--prompts", str(tmp_path / "p.jsonl"), "--seeds", "0-1", "--out-dir",
                 str(tmp_path / "vb"), "--naming", "vbench", "--model", str(model), "--steps", "2", "--frames", "4",
                 "--height", "32", "--width", "32"]) == 0
    names = sorted(p.name for p in (tmp_path / "vb").glob("*.mp4"))
    assert names == ["a blue square moving up-0.mp4", "a red circle _ moving right-0.mp4",
                     "a red circle _ moving right-1.mp4"]
    index = {json.loads(x)["file"]: json.loads(x) for x in (tmp_path / "vb" / "index.jsonl").read_text().splitlines()}
    assert index["a red circle _ moving right-1.mp4"]["settings"]["num_frames"] == 3
    assert index["a blue square moving up-0.mp4"]["seed"] == 5


def test_plan_and_parse_helpers():
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    jobs = plan_jobs([{"prompt": "A cat!"}, {"prompt": "a cat?"}, {"prompt": "../../etc"}], [0])
    names = [j["file"] for j in jobs]
    assert names[0] == "a-cat-0.mp4" and names[1].startswith("a-cat-") and names[1] != names[0]
    assert all("/" not in n and not n.startswith(".") for n in names)
    vb = plan_jobs([{"prompt": "../../etc/passwd"}], [0], "vbench")[0]["file"]
    assert "/" not in vb and not vb.startswith(".")


@pytest.mark.parametrize("content, suffix, msg", [
    ("\n\n", ".txt", "holds no prompts"),
    ('{"prompt": "a cat"}\n{"prompt": "a dog",\n', ".jsonl", "line 2: not valid JSON"),
    ('{"prompt": "a cat", "colour": 3}\n', ".jsonl", "line 1: unknown keys ['colour']"),
])
def test_bad_prompt_files_are_one_line_exit_2(setup, tmp_path, capsys, content, suffix, msg):
    root, model = setup
    path = tmp_path / f"p{suffix}"
    path.write_text(content)
    assert main(["generate", "--prompts", str(path), "--out-dir", str(tmp_path / "o"), "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_unwritable_out_dir_is_one_line_exit_2(setup, tmp_path, capsys):
    root, model = setup
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "sub"                    # root may write anywhere; a file in the way is what stops it
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = tmp_path / "ro" / "sub"
    assert main(["generate", "--prompts", str(root / "prompts.txt"), "--out-dir", str(target),
                 "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert f"--out-dir {target}" in err and err.count("\n") == 1


@pytest.mark.slow
def test_bench_compare_rows_match_the_reports(setup, tmp_path, capsys):
    root, model = setup
    for sampler in ("ddim", "euler"):
        generate(root, model, tmp_path / sampler, "--sampler", sampler)
        assert main(["bench", "consistency", str(tmp_path / sampler), "--json", str(tmp_path / f"{sampler}.json")]) == 0
    capsys.readouterr()
    assert main(["bench", "compare", str(tmp_path / "ddim.json"), str(tmp_path / "euler.json"),
                 "--plot", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].startswith("ddim ") and out.splitlines()[3].startswith("euler ")
    assert (tmp_path / "cmp.png").stat().st_size > 0
    rows = compare([tmp_path / "ddim.json", tmp_path / "euler.json"])
    for row, name in zip(rows, ("ddim", "euler")):
        reports = json.loads((tmp_path / f"{name}.json").read_text())["reports"]
        assert row["videos"] == len(reports) == 6
        vals = [r["metrics"]["temporal_flickering"]["value"] for r in reports]
        cell = row["metrics"]["temporal_flickering"]
        assert cell["mean"] == pytest.approx(np.mean(vals)) and cell["std"] == pytest.approx(np.std(vals))
        assert f"{cell['mean']:.4f} ± {cell['std']:.4f}" in out
        assert row["static"] == sum(r["static"] for r in reports)


@pytest.mark.slow
def test_bench_consistency_splits_a_folder_between_processes(setup, tmp_path):
    root, model = setup
    generate(root, model, tmp_path / "v")
    one = subprocess.run([sys.executable, "-m", "vidiff.app.cli", "bench", "consistency", str(tmp_path / "v"), "--json",
                          str(tmp_path / "one.json")], env=ENV, capture_output=True, text=True, timeout=300)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={free_port()}", "-m", "vidiff.app.cli", "bench", "consistency",
                          str(tmp_path / "v"), "--json", str(tmp_path / "two.json")], env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text())["reports"] for n in ("one", "two"))
    assert [r["video"] for r in a] == [r["video"] for r in b] and len(a) == 6
    for ra, rb in zip(a, b):                 # up to float rounding: OpenCV may run its flow on its own threads
        assert ra["metrics"].keys() == rb["metrics"].keys()
        for k, m in ra["metrics"].items():
            if isinstance(m.get("value"), float):
                assert rb["metrics"][k]["value"] == pytest.approx(m["value"], rel=1e-3, abs=1e-6), k
