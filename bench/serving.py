"""Serving overhead: HTTP latency and throughput of the Serve app vs the in-process forward.

    python bench/serving.py [--paper-model] [--requests 48] [--concurrency 1 4 16]

Starts a local Ray, deploys the Serve app (adaray.serving.app) on loopback with one model
replica (1 CPU) serving a model file made here (the tiny test model, or the paper's with
--paper-model), and posts a real
256x256 pair (samples/MIF, CT + MRI) at each concurrency, with batching on (max_batch_size 8)
and off (1), and with batching on behind bearer-token auth (`auth_token_env`). Prints p50/p95
latency, requests/s and the ratio of p50 to the in-process `fuse_arrays` time of the same model
and inputs on one thread (the replica's allotment).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import secrets
import socket
import statistics
import tempfile
import time
from pathlib import Path

import requests
import torch

from adaray import shipped_path
from adaray.checkpoint import save_model
from adaray.data import discover_pairs, read_image
from adaray.fusion import fuse_arrays
from adaray.model import AdaSFFuse, ModelConfig
from adaray.runtime import configure_allocator, init_ray

TINY = ModelConfig(channels=8, n_hi=1, n_lo=1, n_fuse=1, d_state=8, headdim=8, chunk_size=16)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


TOKEN_ENV = "ADARAY_BENCH_SERVE_TOKEN"
# (batching label, max_batch_size, bearer-token auth)
SETUPS = [("on (8)", 8, False), ("on (8)", 8, True), ("off", 1, False)]


def _load(url: str, files: dict, concurrency: int, count: int,
          headers: dict[str, str]) -> tuple[list[float], float, int]:
    def call(_: int) -> tuple[float, int, int]:
        start = time.perf_counter()
        response = requests.post(f"{url}/fuse", params={"task": "mif"}, files=files,
                                 headers=headers, timeout=600)
        batch = int(response.headers.get("x-adaray-batch-size", 0))
        return time.perf_counter() - start, response.status_code, batch

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(call, range(count)))
    wall = time.perf_counter() - started
    errors = sum(1 for _, status, _ in results if status != 200)
    if errors:
        raise SystemExit(f"{errors} of {count} requests failed")
    return [t for t, _, _ in results], wall, max(b for _, _, b in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper-model", action="store_true",
                        help="the paper's default ModelConfig instead of the tiny test model")
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    import ray
    from ray import serve

    from adaray.serving.app import build_application

    configure_allocator()
    torch.manual_seed(0)
    config = ModelConfig() if args.paper_model else TINY
    model = AdaSFFuse(config).eval()
    pair = discover_pairs(shipped_path("samples", "MIF"), "mif")[0]
    a, b = read_image(pair.a_path), read_image(pair.b_path)
    assert a.shape[:2] == (256, 256), a.shape
    files = {"a": (pair.a_path.name, pair.a_path.read_bytes()),
             "b": (pair.b_path.name, pair.b_path.read_bytes())}

    torch.set_num_threads(1)  # what the replica gets (num_cpus 1)
    fuse_arrays(model, a, b)
    local = []
    for _ in range(max(5, args.requests // 8)):
        start = time.perf_counter()
        fuse_arrays(model, a, b)
        local.append(time.perf_counter() - start)
    forward_ms = statistics.median(local) * 1000
    label = "paper ModelConfig" if args.paper_model else "tiny model (channels 8)"
    print(f"model: {label}; in-process fuse_arrays on 256x256 (1 thread): "
          f"{forward_ms:.1f} ms median of {len(local)}")

    port = _free_port()
    os.environ[TOKEN_ENV] = secrets.token_urlsafe(24)  # before Ray starts: replicas inherit it
    init_ray(logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    print("\n| batching | auth | concurrency | p50 ms | p95 ms | req/s | p50 / forward | "
          "max batch |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = save_model(Path(tmp) / "model.pt", model)
            for batching, batch, auth in SETUPS:
                headers = {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}"} if auth else {}
                app = build_application(
                    {"tasks": ["mif"], "models": {"mif": str(path)}, "max_batch_size": batch,
                     "batch_wait_timeout_s": 0.01, "max_queued_requests": 64,
                     "auth_token_env": TOKEN_ENV if auth else None},
                    {"FusionModels": {"num_replicas": 1, "max_ongoing_requests": 64,
                                      "ray_actor_options": {"num_cpus": 1}},
                     "FusionAPI": {"num_replicas": 1, "max_ongoing_requests": 128,
                                   "ray_actor_options": {"num_cpus": 0.25}}})
                serve.run(app, name="bench", route_prefix="/")
                _load(url, files, 4, 8, headers)  # warm: model loaded, connections open
                for concurrency in args.concurrency:
                    times, wall, biggest = _load(url, files, concurrency, args.requests, headers)
                    p50 = _percentile(times, 0.5) * 1000
                    p95 = _percentile(times, 0.95) * 1000
                    print(f"| {batching} | {'on' if auth else 'off'} | {concurrency} | {p50:.1f} | "
                          f"{p95:.1f} | {args.requests / wall:.1f} | {p50 / forward_ms:.2f} | "
                          f"{biggest} |", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
