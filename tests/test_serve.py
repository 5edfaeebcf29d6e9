"""`vidiff serve` end to end: a real browser (Debian's chromium through playwright) and gradio_client."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vidiff import testing
from vidiff.testing import free_port
from vidiff.app.cli import main
from vidiff.data.io import read_video

pytest.importorskip("gradio")
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    testing.tiny_model(root / "models" / "tiny")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vidiff.app.cli", "serve", "--models", str(root / "models"),
                             "--outputs", str(root / "outputs"), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"vidiff serve did not come up: {proc.stdout.read().decode()[-2000:]}")
            time.sleep(0.5)
    yield url, root
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow                          # a server process and a real browser: ~11 s
def test_browser_generates_shows_history_and_errors(server, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (make test installs it: apt-get install chromium)")
        pytest.skip("no chromium here")
    sync_api = pytest.importorskip("playwright.sync_api")
    url, root = server
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        from vidiff.pipelines.pipeline import VideoPipeline

        d = VideoPipeline.from_pretrained(root / "models" / "tiny").defaults       # the first model in the list
        sync_api.expect(page.locator("#steps input")).to_have_value(str(int(d.get("num_inference_steps", 25))))
        sync_api.expect(page.locator("#frames input")).to_have_value(str(d["num_frames"]))
        sync_api.expect(page.locator("#height input")).to_have_value(str(d["height"]))
        guidance = float(page.locator("#guidance input").input_value())
        assert guidance == float(d.get("guidance_scale", 7.5))
        page.locator("#prompt textarea").fill("a red circle moving right")
        for field, value in (("frames", "5"), ("steps", "2"), ("height", "32"), ("width", "32")):
            page.locator(f"#{field} input").fill(value)
        page.locator("#generate").click()
        video = page.locator("#result video")
        sync_api.expect(video).to_have_attribute("src", re.compile(".+"), timeout=120_000)
        src = video.get_attribute("src")
        assert src
        body = page.request.get(src if src.startswith("http") else url + src.lstrip("/")).body()
        assert body[4:8] == b"ftyp"                                       # an MP4
        (tmp_path / "got.mp4").write_bytes(body)
        assert read_video(tmp_path / "got.mp4")[0].shape == (5, 32, 32, 3)
        sync_api.expect(page.locator("#history img")).to_have_count(1, timeout=30_000)
        assert "5 frames, seed 0" in page.locator("#status").inner_text()
        if os.environ.get("VIDIFF_SCREENSHOT"):
            page.screenshot(path=os.environ["VIDIFF_SCREENSHOT"], full_page=True)
        page.locator("#prompt textarea").fill("")
        page.locator("#generate").click()
        sync_api.expect(page.locator("#status")).to_contain_text("error: the prompt is empty", timeout=30_000)
        page.locator("#prompt textarea").fill("a blue square moving up")
        page.locator("#steps input").fill("0")
        page.locator("#generate").click()
        sync_api.expect(page.locator("#status")).to_contain_text("steps must be a whole number >= 1", timeout=30_000)
        page.locator("#history img").first.click()                         # one click restores that run's settings
        sync_api.expect(page.locator("#prompt textarea")).to_have_value("a red circle moving right", timeout=30_000)
        sync_api.expect(page.locator("#steps input")).to_have_value("2", timeout=30_000)
        browser.close()
    sidecars = list((root / "outputs").glob("*.json"))
    assert len(sidecars) >= 1 and all((root / "outputs" / (p.stem + ".mp4")).exists() for p in sidecars)


@pytest.mark.slow                          # a server process driven over HTTP: ~10 s
def test_gradio_client_drives_the_same_app(server):
    client_mod = pytest.importorskip("gradio_client")
    url, root = server
    client = client_mod.Client(url, verbose=False)
    assert {"/generate", "/bench", "/history", "/pick_model", "/restore"} <= set(
        client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    before = len(list((root / "outputs").glob("*.mp4")))
    args = ["a green triangle moving left", "", "tiny", 6, 10, 32, 32, 2, 5.0, 7, "ddim", "all", None, None, 0.6]
    mp4, files, note, gallery = client.predict(*args, api_name="/generate")
    frames, fps = read_video(mp4)
    assert frames.shape == (6, 32, 32, 3) and fps == 10
    assert sorted(Path(f).suffix for f in files) == [".gif", ".mp4"]
    again = client.predict(*args, api_name="/generate")[0]               # same settings: a new file, none overwritten
    assert Path(again).name != Path(mp4).name
    assert len(list((root / "outputs").glob("*.mp4"))) == before + 2
    assert any("green triangle" in (g.get("caption") or "") for g in gallery)
    rows, plot, _ = client.predict(Path(mp4).name, None, api_name="/bench")
    table = rows["data"] if isinstance(rows, dict) else rows
    assert "temporal_flickering" in [r[0] for r in table]
    bad = client.predict("x", "", "tiny", 4, 8, 30, 32, 2, 5.0, 1, "ddim", "all", None, None, 0.6, api_name="/generate")
    assert bad[2] == "**error:** height must be a positive multiple of 4 for this model, got 30"
    with pytest.raises(client_mod.exceptions.AppError, match="no-such-model is not in the list of choices"):
        client.predict("x", "", "no-such-model", 4, 8, 32, 32, 2, 5.0, 1, "ddim", "all", None, None, 0.6,
                       api_name="/generate")
    ok = client.predict(*args, api_name="/generate")                      # still serving after an error
    assert Path(ok[0]).exists()
    only_prompt = client.predict("a blue square moving up", api_name="/generate")   # every other field at its default
    assert read_video(only_prompt[0])[0].shape[0] >= 1 and Path(only_prompt[0]).suffix == ".mp4"
    # the page's progress bar: the sampler's steps reach the client while it runs
    long_run = list(args)
    long_run[7] = 120                                                     # steps: long enough to be seen running
    job = client.submit(*long_run, api_name="/generate")
    seen = []
    while not job.done():
        units = job.status().progress_data or []
        seen += [(u.index, u.length, u.desc) for u in units if u.length]
        time.sleep(0.02)
    assert Path(job.result()[0]).exists()
    assert seen and all(length == 120 for _, length, _ in seen), seen[:5]
    assert any(0 < i < 120 for i, _, _ in seen) and any(desc and desc.startswith("frames 0-") for *_, desc in seen)


def test_port_in_use_is_one_line_exit_2(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: in use on 127.0.0.1" in err and err.count("\n") == 1


def test_one_run_at_a_time_bounded_queue_and_one_model_kept(tmp_path):
    from vidiff.app.serve import Models, build_app

    a, b = testing.tiny_model(tmp_path / "a"), testing.tiny_model(tmp_path / "b", seed=1)
    app = build_app({"a": a, "b": b}, tmp_path / "out", queue_size=5)
    assert app._queue.max_size == 5 and app._queue.default_concurrency_limit == 1
    models = Models({"a": a, "b": b})
    first = models.get("a")
    assert models.get("a") is first                        # kept while it stays picked
    other = models.get("b")
    assert other is not first and models.name == "b" and models.pipe is other
    with pytest.raises(ValueError, match="model 'c' is not available; available: a, b"):
        models.get("c")
