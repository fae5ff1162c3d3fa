"""One-shot check of adaray's CUDA path, for the first session or machine with a GPU.

    python bench/gpu_check.py [--data samples/IVF] [--steps 50] [--only NAME ...]

Runs, on the first CUDA device, in a few minutes, and prints one table (check | result |
figures | note):

- `ssd fp32`, `ssd bf16`: mamba-ssm's Triton SSD against adaray's `ssd_scan_chunked` on the
  same inputs (one SF-Mamba head set of the paper model, length 4096), forward and backward:
  times and the largest relative error of the output and the gradients, against the chunked
  scan in fp32;
- `train step bf16`: one training step of the paper model (batch 8 of 128x128 patches, bf16
  autocast, AdamW): time and peak GPU memory;
- `adaray train --gpu`: 1 Ray Train worker (NCCL, bf16) for `--steps` steps on real pairs
  (default the committed samples/IVF), through Ray as users run it: wall time and samples/s;
- `fuse 512x512 b1`, `fuse 512x512 b8`: fused images per second of the paper model;
- `serve gpu replica`: the Serve app with a GPU model replica (the shipped ivf model): one
  HTTP round trip, compared with the same model run in this process (within 1 grey level).

Each row is ok, failed (a numeric check missed its bound, or the check raised) or skipped (with
the reason, e.g. mamba-ssm not installed). Exits 1 when any row failed. Where no CUDA device
exists it says so, marks every row skipped and exits 0.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
SSD_TOLERANCE = {"fp32": 1e-2, "bf16": 5e-2}  # max relative error against chunked fp32
# (batch, seqlen, heads, head width, groups, state): one head set of the paper model's 3C band
SSD_SHAPE = (2, 4096, 6, 64, 1, 64)
STATUSES = ("ok", "failed", "skipped")


@dataclass
class Row:
    """One line of the table."""

    check: str
    status: str  # ok | failed | skipped
    figures: str = ""
    note: str = ""


class CheckSkippedError(Exception):
    """A check that cannot run here; the message says why."""


def render(rows: list[Row]) -> str:
    """The Markdown table of `rows`."""
    for row in rows:
        if row.status not in STATUSES:
            raise ValueError(f"{row.check}: status {row.status!r} is not one of {STATUSES}")
    lines = ["| check | result | figures | note |", "|---|---|---|---|"]
    lines += [f"| {r.check} | {r.status} | {r.figures} | {r.note.replace('|', '/')} |"
              for r in rows]
    return "\n".join(lines)


def exit_code(rows: list[Row]) -> int:
    """1 when any row failed, else 0."""
    return int(any(row.status == "failed" for row in rows))


def run_check(name: str, check: Callable[[], tuple[bool, str, str]]) -> Row:
    """Run one check: (passed, figures, note) -> ok/failed; CheckSkippedError -> skipped; any
    other exception -> failed, naming it."""
    try:
        passed, figures, note = check()
    except CheckSkippedError as exc:
        return Row(name, "skipped", note=str(exc))
    except Exception as exc:  # a check that raises is a failed check, not a crashed script
        return Row(name, "failed", note=f"{type(exc).__name__}: {str(exc)[:300]}")
    return Row(name, "ok" if passed else "failed", figures, note)


def _cuda_time(fn: Callable[[], object], repeats: int = 10) -> float:
    """Median milliseconds of `fn` on the current CUDA stream, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def _ssd_inputs(dtype: torch.dtype) -> list[torch.Tensor]:
    batch, seqlen, heads, width, groups, state = SSD_SHAPE
    gen = torch.Generator().manual_seed(0)
    log_dt = math.log(1e-3) + math.log(100) * torch.rand(batch, seqlen, heads, generator=gen)
    tensors = [torch.randn(batch, seqlen, heads, width, generator=gen).to(dtype),
               log_dt.exp(), -(1 + 15 * torch.rand(heads, generator=gen)),
               torch.randn(batch, seqlen, groups, state, generator=gen).to(dtype),
               torch.randn(batch, seqlen, groups, state, generator=gen).to(dtype),
               torch.ones(heads)]
    return [t.cuda().requires_grad_(True) for t in tensors]


