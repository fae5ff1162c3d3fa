"""Typed configs: overrides, TrainConfig loading, shipped YAMLs, README reference in sync."""

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
from adaray.train import OptimConfig, TrainConfig, ValConfig, load_train_config, lr_factor
from adaray.tune import SweepConfig

CONFIG_CLASSES = (TrainConfig, ModelConfig, LossConfig, DataConfig, OptimConfig, ValConfig,
                  SweepConfig, ServeConfig)


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
        (["placement_strategy=ANYWHERE"], "placement_strategy"),
    ],
)
def test_bad_train_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_train_config(None, overrides)


@pytest.mark.parametrize("name", ["ivf", "mef", "mff", "mif", "tiny", "paper/ivf", "paper/mef",
                                  "paper/mff", "paper/mif"])
def test_shipped_configs_load(name):
    cfg = load_train_config(REPO / "configs" / f"{name}.yaml")
    if name != "tiny":
        assert cfg.task == name.removeprefix("paper/")
    if name.startswith("paper/"):
        assert cfg.model == ModelConfig()  # the paper's defaults
    elif name != "tiny":  # a CPU recipe: the one small model, sized for 2 cores
        assert (cfg.model.channels, cfg.cpus_per_worker) == (32, 2)


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
