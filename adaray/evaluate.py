"""Evaluation: fuse every pair with every model on Ray, score, tabulate, compare visually.

`evaluate_models(task, data, sources, out)` runs one Ray task per (model, chunk of pairs) (the
same code on a laptop and a cluster), each loading its model once (`load_model_from`: model
files, checkpoint folders, `runs:/`, `models:/NAME@ALIAS`, `baseline:NAME`) and fusing through
`adaray.fusion.fuse_with_weights`. Every fused image is written as PNG and scored from the
written file (`adaray.metrics.evaluate_images`), so the tables equal the metrics of the images on
disk.

Outputs under `out`: `fused/<model>/<group>/<stem>.png`, for a model whose head composes the
sources also `weights/<model>/<group>/<stem>.png` (the weight of A, white = A),
`metrics_per_pair.csv`, `summary.md` / `summary.json` (mean per model; best per column in bold)
and `grid.png` (sources, each model's result and weight map for a few pairs, labelled).
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from adaray.data import (
    ImagePair,
    check_pairs,
    discover_pairs,
    read_image,
    split_pairs,
    write_image,
)
from adaray.data.location import Location
from adaray.errors import ConfigError, InputNotFoundError
from adaray.fusion import fuse_with_weights
from adaray.metrics import METRICS, evaluate_images
from adaray.runtime import init_ray

GRID_PAIRS = 3  # pairs shown in grid.png
PAIRS_PER_TASK = 8  # pairs per Ray task: progress granularity vs model loads
SPLITS = ("all", "val")  # every discovered pair, or training's held-out ones


@dataclass
class EvaluationResult:
    """What `evaluate_models` produced: the per-pair rows, the means, the files written."""

    rows: list[dict[str, Any]]  # model, group, stem, fused path, one value per metric
    means: dict[str, dict[str, float]]  # model label -> metric -> mean over pairs
    out: Path
    run_id: str | None
    wall_s: float


def model_label(source: str) -> str:
    """A short, file-safe name for a model source (table rows, folder names)."""
    if source.startswith("baseline:"):
        label = source.removeprefix("baseline:")
    elif source.startswith(("models:/", "runs:/")):
        label = source.split(":/", 1)[1].removesuffix("/model")
    else:
        path = Path(source)
        label = path.parent.name if path.name == "model.pt" else path.name
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", label).strip("_") or "model"


def resolve_sources(sources: list[str], labels: list[str]) -> list[str]:
    """Check model sources and their report labels before Ray starts: an unknown baseline, a
    missing model file or two models with one label fail naming it. Returns the sources with
    local paths made absolute (Ray workers have their own working folder)."""
    from adaray.baselines import BASELINE_PREFIX, get_baseline

    if len(labels) != len(sources):
        raise ConfigError(f"labels: {len(labels)} labels for {len(sources)} models")
    resolved = []
    for source in sources:
        if source.startswith(BASELINE_PREFIX):
            get_baseline(source)  # unknown names fail here
        elif not source.startswith(("models:/", "runs:/")):
            if not Path(source).exists():
                raise InputNotFoundError(f"--model: model file or folder not found: {source}")
            source = str(Path(source).resolve())
        resolved.append(source)
    duplicated = sorted({x for x in labels if labels.count(x) > 1})
    if duplicated:
        raise ConfigError(f"--model: two models are both named {duplicated[0]!r} in the report")
    return resolved


def _fuse_chunk(source: str, label: str, pairs: list[ImagePair], out: str, tracking_uri: str,
                metrics: list[str]) -> list[dict[str, Any]]:
    """Load the model once, fuse, write and score each pair (runs as a Ray task)."""
    from adaray.loading import load_model_from
    from adaray.runtime import configure_allocator

    configure_allocator()
    model = load_model_from(source, tracking_uri)
    rows = []
    for pair in pairs:
        a, b = read_image(pair.a_path), read_image(pair.b_path)
        target = Path(out) / "fused" / label / pair.group / f"{pair.stem}.png"
        fused, weights = fuse_with_weights(model, a, b)
        write_image(target, fused)
        if weights is not None:
            write_image(Path(out) / "weights" / label / pair.group / f"{pair.stem}.png", weights)
        scores = evaluate_images(read_image(target), a, b, metrics)
        rows.append({"model": label, "group": pair.group, "stem": pair.stem,
                     "fused": str(target), **scores})
    return rows


def summarize(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, dict[str, float]]:
    """Mean of each metric per model (NaN values, e.g. undefined correlations, skipped)."""
    means: dict[str, dict[str, float]] = {}
    for label in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == label]
        means[label] = {}
        for name in metrics:
            values = [r[name] for r in mine if not math.isnan(r[name])]
            means[label][name] = float(np.mean(values)) if values else float("nan")
    return means


def summary_markdown(means: dict[str, dict[str, float]], metrics: list[str],
                     pairs: int) -> str:
    """The mean table, one row per model, the best value of each column in bold (higher is
    better for every metric of METRICS.md)."""
    best = {name: max((m[name] for m in means.values() if not math.isnan(m[name])),
                      default=float("nan")) for name in metrics}
    lines = [f"Mean over {pairs} pairs (best in bold).", "",
             "| model | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for label, values in means.items():
        cells = [f"**{values[n]:.4f}**" if values[n] == best[n] else f"{values[n]:.4f}"
                 for n in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_grid(pairs: list[ImagePair], labels: list[str], out: Path,
                    path: Path) -> Path:
    """A labelled grid: one row per pair, columns A, B and each model's fused image (followed by
    its weight map where it wrote one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = []  # (folder under out, model label, column title)
    for label in labels:
        shown.append(("fused", label, label))
        if (out / "weights" / label).is_dir():
            shown.append(("weights", label, f"{label}: weight of A"))
    columns = ["A", "B", *[title for _, _, title in shown]]
    figure, axes = plt.subplots(len(pairs), len(columns), squeeze=False,
                                figsize=(2.4 * len(columns), 2.4 * len(pairs)))
    for row, pair in enumerate(pairs):
        images = [read_image(pair.a_path), read_image(pair.b_path),
                  *[read_image(out / kind / label / pair.group / f"{pair.stem}.png")
                    for kind, label, _ in shown]]
        for column, (title, image) in enumerate(zip(columns, images, strict=True)):
            ax = axes[row][column]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if column == 0:
                ax.set_ylabel(pair.stem, fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def evaluate_models(task: str, data: str | Path, sources: list[str], out: str | Path, *,
                    a_dir: str | None = None, b_dir: str | None = None,
                    metrics: list[str] | None = None, workdir: str | Path = "adaray_work",
                    labels: list[str] | None = None, split: str = "all",
                    val_fraction: float = 0.1,
                    cpus_per_task: float = 1.0) -> EvaluationResult:
    """Fuse every pair under `data` with every model source, score, write the reports.

    `split="val"` keeps only the held-out pairs of training's deterministic split at
    `val_fraction` (`adaray.data.split_pairs`): the pairs a model trained there never saw.

    `labels` names the models in the reports (default: from each source, `model_label`).
    Bad input (no pairs, unreadable or mismatched files, an unknown metric or baseline, a
    missing model file) fails before Ray starts. Logs an evaluation run to MLflow (the
    tracking URI of `workdir`, or MLFLOW_TRACKING_URI); a tracking outage only warns.
    """
    from adaray.tracking import Tracker, artifact_root, experiment_name, tracking_uri

    started = time.monotonic()
    metrics = list(metrics or METRICS)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"--metrics: unknown metric {unknown[0]!r} (known: "
                          f"{', '.join(METRICS)})")
    if not sources:
        raise ConfigError("--model: give at least one model or baseline:NAME")
    labels = [model_label(s) for s in labels or sources]
    resolved = resolve_sources(sources, labels)
    if split not in SPLITS:
        raise ConfigError(f"--split: {split!r} is not one of {', '.join(SPLITS)}")
    pairs = discover_pairs(Location.of(data), task, a_dir=a_dir, b_dir=b_dir)
    if split == "val":
        pairs = split_pairs(pairs, val_fraction)[1]
    check_pairs(pairs)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(workdir)

    init_ray()
    fuse = ray.remote(num_cpus=cpus_per_task)(_fuse_chunk)
    pending = [fuse.remote(source, label, pairs[i:i + PAIRS_PER_TASK], str(out), uri, metrics)
               for source, label in zip(resolved, labels, strict=True)
               for i in range(0, len(pairs), PAIRS_PER_TASK)]
    rows: list[dict[str, Any]] = []
    total = len(pairs) * len(sources)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        rows.extend(ray.get(done[0]))
        _progress(len(rows), total, started)
    order = {label: i for i, label in enumerate(labels)}
    rows.sort(key=lambda r: (order[r["model"]], r["group"], r["stem"]))
    means = summarize(rows, metrics)

    with open(out / "metrics_per_pair.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["model", "group", "stem", "fused", *metrics])
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.md").write_text(summary_markdown(means, metrics, len(pairs)))
    (out / "summary.json").write_text(json.dumps(
        {"task": task, "data": str(Location.of(data)), "split": split, "pairs": len(pairs),
         "models": dict(zip(labels, sources, strict=True)), "means": means}, indent=2))
    comparison_grid(pairs[:GRID_PAIRS], labels, out, out / "grid.png")

    tracker = Tracker(uri, experiment_name(task), artifact_location=artifact_root(workdir))
    tracker.start_run(f"evaluate-{task}", {"task": task, "data": str(data),
                                           "models": ", ".join(sources), "pairs": len(pairs)},
                      {"task": task, "adaray.role": "evaluation"})
    # MLflow metric names allow ":" but not "@" (as in NAME@ALIAS).
    tracker.log_metrics({f"{label.replace('@', ':')}.{name}": value
                         for label, values in means.items()
                         for name, value in values.items() if not math.isnan(value)}, step=0)
    for name in ("summary.md", "summary.json", "metrics_per_pair.csv", "grid.png"):
        tracker.log_artifact(out / name, "evaluation")
    tracker.end_run("FINISHED")
    return EvaluationResult(rows, means, out, tracker.run_id, time.monotonic() - started)


def _progress(done: int, total: int, started: float) -> None:
    """A one-line progress bar over fused pairs (rewritten in place on a terminal)."""
    width = 30
    filled = int(width * done / max(total, 1))
    elapsed = time.monotonic() - started
    line = (f"[adaray evaluate] [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
            f"pairs x models, {elapsed:.0f} s")
    end = "\n" if done == total or not sys.stdout.isatty() else "\r"
    print(line, end=end, flush=True)
