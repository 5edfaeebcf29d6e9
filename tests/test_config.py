"""Configs: every shipped YAML loads, overrides apply, unknown keys and bad values are one-line errors."""

from pathlib import Path

import pytest

from vidiff.app.cli import main
from vidiff.training.config import load_config, to_yaml
from vidiff.training.train import check

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_folder_has_the_recipe():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "shapes-image.yaml", "shapes-video.yaml", "sd15-motion.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_checks(path):
    cfg = load_config(path)
    check(cfg)
    assert load_config(path, []).train == cfg.train
    assert "train:" in to_yaml(cfg)


def test_overrides_dotted_bare_and_sections():
    cfg = load_config(ROOT / "configs" / "tiny.yaml",
                      ["train.steps=7", "lr=1e-4", "data.height=48", "model.num_heads=4",
                       "mixed_precision=no", "schedule={prediction_type: v_prediction}", "data.fps=12"])
    assert cfg.train.steps == 7 and cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.data.height == 48 and cfg.model["num_heads"] == 4 and cfg.data.fps == 12
    assert cfg.train.mixed_precision == "no" and cfg.schedule == {"prediction_type": "v_prediction"}
    assert cfg.model["block_out_channels"] == [32, 64]                      # untouched keys kept


@pytest.mark.parametrize("override, match", [
    ("train.stpes=3", "unknown config key train.stpes; train keys: output_dir"),
    ("stpes=3", "not a config key"),
    ("trian.steps=3", "unknown config section 'trian'"),
    ("train.steps=abc", "'train.steps' must be a int, got 'abc'"),
    ("train.freeze_spatial=maybe", "must be a bool"),
    ("steps", "must look like key=value"),
    ("model=3", "must be a mapping"),
])
def test_bad_overrides_are_clear_errors(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(ROOT / "configs" / "tiny.yaml", [override])


def test_bad_yaml_files(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  steps: 3\nbogus:\n  x: 1\n")
    with pytest.raises(ValueError, match="unknown config section 'bogus'"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("train: [1, 2]\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        load_config(tmp_path / "b.yaml")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("override, match", [
    ("train.stage=audio", "train.stage must be one of"),
    ("train.mixed_precision=fp8", "train.mixed_precision must be one of"),
    ("train.text_dropout=1.5", "text_dropout must be in"),
    ("train.cond_first=0.7", "must be <= 1"),
    ("train.steps=0", "train.steps must be >= 1"),
])
def test_check_rejects_bad_training_settings(override, match):
    with pytest.raises(ValueError, match=match):
        check(load_config(ROOT / "configs" / "tiny.yaml", [override, "train.cond_prefix=0.4"]))


def test_cli_train_bad_input_exits_2_without_output(tmp_path, capsys):
    out = tmp_path / "run"
    for args in (["train.stpes=3"], ["train.stage=audio"], [f"data.path={tmp_path / 'nothing'}"]):
        assert main(["train", str(ROOT / "configs" / "tiny.yaml"), f"train.output_dir={out}", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("vidiff train: error:") and "\n" not in err
        assert not out.exists()
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2


def test_cli_data_shapes(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path / "d"), "--clips", "3", "--size", "32", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "clips").glob("*.mp4"))) == 3
    assert len((tmp_path / "d" / "metadata.jsonl").read_text().splitlines()) == 3
    assert main(["data", "shapes", "--out", str(tmp_path / "e"), "--clips", "0"]) == 2
    assert main(["data", "shapes", "--out", str(tmp_path / "f"), "--size", "33"]) == 2
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()
