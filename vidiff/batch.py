"""Batch generation and scoring, split between processes with accelerate's `PartialState`.

`vidiff generate --prompts FILE --seeds 0-4 --out-dir DIR` makes one video per (prompt, seed):
`DIR/{slug}-{seed}.mp4` (or VBench's `{prompt}-{index}.mp4`) and `DIR/index.jsonl`. Under
`accelerate launch` / `torchrun` each process takes a contiguous block of the jobs, writes its own
files atomically and its own index part; the main process merges the parts at the end. A rerun skips
every file already there, so an interrupted batch resumes. `bench_folder` scores a folder the same
way, and `compare` lays several reports side by side.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np

SETTING_KEYS = {"prompt", "negative_prompt", "num_frames", "height", "width", "num_inference_steps",
                "guidance_scale", "sampler", "mode", "chunk", "context", "fps", "seeds", "first_frame_first"}
NAMINGS = ("slug", "vbench")
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv")


def read_prompts(path: str | os.PathLike) -> list[dict]:
    """Prompts of a .txt file (one per line) or a .jsonl file ({"prompt": ..., other generate settings}).

    Blank lines are skipped; an empty file, a malformed line or an unknown key is a ValueError
    naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"prompt file {path}: must be .txt (one prompt per line) or .jsonl, got {path.suffix!r}")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".txt":
            out.append({"prompt": line.strip()})
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
            raise ValueError(f"{path} line {n}: must be an object with a non-empty \"prompt\"")
        unknown = sorted(set(entry) - SETTING_KEYS)
        if unknown:
            raise ValueError(f"{path} line {n}: unknown keys {unknown}; allowed: {sorted(SETTING_KEYS)}")
        out.append(entry)
    if not out:
        raise ValueError(f"prompt file {path} holds no prompts")
    return out


