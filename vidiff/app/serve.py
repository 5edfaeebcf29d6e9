"""`vidiff serve`: a local gradio app over the same pipeline API as the CLI.

Generate tab (text-, image- and video-to-video with every sampler and mode), a history of every
result kept under `--outputs` with its exact settings (never overwritten; one click restores a
run), and a Bench tab (the consistency report of a result or an uploaded video). One generation
runs at a time from a bounded queue; a bad input or a failed run is a message in the page, and the
server keeps serving. Every endpoint has a stable `api_name` for `gradio_client` scripts.
"""

# no `from __future__ import annotations`: gradio reads `evt: gr.SelectData` from the live annotation
import inspect
import json
import os
import random
import socket
import threading
import time
from pathlib import Path

from vidiff.pipelines.batch import slug

SAMPLERS = ["(model default)", "ddim", "euler", "euler_ancestral", "dpmpp_2m", "lcm"]
MODES = ["all", "autoregressive", "windows", "fifo"]
SHIPPED = "shapes-64 (shipped)"


def find_models(dirs) -> dict:
    """{name: folder} of the model folders directly in (or at) each of `dirs`, then the shipped model."""
    from vidiff.pipelines.pipeline import DEFAULT_MODEL

    found = {}
    for d in map(Path, dirs or []):
        if not d.is_dir():
            raise FileNotFoundError(f"--models {d}: folder does not exist")
        for cand in [d] + sorted(p for p in d.iterdir() if p.is_dir()):
            if (cand / "model_index.json").is_file():
                found.setdefault(cand.name, cand)
    if (DEFAULT_MODEL / "model_index.json").is_file():
        found[SHIPPED] = DEFAULT_MODEL
    if not found:
        raise FileNotFoundError("no model folders found (folders with model_index.json); pass --models DIR")
    return found


def port_free(host: str, port: int) -> bool:
    """True when `host:port` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Models:
    """Keeps one pipeline loaded, until another model is picked."""

    def __init__(self, folders: dict, device="auto", dtype="auto"):
        self.folders, self.name, self.pipe = folders, None, None
        self.device, self.dtype = device, dtype
        self.lock = threading.Lock()

    def get(self, name: str):
        """The pipeline of model `name`, loading it (and dropping the previous one) if needed."""
        from vidiff.pipelines.pipeline import VideoPipeline

        if name not in self.folders:
            raise ValueError(f"model {name!r} is not available; available: {', '.join(self.folders)}")
        with self.lock:
            if name != self.name:
                self.pipe, self.name = None, None
                self.pipe = VideoPipeline.from_pretrained(self.folders[name], device=self.device, dtype=self.dtype)
                self.name = name
            return self.pipe


class History:
    """Results under one folder: `{time}-{slug}-{seed}.mp4` + `.gif` + `.png` (first frame) + `.json` (settings)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def new_stem(self, prompt: str, seed: int) -> str:
        """A name no earlier result has (the time, the prompt's slug, the seed, a counter if needed)."""
        base = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(prompt, 40)}-{seed}"
        stem, n = base, 1
        while any((self.folder / f"{stem}{s}").exists() for s in (".mp4", ".json")):
            n += 1
            stem = f"{base}-{n}"
        return stem

    def save(self, video, ui: dict) -> dict:
        """Write a result's files; the sidecar (written last) holds the UI settings and the video's own."""
        from PIL import Image

        stem = self.new_stem(str(ui.get("prompt", "")), int(video.settings.get("seed") or 0))
        mp4, gif, png = (self.folder / f"{stem}{s}" for s in (".mp4", ".gif", ".png"))
        video.save(mp4)
        video.save(gif)
        Image.fromarray(video.frames[0]).save(png)
        entry = {"stem": stem, "mp4": mp4.name, "gif": gif.name, "thumb": png.name, "ui": ui,
                 "settings": video.settings, "frames": len(video.frames), "time": time.time()}
        tmp = self.folder / f".{stem}.json.tmp"
        tmp.write_text(json.dumps(entry, indent=1, default=str))
        os.replace(tmp, self.folder / f"{stem}.json")
        return entry

    def entries(self) -> list[dict]:
        """Every complete result, newest first."""
        out = []
        for p in self.folder.glob("*.json"):
            try:
                e = json.loads(p.read_text())
            except (json.JSONDecodeError, OSError):
                continue
            if (self.folder / e.get("mp4", "")).is_file():
                out.append(e)
        return sorted(out, key=lambda e: e.get("time", 0), reverse=True)

    def gallery(self) -> list:
        """(thumbnail, caption) pairs for a gr.Gallery, newest first."""
        return [(str(self.folder / e["thumb"]), f"{e['ui'].get('prompt', '')} · seed {e['settings'].get('seed')}")
                for e in self.entries()]


