"""Benchmark runners: `consistency()` scores one video's temporal consistency into a JSON-able record.

    from vidiff.evaluation.bench import consistency
    record = consistency("out.mp4")                  # or a Video from VideoPipeline, or f h w 3 uint8
    record["metrics"]["warping_error"]["value"]

Flicker runs on every frame at the native fps (VBench). The flow-based metrics, SSIM, PSNR, tOF
and CLIP run at a fixed analysis fps (default 8, every round(fps/8)-th frame, as VBench samples
for dynamic degree), because consecutive-frame metrics reward high frame rates. A video whose
flow never passes VBench's motion threshold is marked `static`: consistency scores are
near-perfect for a still video by construction, and the report says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import metrics as M
from vidiff.data.io import as_frames, read_video

SCHEMA_ID = "vidiff.bench.consistency/1"

_METRIC = {
    "type": "object",
    "required": ["value", "direction", "range", "reference"],
    "properties": {
        "value": {"type": ["number", "boolean", "null"]},
        "direction": {"enum": ["higher", "lower", "none"]},
        "range": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": ["number", "null"]}},
        "reference": {"type": "string"},
        "per_pair": {"type": "array", "items": {"type": ["number", "null"]}},
        "params": {"type": "object"},
    },
}
_SEAM = {
    "type": "object",
    "required": ["ratio", "pairs", "known", "seam_mean", "other_median"],
    "properties": {"ratio": {"type": ["number", "null"]}, "pairs": {"type": "array", "items": {"type": "integer"}},
                   "known": {"type": "boolean"}, "seam_mean": {"type": ["number", "null"]},
                   "other_median": {"type": ["number", "null"]}},
}
REPORT_SCHEMA = {                      # JSON Schema of one per-video record (README: "Consistency report")
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "video", "frames", "height", "width", "fps", "analysis", "static", "notes", "metrics",
                 "seams"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "video": {"type": "string"},
        "frames": {"type": "integer", "minimum": 1},
        "height": {"type": "integer", "minimum": 1},
        "width": {"type": "integer", "minimum": 1},
        "fps": {"type": "number", "exclusiveMinimum": 0},
        "analysis": {
            "type": "object",
            "required": ["fps", "interval", "frames", "flow"],
            "properties": {"fps": {"type": "number"}, "interval": {"type": "integer", "minimum": 1},
                           "frames": {"type": "integer"}, "flow": {"enum": list(M.FLOW_METHODS.values())}},
        },
        "static": {"type": "boolean"},
        "notes": {"type": "array", "items": {"type": "string"}},
        "seams": {
            "type": "object",
            "required": ["given", "flicker", "warping_error", "drift"],
            "properties": {
                "given": {"type": ["array", "null"], "items": {"type": "integer"}},
                "flicker": _SEAM, "warping_error": _SEAM,
                "drift": {"type": "object", "required": ["histogram", "clip"],
                          "properties": {"histogram": {"type": "array", "items": {"type": "number"}},
                                         "clip": {"type": ["array", "null"], "items": {"type": "number"}}}},
            },
        },
        "metrics": {
            "type": "object",
            "required": ["temporal_flickering", "warping_error", "motion_magnitude", "dynamic_degree",
                         "frame_ssim", "frame_psnr"],
            "additionalProperties": _METRIC,
        },
    },
}


def _pairs(a) -> list:
    return [round(float(v), 6) for v in np.asarray(a, dtype=np.float64)]


def _entry(score: M.Score, direction: str, lo, hi, reference: str, **extra) -> dict:
    value = score.value if isinstance(score.value, (bool, type(None))) else round(float(score.value), 6)
    out = {"value": value, "direction": direction, "range": [lo, hi], "reference": reference}
    out.update({k: (_pairs(v) if isinstance(v, np.ndarray) else v) for k, v in {**score.extra, **extra}.items()})
    out["per_pair"] = _pairs(score.per_pair)
    return out


def _load(video, fps: float | None) -> tuple[np.ndarray, float, str]:
    """Frames, fps and a name from a path, a `Video` (pipeline output) or an array."""
    if isinstance(video, (str, os.PathLike)):
        frames, native = read_video(video)
        return frames, fps or native, str(video)
    native = getattr(video, "fps", None)
    return as_frames(video), float(fps or native or 8.0), "<frames>"


def seams_report(frames, interval: int, warp_pairs, seams=None, clip_embeddings=None) -> dict:
    """Seam ratios (flicker's mean abs difference at native fps, warping error at the analysis fps) and drift.

    `seams` are frame indices where a new window starts. Without them the pair whose mean abs
    difference stands out most is taken as the seam (warping error per pair is too noisy on real
    footage to pick it: DIS flow errors vary it 10x between ordinary pairs) and both ratios are read there.
    """
    mad = M.mean_abs_difference(frames) if len(frames) > 1 else np.zeros(0)
    known = seams is not None
    if not known and len(mad) > 1:
        seams = [int(M.seam_ratio(mad)["pairs"][0]) + 1]
    # a seam at native frame s falls in the analysis pair that spans frames s-1 and s
    sampled_seams = None if seams is None else sorted({(int(s) - 1) // interval + 1 for s in seams if int(s) >= 1})
    drift = {"histogram": [round(float(x), 5) for x in M.colour_histogram_drift(frames)], "clip": None}
    if clip_embeddings is not None:
        drift["clip"] = [round(float(x), 5) for x in clip_embeddings @ clip_embeddings[0]]

    def ratio(per_pair, at):
        r = M.seam_ratio(per_pair, at) if len(per_pair) and at else {"ratio": None, "pairs": [], "seam_mean": None,
                                                                       "other_median": None}
        r["known"] = known
        return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in r.items()}

    return {"given": sorted(int(s) for s in seams) if known else None,
            "flicker": ratio(mad, seams), "warping_error": ratio(np.asarray(warp_pairs), sampled_seams),
            "drift": drift}


def consistency(video, reference=None, fps: float | None = None, analysis_fps: float = 8.0,
                flow: str = "dis", clip_model: str | os.PathLike | None = None, seams=None, loop: bool = False) -> dict:
    """Score one video (path, `Video` or `f h w 3` uint8) into a record matching `REPORT_SCHEMA`.

    `seams` (frame indices where a new window starts) default to those a `Video` records. `loop` scores a looping
    video: frame 0 is appended after the last and that wrap pair is the one seam.
    """
    if seams is None:          # a Video knows its windows
        seams = getattr(video, "seams", None)
    if flow not in M.FLOW_METHODS:
        raise ValueError(f"flow must be one of {list(M.FLOW_METHODS)}, got {flow!r}")
    if not analysis_fps > 0:
        raise ValueError(f"analysis fps must be > 0, got {analysis_fps}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps:g}")
    frames, fps, name = _load(video, fps)
    f, h, w, _ = frames.shape
    if seams is None and isinstance(video, (str, os.PathLike)):     # a file vidiff wrote carries its windows
        from vidiff.data.io import read_settings

        try:
            seams = (read_settings(video) or {}).get("seams")
        except Exception:          # settings are optional: unreadable metadata means no known seams
            seams = None
    if seams is not None:
        seams = [int(s) for s in seams]
    if loop:                   # the wrap pair (last -> first) is the seam a looping video may show
        frames, seams = np.concatenate([frames, frames[:1]]), [f]
        f += 1
    sampled, interval = M.sample_frames(frames, fps, analysis_fps)
    fw, bw = M.flows(sampled, flow)
    motion = M.motion_magnitude(fw)
    dynamic = M.dynamic_degree(fw, h, w, len(sampled))
    guard = M.motion_guard(fw, h, w)
    params = {"analysis_fps": round(fps / interval, 6)}
    warp = M.warping_error(sampled, (fw, bw))
    record = {
        "schema": SCHEMA_ID, "video": name, "frames": int(f), "height": int(h), "width": int(w), "fps": float(fps),
        "analysis": {"fps": round(fps / interval, 6), "interval": interval, "frames": len(sampled),
                     "flow": M.FLOW_METHODS[flow]},
        "metrics": {
            "temporal_flickering": _entry(M.temporal_flickering(frames), "higher", 0, 1,
                                          "VBench temporal flickering (Huang et al., CVPR 2024)",
                                          params={"fps": float(fps), "resolution": "full"}),
            "warping_error": _entry(warp, "lower", 0, 1,
                                    "Lai et al., Learning Blind Video Temporal Consistency, ECCV 2018",
                                    params={**params, "units": "[0,1] per-channel MSE",
                                            "mask": "forward-backward occlusion + motion boundaries"}),
            "motion_magnitude": _entry(motion, "none", 0, None, "mean / top-5% mean optical-flow magnitude",
                                       params={**params, "units": "pixels per analysis frame"}),
            "dynamic_degree": _entry(dynamic, "higher", 0, 1,
                                     "VBench dynamic degree rule (Huang et al., CVPR 2024); OpenCV flow, not RAFT",
                                     params=params),
            "motion_guard": _entry(guard, "none", 0, 1, "vidiff static guard: displacement tracked over the clip "
                                   "vs the random walk of the video's own flow noise floor (per_pair: floors, px)",
                                   params=params),
            "frame_ssim": _entry(M.frame_ssim(sampled), "higher", -1, 1, "SSIM, Wang et al. 2004", params=params),
            "frame_psnr": _entry(M.frame_psnr(sampled), "higher", 0, M.PSNR_CAP, "PSNR (peak 255)",
                                 params={**params, "identical_frames_db": M.PSNR_CAP}),
        },
    }
    if reference is not None:
        ref, ref_fps, ref_name = _load(reference, None)
        ref_sampled, _ = M.sample_frames(ref, ref_fps, analysis_fps)
        record["metrics"]["tof"] = _entry(M.tof(sampled, ref_sampled), "lower", 0, None,
                                          "TecoGAN tOF (Chu et al., SIGGRAPH 2020), Farneback flow",
                                          params={**params, "reference_video": ref_name})
    emb = None
    if clip_model is not None:
        emb = M.clip_embeddings(sampled, clip_model)
        record["metrics"]["clip_consistency"] = _entry(
            M.clip_consistency(sampled, clip_model, embeddings=emb), "higher", -1, 1,
            "CLIP image-embedding cosine of frames (consecutive pairs; all_pairs too)",
            params={**params, "model": str(clip_model)})
    notes = []
    if len(sampled) < 2:
        notes.append("a single analysis frame: the temporal metrics are undefined (null)")
    static = bool(len(sampled) < 2 or not guard.value)
    if static and len(sampled) >= 2:
        notes.append(f"static: tracked content moves at most {guard.extra['displacement_px']:.1f} px over the clip, "
                     f"under {guard.extra['bar_px']:.1f} px (what its flow noise explains), so flicker, warping "
                     "error and SSIM say little about consistency here")
    bad = [s for s in (seams or []) if not 1 <= s < f]
    if bad:
        raise ValueError(f"seams {bad} are outside 1..{f - 1} (a seam is the first frame of a new window)")
    record["seams"] = seams_report(frames, interval, np.nan_to_num(warp.per_pair), seams, emb)
    record["static"], record["notes"] = static, notes
    return record


# ---- reporting ------------------------------------------------------------------------------------
COLUMNS = [("flicker^", "temporal_flickering", "{:.4f}"), ("warp_err_v", "warping_error", "{:.5f}"),
           ("motion_px", "motion_magnitude", "{:.2f}"), ("dynamic", "dynamic_degree", "{}"),
           ("ssim^", "frame_ssim", "{:.3f}"), ("psnr^", "frame_psnr", "{:.1f}"),
           ("tOF_v", "tof", "{:.3f}"), ("clip^", "clip_consistency", "{:.4f}")]


def table(records: list[dict]) -> str:
    """A plain-text summary table: one row per video; ^ higher is better, v lower is better."""
    cols = [c for c in COLUMNS if any(c[1] in r["metrics"] for r in records)]
    head = ["video", "frames"] + [c[0] for c in cols] + ["seam_v", "note"]
    rows = []
    for r in records:
        cells = [Path(r["video"]).name if r["video"] != "<frames>" else r["video"], str(r["frames"])]
        for _, key, fmt in cols:
            v = r["metrics"].get(key, {}).get("value")
            cells.append("-" if v is None else fmt.format(v))
        seam = r.get("seams", {}).get("flicker", {})
        cells.append("-" if seam.get("ratio") is None else f"{seam['ratio']:.2f}" + ("" if seam["known"] else "*"))
        cells.append("STATIC: barely moves, so high consistency is expected" if r["static"] and r["frames"] > 1 else "")
        rows.append(cells)
    return text_table(head, rows)


def text_table(head: list[str], rows: list[list[str]]) -> str:
    """Plain-text columns, each as wide as its widest cell, with a dashed rule under the header."""
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt_row = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()   # noqa: E731
    return "\n".join([fmt_row(head), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in rows])


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or one clear ValueError when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'vidiff[plot]'") from None
    return plt


def plot(records: list[dict], path: str | os.PathLike) -> Path:
    """Per-pair curves (flicker, warping error, motion, SSIM) of every video in one PNG."""
    plt = pyplot()
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot path must end in .png, got {str(path)!r}")
    keys = [("temporal_flickering", "flicker (per pair, native fps)"), ("warping_error", "warping error"),
            ("motion_magnitude", "mean flow (px)"), ("frame_ssim", "SSIM")]
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4 * (len(keys) + 1), 3.2))
    for ax, (key, title) in zip(axes, keys):
        for r in records:
            ax.plot(r["metrics"][key]["per_pair"], label=Path(r["video"]).name, lw=1.2)
            if key == "temporal_flickering":       # known seams (or the worst pair) as dashed lines
                for p in r.get("seams", {}).get("flicker", {}).get("pairs", []):
                    ax.axvline(p, ls="--", lw=0.8, color="grey")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("frame pair")
    for r in records:                             # drift: each frame against frame 0
        drift = r.get("seams", {}).get("drift", {})
        axes[-1].plot(drift.get("histogram", []), label=f"{Path(r['video']).name} colour", lw=1.2)
        if drift.get("clip"):
            axes[-1].plot(drift["clip"], label=f"{Path(r['video']).name} CLIP", lw=1.2, ls=":")
    axes[-1].set_title("drift: similarity to frame 0", fontsize=10)
    axes[-1].set_xlabel("frame")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


def write_json(obj, path: str | os.PathLike) -> Path:
    """Write JSON atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ---- prompt faithfulness on the shapes domain ----------------------------------------------------------
def shapes_prompts() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(seen, held-out) prompt combinations: 18 seen ones covering every colour, shape and motion, plus all of HOLDOUT."""
    from vidiff.data.shapes import COLORS, HOLDOUT, MOTIONS, SHAPES

    seen = []
    for i, color in enumerate(COLORS):
        for j in range(3):
            shape, k = SHAPES[(i + j) % 3], (i + 2 * j) % 5
            while (color, shape, MOTIONS[k]) in HOLDOUT:
                k = (k + 1) % 5
            seen.append((color, shape, MOTIONS[k]))
    return seen, list(HOLDOUT)


def _accuracy(rows: list[dict], keys=("color", "shape", "motion")) -> dict:
    if not rows:
        return {"n": 0}
    out = {k: round(float(np.mean([r["detected"][k] == r["want"][k] for r in rows])), 4) for k in keys}
    out["all"] = round(float(np.mean([all(r["detected"][k] == r["want"][k] for k in keys) for r in rows])), 4)
    out["n"] = len(rows)
    return out


def _by_shape(rows: list[dict]) -> dict:
    """Shape accuracy for each asked-for shape (seen and held-out together)."""
    from vidiff.data.shapes import SHAPES

    return {sh: _accuracy([r for r in rows if r["want"]["shape"] == sh], ("shape",)).get("shape") for sh in SHAPES}


def _mean_of(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(float(np.mean(vals)), 2) if vals else None


def shapes_benchmark(pipe, seeds: int = 3, steps: int | None = None, guidance: float | None = None, num_frames: int | None = None,
                     i2v_clips: int = 12, progress: bool = True, sheet: str | os.PathLike | None = None,
                     object_scale: float = 1.0, cache: int | dict | None = None) -> dict:
    """Generate the shapes prompts and read colour, shape and motion back from the pixels (`cache`: step caching).

    Text-to-video is scored per attribute on seen and held-out combinations. Image-to-video
    animates first frames of freshly rendered dataset clips; continuation extends their first 8
    frames. Both check the object keeps its colour and moves the prompted way. `object_scale` draws
    those clips (and the rendered reference rows) at the object size the model was trained on.
    """
    import time

    from tqdm.auto import tqdm

    from vidiff.data.shapes import background_noise, caption, check_object_scale, detect, render_clip

    check_object_scale(object_scale)                  # before minutes of sampling
    seen, held = shapes_prompts()
    num_frames = num_frames or pipe.defaults["num_frames"]        # the model's own clip length
    steps = steps or int(pipe.defaults.get("num_inference_steps", 25))
    kw = dict(num_frames=num_frames, num_inference_steps=steps, progress=False)
    if guidance is not None:
        kw["guidance_scale"] = guidance
    if cache is not None:
        kw["cache"] = cache
    jobs = [("seen", c) for c in seen] + [("heldout", c) for c in held]
    bar = tqdm(total=len(jobs) * seeds + 2 * i2v_clips, desc="bench shapes", disable=not progress)
    rows, t2v_seconds, samples = [], [], []
    for split, combo in jobs:
        for seed in range(seeds):
            t0 = time.perf_counter()
            video = pipe(caption(*combo), seed=seed, **kw)
            t2v_seconds.append(time.perf_counter() - t0)
            want = dict(zip(("color", "shape", "motion"), combo))
            rows.append({"split": split, "prompt": caption(*combo), "seed": seed, "want": want,
                         "detected": detect(video.frames), "background_noise": background_noise(video.frames),
                         "flicker": M.temporal_flickering(video.frames).value})
            if seed == 0 and len(samples) < 8 and (split == "heldout" or len(samples) < 5):
                samples.append(video.frames)
            bar.update(1)

    moving = [c for c in seen + held if c[2] != "still"]
    i2v, ext = [], []
    for i in range(i2v_clips):
        combo = moving[i % len(moving)]
        clip = render_clip(*combo, np.random.default_rng([1234, i]), size=pipe.defaults["width"], num_frames=num_frames,
                           scale=object_scale)
        want = dict(zip(("color", "shape", "motion"), combo))
        video = pipe.animate(clip[0], caption(*combo), seed=i, **kw)
        i2v.append({"prompt": caption(*combo), "want": want, "detected": detect(video.frames),
                    "first_frame_kept": bool((video.frames[0] == clip[0]).all())})
        bar.update(1)
        half = num_frames // 2
        longer = pipe.extend(clip[:half], caption(*combo), num_frames=num_frames - half, context=4,
                             chunk=num_frames, seed=i, num_inference_steps=steps, progress=False,
                             **({"guidance_scale": guidance} if guidance is not None else {}))
        ext.append({"prompt": caption(*combo), "want": want, "detected": detect(longer.frames[half - 4:])})
        bar.update(1)
    bar.close()
    # the same figures on rendered clips of the same prompts: the model against its own data
    rendered = []
    for split, combo in jobs:
        for seed in range(seeds):
            clip = render_clip(*combo, np.random.default_rng([4321, seed]), size=pipe.defaults["width"],
                               num_frames=num_frames, scale=object_scale)
            rendered.append({"split": split, "want": dict(zip(("color", "shape", "motion"), combo)),
                             "detected": detect(clip), "background_noise": background_noise(clip),
                             "flicker": M.temporal_flickering(clip).value})
    if sheet is not None:
        from vidiff.data.io import contact_sheet

        step = max(1, num_frames // 8)
        contact_sheet(np.concatenate([s[::step][:8] for s in samples]), sheet, columns=8, max_frames=8 * len(samples))
    return {
        "model": getattr(pipe, "source", None), "steps": steps, "guidance": guidance, "seeds": seeds,
        "frames": num_frames,
        "t2v": {"seen": _accuracy([r for r in rows if r["split"] == "seen"]),
                "heldout": _accuracy([r for r in rows if r["split"] == "heldout"])},
        "i2v": {**_accuracy(i2v, ("color", "motion")),
                "first_frame_kept": float(np.mean([r["first_frame_kept"] for r in i2v])) if i2v else None},
        "extend": _accuracy(ext, ("color", "motion")),
        "by_shape": _by_shape(rows),
        "flicker_mean": round(float(np.mean([r["flicker"] for r in rows])), 4),
        "background_noise": _mean_of(rows, "background_noise"),
        "rendered": {"t2v": {split: _accuracy([r for r in rendered if r["split"] == split]) for split in ("seen", "heldout")},
                     "by_shape": _by_shape(rendered),
                     "flicker_mean": round(float(np.mean([r["flicker"] for r in rendered])), 4),
                     "background_noise": _mean_of(rendered, "background_noise")},
        "seconds_per_t2v_video": round(float(np.median(t2v_seconds)), 2),
        "videos": rows, "i2v_videos": i2v, "extend_videos": ext,
    }


def shapes_table(result: dict) -> str:
    """The accuracy table of `shapes_benchmark` as markdown."""
    lines = ["| task | split | colour | shape | motion | all | n |", "|---|---|---|---|---|---|---|"]
    for split in ("seen", "heldout"):
        a = result["t2v"][split]
        lines.append(f"| text-to-video | {split} | {a['color']:.0%} | {a['shape']:.0%} | {a['motion']:.0%} | "
                     f"{a['all']:.0%} | {a['n']} |")
    for task in ("i2v", "extend"):
        a = result[task]
        name = "image-to-video" if task == "i2v" else "continuation"
        lines.append(f"| {name} | seen + held-out | {a['color']:.0%} (kept) | - | {a['motion']:.0%} | "
                     f"{a['all']:.0%} | {a['n']} |")
    if "rendered" in result:
        r = result["rendered"]
        pct = lambda v: "-" if v is None else f"{v:.0%}"        # noqa: E731
        num = lambda v, f: "-" if v is None else format(v, f)   # noqa: E731
        lines += ["", "| text-to-video | generated | rendered clips, same prompts |", "|---|---|---|"]
        for sh in result["by_shape"]:
            lines.append(f"| shape: {sh} | {pct(result['by_shape'][sh])} | {pct(r['by_shape'][sh])} |")
        lines.append(f"| background noise (temporal std of uncovered pixels, /255) | "
                     f"{num(result['background_noise'], '.1f')} | {num(r['background_noise'], '.1f')} |")
        lines.append(f"| flicker (VBench, 1 = still) | {result['flicker_mean']:.3f} | {r['flicker_mean']:.3f} |")
    return "\n".join(lines)