def check_ssd(precision: str) -> tuple[bool, str, str]:
    """Triton SSD vs chunked PyTorch SSD, forward and backward, on the same inputs."""
    from adaray.model.ssd import ssd_scan_chunked, ssd_scan_triton, triton_ssd_unavailable_reason

    if (reason := triton_ssd_unavailable_reason()) is not None:
        raise CheckSkippedError(reason)
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    inputs = _ssd_inputs(dtype)
    reference_inputs = [t.detach().float().requires_grad_(True) for t in inputs]
    upstream = torch.randn(inputs[0].shape, device="cuda",
                           generator=torch.Generator("cuda").manual_seed(1))

    def results(scan: Callable[..., torch.Tensor], args: list[torch.Tensor]) -> list[torch.Tensor]:
        y = scan(*args, chunk_size=64)
        grads = torch.autograd.grad(y, args, upstream.to(y.dtype))
        return [y.detach().float(), *(g.float() for g in grads)]

    got = results(ssd_scan_triton, inputs)
    ref = results(ssd_scan_chunked, reference_inputs)
    error = max(((g - r).abs().max() / r.abs().max()).item() for g, r in zip(got, ref, strict=True))
    timings = {}
    for label, scan, args in (("triton", ssd_scan_triton, inputs),
                              ("chunked", ssd_scan_chunked, reference_inputs)):
        with torch.no_grad():
            forward = _cuda_time(lambda s=scan, a=args: s(*a, chunk_size=64))
        both = _cuda_time(lambda s=scan, a=args: torch.autograd.grad(
            s(*a, chunk_size=64), a, upstream.to(a[0].dtype)))
        timings[label] = (forward, both)
    (tf, tb), (cf, cb) = timings["triton"], timings["chunked"]
    figures = (f"fwd {tf:.2f} ms (chunked {cf:.2f}), fwd+bwd {tb:.2f} ms (chunked {cb:.2f}), "
               f"max rel err {error:.1e}")
    bound = SSD_TOLERANCE[precision]
    return error <= bound, figures, f"error bound {bound:g}; shape {SSD_SHAPE}"


def check_train_step() -> tuple[bool, str, str]:
    """A bf16 training step of the paper model: time per step and peak memory."""
    from adaray.losses import FusionLoss
    from adaray.model import AdaSFFuse, ModelConfig
    from adaray.train.config import TrainConfig

    cfg = TrainConfig(task="ivf")
    torch.manual_seed(0)
    model = AdaSFFuse(ModelConfig()).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    loss_fn = FusionLoss(cfg.loss.resolved("ivf"))
    a, b = torch.rand(8, 1, 128, 128, device="cuda"), torch.rand(8, 1, 128, 128, device="cuda")
    losses = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fused = model(a, b)
        loss, _ = loss_fn(fused.float(), a, b)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    torch.cuda.reset_peak_memory_stats()
    milliseconds = _cuda_time(step, repeats=10)
    peak = torch.cuda.max_memory_allocated() / 2**30
    finite = all(math.isfinite(v) for v in losses)
    return (finite, f"{milliseconds:.1f} ms/step, {8000 / milliseconds:.1f} img/s, "
                    f"peak {peak:.2f} GiB", "batch 8 x 128x128" + ("" if finite else
                                                                  "; loss not finite"))


def check_ray_train(data: Path, steps: int) -> tuple[bool, str, str]:
    """`adaray train --gpu` with one worker through Ray, as a user runs it."""
    if not data.is_dir():
        raise CheckSkippedError(f"no data folder {data}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        command = [sys.executable, "-c", "import sys; from adaray.cli import main; "
                   "sys.exit(main())", "train", "--task", "ivf", "--data", str(data), "--gpu",
                   "--workers", "1", "--max-steps", str(steps), "--set", f"run.workdir={work}",
                   "--set", "log_every=10", "--set", f"val_every={steps}",
                   "--set", f"ckpt_every={steps}"]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=work)
        wall = time.monotonic() - started
    output = done.stdout + done.stderr
    rates = [float(r) for r in re.findall(r"([\d.]+) samples/s", output)]
    finished = f"finished at step {steps}" in output
    if done.returncode != 0 or not finished:
        tail = " / ".join(output.strip().splitlines()[-3:])
        return False, f"exit {done.returncode}, {wall:.0f} s", tail[:300]
    return True, (f"{steps} steps in {wall:.0f} s wall, "
                  f"{rates[-1] if rates else float('nan'):.1f} samples/s (last report)"), \
        f"data {data}"


