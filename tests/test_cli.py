"""The `adaray` command: info and fuse, on the bundled samples, in-process."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLES

from adaray.cli import main, main_guarded
from adaray.config import dump_yaml
from adaray.data import read_image
from adaray.errors import ConfigError, DataError, InputNotFoundError, ModelFileError
from adaray.model import ModelConfig

SMALL = ModelConfig(channels=8, n_hi=1, n_lo=1, n_fuse=1, d_state=8, headdim=8, chunk_size=16)


@pytest.fixture
def small_config(tmp_path: Path) -> str:
    path = tmp_path / "small.yaml"
    dump_yaml(SMALL, path)
    return str(path)


def test_info_reports_versions_kernel_size_and_latency(small_config, capsys):
    args = ["info", "--model", "--config", small_config, "--sizes", "32", "--repeats", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "ray" in out and "mlflow" in out
    assert "SSD kernel: cpu -> torch" in out
    assert "mamba-ssm" in out
    assert "parameters" in out
    assert "forward FLOPs at 32x32" in out
    assert "latency at 32x32 on cpu" in out


def test_fuse_one_color_pair_keeps_size_and_color(small_config, tmp_path):
    a = SAMPLES / "IVF" / "infrared" / "FLIR_04598.png"
    b = SAMPLES / "IVF" / "visible" / "FLIR_04598.png"
    out = tmp_path / "fused.png"
    assert main(["fuse", str(a), str(b), "-o", str(out), "--config", small_config]) == 0
    fused = read_image(out)
    visible = read_image(b)
    assert fused.shape == visible.shape and fused.ndim == 3  # chroma from the visible image
    assert not np.allclose(fused[..., 0], fused[..., 1])


def test_fuse_folder_writes_every_pair(small_config, tmp_path):
    out = tmp_path / "out"
    assert main(["fuse", "--task", "mif", "--data", str(SAMPLES), "-o", str(out),
                 "--config", small_config]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["MIF-PET/30094.png", "MIF/2004.png", "MIF/33008.png"]


def test_fuse_corrupt_image_names_the_file(small_config, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = SAMPLES / "MIF" / "CT" / "2004.png"
    code = main(["fuse", str(good), str(bad), "-o", str(tmp_path / "f.png"),
                 "--config", small_config])
    assert code == 2
    assert str(bad) in capsys.readouterr().err


def test_fuse_missing_partner_names_the_file(small_config, tmp_path, capsys):
    data = tmp_path / "IVF"
    shutil.copytree(SAMPLES / "IVF", data)
    (data / "visible" / "FLIR_05164.png").unlink()
    code = main(["fuse", "--task", "ivf", "--data", str(data), "-o", str(tmp_path / "out"),
                 "--config", small_config])
    assert code == 2
    err = capsys.readouterr().err
    assert "FLIR_05164" in err
    assert not (tmp_path / "out").exists()  # nothing is fused when the input is bad


def test_bad_model_config_names_the_field(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("channels: 64\nheaddim: 48\n")
    assert main(["info", "--config", str(path), "--sizes", "16"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "headdim" in err


def test_fuse_with_a_trained_model_file_matches_the_library(tmp_path):
    import torch

    from adaray.checkpoint import save_model
    from adaray.fusion import fuse_arrays
    from adaray.model import AdaSFFuse

    torch.manual_seed(3)
    model = AdaSFFuse(SMALL).eval()
    path = save_model(tmp_path / "model.pt", model)
    a = SAMPLES / "MIF" / "CT" / "2004.png"
    b = SAMPLES / "MIF" / "MRI" / "2004.png"
    out = tmp_path / "fused.png"
    assert main(["fuse", str(a), str(b), "-o", str(out), "--model", str(path)]) == 0
    expected = np.rint(np.clip(fuse_arrays(model, read_image(a), read_image(b)), 0, 1) * 255)
    assert np.array_equal(np.rint(read_image(out) * 255), expected)


@pytest.mark.parametrize("task", ["ivf", "mef", "mff", "mif"])
def test_fuse_without_a_model_uses_the_shipped_one_and_saves_its_weights(task, tmp_path,
                                                                         capsys):
    from adaray.checkpoint import load_model, shipped_model
    from adaray.data import discover_pairs
    from adaray.fusion import fuse_with_weights

    pair = discover_pairs(SAMPLES, task)[0]
    out = tmp_path / "fused.png"
    assert main(["fuse", str(pair.a_path), str(pair.b_path), "-o", str(out), "--task", task,
                 "--save-weights"]) == 0
    shipped = shipped_model(task)
    assert f"fusing with the shipped {task} model {shipped}" in capsys.readouterr().err
    payload = torch.load(shipped, weights_only=True)  # plain tensors and config: no pickle code
    assert payload["meta"]["task"] == task and payload["model_config"]["head"] != "pixels"
    assert f"# {task}: " in shipped.with_suffix(".md").read_text()  # its model card
    fused, weights = fuse_with_weights(load_model(shipped), read_image(pair.a_path),
                                       read_image(pair.b_path))
    assert np.abs(read_image(out) - fused).max() <= 0.5 / 255 + 1e-6
    saved = read_image(tmp_path / "fused_weights.png")
    assert saved.shape == weights.shape == fused.shape[:2]
    assert np.abs(saved - weights).max() <= 0.5 / 255 + 1e-6


def test_save_weights_of_a_pixel_head_is_refused(small_config, tmp_path):
    a = SAMPLES / "MIF" / "CT" / "2004.png"
    b = SAMPLES / "MIF" / "MRI" / "2004.png"
    with pytest.raises(SystemExit, match="--save-weights: this model's head predicts pixels"):
        main(["fuse", str(a), str(b), "-o", str(tmp_path / "f.png"), "--config", small_config,
              "--save-weights"])


def test_fuse_with_a_missing_model_names_it(tmp_path, capsys):
    a = SAMPLES / "MIF" / "CT" / "2004.png"
    b = SAMPLES / "MIF" / "MRI" / "2004.png"
    missing = tmp_path / "nope" / "model.pt"
    code = main(["fuse", str(a), str(b), "-o", str(tmp_path / "f.png"), "--model", str(missing)])
    assert code == 2
    assert f"model file not found: {missing}" in capsys.readouterr().err


def test_serve_with_a_bad_config_fails_before_ray_naming_the_field(tmp_path, capsys):
    import ray

    config = tmp_path / "serve.yaml"
    text = (SAMPLES.parent / "serve" / "config.yaml").read_text()
    config.write_text(text.replace("max_pixels: 16777216", "max_pixels: -5"))
    was_initialized = ray.is_initialized()
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: applications[0].args.max_pixels: must be >= 1" in err, err
    assert ray.is_initialized() == was_initialized


@pytest.mark.parametrize("error", [ConfigError, DataError, ModelFileError, InputNotFoundError])
def test_the_projects_errors_end_in_one_line_and_exit_2(error, capsys):
    def command(args: argparse.Namespace) -> int:
        raise error("config.yaml: model.head: unknown head 'pixel'")

    assert main_guarded(command, argparse.Namespace(), "train") == 2
    assert capsys.readouterr().err == ("adaray train: error: config.yaml: model.head: unknown "
                                       "head 'pixel'\n")


@pytest.mark.parametrize("error", [ValueError, KeyError, FileNotFoundError, TypeError])
def test_other_errors_keep_their_traceback(error):
    def command(args: argparse.Namespace) -> int:
        raise error("a bug, not bad input")

    with pytest.raises(error, match="a bug"):
        main_guarded(command, argparse.Namespace(), "train")
