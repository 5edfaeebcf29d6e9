"""ClipDataset over real MP4 files: bad files skipped and counted, decoded frames match, stride honoured."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from vidiff.data.clips import ClipDataset, ClipSampler, collate, loader
from vidiff.data.io import write_video
from vidiff.data.shapes import HOLDOUT, caption, combinations, make_shapes_dataset, render_clip


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), clips=6, seed=0, progress=False)


def _ramp_video(n, size=32):
    """Frame i is a flat grey of level 8*i: the frame index is readable from the pixels."""
    return np.stack([np.full((size, size, 3), 8 * i, np.uint8) for i in range(n)])


def test_bad_files_are_skipped_and_counted(tmp_path, shapes_dir):
    good = sorted((shapes_dir / "clips").glob("*.mp4"))[:3]
    for p in good:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "zero.mp4").write_bytes(b"")
    data = good[0].read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
    write_video(_ramp_video(2), tmp_path / "short.mp4")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ClipDataset(tmp_path, num_frames=8, size=64)
    assert len(ds) == 3
    assert sorted(p.split("/")[-1] for p in ds.skipped) == ["notes.mp4", "short.mp4", "truncated.mp4", "zero.mp4"]
    assert sum("skipping" in str(w.message) for w in caught) == 4       # one warning each
    assert "2 frames" in ds.skipped[str(tmp_path / "short.mp4")]
    for i in range(len(ds)):
        assert ds[i]["video"].shape == (3, 8, 64, 64)
    # the loader keeps going and every batch is good
    batch = next(iter(loader(ds, batch_size=4, seed=0)))
    assert batch["video"].shape == (4, 3, 8, 64, 64)


def test_nothing_decodes_names_the_folder(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "b.mp4").write_text("nope")
    with pytest.raises(ValueError, match=str(tmp_path)):
        ClipDataset(tmp_path, num_frames=4, warn=False)


def test_file_failing_mid_run_is_skipped(tmp_path, shapes_dir):
    for p in sorted((shapes_dir / "clips").glob("*.mp4"))[:2]:
        shutil.copy(p, tmp_path / p.name)
    ds = ClipDataset(tmp_path, num_frames=8, warn=False)
    first = ds.entries[0].path
    first.write_text("corrupted after the scan")
    item = ds[0]
    assert item["path"] != str(first) and item["skipped"] == [str(first)]
    assert str(first) in ds.skipped


def test_decoded_clip_matches_written_frames(shapes_dir):
    rows = [json.loads(line) for line in (shapes_dir / "metadata.jsonl").read_text().splitlines()]
    ds = ClipDataset(shapes_dir, num_frames=24, size=64)
    for i, row in enumerate(rows[:3]):
        ref = render_clip(row["color"], row["shape"], row["motion"], np.random.default_rng([0, i]))
        item = ds[i]
        assert item["caption"] == row["caption"]
        got = ((item["video"].permute(1, 2, 3, 0) + 1) * 127.5).numpy()
        assert np.abs(got - ref).mean() < 3, f"clip {i}"


def test_frame_stride_and_target_fps(tmp_path):
    write_video(_ramp_video(30), tmp_path / "ramp.mp4", fps=24)
    level = lambda item: ((item["video"][0, :, 16, 16] + 1) * 127.5 / 8).round().long().tolist()
    assert level(ClipDataset(tmp_path, num_frames=5, frame_stride=3, size=32)[0]) == [0, 3, 6, 9, 12]
    assert level(ClipDataset(tmp_path, num_frames=4, fps=8, size=32)[0]) == [0, 3, 6, 9]      # 24 fps / 8 fps
    ds = ClipDataset(tmp_path, num_frames=5, frame_stride=3, size=32)
    for seed in range(5):                                  # random start, same stride
        lv = level(ds[(0, seed)])
        assert np.all(np.diff(lv) == 3) and 0 <= lv[0] <= 30 - 13
    assert len({level(ds[(0, s)])[0] for s in range(20)}) > 3
    # short videos: skipped by default, looped or padded on request
    assert level(ClipDataset(tmp_path, num_frames=4, frame_stride=12, short_videos="loop", size=32)[0]) == [0, 12, 24, 6]
    assert level(ClipDataset(tmp_path, num_frames=4, frame_stride=12, short_videos="pad", size=32)[0]) == [0, 12, 24, 29]
    with pytest.raises(ValueError, match="no usable clips"):
        ClipDataset(tmp_path, num_frames=4, frame_stride=12, warn=False)


def test_resize_crop_and_images(tmp_path):
    frames = np.zeros((4, 48, 96, 3), np.uint8)
    frames[:, :, 40:56] = 255                  # a white vertical band in the middle
    write_video(frames, tmp_path / "wide.mp4")
    from PIL import Image

    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "still.png")
    (tmp_path / "still.txt").write_text("a grey picture\n")
    ds = ClipDataset(tmp_path, num_frames=4, size=32)           # images only as one-frame clips
    assert len(ds) == 1
    v = ds[0]["video"]
    assert v.shape == (3, 4, 32, 32) and v.min() >= -1 and v.max() <= 1
    assert v[:, :, :, 16].mean() > 0.5 and v[:, :, :, 0].mean() < -0.5    # centre crop keeps the band
    rand = ClipDataset(tmp_path, num_frames=4, size=32, crop="random")
    assert len({float(rand[(0, s)]["video"][:, :, :, 16].mean()) for s in range(12)}) > 1
    img = ClipDataset(tmp_path, num_frames=1, size=32)         # image stage: videos give single frames
    assert len(img) == 2
    item = next(img[i] for i in range(2) if img[i]["path"].endswith(".png"))
    assert item["video"].shape == (3, 1, 32, 32) and item["caption"] == "a grey picture"
    with pytest.raises(ValueError, match="crop"):
        ClipDataset(tmp_path, crop="middle")


def test_metadata_csv(tmp_path, shapes_dir):
    shutil.copytree(shapes_dir / "clips", tmp_path / "clips")
    (tmp_path / "metadata.csv").write_text("path,caption\nclips/000000.mp4,hello world\nclips/000001.mp4,second\n")
    ds = ClipDataset(tmp_path / "metadata.csv", num_frames=4)
    assert [e.caption for e in ds.entries] == ["hello world", "second"]


def test_sampler_is_sharded_and_resumable():
    full = list(_take(ClipSampler(10, seed=1, rank=0, world=1), 40))
    r0 = list(_take(ClipSampler(10, seed=1, rank=0, world=2), 20))
    r1 = list(_take(ClipSampler(10, seed=1, rank=1, world=2), 20))
    assert r0 == full[0::2] and r1 == full[1::2]
    assert not {k[0] for k in r0[:5]} & {k[0] for k in r1[:5]}         # an epoch splits between ranks
    assert sorted(k[0] for k in full[:10]) == list(range(10))
    assert list(_take(ClipSampler(10, seed=1, start=14), 26)) == full[14:]


def _take(it, n):
    it = iter(it)
    return [next(it) for _ in range(n)]


def test_shapes_dataset_is_deterministic_and_holds_out(tmp_path, shapes_dir):
    again = make_shapes_dataset(tmp_path / "again", clips=6, seed=0, progress=False)
    a = (shapes_dir / "metadata.jsonl").read_text()
    assert a == (again / "metadata.jsonl").read_text()
    for name in ("000000.mp4", "000005.mp4"):
        assert (shapes_dir / "clips" / name).read_bytes() == (again / "clips" / name).read_bytes()
    rows = [json.loads(line) for line in a.splitlines()]
    assert all(r["caption"] == caption(r["color"], r["shape"], r["motion"]) for r in rows)
    seen = set(combinations())
    assert not seen & set(HOLDOUT) and len(seen) == 6 * 3 * 5 - len(HOLDOUT)
    assert set(HOLDOUT) <= set(combinations(include_holdout=True))
    with pytest.raises(ValueError, match="already holds"):
        make_shapes_dataset(shapes_dir, clips=2, progress=False)


def test_shapes_motion_matches_caption():
    for motion, axis, sign in (("left", 1, -1), ("right", 1, 1), ("up", 0, -1), ("down", 0, 1)):
        frames = render_clip("red", "circle", motion, np.random.default_rng(3))
        red = (frames[..., 0] > 150) & (frames[..., 1] < 100)
        cent = [np.argwhere(m).mean(0)[axis] for m in red]
        assert sign * (cent[-1] - cent[0]) > 10, motion
    still = render_clip("blue", "square", "still", np.random.default_rng(3))
    assert (still == still[0]).all()


def test_object_scale_sizes_the_shape_and_is_checked(tmp_path, capsys):
    from vidiff.app.cli import main

    areas = {}
    for scale in (1.0, 1.6):
        frames = render_clip("green", "square", "still", np.random.default_rng(5), scale=scale)
        areas[scale] = ((frames[0, ..., 1] > 120) & (frames[0, ..., 0] < 120)).sum()
    assert 1.6 ** 2 * 0.85 < areas[1.6] / areas[1.0] < 1.6 ** 2 * 1.15     # same draw, radius x 1.6
    moving = render_clip("red", "circle", "right", np.random.default_rng(5), scale=2.0)
    inside = (moving[..., 0] > 150) & (moving[..., 1] < 100)
    assert inside[:, :, 0].sum() == 0 and inside[:, :, -1].sum() == 0     # the big object stays in frame
    with pytest.raises(ValueError, match=r"--object-scale must be in \[0.5, 2\], got 3"):
        render_clip("red", "circle", "left", np.random.default_rng(0), scale=3)
    assert main(["data", "shapes", "--out", str(tmp_path / "d"), "--clips", "2", "--object-scale", "0.1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--object-scale must be in [0.5, 2], got 0.1" in err[0], err
    assert not (tmp_path / "d").exists()


def test_collate_merges_skips():
    items = [{"video": torch.zeros(3, 2, 4, 4), "caption": "x", "path": "p", "key": [0, 1], "skipped": ["b"]},
             {"video": torch.ones(3, 2, 4, 4), "caption": "y", "path": "q", "key": [1, 2], "skipped": ["a", "b"]}]
    out = collate(items)
    assert out["video"].shape == (2, 3, 2, 4, 4) and out["skipped"] == ["a", "b"]


def test_worker_processes_report_files_that_fail_mid_run(tmp_path, shapes_dir):
    for p in sorted((shapes_dir / "clips").glob("*.mp4"))[:4]:
        shutil.copy(p, tmp_path / p.name)
    ds = ClipDataset(tmp_path, num_frames=8, warn=False)
    broken = ds.entries[1].path
    broken.write_bytes(b"\0" * 100)
    it = iter(loader(ds, batch_size=2, seed=0, num_workers=2))
    batches = [next(it) for _ in range(6)]
    assert all(b["video"].shape == (2, 3, 8, 64, 64) for b in batches)
    assert str(broken) in {p for b in batches for p in b["skipped"]}
    assert str(broken) not in {p for b in batches for p in b["path"]}


def test_pyav_takes_over_without_decord(monkeypatch, tmp_path):
    write_video(_ramp_video(12), tmp_path / "ramp.mp4", fps=24)
    with_decord = ClipDataset(tmp_path, num_frames=4, frame_stride=2, size=32)[0]["video"]
    monkeypatch.setitem(__import__("sys").modules, "decord", None)       # import decord -> ImportError
    without = ClipDataset(tmp_path, num_frames=4, frame_stride=2, size=32)
    assert without.entries[0].frames == 12 and without.entries[0].fps == 24
    assert torch.equal(without[0]["video"], with_decord)
