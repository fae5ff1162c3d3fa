"""`adaray benchmark-quality`: per task, train a model (or take a given one), score it against
every classical baseline on the task's held-out validation pairs, and write one results page.

Per task: train with `configs/<task>.yaml` on Ray Train (the same `build_trainer` as
`adaray train`), take its best checkpoint, run `adaray.evaluate.evaluate_models` with
`split="val"` on it and on `adaray.baselines.baselines_for(task)`, and check the goal of issue
F: the model beats every baseline on Qabf and on VIF, and its SSIM is at most 5 % below the
plain average's. The page (default `docs/results.md`) holds per task the metric table, the
training time and config, the goal's verdict, the comparison grid (copied beside it) and the
command and machine that made it.

The page is rendered from a record beside it (`results.json` for `results.md`): a run replaces
the sections of the tasks it ran and keeps the others, so one task can be re-run after its
recipe changes without training the other three again.

With `ship`, each trained task's model is also written as `<ship>/<task>.pt` (a weights_only
model file, `adaray.checkpoint`) with a model card `<ship>/<task>.md`: how it was trained, on
what data, its scores against the baselines. `models/` holds the shipped ones.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from adaray import shipped_path
from adaray.config import to_dict
from adaray.data import discover_pairs, split_pairs
from adaray.data.location import Location
from adaray.errors import ConfigError, InputNotFoundError
from adaray.runtime import init_ray
from adaray.tasks import TASKS, get_task

QUALITY_METRICS = ["EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "SSIM_dr2"]
# The training data of the shipped models, by dataset folder: source and citation (as the
# shared data README gives them; it states no licence beyond asking for the citation).
DATASETS = {
    "RoadScene": 'RoadScene (Xu et al.); cite H. Xu et al., "FusionDN: A Unified Densely '
                 'Connected Network for Image Fusion", AAAI 2020',
    "MEFB": 'MEFB benchmark (Zhang, 2021); cite X. Zhang, "Benchmarking and comparing '
            'multi-exposure image fusion algorithms", Information Fusion 2021',
    "MFIFB": 'MFIFB benchmark (Zhang, 2020); cite X. Zhang, "Multi-focus image fusion: A '
             'benchmark", arXiv:2005.01116',
    "Harvard": "The Whole Brain Atlas (AANLIB), Harvard Medical School; cite K. A. Johnson, "
               "J. A. Becker, The Whole Brain Atlas",
}
MODEL_LABEL = "adaray"
SSIM_TOLERANCE = 0.05  # the model's SSIM may be this fraction below the plain average's
DETAIL_LARGER = ", band-pass levels by the larger coefficient, the map weighting the base"


@dataclass
class TaskQuality:
    """One task's outcome: what was evaluated, how it was trained, the table and the verdict."""

    task: str
    source: str  # the model evaluated: the --model given, or the checkpoint in the work folder
    config: str | None  # the TrainConfig YAML it was trained from (None: model given)
    train_s: float | None  # training wall time (None: model given)
    steps: int | None
    settings: dict[str, Any]  # the config fields the page shows
    means: dict[str, dict[str, float]]
    table: str  # the markdown table of evaluate_models
    grid: str  # the comparison grid, relative to the page's folder
    goal_met: bool
    verdict: str
    data: str  # the dataset tree, as given on the command line
    made_by: str  # the command, date and machine of the run that made this section


def goal_verdict(means: dict[str, dict[str, float]], model: str = MODEL_LABEL
                 ) -> tuple[bool, str]:
    """Issue F's goal on a table of means: beat every baseline on Qabf and VIF, and SSIM no
    more than SSIM_TOLERANCE below the plain average's. Returns (met, one-line reason)."""
    ours = means[model]
    parts, met = [], True
    for metric in ("Qabf", "VIF"):
        rival, value = max(((label, row[metric]) for label, row in means.items()
                            if label != model), key=lambda item: item[1])
        beats = ours[metric] > value
        met &= beats
        parts.append(f"{metric} {ours[metric]:.4f} {'>' if beats else '<='} {value:.4f} "
                     f"({rival})")
    floor = (1 - SSIM_TOLERANCE) * means["average"]["SSIM"]
    change = ours["SSIM"] / means["average"]["SSIM"] - 1
    within = ours["SSIM"] >= floor
    met &= within
    parts.append(f"SSIM {ours['SSIM']:.4f} vs average {means['average']['SSIM']:.4f} "
                 f"({change:+.1%}, {'within' if within else 'beyond'} "
                 f"-{SSIM_TOLERANCE:.0%})")
    return met, ("goal met: " if met else "goal missed: ") + "; ".join(parts)


