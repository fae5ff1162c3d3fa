"""`adaray evaluate` on the session's Ray cluster: every output, and tables that equal the
metrics of the written images."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import SAMPLES

from adaray import tracking
from adaray.checkpoint import save_model
from adaray.data import discover_pairs, read_image
from adaray.evaluate import evaluate_models, model_label
from adaray.metrics import evaluate_images
from adaray.model import AdaSFFuse, ModelConfig

METRICS = ["Qabf", "VIF", "SSIM", "EN", "SF", "MI"]


@pytest.mark.timeout(300)
def test_evaluate_two_baselines_and_a_model_writes_every_output(ray_cluster, tmp_path):
    import mlflow

    torch.manual_seed(0)
    model = save_model(tmp_path / "tiny" / "model.pt", AdaSFFuse(ModelConfig(
        channels=8, n_hi=1, n_lo=1, n_fuse=1, d_state=8, headdim=8, chunk_size=16)))
    sources = ["baseline:average", "baseline:laplacian", str(model)]
    out = tmp_path / "report"
    with ray_cluster.driver():
        result = evaluate_models("mff", SAMPLES / "MFF", sources, out, metrics=METRICS,
                                 workdir=tmp_path / "work")
    pairs = discover_pairs(SAMPLES / "MFF", "mff")
    labels = ["average", "laplacian", "tiny"]
    assert [model_label(s) for s in sources] == labels
    assert len(result.rows) == len(pairs) * len(sources)

    # Per-pair CSV: one row per model and pair, values equal the metrics of the written PNG.
    with open(out / "metrics_per_pair.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["stem"]) for r in rows] == [
        (label, p.stem) for label in labels for p in sorted(pairs, key=lambda p: p.stem)]
    by_stem = {p.stem: p for p in pairs}
    for row in rows:
        pair = by_stem[row["stem"]]
        fused = read_image(row["fused"])
        assert fused.shape[:2] == read_image(pair.a_path).shape[:2]
        expected = evaluate_images(fused, read_image(pair.a_path), read_image(pair.b_path),
                                   METRICS)
        for name in METRICS:
            assert float(row[name]) == pytest.approx(expected[name], rel=1e-12, abs=1e-12)

    # Means: JSON and markdown, best per column in bold.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == len(pairs) and list(summary["means"]) == labels
    for label in labels:
        for name in METRICS:
            values = [float(r[name]) for r in rows if r["model"] == label]
            assert summary["means"][label][name] == pytest.approx(np.mean(values), rel=1e-12)
    markdown = (out / "summary.md").read_text()
    assert all(f"| {label} |" in markdown for label in labels)
    for name in METRICS:
        best = max(summary["means"][label][name] for label in labels)
        assert f"**{best:.4f}**" in markdown
    # The learned-nothing model loses to the baselines on Qabf.
    assert summary["means"]["tiny"]["Qabf"] < summary["means"]["laplacian"]["Qabf"]

    grid = read_image(out / "grid.png")
    assert grid.shape[0] > 200 and grid.shape[1] > 600

    # The evaluation run in MLflow: means as metrics, the reports as artifacts.
    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(tmp_path / "work"))
    run = client.get_run(result.run_id)
    assert run.data.tags["adaray.role"] == "evaluation"
    assert math.isclose(run.data.metrics["laplacian.Qabf"],
                        summary["means"]["laplacian"]["Qabf"], rel_tol=1e-9)
    logged = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/summary.md", "evaluation/grid.png",
            "evaluation/metrics_per_pair.csv", "evaluation/summary.json"} <= logged


@pytest.mark.parametrize(
    ("models", "extra", "message"),
    [
        (["baseline:median"], [], "unknown baseline 'median'"),
        (["missing/model.pt"], [], "model file or folder not found: missing/model.pt"),
        (["baseline:max"], ["--metrics", "Qabf", "NOPE"], "unknown metric 'NOPE'"),
        (["baseline:max", "baseline:max"], [], "both named 'max'"),
    ],
)
def test_evaluate_bad_input_fails_before_ray(models, extra, message, tmp_path, capsys):
    import ray

    from adaray.cli import main

    args = ["evaluate", "--task", "mff", "--data", str(SAMPLES / "MFF"), "--out",
            str(tmp_path / "out"), *[a for m in models for a in ("--model", m)], *extra]
    was_initialized = ray.is_initialized()
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert ray.is_initialized() == was_initialized
