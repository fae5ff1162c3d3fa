"""Typed configs: overrides, TrainConfig and RunSettings loading, validation on construction,
shipped YAMLs, README reference in sync."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
from conftest import REPO

from adaray.config import ConfigError, apply_overrides
from adaray.data import DataConfig
from adaray.losses import LossConfig
from adaray.model import ModelConfig
from adaray.serving import ServeConfig
from adaray.train import (
    OptimConfig,
    RunSettings,
    TrainConfig,
    ValConfig,
    load_config,
    load_train_config,
    lr_factor,
)
from adaray.tune import SweepConfig

CONFIG_CLASSES = (TrainConfig, RunSettings, ModelConfig, LossConfig, DataConfig, OptimConfig,
                  ValConfig, SweepConfig, ServeConfig)


def test_overrides_parse_yaml_values_and_nest():
    data = apply_overrides({}, ["model.channels=16", "val.metrics=[Qabf, VIF]", "name=run-1",
                               "use_gpu=true"])
    assert data == {"model": {"channels": 16}, "val": {"metrics": ["Qabf", "VIF"]},
                    "name": "run-1", "use_gpu": True}
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        apply_overrides({}, ["model.channels"])
    with pytest.raises(ConfigError, match="task is not a section"):
        apply_overrides({"task": "ivf"}, ["task.x=1"])


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["model.foo=1"], "model.foo"),
        (["max_steps=abc"], "max_steps"),
        (["task=xyz"], "task"),
        (["optim.lr=-1"], "lr"),
        (["val.metrics=[Qabf, NOPE]"], "metrics"),
        (["run.placement_strategy=ANYWHERE"], "run.placement_strategy"),
        (["run.workers=0"], "run.workers"),
        (["run.workers=2-1"], r"run.workers: need 1 <= MIN <= MAX, got '2-1'"),
        (["run.workers=1to4"], "run.workers: expected a count N or a range MIN-MAX"),
        (["run.resize_check_s=-1"], "run.resize_check_s"),
        (["workers=2"], "unknown field workers"),  # a run setting, under run:
    ],
)
def test_bad_train_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, overrides)


def test_run_settings_are_apart_from_the_hyperparameters(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("max_steps: 7\nrun:\n  workers: 3\n  workdir: w\n")
    cfg, run = load_config(path, ["run.name=r1", "optim.lr=0.01"])
    assert (cfg.max_steps, cfg.optim.lr) == (7, 0.01)
    assert (run.workers, run.workdir, run.name) == (3, "w", "r1")
    assert load_train_config(path) == dataclasses.replace(cfg, optim=OptimConfig())
    path.write_text("run:\n  cpus_per_worker: 0\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml: run\.cpus_per_worker: must be >= 1"):
        load_config(path)


def test_a_worker_range_makes_an_elastic_scaling_config(tmp_path):
    from adaray.train import build_trainer

    cfg, run = load_config(REPO / "configs" / "tiny.yaml", [
        "task=ivf", f"run.data={REPO / 'samples'}", f"run.workdir={tmp_path}",
        "run.workers=1-3", "run.resize_check_s=5"])
    assert (run.workers, run.worker_range, run.elastic) == ("1-3", (1, 3), True)
    scaling = build_trainer(cfg, run, progress=False).scaling_config
    assert (scaling.min_workers, scaling.max_workers) == (1, 3) and scaling.elasticity_enabled
    assert scaling.elastic_resize_monitor_interval_s == 5
    fixed = build_trainer(cfg, dataclasses.replace(run, workers=2), progress=False)
    assert fixed.scaling_config.num_workers == 2 and not fixed.scaling_config.elasticity_enabled
    assert load_config(None, ["run.workers=3-3"])[1].elastic is False


@pytest.mark.parametrize("cls", CONFIG_CLASSES)
def test_configs_validate_when_built_and_are_derived_by_replace(cls):
    """A config object that exists is valid: bad values fail in the constructor and in
    dataclasses.replace, and fields cannot be assigned afterwards."""
    bad = {TrainConfig: {"max_steps": 0}, RunSettings: {"workers": 0},
           ModelConfig: {"channels": 6}, LossConfig: {"w_int": -1.0},
           DataConfig: {"batch_size": 0}, OptimConfig: {"lr": 0.0},
           ValConfig: {"metrics": ["NOPE"]}, SweepConfig: {"reduction_factor": 1},
           ServeConfig: {"tasks": []}}[cls]
    with pytest.raises(ConfigError, match=next(iter(bad))):
        cls(**bad)
    with pytest.raises(ConfigError, match=next(iter(bad))):
        dataclasses.replace(cls(), **bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cls(), next(iter(bad)), 1)


@pytest.mark.parametrize("name", ["ivf", "mef", "mff", "mif", "tiny", "paper/ivf", "paper/mef",
                                  "paper/mff", "paper/mif"])
def test_shipped_configs_load(name):
    cfg = load_train_config(REPO / "configs" / f"{name}.yaml")
    if name != "tiny":
        assert cfg.task == name.removeprefix("paper/")
    if name.startswith("paper/"):
        assert cfg.model == ModelConfig()  # the paper's defaults
    elif name != "tiny":  # a CPU recipe: the one small model, sized for 2 cores
        run = load_config(REPO / "configs" / f"{name}.yaml")[1]
        assert (cfg.model.channels, run.cpus_per_worker) == (32, 2)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    optim = OptimConfig(warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(step, optim, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert lr_factor(100, optim, 100) == pytest.approx(0.1)


def test_readme_configuration_reference_names_every_field():
    readme = (Path(REPO) / "README.md").read_text()
    reference = readme[readme.index("### Configuration reference"):]
    missing = [f"{cls.__name__}.{f.name}" for cls in CONFIG_CLASSES
               for f in dataclasses.fields(cls) if f"`{f.name}" not in reference]
    assert missing == []
