"""Batch generation, split between processes with accelerate's `PartialState`.

`vidiff generate --prompts FILE --seeds 0-4 --out-dir DIR` makes one video per (prompt, seed):
`DIR/{slug}-{seed}.mp4` (or VBench's `{prompt}-{index}.mp4`) and `DIR/index.jsonl`. Under
`accelerate launch` / `torchrun` each process takes a contiguous block of the jobs, writes its own
files atomically and its own index part; the main process merges the parts at the end. A rerun skips
every file already there, so an interrupted batch resumes. (Scoring a folder the same way, and laying
reports side by side, is `evaluation.compare`.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from vidiff.devices import process_state


SETTING_KEYS = {"prompt", "negative_prompt", "num_frames", "height", "width", "num_inference_steps",
                "guidance_scale", "sampler", "mode", "chunk", "context", "fps", "seeds", "first_frame_first"}
NAMINGS = ("slug", "vbench")


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


def _index_part(out_dir: Path, rank: int) -> Path:
    return out_dir / f".index-rank{rank}.jsonl"


def run_batch(pipe, jobs: list[dict], out_dir: str | os.PathLike, defaults: dict | None = None,
              log=print) -> dict:
    """Make every job's video under `out_dir` (this process's share), skipping files already there;
    the main process then merges the index. Returns {"made", "skipped", "index", "rank", "world"}."""
    from vidiff.data.io import check_writable

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
    from vidiff.data.io import read_settings

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

