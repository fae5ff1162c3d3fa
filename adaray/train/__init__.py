"""Distributed training of AdaSFFuse on Ray Train (V2), tracked in MLflow.

- `config`: `TrainConfig` (hyperparameters) and its sections, `RunSettings` (data folder,
  workers, storage, failures), `load_config`;
- `components`: the training setup every loop shares (`prepare_process`, `build_components`,
  `train_step`, the lr schedule);
- `validation`: `validate` and `val_score`;
- `loop`: `train_loop_per_worker`, the Ray Train worker loop, with checkpoints and resume;
- `trainer`: `build_trainer(cfg, run)`, the driver's `TorchTrainer`, and its progress lines.
"""

from adaray.train.components import (
    TrainComponents,
    TrainData,
    build_components,
    build_optimizer,
    endless_batches,
    loader_data,
    lr_factor,
    optimizer_step,
    prepare_process,
    seed_everything,
    train_step,
    warmup_cosine_factor,
)
from adaray.train.config import (
    OptimConfig,
    RunSettings,
    TrainConfig,
    ValConfig,
    load_config,
    load_train_config,
)
from adaray.train.loop import STATE_FILENAME, train_loop_per_worker
from adaray.train.trainer import (
    ProgressCallback,
    best_checkpoint,
    build_trainer,
    prepare_config,
    split_training_pairs,
)
from adaray.train.validation import VAL_SCORE_SCALES, validate

__all__ = [
    "STATE_FILENAME",
    "VAL_SCORE_SCALES",
    "OptimConfig",
    "ProgressCallback",
    "RunSettings",
    "TrainComponents",
    "TrainConfig",
    "TrainData",
    "ValConfig",
    "best_checkpoint",
    "build_components",
    "build_optimizer",
    "build_trainer",
    "endless_batches",
    "load_config",
    "load_train_config",
    "loader_data",
    "lr_factor",
    "optimizer_step",
    "prepare_config",
    "prepare_process",
    "seed_everything",
    "split_training_pairs",
    "train_loop_per_worker",
    "train_step",
    "validate",
    "warmup_cosine_factor",
]
