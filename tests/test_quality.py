"""`adaray benchmark-quality`: the goal check, and the page it writes for one trained task and
one given model, on the session's Ray cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SAMPLES

from adaray.checkpoint import save_model
from adaray.data import discover_pairs, read_image, split_pairs
from adaray.model import AdaSFFuse, ModelConfig
from adaray.quality import goal_verdict

ADARAY = str(Path(sys.executable).parent / "adaray")


def _means(ours: dict[str, float]) -> dict[str, dict[str, float]]:
    return {"adaray": ours,
            "average": {"Qabf": 0.40, "VIF": 0.60, "SSIM": 1.40},
            "laplacian": {"Qabf": 0.64, "VIF": 0.58, "SSIM": 1.42}}


def test_goal_needs_qabf_and_vif_above_every_baseline_and_ssim_near_the_average():
    met, verdict = goal_verdict(_means({"Qabf": 0.65, "VIF": 0.61, "SSIM": 1.34}))
    assert met, verdict
    assert "Qabf 0.6500 > 0.6400 (laplacian)" in verdict and "within -5%" in verdict
    met, verdict = goal_verdict(_means({"Qabf": 0.63, "VIF": 0.70, "SSIM": 1.40}))
    assert not met and "Qabf 0.6300 <= 0.6400 (laplacian)" in verdict
    met, verdict = goal_verdict(_means({"Qabf": 0.70, "VIF": 0.59, "SSIM": 1.40}))
    assert not met and "VIF 0.5900 <= 0.6000 (average)" in verdict
    met, verdict = goal_verdict(_means({"Qabf": 0.70, "VIF": 0.70, "SSIM": 1.32}))
    assert not met and "beyond -5%" in verdict  # 1.32 < 0.95 * 1.40 = 1.33


@pytest.mark.timeout(600)
def test_benchmark_quality_trains_evaluates_and_writes_the_page(ray_cluster, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copyfile(REPO / "configs" / "tiny.yaml", configs / "mif.yaml")
    torch.manual_seed(0)
    given = save_model(tmp_path / "given" / "model.pt", AdaSFFuse(ModelConfig(
        channels=8, n_hi=1, n_lo=1, n_fuse=1, d_state=8, headdim=8, chunk_size=16)))
    page = tmp_path / "docs" / "results.md"
    workdir = tmp_path / "work"
    env = ray_cluster.env()
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run(
        [ADARAY, "benchmark-quality", "--tasks", "mif", "mff", "--data", str(SAMPLES),
         "--config-dir", str(configs), "--model", f"mff={given}", "--max-steps", "6",
         "--set", "val_every=3", "--set", "ckpt_every=3", "--out", str(page),
         "--workdir", str(workdir), "--ship", str(tmp_path / "shipped")],
        capture_output=True, text=True, env=env, timeout=540, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    text = page.read_text()
    # --ship: the trained task's model (not the given one) as a weights_only file with a card.
    assert sorted(p.name for p in (tmp_path / "shipped").iterdir()) == ["mif.md", "mif.pt"]
    payload = torch.load(tmp_path / "shipped" / "mif.pt", weights_only=True)
    assert payload["meta"]["task"] == "mif" and payload["meta"]["steps"] == 6
    card = (tmp_path / "shipped" / "mif.md").read_text()
    assert "Config `mif.yaml`: 6 steps" in card and "(MIF, MIF-PET)" in card  # data groups
    assert payload["meta"]["val"]["Qabf"] == pytest.approx(
        json.loads(page.with_suffix(".json").read_text())[1]["means"]["adaray"]["Qabf"],
        abs=1e-4)
    assert "| mif | " in text and "| mff | " in text
    assert "Trained from `mif.yaml` for 6 steps" in text
    assert f"Model: `{given}` (given)." in text
    for kept_out in ("runs", "quality"):  # checkpoints and fused images stay in the work folder
        assert str(workdir / kept_out) not in text

    for task, baselines in (("mif", ["average", "max", "dwt", "laplacian"]),
                            ("mff", ["average", "max", "dwt", "laplacian"])):
        [report] = (workdir / "quality").glob(f"*/{task}")
        summary = json.loads((report / "summary.json").read_text())
        assert list(summary["means"]) == ["adaray", *baselines]  # no Mertens outside MEF
        # Scored on the held-out pairs of the split only.
        pairs = discover_pairs(SAMPLES, task)
        assert summary["split"] == "val"
        assert summary["pairs"] == len(split_pairs(pairs, 0.1)[1]) < len(pairs)
        # The page carries evaluate's table and the verdict on its numbers, and the grid.
        assert (report / "summary.md").read_text().strip() in text
        met, verdict = goal_verdict(summary["means"])
        assert verdict + "." in text
        assert f"| {task} | {'met' if met else 'missed'} |" in text
        assert f"![{task}: sources and each model's result](results/{task}_grid.png)" in text
        assert read_image(page.parent / "results" / f"{task}_grid.png").shape[0] > 50
    assert "mif: goal" in run.stdout and "mff: goal" in run.stdout
    assert "Made by `adaray benchmark-quality --tasks mif mff" in text

    # Re-running one task replaces its section and keeps the other's, from the page's record.
    mif_section = text[text.index("## mif"):]
    record = json.loads(page.with_suffix(".json").read_text())
    assert [entry["task"] for entry in record] == ["mff", "mif"]  # the order of adaray.tasks
    assert record[1]["source"].startswith("runs/quality-mif-")  # inside the work folder
    run = subprocess.run(
        [ADARAY, "benchmark-quality", "--tasks", "mff", "--data", str(SAMPLES),
         "--model", f"mff={given}", "--val-fraction", "0.3", "--out", str(page),
         "--workdir", str(workdir)],
        capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    text = page.read_text()
    assert json.loads(page.with_suffix(".json").read_text())[1] == record[1]
    assert text.index("## mff") < text.index("## mif")
    assert all(line in text[text.index("## mif"):] for line in mif_section.splitlines())
    assert "Made by the commands named per task" in text
    assert "Made by `adaray benchmark-quality --tasks mff --data" in text
    assert text.count("Made by `adaray benchmark-quality --tasks mif mff") == 1
    summary = json.loads(sorted((workdir / "quality").glob("*/mff"))[-1].joinpath(
        "summary.json").read_text())
    assert summary["pairs"] == len(split_pairs(discover_pairs(SAMPLES, "mff"), 0.3)[1])
    assert f"| mff | {'met' if goal_verdict(summary['means'])[0] else 'missed'} |" in text


def test_bad_arguments_fail_before_ray_naming_them(tmp_path):
    run = subprocess.run([ADARAY, "benchmark-quality", "--tasks", "ivf", "--data",
                          str(SAMPLES), "--model", "mif=x.pt", "--out", str(tmp_path / "r.md")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--model: mif is not among --tasks ivf" in run.stderr
    # jobs/benchmark_quality.py (for `ray job submit`) takes the same arguments.
    run = subprocess.run([sys.executable, str(REPO / "jobs" / "benchmark_quality.py"),
                          "--tasks", "ivf", "--data", str(SAMPLES), "--config-dir",
                          str(tmp_path), "--out", str(tmp_path / "r.md")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and f"ivf: no training config {tmp_path / 'ivf.yaml'}" \
        in run.stderr
    # A page's record that cannot be read fails before training, naming the file.
    (tmp_path / "r.json").write_text('[{"task": "ivf"')
    run = subprocess.run([ADARAY, "benchmark-quality", "--tasks", "ivf", "--data",
                          str(SAMPLES), "--out", str(tmp_path / "r.md")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and f"{tmp_path / 'r.json'}: not a results record" in run.stderr