def ship_model(result: TaskQuality, checkpoint: str | Path, folder: Path,
               pairs: tuple[int, int], datasets: list[str]) -> Path:
    """Write `folder/<task>.pt` (the trained model, weights_only) and its card `<task>.md`."""
    from adaray.checkpoint import load_model, save_model
    from adaray.model.profile import count_parameters

    model = load_model(checkpoint)
    ours = result.means[MODEL_LABEL]
    scores = {name: round(ours[name], 4) for name in ("Qabf", "VIF", "SSIM")}
    path = save_model(folder / f"{result.task}.pt", model, meta={
        "task": result.task, "config": result.config, "steps": result.steps,
        "train_minutes": round(result.train_s / 60, 1), "val": scores, "made_by": result.made_by})
    cfg = model.config
    sources = [DATASETS.get(name.split("-")[0], name) for name in datasets]
    card = [
        f"# {result.task}: {TASKS[result.task].title} fusion, AdaSFFuse CPU recipe", "",
        f"`{path.name}`: a model file of `adaray.checkpoint` (plain tensors and the model "
        "config; `torch.load(weights_only=True)` loads it, `adaray.checkpoint.load_model` "
        f"rebuilds the network). {count_parameters(model):,} parameters: C = {cfg.channels}, "
        f"{cfg.n_hi} + {cfg.n_lo} + {cfg.n_fuse} SF-Mamba blocks, the `{cfg.head}` head"
        + (f" ({cfg.levels} levels{', one map per level' if cfg.per_level_maps else ''}"
           f"{DETAIL_LARGER if cfg.detail == 'larger' else ''})"
           if cfg.head == "pyramid" else "") + ".", "",
        "## Use", "",
        f"`adaray fuse --task {result.task} A B -o fused.png` (the default model of the task), "
        f"`adaray evaluate --model models/{path.name}`, and the Serve app while no champion is "
        "registered for the task.", "",
        "## Training", "",
        f"- Made by {result.made_by}.",
        f"- Config `{result.config}`: {result.steps} steps in {result.train_s / 60:.1f} min "
        "(Ray Train, one worker, 2 CPU threads); the checkpoint with the best validation score.",
        f"- Data: {pairs[0]} training pairs under `{result.data}` "
        f"({', '.join(datasets)}); {pairs[1]} held-out validation pairs by training's "
        "deterministic split (never trained on).",
        "", "## Scores on the held-out pairs", "",
        result.verdict + ".", "", result.table.rstrip(), "",
        "## Data and licence", "",
        *[f"- {source}." for source in sources],
        "- The shared data README that these datasets come from names their sources and asks "
        "for these citations; it states no other licence terms. Check the original datasets' "
        "terms before redistributing results.", ""]
    (folder / f"{result.task}.md").write_text("\n".join(card))
    return path


