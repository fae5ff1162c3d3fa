"""Training data: the data config, the paired augmentation and the luma-pair dataset.

The network sees luma only: each sample is the Y planes of A and B (`read_image` +
`split_luma`) as float32 tensors of shape (1, H, W). Training samples are random patches with
the same crop, flips and 90-degree rotation on both sources; validation samples are whole
images (sizes vary, so validate with batch size 1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from adaray.config import ConfigError
from adaray.data.color import split_luma
from adaray.data.pairs import ImagePair, check_pairs, discover_pairs, read_pair, split_pairs
from adaray.tasks import TaskSpec

if TYPE_CHECKING:
    import albumentations as A

MIN_PATCH_SIZE = 2  # the network accepts any H, W >= 2


@dataclass(frozen=True)
class DataConfig:
    """What the training loop needs to know about its data."""

    patch_size: int = 128  # side of the square training patches
    val_fraction: float = 0.1  # share of pairs held out for validation (by hash of group/stem)
    batch_size: int = 4  # training batch size per worker
    num_workers: int = 0  # DataLoader worker processes
    a_dir: str | None = None  # explicit A folder (with b_dir), relative to the data folder
    b_dir: str | None = None
    max_val_pairs: int | None = None  # cap on validation pairs (lowest hash first)
    cache: bool = True  # keep decoded planes (DataLoader: per process; Ray Data: object store)
    ingest_cpus: float = 0.0  # CPUs each Ray Data ingest task reserves (0: shares the cores)
    ingest_tasks: int = 2  # Ray Data ingest tasks at once, per stage (read + decode, patches)
    prefetch_batches: int = 2  # batches each Train worker fetches ahead from its shard

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if self.patch_size < MIN_PATCH_SIZE:
            raise ConfigError(f"patch_size: must be >= {MIN_PATCH_SIZE}, got {self.patch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: must be >= 0, got {self.num_workers}")
        if (self.a_dir is None) != (self.b_dir is None):
            missing = "b_dir" if self.b_dir is None else "a_dir"
            raise ConfigError(f"{missing}: a_dir and b_dir must be given together")
        if self.ingest_cpus < 0:
            raise ConfigError(f"ingest_cpus: must be >= 0, got {self.ingest_cpus}")
        if self.ingest_tasks < 1:
            raise ConfigError(f"ingest_tasks: must be >= 1, got {self.ingest_tasks}")
        if self.prefetch_batches < 0:
            raise ConfigError(f"prefetch_batches: must be >= 0, got {self.prefetch_batches}")
        if self.max_val_pairs is not None and self.max_val_pairs < 1:
            raise ConfigError(f"max_val_pairs: must be >= 1 or null, got {self.max_val_pairs}")


def paired_transform(patch_size: int, seed: int | None = None) -> A.Compose:
    """Random square patch, flips and 90-degree rotation, identical for `image` and `image_b`.

    Images smaller than the patch are first padded by reflection (BORDER_REFLECT_101).
    albumentations is imported here, not with the package (it is slow to import), and its
    import-time PyPI version check is switched off unless NO_ALBUMENTATIONS_UPDATE is set.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A.Compose(
        [
            A.PadIfNeeded(
                min_height=patch_size, min_width=patch_size, border_mode=cv2.BORDER_REFLECT_101
            ),
            A.RandomCrop(height=patch_size, width=patch_size),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=1.0),
        ],
        additional_targets={"image_b": "image"},
        seed=seed,
    )


def luma_plane(image: np.ndarray) -> np.ndarray:
    """The Y plane of an image (its own copy: the chroma is not kept alive)."""
    return np.ascontiguousarray(split_luma(image)[0])


def _as_tensor(plane: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32)).unsqueeze(0)


class FusionPairDataset(Dataset):
    """Luma planes of image pairs as {"a", "b": float32 (1, H, W), "stem", "group"}.

    `train=True` gives random `patch_size` patches (paired augmentation); `train=False` gives
    whole images. Files are read on first use; with `cache` the planes stay in memory (per
    process: use persistent DataLoader workers for the cache to last across epochs).
    """

    def __init__(
        self,
        pairs: Sequence[ImagePair],
        patch_size: int | None = None,
        train: bool = True,
        cache: bool = True,
    ) -> None:
        if train and (patch_size is None or patch_size < MIN_PATCH_SIZE):
            raise ConfigError(f"training needs patch_size >= {MIN_PATCH_SIZE}, got {patch_size}")
        self.pairs = list(pairs)
        self.patch_size = patch_size
        self.train = train
        self.cache = cache
        self._planes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._transform: A.Compose | None = None
        self._transform_pid: int | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getstate__(self) -> dict[str, Any]:
        # Sent to workers without the cache and the random state (rebuilt per process).
        state = self.__dict__.copy()
        state.update(_planes={}, _transform=None, _transform_pid=None)
        return state

    def luma_planes(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Y planes (H, W) float32 of pair `index`; PairError when the sizes differ."""
        planes = self._planes.get(index)
        if planes is None:
            image_a, image_b = read_pair(self.pairs[index])
            planes = (luma_plane(image_a), luma_plane(image_b))
            if self.cache:
                self._planes[index] = planes
        return planes

    def _augment(self) -> A.Compose:
        # One transform per process, seeded from torch's seed (which DataLoader sets per worker):
        # workers get distinct, reproducible streams, not copies of the parent's random state.
        if self._transform is None or self._transform_pid != os.getpid():
            self._transform = paired_transform(self.patch_size, seed=torch.initial_seed() % 2**32)
            self._transform_pid = os.getpid()
        return self._transform

    def __getitem__(self, index: int) -> dict[str, Any]:
        y_a, y_b = self.luma_planes(index)
        if self.train:
            patches = self._augment()(image=y_a, image_b=y_b)
            y_a, y_b = patches["image"], patches["image_b"]
        pair = self.pairs[index]
        return {"a": _as_tensor(y_a), "b": _as_tensor(y_b), "stem": pair.stem, "group": pair.group}


def build_datasets(
    data: str | Path, task: str | TaskSpec, config: DataConfig, check: bool = True
) -> tuple[FusionPairDataset, FusionPairDataset]:
    """Discover, check (decode every file) and split the pairs of `task` under `data`;
    return the (train, val) datasets."""
    pairs = discover_pairs(data, task, a_dir=config.a_dir, b_dir=config.b_dir)
    if check:
        check_pairs(pairs)
    train_pairs, val_pairs = split_pairs(pairs, config.val_fraction, config.max_val_pairs)
    return (
        FusionPairDataset(train_pairs, config.patch_size, train=True, cache=config.cache),
        FusionPairDataset(val_pairs, train=False, cache=config.cache),
    )
