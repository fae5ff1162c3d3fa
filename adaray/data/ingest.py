"""Streaming ingest with Ray Data: how the Ray Train loop gets its training batches.

The driver lists and splits the pairs (`adaray.data.pairs`); the datasets made here hold only
their locations (local paths or object URIs), a few pairs per block (`block_count`). In
`map_batches` tasks Ray Data reads each pair, decodes it and keeps its luma planes (float16, in
the object store, when `DataConfig.cache`; read again every epoch otherwise), then cuts random
paired patches with flips and rotations (`paired_transform`, as the DataLoader path does) anew
on every pass, in a new order (the blocks shuffled, the pairs mixed further by each shard's
local shuffle buffer).
Each Train worker iterates its shard of the training set (`shard_batches`); rank 0 reads the
whole validation set once (`validation_samples`). No worker opens a file itself: the ingest
tasks do, on the node that holds a local data folder or anywhere for object storage.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from adaray.data.dataset import DataConfig, luma_plane, paired_transform
from adaray.data.location import Location
from adaray.data.pairs import ImagePair, read_pair

TRAIN, VALIDATION = "train", "val"  # the datasets' names for Ray Train (get_dataset_shard)
NODE_ID_LABEL = "ray.io/node-id"  # the label every Ray node carries with its ID
PAIRS_PER_BLOCK = 8
Item = TypeVar("Item")


def quiet_ray_data() -> None:
    """No Ray Data progress bars or INFO lines in this process: the training loop prints its
    own progress (Ray Data's warnings and errors still show)."""
    import logging

    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _rows(pairs: Sequence[ImagePair]) -> list[dict[str, str]]:
    return [{"a": str(p.a_path), "b": str(p.b_path), "stem": p.stem, "group": p.group}
            for p in pairs]


def _objects(items: list[np.ndarray]) -> np.ndarray:
    """A column of arrays of different shapes (Ray Data stores it as a ragged tensor)."""
    column = np.empty(len(items), dtype=object)
    column[:] = items
    return column


def decode_pairs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read and decode each pair of the batch: its luma planes as float16 (H, W) arrays."""
    planes_a, planes_b = [], []
    for a, b, stem, group in zip(batch["a"], batch["b"], batch["stem"], batch["group"],
                                 strict=True):
        image_a, image_b = read_pair(ImagePair(str(stem), Location.of(str(a)),
                                               Location.of(str(b)), str(group)))
        planes_a.append(luma_plane(image_a).astype(np.float16))
        planes_b.append(luma_plane(image_b).astype(np.float16))
    return {"a": _objects(planes_a), "b": _objects(planes_b)}


def random_patches(batch: dict[str, np.ndarray], patch_size: int) -> dict[str, np.ndarray]:
    """One random paired patch (crop, flips, 90-degree rotation) of each pair of the batch."""
    transform = paired_transform(patch_size)
    patches_a, patches_b = [], []
    for a, b in zip(batch["a"], batch["b"], strict=True):
        patch = transform(image=a.astype(np.float32), image_b=b.astype(np.float32))
        patches_a.append(patch["image"])
        patches_b.append(patch["image_b"])
    return {"a": np.stack(patches_a)[:, None], "b": np.stack(patches_b)[:, None]}


def block_count(pairs: int, cfg: DataConfig) -> int:
    """Blocks of at most PAIRS_PER_BLOCK pairs, but at least 4 per ingest task (as far as the
    pairs go): each Ray Data task costs tens of milliseconds, a pair's decode a few, while
    the blocks are the unit that a pass shuffles and that the workers' shards share out."""
    return max(1, min(pairs, max(math.ceil(pairs / PAIRS_PER_BLOCK), 4 * cfg.ingest_tasks)))


def _decoded(pairs: Sequence[ImagePair], cfg: DataConfig) -> Any:
    """The decoded pairs in `block_count` blocks, read where the data is."""
    import ray
    import ray.data

    quiet_ray_data()
    options: dict[str, Any] = {"num_cpus": cfg.ingest_cpus,
                               "compute": ray.data.TaskPoolStrategy(size=cfg.ingest_tasks)}
    if all(p.a_path.is_local and p.b_path.is_local for p in pairs):
        # A local folder is on this node only (the driver's, where the run was checked).
        options["label_selector"] = {NODE_ID_LABEL: ray.get_runtime_context().get_node_id()}
    rows = ray.data.from_items(_rows(pairs), override_num_blocks=block_count(len(pairs), cfg))
    return rows.map_batches(decode_pairs, batch_size=None, **options)


def decoded_training_pairs(pairs: Sequence[ImagePair], cfg: DataConfig) -> Any:
    """The decoded training pairs: with `cfg.cache` decoded now and kept in the object store
    (a MaterializedDataset), otherwise a plan that reads and decodes on every pass."""
    decoded = _decoded(pairs, cfg)
    return decoded.materialize() if cfg.cache else decoded


def patch_stream(decoded: Any, cfg: DataConfig) -> Any:
    """Random patches {"a", "b": (1, P, P) float32} of the decoded pairs, in a new block order
    and with new crops on every pass."""
    import ray.data

    return decoded.randomize_block_order().map_batches(
        random_patches, batch_size=None, num_cpus=cfg.ingest_cpus,
        compute=ray.data.TaskPoolStrategy(size=cfg.ingest_tasks),
        fn_kwargs={"patch_size": cfg.patch_size})


def train_dataset(pairs: Sequence[ImagePair], cfg: DataConfig) -> Any:
    """The training set as a Ray Dataset of random patches (`patch_stream`) of the decoded
    pairs (`decoded_training_pairs`); made by the Train controller when a worker group
    starts."""
    return patch_stream(decoded_training_pairs(pairs, cfg), cfg)


def validation_dataset(pairs: Sequence[ImagePair], cfg: DataConfig) -> Any:
    """The validation pairs' luma planes at full size, in the split's order."""
    return _decoded(pairs, cfg)


def shard_batches(shard: Any, cfg: DataConfig) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches of this worker's shard; each pass over it is one epoch (the
    last batch of an epoch may be smaller)."""
    quiet_ray_data()
    while True:
        yield from shard.iter_torch_batches(batch_size=cfg.batch_size,
                                            prefetch_batches=cfg.prefetch_batches,
                                            local_shuffle_buffer_size=4 * cfg.batch_size)


def fetched_ahead(items: Iterator[Item]) -> Iterator[Item]:
    """`items`, whose first element is fetched now on a helper thread: the pipeline behind it
    starts (for a shard: Ray Data's split coordinator, the first reads and patches) while the
    caller sets up its model. An error of that fetch is raised at the first `next`."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaray-first-batch")
    first = pool.submit(next, items)
    pool.shutdown(wait=False)
    return _after_first(first, items)


def _after_first(first: Future, items: Iterator[Item]) -> Iterator[Item]:
    try:
        yield first.result()
    except StopIteration:
        return
    yield from items


def validation_samples(shard: Any) -> list[dict[str, torch.Tensor]]:
    """Every validation pair as {"a", "b": float32 (1, H, W) tensors}, read once."""
    quiet_ray_data()
    return [{name: torch.from_numpy(np.asarray(row[name], dtype=np.float32))[None]
             for name in ("a", "b")} for row in shard.iter_rows()]
