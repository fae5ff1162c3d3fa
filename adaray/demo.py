"""`adaray demo`: the whole system on embedded defaults, in one command.

Phases, each with its own progress lines: (1) train a small model on Ray Train, (2) a 2-trial
Ray Tune sweep that registers its best model and promotes it to `champion`, (3) evaluate the
champion and the trained model against the classical baselines, (4) start the Serve app and fuse
a pair over HTTP, (5) shut everything down and print where the results are. Everything runs on a
local Ray, with MLflow in a SQLite file under the work folder and the bundled `samples/` (or
`--data`). A second run reuses the work folder (new run and sweep names; the champion alias
moves only to a better model). Ctrl-C stops Serve and the local Ray before exiting.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from adaray import shipped_path
from adaray.config import to_dict
from adaray.model import HEAD_FIELDS
from adaray.runtime import init_ray
from adaray.tasks import get_task

TINY_CONFIG = shipped_path("configs", "tiny.yaml")


@dataclass
class DemoPlan:
    """Step counts of the demo: the full demo, or the quick one the tests run."""

    train_steps: int
    sweep_steps: int
    eval_every: int


FULL = DemoPlan(train_steps=300, sweep_steps=120, eval_every=40)
QUICK = DemoPlan(train_steps=10, sweep_steps=10, eval_every=5)


def _phase(number: int, text: str) -> float:
    print(f"\n=== [{number}/5] {text}", flush=True)
    return time.monotonic()


def _done(started: float, text: str) -> None:
    print(f"--- {text} ({time.monotonic() - started:.0f} s)", flush=True)


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_demo(task: str = "ivf", data: str | Path | None = None,
             workdir: str | Path = "adaray_work", quick: bool = False) -> dict[str, Any]:
    """Run the five phases; returns the summary (paths and figures) it prints.

    A request that waits for resources longer than ADARAY_RESOURCE_WAIT_S (default 120 s)
    stops the demo with a message naming what holds them.
    """
    import ray

    from adaray.ray_state import placement_groups_released
    from adaray.tracking import registered_model_name, tracking_uri
    from adaray.train import best_checkpoint, build_trainer, load_config, prepare_config

    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C ends the demo
    plan = QUICK if quick else FULL
    data = Path(data or shipped_path("samples")).resolve()
    workdir = Path(workdir).resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = workdir / "demo" / stamp
    get_task(task)
    base, run = load_config(TINY_CONFIG, [
        f"task={task}", f"run.data={data}", f"run.workdir={workdir}",
        f"max_steps={plan.train_steps}", f"val_every={plan.eval_every}",
        f"ckpt_every={plan.eval_every}", f"log_every={max(1, plan.eval_every // 2)}",
        f"run.name=demo-{task}-{stamp}", "optim.lr=3.0e-3",
        f"optim.warmup_steps={min(20, plan.train_steps // 4)}", *_recipe_head_and_loss(task)])
    base, run = prepare_config(base, run)  # bad data fails here, before Ray starts
    summary: dict[str, Any] = {"task": task, "data": str(data), "workdir": str(workdir)}
    started = time.monotonic()

    # A local Ray (or the cluster at RAY_ADDRESS).
    # The demo needs at most 1 CPU at a time: a request that waits longer than the limit will
    # not be placed, so the demo stops with the watch's message instead of waiting for ever.
    stuck: list[str] = []

    def resource_wait(message: str) -> None:
        stuck.append(message)
        os.kill(os.getpid(), signal.SIGINT)  # leave through the handler below

    init_ray(logging_level="ERROR", on_resource_wait=resource_wait)

    # Ctrl-C (or a stuck request): leave through the `finally` below (SystemExit, as Ray's own
    # SIGTERM handler does; a KeyboardInterrupt raised inside Ray's driver loops does not always
    # reach this frame).
    def interrupted(signum: int, frame: Any) -> None:
        if stuck:
            sys.exit(f"adaray demo: failed: {stuck[0]}")
        print("\nadaray demo: interrupted; stopping Serve and Ray", flush=True)
        sys.exit(130)

    signal.signal(signal.SIGINT, interrupted)
    serving = False
    try:
        phase = _phase(1, f"train a small AdaSFFuse on {task} pairs in {data} (Ray Train)")
        trainer = build_trainer(base, run)
        with placement_groups_released("the demo's training"):
            result = _off_main_thread(trainer.fit)
        best = best_checkpoint(result)
        summary["trained_model"] = best[0].path
        summary["trained_val_score"] = best[1]["val_score"]
        _done(phase, f"trained {plan.train_steps} steps; best val_score {best[1]['val_score']:.4f}")

        phase = _phase(2, "2-trial sweep (Ray Tune, ASHA + Optuna) and promotion")
        sweep = _sweep(base, run, plan, f"demo-{task}-sweep-{stamp}")
        summary["promotion"] = sweep.promotion_note
        _done(phase, f"sweep {sweep.name}: {sweep.promotion_note}")

        phase = _phase(3, "evaluate the champion and the trained model against baselines")
        champion = f"models:/{registered_model_name(task)}@champion"
        evaluation = _evaluate(task, data, [champion, summary["trained_model"]], out / "report",
                               workdir)
        summary["report"] = str(evaluation.out / "summary.md")
        summary["grid"] = str(evaluation.out / "grid.png")
        _done(phase, f"{len(evaluation.rows)} fused images scored")

        phase = _phase(4, "serve the champion (Ray Serve) and fuse a pair over HTTP")
        serving = True
        summary["served_fused"], summary["served_headers"] = _serve_and_fuse(task, data,
                                                                             workdir, out)
        _done(phase, f"fused over HTTP -> {summary['served_fused']}")
    finally:
        phase = _phase(5, "shut down Serve and the local Ray")
        if serving:
            from ray import serve

            serve.shutdown()
        left = _placement_groups_left()
        ray.shutdown()
        _done(phase, f"stopped; placement groups left: {left}")
    summary["wall_s"] = time.monotonic() - started
    summary["mlflow_ui"] = f"mlflow ui --backend-store-uri {tracking_uri(workdir)}"
    _print_summary(summary)
    return summary


def _recipe_head_and_loss(task: str) -> list[str]:
    """Overrides that give the demo's tiny model the output head and loss of the task's recipe
    (configs/<task>.yaml): the demo shows the recipe at a small scale."""
    from adaray.train import load_train_config

    recipe = load_train_config(shipped_path("configs", f"{task}.yaml"))
    fields = {**{f"model.{name}": getattr(recipe.model, name) for name in HEAD_FIELDS},
              **{f"loss.{name}": value for name, value in to_dict(recipe.loss).items()
                 if value is not None}}
    return [f"{key}={value}" for key, value in fields.items()]


def _off_main_thread(function: Callable[[], Any]) -> Any:
    """Call `function` in a helper thread while the main thread keeps our Ctrl-C handler.

    `TorchTrainer.fit()` called on the main thread replaces the SIGINT handler with Ray Train's
    own (abort the run, then carry on); the demo must stop instead.
    """
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # re-raised on the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=call, name="adaray-demo-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _placement_groups_left() -> str:
    """The demo's placement groups still held ("none" once every phase gave its back)."""
    from adaray.ray_state import job_placement_groups

    try:
        left = job_placement_groups()
    except Exception as exc:  # the State API is down: say so, shut down anyway
        return f"unknown ({exc})"
    return ", ".join(sorted(left)) or "none"


