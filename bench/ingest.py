"""Ray Data ingest against the training step: is ingest ever the bottleneck?

    python bench/ingest.py [--task ivf] [--data DIR] [--config configs/ivf.yaml]
                           [--steps 30] [--passes 3]

On one local Ray (all cores), with the training pairs of `--data` (default: the shared IVF
data) and the DataConfig of `--config` (default: the task's recipe):

1. Ingest alone: the Ray Data training set of `adaray.data.ingest` (read, decode, random
   patches) iterated as a Train worker iterates its shard, in patches/s, from the local folder
   and from an S3 bucket on loopback (moto_server; the pairs uploaded first). The one-time
   decode into the object store (`cache`) is timed apart.
2. The training step's consumption: samples/s of the recipe's step (model, loss, AdamW) on
   its `run.cpus_per_worker` threads, fed by the DataLoader path (`loader_data`).
3. Their ratio (goal: ingest >= 3x the consumption).
4. The step time fed by Ray Data against the DataLoader, same data and model (goal <= 1.10x):
   the ingest tasks share the cores with the training threads, as on a 2-core machine.
5. The memory the pipeline holds: the decoded planes in the object store.

Prints figures only (no assertions); compare the ratios of one run (a shared machine).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.fs

from adaray import SOURCE_TREE, shipped_path
from adaray.data import FusionPairDataset, ImagePair
from adaray.data.ingest import decoded_training_pairs, patch_stream, shard_batches
from adaray.data.location import Location
from adaray.train import (
    RunSettings,
    TrainConfig,
    TrainData,
    build_components,
    load_config,
    loader_data,
    prepare_process,
    split_training_pairs,
    train_step,
)

S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
          "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


def start_s3(log: Path) -> tuple[subprocess.Popen, str]:
    """moto_server on a loopback port; its endpoint is put into this process's environment
    (before Ray starts, so that the ingest tasks inherit it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(log, "wb") as out:
        server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                                   "127.0.0.1", "-p", str(port)], stdout=out,
                                  stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            break
        except OSError:
            time.sleep(0.2)
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    return server, endpoint


def upload(pairs: list[ImagePair], endpoint: str, prefix: str) -> list[ImagePair]:
    """Copy the pairs' files to `prefix` (bucket created) keeping their folder layout."""
    fs = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http",
                                 access_key=S3_ENV["AWS_ACCESS_KEY_ID"],
                                 secret_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                                 region=S3_ENV["AWS_REGION"], allow_bucket_creation=True)
    bucket = prefix.removeprefix("s3://").split("/", 1)[0]
    fs.create_dir(bucket)
    root = Path(os.path.commonpath([str(p.a_path.parent.parent) for p in pairs]))
    for pair in pairs:
        for location in (pair.a_path, pair.b_path):
            key = Path(location).relative_to(root).as_posix()
            with fs.open_output_stream(f"{prefix.removeprefix('s3://')}/{key}") as stream:
                stream.write(location.read_bytes())
    return [ImagePair(p.stem, Location.of(f"{prefix}/{Path(p.a_path).relative_to(root)}"),
                      Location.of(f"{prefix}/{Path(p.b_path).relative_to(root)}"), p.group)
            for p in pairs]


def ingest_rate(pairs: list[ImagePair], cfg: TrainConfig,
                passes: int) -> tuple[float, float, int]:
    """(decode pairs/s, patches/s over `passes` passes, bytes of the decoded planes held)."""
    started = time.perf_counter()
    decoded = decoded_training_pairs(pairs, cfg.data)  # decoded now and kept (cfg.data.cache)
    decode_s = time.perf_counter() - started
    held = decoded.size_bytes() if cfg.data.cache else 0
    batches = shard_batches(patch_stream(decoded, cfg.data), cfg.data)
    per_pass = -(-len(pairs) // cfg.data.batch_size)
    started, patches = time.perf_counter(), 0
    for _ in range(passes * per_pass):
        patches += next(batches)["a"].shape[0]
    return len(pairs) / decode_s, patches / (time.perf_counter() - started), held


def step_rate(cfg: TrainConfig, run: RunSettings, data: TrainData, steps: int) -> float:
    """Seconds per training step (median of `steps` after 3 warm-up steps)."""
    prepare_process(run.cpus_per_worker, cfg.seed)
    parts = build_components(cfg, data)
    times = []
    for index in range(steps + 3):
        started = time.perf_counter()
        train_step(parts, cfg.optim.grad_clip)
        if index >= 3:
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="ivf")
    parser.add_argument("--data", default=str(SOURCE_TREE.parent / "shared" / "data" /
                                              "fusion" / "IVF"))
    parser.add_argument("--config", help="training config (default: configs/<task>.yaml)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--passes", type=int, default=3, help="passes of the ingest alone")
    args = parser.parse_args()

    import ray

    config = args.config or shipped_path("configs", f"{args.task}.yaml")
    cfg, run = load_config(config, [f"task={args.task}", f"run.data={args.data}"])
    train_pairs = split_training_pairs(cfg, run.data)[0]
    with tempfile.TemporaryDirectory(prefix="adaray-bench-ingest-") as tmp:
        server, endpoint = start_s3(Path(tmp) / "moto.log")
        try:
            s3_pairs = upload(train_pairs, endpoint, "s3://bench/pairs")
            ray.init(address="local", num_cpus=os.cpu_count(), logging_level="ERROR",
                     log_to_driver=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
            print(f"{len(train_pairs)} training pairs of {args.data}; {config}: batch "
                  f"{cfg.data.batch_size} x {cfg.data.patch_size}px, ingest_tasks "
                  f"{cfg.data.ingest_tasks}, ingest_cpus {cfg.data.ingest_cpus}; "
                  f"{run.cpus_per_worker} training threads; {os.cpu_count()} cores\n")
            rows = {}
            for label, pairs in (("local folder", train_pairs), ("S3 on loopback", s3_pairs)):
                rows[label] = ingest_rate(pairs, cfg, args.passes)
            local_set = FusionPairDataset(train_pairs, cfg.data.patch_size,
                                          cache=cfg.data.cache)
            loader_step = step_rate(cfg, run, loader_data(
                cfg, datasets=(local_set, FusionPairDataset([], train=False))), args.steps)
            stream = patch_stream(decoded_training_pairs(train_pairs, cfg.data), cfg.data)
            ray_step = step_rate(cfg, run, TrainData(shard_batches(stream, cfg.data), []),
                                 args.steps)
        finally:
            ray.shutdown()
            server.terminate()
            server.wait(timeout=30)
    consumption = cfg.data.batch_size / loader_step
    print("| source | decode pairs/s (once) | ingest patches/s | step consumes samples/s | "
          "ingest / step | decoded planes held |")
    print("|---|---|---|---|---|---|")
    for label, (decode, patches, held) in rows.items():
        print(f"| {label} | {decode:.1f} | {patches:.1f} | {consumption:.1f} | "
              f"{patches / consumption:.1f}x | {held / 2**20:.0f} MiB |")
    print(f"\nstep time: DataLoader {loader_step * 1000:.0f} ms, Ray Data {ray_step * 1000:.0f} "
          f"ms: {ray_step / loader_step:.2f}x (median of {args.steps} steps each)")


if __name__ == "__main__":
    main()