def train_task(task: str, data: str | Path, config: str | Path, overrides: list[str],
               workdir: Path, stamp: str) -> tuple[str, float, int, dict[str, Any]]:
    """Train one task on Ray Train; returns (best checkpoint, wall seconds, steps, settings)."""
    from adaray.ray_state import placement_groups_released
    from adaray.tracking import flatten
    from adaray.train import best_checkpoint, build_trainer, load_config

    cfg, run = load_config(config, [f"task={task}", f"run.data={Location.of(data)}",
                                    f"run.workdir={workdir}", f"run.name=quality-{task}-{stamp}",
                                    *overrides])
    trainer = build_trainer(cfg, run)  # bad config or data fails here, before training
    started = time.monotonic()
    with placement_groups_released(f"{task} training"):
        result = trainer.fit()
    wall_s = time.monotonic() - started
    best = best_checkpoint(result)
    if best is None:
        raise RuntimeError(f"{task}: training produced no checkpoint ({result.error})")
    settings = {key: value for key, value in flatten(to_dict(cfg)).items()
                if key.split(".")[0] in ("model", "loss", "optim", "data")
                and key not in ("data.a_dir", "data.b_dir")}
    settings.update(max_steps=cfg.max_steps, workers=run.workers,
                    cpus_per_worker=run.cpus_per_worker)
    return best[0].path, wall_s, cfg.max_steps, settings


def benchmark_quality(tasks: list[str], data: str, out: str | Path, *,
                      config_dir: str | Path | None = None,
                      models: dict[str, str] | None = None, overrides: list[str] = (),
                      workdir: str | Path = "adaray_work", val_fraction: float = 0.1,
                      command: str = "", ship: str | Path | None = None) -> list[TaskQuality]:
    """Train (or take `models[task]`) and evaluate each task; write the page `out`, and with
    `ship` each trained model and its card (`ship_model`).

    `data` is a dataset tree with every task's folders (e.g. ../shared/data/fusion); it is
    written to the page as given, so pass a relative path for a page without machine paths.
    """

    from adaray.baselines import baselines_for
    from adaray.evaluate import evaluate_models, model_label

    models = dict(models or {})
    for task in [*tasks, *models]:
        get_task(task)  # unknown tasks fail before anything runs
    unused = sorted(set(models) - set(tasks))
    if unused:
        raise ConfigError(f"--model: {unused[0]} is not among --tasks {' '.join(tasks)}")
    config_dir = Path(config_dir) if config_dir else shipped_path("configs")
    configs = {task: config_dir / f"{task}.yaml" for task in tasks if task not in models}
    for task, path in configs.items():
        if not path.is_file():
            raise InputNotFoundError(f"{task}: no training config {path}")
    out = Path(out)
    kept = load_record(out)  # a broken record fails here, before any training
    workdir = Path(workdir).resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    made_by = _made_by(command)
    init_ray()
    results = []
    for task in tasks:
        print(f"\n=== {task}: {'evaluate ' + models[task] if task in models else 'train'}",
              flush=True)
        if task in models:
            source, train_s, steps, settings = models[task], None, None, {}
            held_out = val_fraction
        else:
            source, train_s, steps, settings = train_task(task, data, configs[task], overrides,
                                                          workdir, stamp)
            print(f"--- {task}: trained {steps} steps in {train_s / 60:.1f} min", flush=True)
            held_out = settings["data.val_fraction"]  # the split the model trained with
        baselines = baselines_for(task)
        evaluation = evaluate_models(
            task, data, [source, *baselines], workdir / "quality" / stamp / task,
            labels=[MODEL_LABEL, *map(model_label, baselines)],
            metrics=QUALITY_METRICS, workdir=workdir, split="val", val_fraction=held_out)
        grid = out.parent / "results" / f"{task}_grid.png"
        grid.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(evaluation.out / "grid.png", grid)
        met, verdict = goal_verdict(evaluation.means)
        print(f"--- {task}: {verdict}", flush=True)
        checkpoint = source
        if task not in models and Path(source).is_relative_to(workdir):
            source = Path(source).relative_to(workdir).as_posix()  # no machine paths on record
        results.append(TaskQuality(
            task, source, None if task in models else _shown(configs[task]), train_s, steps,
            settings, evaluation.means, (evaluation.out / "summary.md").read_text(),
            grid.relative_to(out.parent).as_posix(), met, verdict, str(data), made_by))
        if ship is not None and task not in models:
            pairs = discover_pairs(Location.of(data), task)
            train_pairs, val_pairs = split_pairs(pairs, held_out)
            shipped = ship_model(results[-1], checkpoint, Path(ship), (len(train_pairs),
                                 len(val_pairs)), sorted({p.group for p in pairs}))
            print(f"--- {task}: shipped {shipped} and its card", flush=True)
        kept[task] = results[-1]
        write_page(out, kept)  # each finished task is on the page at once
    return results