def _sweep(base: Any, run: Any, plan: DemoPlan, name: str) -> Any:
    from adaray.tune import parse_space, run_sweep

    space = parse_space({
        # One trial at a time: a 2-core machine has no CPU for a second trial's worker.
        "sweep": {"num_samples": 2, "max_concurrent": 1, "grace_period": plan.eval_every,
                  "max_steps": plan.sweep_steps, "reduction_factor": 2, "seed": 0},
        "params": {"loss.w_ssim": {"type": "loguniform", "low": 2.5, "high": 40},
                   "optim.lr": {"type": "loguniform", "low": 1.0e-3, "high": 5.0e-3}},
    }, to_dict(base), source="demo sweep")
    return run_sweep(base, dataclasses.replace(run, name=None), space, name=name)


def _evaluate(task: str, data: Path, models: list[str], out: Path, workdir: Path) -> Any:
    from adaray.baselines import baselines_for
    from adaray.evaluate import evaluate_models, model_label

    baselines = baselines_for(task)
    labels = ["champion", "trained", *map(model_label, baselines)]
    result = evaluate_models(task, data, [*models, *baselines], out, workdir=workdir,
                             metrics=["Qabf", "VIF", "SSIM", "EN", "SF", "MI"], labels=labels)
    print((result.out / "summary.md").read_text(), flush=True)
    return result


def _serve_and_fuse(task: str, data: Path, workdir: Path, out: Path) -> tuple[str, dict]:
    from ray import serve

    from adaray.data import discover_pairs
    from adaray.serving import post_fuse
    from adaray.serving.app import build_application

    port = _free_port(8000)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_application({"tasks": [task], "workdir": str(workdir)},
                    {"FusionModels": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
                     "FusionAPI": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}})
    serve.run(app, name="adaray", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    print(f"serving at {url} (POST /fuse, docs at {url}/docs)", flush=True)
    pair = discover_pairs(data, task)[0]
    png, headers = post_fuse(url, pair.a_path, pair.b_path, task, route_wait_s=30.0)
    target = out / "served" / f"{pair.stem}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png)
    keep = ("x-adaray-model-source", "x-adaray-model-version", "x-adaray-total-ms")
    return str(target), {k: headers.get(k, "") for k in keep}


def _print_summary(summary: dict[str, Any]) -> None:
    print("\n=== adaray demo: done in {:.0f} s".format(summary["wall_s"]))
    print(f"task {summary['task']} on {summary['data']}")
    print(f"trained model (best checkpoint, val_score {summary['trained_val_score']:.4f}): "
          f"{summary['trained_model']}")
    print(f"champion: {summary['promotion']}")
    print(f"evaluation report: {summary['report']}")
    print(f"comparison grid:   {summary['grid']}")
    print(f"fused over HTTP:   {summary['served_fused']} "
          f"(model {summary['served_headers']['x-adaray-model-source']} version "
          f"{summary['served_headers']['x-adaray-model-version']})")
    print(f"browse the runs:   {summary['mlflow_ui']}")
