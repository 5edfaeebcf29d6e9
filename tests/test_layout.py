"""The tree is the architecture: import-linter contracts hold (and catch a bad import), no import cycles, files and
functions stay small, old paths alias with a warning, and a sampling plan runs on a Runner alone."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path):
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--config", str(cwd / "pyproject.toml")], cwd=cwd, env=env, capture_output=True,
                          text=True)


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is a dev dependency")
def test_layer_contracts_hold_and_a_bad_import_breaks_them(tmp_path):
    ok = lint(ROOT)
    assert ok.returncode == 0, ok.stdout[-2000:]
    assert "6 kept, 0 broken" in ok.stdout
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "vidiff", copy / "vidiff", ignore=shutil.ignore_patterns("weights", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    bad = copy / "vidiff" / "models" / "unet.py"
    bad.write_text(bad.read_text() + "\nfrom vidiff.pipelines.pipeline import VideoPipeline  # noqa\n")
    broken = lint(copy)
    assert broken.returncode != 0
    assert "vidiff.models.unet -> vidiff.pipelines.pipeline" in broken.stdout
    assert "BROKEN" in broken.stdout


def test_no_import_cycles():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("vidiff")
    modules = sorted(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in modules}
    seen, stack, cycles = {}, [], []

    def visit(m):                                  # depth-first search: a back edge is a cycle
        seen[m] = "open"
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if seen.get(n) == "open":
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in seen:
                visit(n)
        stack.pop()
        seen[m] = "done"

    for m in modules:
        if m not in seen:
            visit(m)
    assert not cycles, cycles


def test_files_and_functions_stay_small():
    too_long = []
    for f in sorted((ROOT / "vidiff").rglob("*.py")):
        text = f.read_text()
        if len(text.splitlines()) > 520:
            too_long.append(f"{f.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 110:
                too_long.append(f"{f.relative_to(ROOT)}:{node.name} {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long


def test_old_paths_warn_and_alias():
    code = ("import warnings, sys; warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    import vidiff.pipeline as p, vidiff.bench as b, vidiff.io as i\n"
            "import vidiff.pipelines.pipeline as P, vidiff.evaluation.bench as B, vidiff.data.io as I\n"
            "assert p is P and b is B and i is I\n"
            "print(sorted(str(x.message).split(' ')[0] for x in w))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['vidiff.bench', 'vidiff.io', 'vidiff.pipeline']"


def test_the_public_api_is_one_lazy_list():
    import vidiff

    for name in vidiff.__all__:
        assert getattr(vidiff, name) is not None, name
    out = subprocess.run([sys.executable, "-c", "import sys, vidiff; print('transformers' in sys.modules, "
                          "'diffusers' in sys.modules)"], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False False"              # `import vidiff` stays light


def test_a_plan_runs_on_a_runner_alone():
    from vidiff.diffusion.plans import Runner, sample_plan
    from vidiff.diffusion.schedule import NoiseSchedule

    def model(x_t, t, ctx, cond=None, cond_mask=None):        # an x0 model that predicts the frame index / 10
        f = x_t.shape[2]
        return torch.arange(f, dtype=torch.float32).view(1, 1, f, 1, 1).expand_as(x_t) / 10 + 0 * ctx.sum()

    schedule = NoiseSchedule(prediction_type="sample", beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    runner = Runner(model, schedule, torch.device("cpu"))
    ctx = torch.zeros(1, 4, 8)
    run = dict(ctx=ctx, steps=4, guidance=1.0, sampler="ddim", eta=0.0, generator=torch.Generator().manual_seed(0),
               progress=False)
    shape = (1, 3, 8, 4, 4)
    whole, _ = sample_plan(runner, "all", shape, None, run, chunk=16, context=4, stride=4, weighting="pyramid",
                           noise_type="random")
    target = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1, 1) / 10
    torch.testing.assert_close(whole, target.expand(shape), atol=1e-4, rtol=0)
    run["generator"] = torch.Generator().manual_seed(0)
    chunked, seams = sample_plan(runner, "autoregressive", shape, None, run, chunk=8, context=2, stride=4,
                                 weighting="pyramid", noise_type="random")
    assert seams is None and torch.equal(chunked, whole)       # chunk == frames: autoregressive is all-at-once