def record_path(page: Path) -> Path:
    """The record the page is rendered from: `results.json` beside `results.md`."""
    return page.with_suffix(".json")


def load_record(page: Path) -> dict[str, TaskQuality]:
    """The tasks already on the page, from its record ({} when there is none)."""
    path = record_path(page)
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
        return {entry["task"]: TaskQuality(**entry) for entry in entries}
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{path}: not a results record of this adaray version ({exc}); move "
                          "it away to start a new page") from exc


def write_page(page: Path, tasks: dict[str, TaskQuality]) -> None:
    """Write the record and render the page from it, tasks in the order of `adaray.tasks`."""
    ordered = [tasks[task] for task in TASKS if task in tasks]
    page.parent.mkdir(parents=True, exist_ok=True)
    record_path(page).write_text(json.dumps([asdict(t) for t in ordered], indent=1) + "\n")
    page.write_text(results_markdown(ordered))


def _made_by(command: str) -> str:
    import torch

    return (f"`{command or 'adaray benchmark-quality'}` on {datetime.now().strftime('%Y-%m-%d')} "
            f"({platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__})")


def results_markdown(results: list[TaskQuality]) -> str:
    """The results page: how it was made, then per task the verdict, training and table."""
    commands = list(dict.fromkeys(r.made_by for r in results))
    data = " and ".join(f"`{d}`" for d in dict.fromkeys(r.data for r in results))
    lines = [
        "# Fusion quality per task", "",
        f"Made by {commands[0] if len(commands) == 1 else 'the commands named per task'}. "
        f"Each model is scored on its task's held-out validation pairs under {data} "
        "(training's deterministic split, never trained on) against the classical baselines "
        "of `adaray.baselines`, with `adaray.metrics` on the fused 8-bit luma as METRICS.md "
        "defines them; higher is better in every column, the best of each in bold.", "",
        f"Goal: beat every baseline on Qabf and on VIF, with SSIM at most "
        f"{SSIM_TOLERANCE:.0%} below the plain average's.", "",
        "| task | goal | Qabf | VIF | SSIM | training |", "|---|---|---|---|---|---|"]
    for r in results:
        ours = r.means[MODEL_LABEL]
        training = "model given" if r.train_s is None else \
            f"{r.steps} steps, {r.train_s / 60:.1f} min"
        lines.append(f"| {r.task} | {'met' if r.goal_met else 'missed'} | {ours['Qabf']:.4f} "
                     f"| {ours['VIF']:.4f} | {ours['SSIM']:.4f} | {training} |")
    for r in results:
        lines += ["", f"## {r.task}: {TASKS[r.task].title}", ""]
        if len(commands) > 1:
            lines += [f"Made by {r.made_by}.", ""]
        lines += [r.verdict + ".", ""]
        if r.train_s is None:
            lines.append(f"Model: `{r.source}` (given).")
        else:
            settings = ", ".join(f"{k}={v}" for k, v in r.settings.items()
                                 if v is not None and v != "None")
            lines.append(f"Trained from `{r.config}` for {r.steps} steps in "
                         f"{r.train_s / 60:.1f} min: {settings} (loss weights not listed are "
                         "the task's defaults, `adaray/tasks.py`).")
        lines += ["", r.table.rstrip(), "",
                  f"![{r.task}: sources and each model's result]({r.grid})"]
    return "\n".join(lines) + "\n"


def _shown(path: Path) -> str:
    """A path for the page: `configs/...` for a shipped config, else its name (no machine
    paths)."""
    path, shipped = path.resolve(), shipped_path("configs").parent.resolve()
    return path.relative_to(shipped).as_posix() if path.is_relative_to(shipped) else path.name