def check_fuse(batch: int) -> tuple[bool, str, str]:
    """Fused 512x512 images per second of the paper model at `batch`."""
    from adaray.fusion import fuse_batch
    from adaray.model import AdaSFFuse, ModelConfig

    torch.manual_seed(0)
    model = AdaSFFuse(ModelConfig()).cuda().eval()
    rng = np.random.default_rng(0)
    pairs = [(rng.random((512, 512), dtype=np.float32), rng.random((512, 512), dtype=np.float32))
             for _ in range(batch)]
    fused = fuse_batch(model, pairs)
    milliseconds = _cuda_time(lambda: fuse_batch(model, pairs), repeats=5)
    finite = all(np.isfinite(f).all() and f.shape == (512, 512) for f in fused)
    return finite, f"{batch * 1000 / milliseconds:.1f} img/s ({milliseconds:.0f} ms/call)", \
        "fp32, host <-> device copies included"


def check_serve() -> tuple[bool, str, str]:
    """A Serve app whose model replica holds a GPU: one HTTP round trip against local fusion."""
    import ray
    import requests
    from ray import serve

    from adaray.checkpoint import load_model, shipped_model
    from adaray.data import discover_pairs, read_image
    from adaray.fusion import fuse_arrays
    from adaray.runtime import init_ray
    from adaray.serving.app import build_application

    model_path = shipped_model("ivf")
    if model_path is None:
        raise CheckSkippedError("no shipped models/ivf.pt")
    pair = discover_pairs(REPO / "samples" / "IVF", "ivf")[0]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/fuse"
    with tempfile.TemporaryDirectory(prefix="gpu-check-serve-") as work:
        init_ray(logging_level="ERROR")
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_application(
                {"tasks": ["ivf"], "models": {"ivf": str(model_path)}, "workdir": work},
                {"FusionModels": {"num_replicas": 1,
                                  "ray_actor_options": {"num_cpus": 1, "num_gpus": 1}}}),
                name="gpu-check", route_prefix="/")
            files = {"a": (pair.a_path.name, pair.a_path.read_bytes()),
                     "b": (pair.b_path.name, pair.b_path.read_bytes())}
            started = time.perf_counter()
            response = requests.post(url, params={"task": "ivf"},
                                     files=files, timeout=120)
            first = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            response = requests.post(url, params={"task": "ivf"},
                                     files=files, timeout=120)
            warm = (time.perf_counter() - started) * 1000
        finally:
            serve.shutdown()
            ray.shutdown()
    if response.status_code != 200:
        return False, f"HTTP {response.status_code}", response.text[:300]
    import cv2

    remote = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
    remote = remote[:, :, ::-1] if remote.ndim == 3 else remote
    local = np.rint(fuse_arrays(load_model(model_path), read_image(pair.a_path),
                                read_image(pair.b_path)) * 255)
    difference = int(np.abs(remote.astype(np.int16) - local.astype(np.int16)).max())
    return difference <= 1, (f"first {first:.0f} ms (model load), then {warm:.0f} ms; "
                             f"max diff {difference} grey levels vs CPU"), \
        f"{pair.stem}, {response.headers.get('x-adaray-model-source', '')}"


def checks(args: argparse.Namespace) -> dict[str, Callable[[], tuple[bool, str, str]]]:
    """The checks by name, in table order."""
    return {
        "ssd fp32": lambda: check_ssd("fp32"),
        "ssd bf16": lambda: check_ssd("bf16"),
        "train step bf16": check_train_step,
        "adaray train --gpu": lambda: check_ray_train(args.data, args.steps),
        "fuse 512x512 b1": lambda: check_fuse(1),
        "fuse 512x512 b8": lambda: check_fuse(8),
        "serve gpu replica": check_serve,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "samples" / "IVF",
                        help="infrared/visible pairs for the Ray Train check")
    parser.add_argument("--steps", type=int, default=50, help="steps of the Ray Train check")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these checks")
    args = parser.parse_args(argv)
    table = checks(args)
    unknown = sorted(set(args.only or []) - set(table))
    if unknown:
        parser.error(f"unknown check {unknown[0]!r} (known: {', '.join(table)})")
    names = [name for name in table if not args.only or name in args.only]
    if not torch.cuda.is_available():
        print(f"no CUDA GPU here (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}): nothing to check")
        print(render([Row(name, "skipped", note="no CUDA device") for name in names]))
        return 0
    from adaray.runtime import configure_allocator

    configure_allocator()
    device = torch.cuda.get_device_properties(0)
    print(f"{device.name}, {device.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, ADARAY_SSD={os.environ.get('ADARAY_SSD', 'auto')}",
          flush=True)
    rows = []
    for name in names:
        started = time.monotonic()
        rows.append(run_check(name, table[name]))
        print(f"  {name}: {rows[-1].status} ({time.monotonic() - started:.0f} s)", flush=True)
    print(render(rows))
    return exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
