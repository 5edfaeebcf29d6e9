"""Scoring a folder of videos across processes and comparing consistency reports (one row per model / sampler)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from vidiff.devices import process_state

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv")

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
    from vidiff.evaluation.bench import COLUMNS

    known = [(key, name) for name, key, _ in COLUMNS if any(key in r["metrics"] for r in rows)]
    extra = sorted({k for r in rows for k in r["metrics"]} - {k for k, _ in known})
    return known + [(k, k) for k in extra]


def compare_table(rows: list[dict]) -> str:
    """The rows as a plain-text table: `mean ± std` per metric, then the static-video count."""
    from vidiff.evaluation.bench import text_table

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
    from vidiff.evaluation.bench import pyplot

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