def _message(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


FIELDS = ("prompt", "negative", "model", "frames", "fps", "height", "width", "steps", "guidance", "seed", "sampler",
          "mode")                               # the form fields a history entry restores, in the form's order


def generate(models: Models, history: History, ui: dict, image=None, video=None) -> dict:
    """Check the form's values, run the pipeline (text-, image- or video-to-video), keep the result; its entry."""
    if not str(ui["prompt"] or "").strip() and video is None and image is None:
        raise ValueError("the prompt is empty; describe the video (e.g. a red circle moving right)")
    for name in ("frames", "steps", "height", "width"):
        v = ui[name]
        if v is None or int(v) != v or v < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
    if ui["seed"] is None or int(ui["seed"]) != ui["seed"] or ui["seed"] < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {ui['seed']!r}")
    pipe = models.get(ui["model"])
    kw = dict(negative_prompt=ui["negative"] or None, height=int(ui["height"]), width=int(ui["width"]),
              num_inference_steps=int(ui["steps"]), guidance_scale=float(ui["guidance"]), seed=int(ui["seed"]),
              fps=float(ui["fps"]) if ui["fps"] else None, mode=ui["mode"], progress=True,
              sampler=None if ui["sampler"] == SAMPLERS[0] else ui["sampler"])
    prompt = ui["prompt"] or ""
    if video is not None:
        result = pipe.video_to_video(video, prompt, strength=float(ui["strength"]), **kw)
    elif image is not None:
        result = pipe.animate(image, prompt, resize="crop", num_frames=int(ui["frames"]), **kw)
    else:
        result = pipe(prompt, num_frames=int(ui["frames"]), **kw)
    return history.save(result, ui)


def bench_report(history: History, result_name: str | None, upload) -> tuple[list, str | None, str]:
    """(metric rows, per-pair plot, note) of a history result (only those) or an uploaded video."""
    from vidiff.evaluation.bench import consistency, plot

    if not upload and result_name and result_name not in {e["mp4"] for e in history.entries()}:
        raise ValueError(f"{result_name!r} is not a result in the history")
    path = upload or (history.folder / result_name if result_name else None)
    if path is None:
        raise ValueError("pick a result or upload a video")
    report = consistency(str(path))
    rows = [[k, round(v["value"], 5) if isinstance(v.get("value"), float) else v.get("value")]
            for k, v in report["metrics"].items()]
    try:
        curves = str(plot([report], history.folder / ".bench.png"))    # one file, replaced by the next report
    except ValueError:                                                 # no matplotlib: the table alone
        curves = None
    return rows, curves, "static video: barely moves" if report["static"] else ""


def build_app(models: dict, outputs: str | os.PathLike, queue_size: int = 8, device="auto", dtype="auto"):
    """The gradio Blocks app (not launched); the handlers are thin wrappers that turn errors into page messages."""
    import gradio as gr

    cache, history = Models(models, device, dtype), History(outputs)
    names = list(models)
    d = cache.get(names[0]).defaults                 # the first form shows the selected model's own defaults
    initial = {"prompt": "a red circle moving right", "negative": "", "model": names[0], "frames": d["num_frames"],
               "fps": d["fps"], "height": d["height"], "width": d["width"],
               "steps": int(d.get("num_inference_steps", 25)), "guidance": float(d.get("guidance_scale", 7.5)),
               "seed": 0, "sampler": SAMPLERS[0], "mode": "all"}

    def on_generate(*values):
        *form, image, video, strength, _progress = values
        try:
            entry = generate(cache, history, {**dict(zip(FIELDS, form)), "strength": strength}, image, video)
        except Exception as e:                 # noqa: BLE001 - a message in the page; the server keeps serving
            return gr.update(), gr.update(), f"**error:** {_message(e)}", gr.update()
        mp4, gif, st = history.folder / entry["mp4"], history.folder / entry["gif"], entry["settings"]
        note = (f"{entry['frames']} frames, seed {st['seed']}, saved as `{entry['mp4']}` "
                f"({st['num_inference_steps']} steps, {st['sampler']})")
        return str(mp4), [str(mp4), str(gif)], note, history.gallery()

    # gradio finds its Progress (which relays the sampler's tqdm bar to the page) only among positional
    # parameters, and a `*values` handler has none: name them, the progress last.
    P = inspect.Parameter
    # Defaults (the first form's values) let an API call name only the prompt.
    on_generate.__signature__ = inspect.Signature(
        [P(n, P.POSITIONAL_OR_KEYWORD, default=initial[n]) for n in FIELDS]
        + [P(n, P.POSITIONAL_OR_KEYWORD, default=v) for n, v in (("image", None), ("video", None), ("strength", 0.6))]
        + [P("progress", P.POSITIONAL_OR_KEYWORD, default=gr.Progress(track_tqdm=True))])

    def on_pick_model(name):
        try:
            d = cache.get(name).defaults
        except Exception as e:                 # noqa: BLE001
            return [gr.update()] * 6 + [f"**error:** {_message(e)}"]
        return [d["num_frames"], d["fps"], d["height"], d["width"], int(d.get("num_inference_steps", 25)),
                d.get("guidance_scale", 7.5), f"model `{name}` loaded"]

    def on_restore(evt: gr.SelectData):
        entries = history.entries()
        if evt is None or not 0 <= evt.index < len(entries):
            return [gr.update()] * len(FIELDS)
        return [gr.update(value=entries[evt.index]["ui"].get(k)) for k in FIELDS]

    def on_bench(result_name, upload):
        try:
            return bench_report(history, result_name, upload)
        except Exception as e:                 # noqa: BLE001
            return [], None, f"**error:** {_message(e)}"

    with gr.Blocks(title="vidiff") as app:
        gr.Markdown("# vidiff\nText-, image- and video-to-video with vidiff's models; every result is kept below.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=3):
                    prompt = gr.Textbox(label="Prompt", value=initial["prompt"], elem_id="prompt")
                    negative = gr.Textbox(label="Negative prompt", value="", elem_id="negative")
                    model = gr.Dropdown(names, value=names[0], label="Model", elem_id="model")
                    with gr.Row():
                        frames = gr.Number(initial["frames"], label="Frames", precision=0, elem_id="frames")
                        fps = gr.Number(initial["fps"], label="FPS", elem_id="fps")
                        height = gr.Number(initial["height"], label="Height", precision=0, elem_id="height")
                        width = gr.Number(initial["width"], label="Width", precision=0, elem_id="width")
                    with gr.Row():
                        steps = gr.Number(initial["steps"], label="Steps", precision=0, elem_id="steps")
                        guidance = gr.Number(initial["guidance"], label="Guidance", elem_id="guidance")
                        seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                        dice = gr.Button("Random seed", elem_id="random-seed", scale=0)
                    with gr.Row():
                        sampler = gr.Dropdown(SAMPLERS, value=SAMPLERS[0], label="Sampler", elem_id="sampler")
                        mode = gr.Dropdown(MODES, value="all", label="Mode", elem_id="mode")
                    with gr.Accordion("Image-to-video / video-to-video", open=False):
                        image = gr.Image(label="First frame", type="numpy", elem_id="image")
                        video_in = gr.Video(label="Input video", elem_id="video-in")
                        strength = gr.Slider(0, 1, value=0.6, step=0.05, label="Strength (video-to-video)")
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column(scale=2):
                    result = gr.Video(label="Result", elem_id="result", autoplay=True, loop=True)
                    files = gr.File(label="Downloads (MP4, GIF)", file_count="multiple", elem_id="downloads")
                    status = gr.Markdown(elem_id="status")
            gallery = gr.Gallery(history.gallery(), label="History (click to restore its settings)", columns=10,
                                 rows=1, height=150, object_fit="contain", elem_id="history", allow_preview=False)
        with gr.Tab("Bench"):
            with gr.Row():
                pick = gr.Dropdown([e["mp4"] for e in history.entries()], label="A result", elem_id="bench-pick",
                                   allow_custom_value=True)
                upload = gr.Video(label="…or a video", elem_id="bench-upload")
            run_bench = gr.Button("Score", elem_id="bench-run")
            table = gr.Dataframe(headers=["metric", "value"], label="Consistency report", elem_id="bench-table")
            curve = gr.Image(label="Per-pair curves", elem_id="bench-plot")
            bench_note = gr.Markdown(elem_id="bench-status")

        inputs = [prompt, negative, model, frames, fps, height, width, steps, guidance, seed, sampler, mode]
        go.click(on_generate, inputs + [image, video_in, strength], [result, files, status, gallery], api_name="generate")
        model.change(on_pick_model, model, [frames, fps, height, width, steps, guidance, status], api_name="pick_model")
        dice.click(lambda: random.randrange(2 ** 31), None, seed, api_name="random_seed")
        gallery.select(on_restore, None, inputs, api_name="restore")
        run_bench.click(on_bench, [pick, upload], [table, curve, bench_note], api_name="bench")
        app.load(lambda: (history.gallery(), gr.update(choices=[e["mp4"] for e in history.entries()])),
                 None, [gallery, pick], api_name="history")
    app.queue(default_concurrency_limit=1, max_size=queue_size)
    return app


def serve(models: dict, outputs: str | os.PathLike, host: str = "127.0.0.1", port: int = 7860,
          queue_size: int = 8, device="auto", dtype="auto") -> None:
    """Build the app and serve it until interrupted; models load onto `device` in `dtype`."""
    if not port_free(host, port):
        raise ValueError(f"port {port} is in use on {host}; pick another with --port")
    app = build_app(models, outputs, queue_size, device=device, dtype=dtype)
    app.launch(server_name=host, server_port=port, show_error=False, quiet=True,
               allowed_paths=[str(Path(outputs).resolve())])