def parse_seeds(text: str) -> list[int]:
    """`0-4`, `7` or `1,3,5` (ranges and lists may mix) -> seeds in order."""
    seeds = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"seeds {text!r}: use N, A-B (A <= B) or a comma list of those, e.g. 0-4")
        seeds += list(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return seeds


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe form of a prompt: lower case, letters/digits joined by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "video"


def safe_name(text: str, limit: int = 180) -> str:
    """VBench keeps the prompt as the name; only path separators and control characters are replaced."""
    name = re.sub(r"[/\\\x00-\x1f]", "_", text).strip().lstrip(".")
    return name[:limit] or "video"


def plan_jobs(entries: list[dict], seeds: list[int], naming: str = "slug") -> list[dict]:
    """Every (prompt, seed) job with its file name, in a fixed order (prompt-major). Names are unique and
    never leave the folder: two prompts with one slug get a short hash of the prompt."""
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {NAMINGS}, got {naming!r}")
    stems = [slug(e["prompt"]) if naming == "slug" else safe_name(e["prompt"]) for e in entries]
    seen: dict = {}
    for i, (e, stem) in enumerate(zip(entries, stems)):
        if stem in seen and entries[seen[stem]]["prompt"] != e["prompt"]:
            stems[i] = f"{stem}-{hashlib.sha1(e['prompt'].encode()).hexdigest()[:6]}"
        seen.setdefault(stems[i], i)
    jobs, names = [], set()
    for e, stem in zip(entries, stems):
        for index, seed in enumerate(e.get("seeds", seeds)):
            name = f"{stem}-{seed}.mp4" if naming == "slug" else f"{stem}-{index}.mp4"
            if name in names:
                continue                       # the same prompt twice in the file: made once
            names.add(name)
            jobs.append({"prompt": e["prompt"], "seed": int(seed), "file": name,
                         "settings": {k: v for k, v in e.items() if k not in ("prompt", "seeds")}})
    return jobs


def process_state():
    """accelerate's PartialState; on a machine without a GPU, launched processes join over gloo."""
    import torch
    from accelerate import PartialState

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    return PartialState(cpu=launched > 1 and not torch.cuda.is_available())


def _index_part(out_dir: Path, rank: int) -> Path:
    return out_dir / f".index-rank{rank}.jsonl"


def run_batch(pipe, jobs: list[dict], out_dir: str | os.PathLike, defaults: dict | None = None,
              log=print) -> dict:
    """Make every job's video under `out_dir` (this process's share), skipping files already there;
    the main process then merges the index. Returns {"made", "skipped", "index", "rank", "world"}."""
    from .io import check_writable

    out_dir = Path(out_dir)
    state = process_state()
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        check_writable(out_dir / "index.jsonl")
        for tmp in out_dir.glob(".*.tmp*"):               # what a killed run was writing: never a result
            tmp.unlink(missing_ok=True)
    state.wait_for_everyone()
    made = skipped = 0
    part = _index_part(out_dir, state.process_index)
    with state.split_between_processes(jobs) as mine:
        for job in mine:
            dest = out_dir / job["file"]
            if dest.exists():
                skipped += 1
                continue
            kwargs = {**(defaults or {}), **job["settings"]}
            t0 = time.perf_counter()
            video = pipe(job["prompt"], seed=job["seed"], progress=False, **kwargs)
            video.save(dest)                                   # atomic: a killed run leaves no partial file
            seconds = round(time.perf_counter() - t0, 3)
            with open(part, "a") as fh:
                fh.write(json.dumps({"prompt": job["prompt"], "seed": job["seed"], "file": job["file"],
                                     "settings": video.settings, "seconds": seconds}) + "\n")
            made += 1
            log(f"[{state.process_index}] wrote {dest} in {seconds:.1f}s")
    state.wait_for_everyone()
    if state.is_main_process:
        merge_index(out_dir, jobs)
    state.wait_for_everyone()
    return {"made": made, "skipped": skipped, "index": out_dir / "index.jsonl", "rank": state.process_index,
            "world": state.num_processes}


def merge_index(out_dir: Path, jobs: list[dict]) -> Path:
    """index.jsonl = one line per finished job, in job order: from the earlier index, the processes' parts, or
    (a file whose line was lost when a run was killed) the settings stored inside the video."""
    from .io import read_settings

    lines: dict = {}
    sources = [out_dir / "index.jsonl"] + sorted(out_dir.glob(".index-rank*.jsonl"))
    for src in sources:
        if src.exists():
            for line in src.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue                                   # a line cut by a kill
                lines[entry.get("file")] = entry
    merged = []
    for job in jobs:
        if not (out_dir / job["file"]).exists():
            continue
        entry = lines.get(job["file"]) or {"prompt": job["prompt"], "seed": job["seed"], "file": job["file"],
                                           "settings": read_settings(out_dir / job["file"]), "seconds": None}
        merged.append(entry)
    tmp = out_dir / f".index.jsonl.tmp{os.getpid()}"
    tmp.write_text("".join(json.dumps(e) + "\n" for e in merged))
    os.replace(tmp, out_dir / "index.jsonl")
    for src in sources[1:]:
        src.unlink(missing_ok=True)
    return out_dir / "index.jsonl"


# ---- scoring -------------------------------------------------------------------------------------

def videos_in(folder: str | os.PathLike) -> list[Path]:
    """The video files directly inside `folder`, sorted."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def score_shared(videos: list, score) -> tuple[list, list]:
    """`score(video) -> record` over `videos`, split between processes; every process gets all records
    (in input order) and errors back."""
    state = process_state()
    with state.split_between_processes(list(range(len(videos)))) as mine:
        done = []
        for i in mine:
            try:
                done.append((i, score(videos[i]), None))
            except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
                done.append((i, None, {"video": str(videos[i]), "error": str(e).splitlines()[0] if str(e) else
                                       type(e).__name__}))
    if state.num_processes > 1:
        import torch.distributed as dist

        parts = [None] * state.num_processes
        dist.all_gather_object(parts, done)
        done = [d for p in parts for d in p]
    done.sort(key=lambda d: d[0])
    return [r for _, r, _ in done if r is not None], [e for _, _, e in done if e is not None]


# ---- comparison ----------------------------------------------------------------------------------

def _label(path: Path, doc: dict) -> str:
    return doc.get("label") or path.stem


def compare(paths: list, metrics: list[str] | None = None) -> list[dict]:
    """One leaderboard row per report file (`vidiff bench consistency --json`): label, video count, static
    count, and mean / std / n of each metric over its videos."""
    rows = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"report {str(path)!r} does not exist")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"report {path} is not JSON ({e.msg})") from None
        reports = doc.get("reports") if isinstance(doc, dict) else None
        if not isinstance(reports, list):
            raise ValueError(f"report {path} has no \"reports\" list; write one with vidiff bench consistency --json")
        keys = metrics or sorted({k for r in reports for k in r.get("metrics", {})})
        cells = {}
        for k in keys:
            vals = [r["metrics"][k]["value"] for r in reports
                    if k in r.get("metrics", {}) and r["metrics"][k].get("value") is not None]
            if vals:
                cells[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)}
        rows.append({"label": _label(path, doc), "file": str(path), "videos": len(reports),
                     "static": sum(bool(r.get("static")) for r in reports), "metrics": cells})
    return rows


def _columns(rows: list[dict]) -> list[tuple[str, str]]:
    """(metric key, column name) present in `rows`: the consistency table's columns first, then any others."""
    from .bench import COLUMNS

    known = [(key, name) for name, key, _ in COLUMNS if any(key in r["metrics"] for r in rows)]
    extra = sorted({k for r in rows for k in r["metrics"]} - {k for k, _ in known})
    return known + [(k, k) for k in extra]


def compare_table(rows: list[dict]) -> str:
    """The rows as a plain-text table: `mean ± std` per metric, then the static-video count."""
    from .bench import text_table

    present = _columns(rows)
    head = ["run", "videos"] + [name for _, name in present] + ["static"]
    body = []
    for r in rows:
        cells = [r["label"], str(r["videos"])]
        for k, _ in present:
            c = r["metrics"].get(k)
            cells.append("-" if c is None else f"{c['mean']:.4f} ± {c['std']:.4f}")
        cells.append(f"{r['static']}/{r['videos']}")
        body.append(cells)
    return text_table(head, body)


def compare_plot(rows: list[dict], path: str | os.PathLike) -> Path:
    """Bars of each metric's mean (± std), one group per metric, one bar per run."""
    from .bench import pyplot

    plt = pyplot()
    keys = [k for k, _ in _columns(rows)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3 * max(1, len(keys)), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        means = [r["metrics"].get(k, {}).get("mean", math.nan) for r in rows]
        stds = [r["metrics"].get(k, {}).get("std", 0.0) for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=30, ha="right", fontsize=7)
        ax.set_title(k, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
