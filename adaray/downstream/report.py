"""The downstream report: the table of inputs x metrics (mean ± std over seeds), per-class
figures, a bar plot with error bars and a grid of detections on held-out images."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaray.downstream.labels import Boxes

METRIC_NAMES = {"map_50": "mAP@0.5", "map": "mAP@0.5:0.95"}
SINGLE_INPUTS = ("infrared", "visible")
SHOW_SCORE = 0.3  # detections drawn in the grid: score >= this


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values (NaN if none)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


def summarize(results: list[dict[str, Any]], inputs: list[str], classes: list[str]
              ) -> dict[str, dict[str, Any]]:
    """Per input: mean and std over seeds of each metric and of each class's AP."""
    summary: dict[str, dict[str, Any]] = {}
    for name in inputs:
        runs = [r for r in results if r["input"] == name]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in runs],
                                 "train_s": mean_std([r["train_s"] for r in runs])[0]}
        for key in METRIC_NAMES:
            entry[key] = mean_std([r[key] for r in runs])
            entry[f"{key}_per_class"] = {c: mean_std([r[f"{key}_per_class"][c] for r in runs])
                                         for c in classes}
        summary[name] = entry
    return summary


def _cell(value: tuple[float, float]) -> str:
    mean, std = value
    return "n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def differences(summary: dict[str, dict[str, Any]], key: str = "map_50") -> list[str]:
    """Each input against the best single sensor: a difference only where the mean ± std
    ranges over seeds do not overlap, else "within the seed spread"."""
    singles = [name for name in SINGLE_INPUTS if name in summary
               and not math.isnan(summary[name][key][0])]
    if not singles:
        return []
    if min(len(entry["seeds"]) for entry in summary.values()) < 2:
        return ["- one seed: no spread to compare against, so no difference is called"]
    best = max(singles, key=lambda name: summary[name][key][0])
    (best_mean, best_std), lines = summary[best][key], []
    for name, entry in summary.items():
        if name == best:
            continue
        mean, std = entry[key]
        if math.isnan(mean):
            continue
        delta = mean - best_mean
        called = abs(delta) > std + best_std
        verdict = ("better" if delta > 0 else "worse") if called else "within the seed spread"
        lines.append(f"- {name} vs {best}: {delta:+.3f} {METRIC_NAMES[key]} ({verdict}; "
                     f"spread ± {std:.3f} and ± {best_std:.3f})")
    return lines


def summary_markdown(summary: dict[str, dict[str, Any]], classes: list[str],
                     context: dict[str, Any]) -> str:
    """The report page: what was run, the table and the differences worth the name."""
    header = ["input", *METRIC_NAMES.values(), *[f"{c} AP@0.5" for c in classes],
              "training s"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in summary.items():
        cells = [_cell(entry[key]) for key in METRIC_NAMES]
        cells += [_cell(entry["map_50_per_class"][c]) for c in classes]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {entry['train_s']:.0f} |")
    found = differences(summary)
    epochs = context["detector"]["epochs"]
    lines = [
        f"# Downstream detection on {context['data_name']}",
        "",
        f"Detector `{context['detector']['arch']}` ({context['weights_note']}), "
        f"{epochs} epoch{'s' if epochs != 1 else ''} of batch "
        f"{context['detector']['batch_size']}, "
        f"the same seeds, schedule and flips for every input; {context['train_pairs']} "
        f"training and {context['test_pairs']} held-out pairs (adaray's name-hash split), "
        f"seeds {', '.join(map(str, context['seeds']))}. Fused inputs come from "
        f"`adaray evaluate`'s fusion path; infrared images are repeated to 3 channels.",
        "",
        f"Ground truth (`--labels {context['rule']}`): {context['rule_text']}",
        "",
        "Mean ± standard deviation over the seeds; mAP@0.5:0.95 is COCO's (faster-coco-eval "
        "through torchmetrics).",
        "",
        *rows,
        "",
        "Differences from the better single sensor (mAP@0.5), called only where the mean ± std "
        "ranges do not overlap:",
        "",
        *(found or ["- (no single-sensor input to compare with)"]),
        "",
    ]
    return "\n".join(lines)


def write_per_class(results: list[dict[str, Any]], classes: list[str], path: Path) -> None:
    """One row per input, seed and class (plus `all`): AP@0.5 and AP@0.5:0.95."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "seed", "class", "ap_50", "ap_50_95"])
        for r in results:
            for name in [*classes, "all"]:
                if name == "all":
                    values = (r["map_50"], r["map"])
                else:
                    values = (r["map_50_per_class"][name], r["map_per_class"][name])
                writer.writerow([r["input"], r["seed"], name,
                                 *(f"{v:.6f}" if not math.isnan(v) else "" for v in values)])


def _plain(value: Any) -> Any:
    """JSON-ready: tuples as lists, NaN as null."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_json(summary: dict[str, dict[str, Any]], results: list[dict[str, Any]],
               context: dict[str, Any], path: Path) -> None:
    """The context, the summary ([mean, std] per metric) and every run's scores."""
    runs = [{k: v for k, v in r.items() if k != "shown"} for r in results]
    path.write_text(json.dumps(_plain({**context, "summary": summary, "runs": runs}),
                               indent=2))


def bar_plot(summary: dict[str, dict[str, Any]], path: Path) -> None:
    """mAP@0.5 and mAP@0.5:0.95 per input, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    x = np.arange(len(names))
    width = 0.38
    figure, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6))
    for offset, (key, title) in zip((-width / 2, width / 2), METRIC_NAMES.items(), strict=True):
        means = [summary[n][key][0] for n in names]
        stds = [summary[n][key][1] for n in names]
        ax.bar(x + offset, means, width, yerr=stds, capsize=4, label=title)
    ax.set_xticks(x, names, rotation=15)
    ax.set_ylabel("mAP (mean ± std over seeds)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def detection_grid(images: dict[str, list[np.ndarray]], truth: list[Boxes],
                   shown: dict[str, list[dict[str, np.ndarray]]], classes: list[str],
                   stems: list[str], path: Path) -> None:
    """Rows: held-out images; columns: inputs. Ground truth in green, the first seed's
    detections with score >= SHOW_SCORE in red, labelled with class and score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    names = list(images)
    figure, axes = plt.subplots(len(stems), len(names), squeeze=False,
                                figsize=(3.2 * len(names), 2.5 * len(stems)))
    for row, stem in enumerate(stems):
        for column, name in enumerate(names):
            ax = axes[row][column]
            image = images[name][row]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
            for x0, y0, x1, y1 in truth[row].xyxy:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                       edgecolor="lime", linewidth=0.8))
            found = shown[name][row]
            for (x0, y0, x1, y1), score, cls in zip(found["boxes"], found["scores"],
                                                     found["classes"], strict=True):
                if score < SHOW_SCORE:
                    continue
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                       edgecolor="red", linewidth=0.8))
                ax.text(x0, y0, f"{classes[int(cls)]} {score:.2f}", color="red", fontsize=5,
                        va="bottom")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
            if column == 0:
                ax.set_ylabel(stem, fontsize=8)
    figure.suptitle("green: ground truth; red: detections (first seed, score >= "
                    f"{SHOW_SCORE})", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
