"""`adaray downstream`: does fusion help a detector? Fuse, train the same detector on every
input with several seeds (Ray tasks, side by side on a cluster), score on held-out pairs, report.

1. Read and check the pairs, class list and labels (`load_detection_data`), before Ray starts.
2. Fuse every pair with every model given, through `adaray.evaluate.evaluate_models` (the
   evaluate path: `adaray.fusion`, color rebuilt; its fusion metrics come along).
3. One Ray task per (input, seed): train the detector on the training pairs of that input
   (infrared, visible, each fused set) and score it on the held-out pairs.
4. Write `summary.md` / `summary.json`, `per_class.csv`, `map.png` and `detections.png` under
   `out`, and log them with params and metrics to an MLflow run tagged
   `adaray.role=downstream`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from adaray.config import ConfigError, to_dict
from adaray.data import read_image
from adaray.downstream.data import DetectionData, load_detection_data
from adaray.downstream.detector import DetectorConfig, detection_scores, predict, train_detector
from adaray.downstream.labels import MERGE_IOU, Boxes
from adaray.downstream.report import (
    METRIC_NAMES,
    SINGLE_INPUTS,
    bar_plot,
    detection_grid,
    summarize,
    summary_markdown,
    write_json,
    write_per_class,
)
from adaray.errors import InputNotFoundError
from adaray.runtime import init_ray

GRID_IMAGES = 3  # held-out images drawn per input in detections.png
FUSION_METRICS = ["Qabf", "VIF", "SSIM"]
QUICK = {"epochs": 1, "max_images": 6, "warmup_steps": 1}
RULE_TEXT = {
    "union": "the infrared and the visible boxes together; a box of each set with the same "
             f"class and IoU >= {MERGE_IOU} is one object, kept once as their mean (each set "
             "alone misses what its sensor cannot show, so one set would favour its own input)",
    "infrared": "the boxes annotated on the infrared images",
    "visible": "the boxes annotated on the visible images",
    "fusion": "the boxes annotated on a fused image (of an unnamed fusion method)",
}


@dataclass
class DownstreamResult:
    """What `run_downstream` produced."""

    summary: dict[str, dict[str, Any]]  # input -> metric -> (mean, std)
    results: list[dict[str, Any]]  # one per (input, seed)
    out: Path
    run_id: str | None
    wall_s: float


def _uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def train_and_score(name: str, seed: int, images: list[np.ndarray], train: list[int],
                    test: list[int], truth: list[Boxes], classes: list[str],
                    cfg: DetectorConfig, weights: str | None, show: int) -> dict[str, Any]:
    """One training of the benchmark (a Ray task): detector on `images[train]`, scored on
    `images[test]`; also the detections of the first `show` test images."""
    from adaray.runtime import configure_allocator

    configure_allocator()
    started = time.monotonic()
    model, note = train_detector([images[i] for i in train], [truth[i] for i in train],
                                 len(classes), cfg, seed, weights,
                                 progress=lambda line: print(
                                     f"[adaray downstream] {name} seed {seed}: {line}",
                                     flush=True))
    found = predict(model, [images[i] for i in test])
    scores = detection_scores(found, [truth[i] for i in test], classes)
    return {"input": name, "seed": seed, **scores, "train_s": time.monotonic() - started,
            "weights_note": note, "shown": found[:show]}


def run_downstream(data: str | Path, sources: list[str], out: str | Path, *,
                   labels: str = "union", seeds: int = 3,
                   detector: DetectorConfig | None = None, weights: str | None = None,
                   test_fraction: float = 0.3, quick: bool = False,
                   workdir: str | Path = "adaray_work") -> DownstreamResult:
    """Run the benchmark (module docstring) and return its summary; bad input fails before
    Ray starts, naming the file, line or option."""
    from adaray.evaluate import evaluate_models, model_label, resolve_sources

    started = time.monotonic()
    detector = detector or DetectorConfig()
    if quick:
        detector = dataclasses.replace(detector, **QUICK)
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {seeds}")
    if weights is not None and not Path(weights).is_file():
        raise InputNotFoundError(f"--weights: file not found: {weights}")
    names = [model_label(s) for s in sources]
    clash = sorted(set(names) & set(SINGLE_INPUTS))
    if clash:
        raise ConfigError(f"--model: a model may not be named {clash[0]!r} (an input of its "
                          f"own); rename its file")
    resolve_sources(sources, names)  # checked before Ray starts; evaluate_models resolves them
    dataset = load_detection_data(data, labels, test_fraction)
    for note in dataset.notes:
        print(f"[adaray downstream] {note}", flush=True)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    samples = dataset.samples
    train = list(range(len(dataset.train)))
    test = list(range(len(dataset.train), len(samples)))
    print(f"[adaray downstream] {len(dataset.train)} training / {len(dataset.test)} held-out "
          f"pairs, {len(dataset.classes)} classes, labels {labels}; inputs: infrared, visible"
          f"{''.join(', ' + n for n in names)}; seeds {', '.join(map(str, range(seeds)))}",
          flush=True)

    init_ray()
    inputs = {"infrared": [_uint8(read_image(s.pair.a_path)) for s in samples],
              "visible": [_uint8(read_image(s.pair.b_path)) for s in samples]}
    if sources:
        evaluation = evaluate_models("ivf", dataset.root, sources, out / "fusion",
                                     metrics=FUSION_METRICS, workdir=workdir, labels=names)
        fused = {(row["model"], row["stem"]): row["fused"] for row in evaluation.rows}
        for name in names:
            inputs[name] = [_uint8(read_image(fused[name, s.pair.stem])) for s in samples]
    truth = [s.boxes for s in samples]
    show = min(GRID_IMAGES, len(test))

    task = ray.remote(num_cpus=detector.threads)(train_and_score)
    refs = {name: ray.put(images) for name, images in inputs.items()}
    pending = {task.remote(name, seed, refs[name], train, test, truth, dataset.classes,
                           detector, weights, show): (name, seed)
               for seed in range(seeds) for name in inputs}
    total, results = len(pending), []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        name, seed = pending.pop(done[0])
        result = ray.get(done[0])
        results.append(result)
        print(f"[adaray downstream] {len(results)}/{total} done: {name} seed {seed}: "
              f"mAP@0.5 {result['map_50']:.3f}, mAP@0.5:0.95 {result['map']:.3f} "
              f"({result['train_s']:.0f} s)", flush=True)
    order = list(inputs)
    results.sort(key=lambda r: (order.index(r["input"]), r["seed"]))
    return _report(dataset, inputs, results, detector, out, workdir, sources, names,
                   started, test, show)


def _report(dataset: DetectionData, inputs: dict[str, list[np.ndarray]],
            results: list[dict[str, Any]], detector: DetectorConfig, out: Path,
            workdir: str | Path, sources: list[str], names: list[str], started: float,
            test: list[int], show: int) -> DownstreamResult:
    from adaray.tracking import Tracker, artifact_root, experiment_name, tracking_uri

    summary = summarize(results, list(inputs), dataset.classes)
    context = {"data": str(dataset.root), "data_name": dataset.root.name, "rule": dataset.rule,
               "rule_text": RULE_TEXT[dataset.rule], "classes": dataset.classes,
               "train_pairs": len(dataset.train), "test_pairs": len(dataset.test),
               "seeds": sorted({r["seed"] for r in results}),
               "models": dict(zip(names, sources, strict=True)),
               "detector": to_dict(detector), "weights_note": results[0]["weights_note"]}
    (out / "summary.md").write_text(summary_markdown(summary, dataset.classes, context))
    write_json(summary, results, context, out / "summary.json")
    write_per_class(results, dataset.classes, out / "per_class.csv")
    bar_plot(summary, out / "map.png")
    first_seed = min(context["seeds"])
    shown = {r["input"]: r["shown"] for r in results if r["seed"] == first_seed}
    detection_grid({name: [images[i] for i in test[:show]] for name, images in inputs.items()},
                   [dataset.samples[i].boxes for i in test[:show]], shown, dataset.classes,
                   [dataset.samples[i].pair.stem for i in test[:show]], out / "detections.png")

    uri = tracking_uri(workdir)
    tracker = Tracker(uri, experiment_name("ivf"), artifact_location=artifact_root(workdir))
    params = {"data": str(dataset.root), "labels": dataset.rule, "seeds": len(context["seeds"]),
              "models": ", ".join(sources) or "-", "train_pairs": len(dataset.train),
              "test_pairs": len(dataset.test),
              **{f"detector.{k}": v for k, v in to_dict(detector).items()}}
    tracker.start_run("downstream", params, {"task": "ivf", "adaray.role": "downstream"})
    # MLflow metric names allow ":" but not "@" (as in NAME@ALIAS).
    tracker.log_metrics({f"{name.replace('@', ':')}.{key}": entry[key][0]
                         for name, entry in summary.items() for key in METRIC_NAMES
                         if not math.isnan(entry[key][0])}, step=0)
    for name in ("summary.md", "summary.json", "per_class.csv", "map.png", "detections.png"):
        tracker.log_artifact(out / name, "downstream")
    tracker.end_run("FINISHED")
    print((out / "summary.md").read_text(), flush=True)
    return DownstreamResult(summary, results, out, tracker.run_id, time.monotonic() - started)
