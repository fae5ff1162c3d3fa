"""`adaray downstream`: label files and their errors, the union rule on hand-made boxes, the
split, mAP on perfect and empty predictions, and a --quick run on real MSRS-det pairs from
../shared on the session's Ray cluster (report files, MLflow run, mAP values)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from adaray.data import split_pairs
from adaray.downstream import (
    Boxes,
    DetectorConfig,
    LabelError,
    detection_scores,
    load_detection_data,
    merge_union,
    read_labels,
    run_downstream,
)
from adaray.downstream.labels import read_classes
from adaray.errors import ConfigError, DataError

MSRS_DET = SHARED_DATA.parent / "downstream" / "MSRS-det"
CLASSES = ["person", "bicycle", "car"]


@pytest.fixture(scope="module")
def msrs_det() -> Path:
    """The labelled MSRS pairs of ../shared; skips where they are absent."""
    if not (MSRS_DET / "classes.txt").is_file():
        pytest.skip(f"MSRS-det not found at {MSRS_DET} (set ADARAY_SHARED_DATA)")
    return MSRS_DET


def _subset(source: Path, target: Path, stems: list[str]) -> Path:
    """A copy of `stems` of MSRS-det: both images, every label set, the class list."""
    for folder in ("infrared", "visible", "labels/infrared", "labels/visible", "labels/fusion"):
        (target / folder).mkdir(parents=True, exist_ok=True)
        suffix = ".txt" if folder.startswith("labels") else ".png"
        for stem in stems:
            shutil.copy(source / folder / f"{stem}{suffix}", target / folder)
    shutil.copy(source / "classes.txt", target)
    return target


def _stems(source: Path, count: int) -> list[str]:
    return sorted(p.stem for p in (source / "infrared").glob("*.png"))[:count]


def _boxes(*rows: tuple[int, float, float, float, float]) -> Boxes:
    return Boxes(np.asarray([r[1:] for r in rows], np.float32).reshape(-1, 4),
                 np.asarray([r[0] for r in rows], np.int64))


# ----------------------------------------------------------------------------- label files


def test_yolo_labels_become_pixel_boxes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("0 0.5 0.5 0.2 0.4\n\n2 0.1 0.2 0.2 0.2\n")
    boxes = read_labels(path, 3, width=640, height=480)
    np.testing.assert_allclose(boxes.xyxy, [[256, 144, 384, 336], [0, 48, 128, 144]],
                               atol=1e-3)
    assert boxes.classes.tolist() == [0, 2]
    (tmp_path / "empty.txt").write_text("")
    assert len(read_labels(tmp_path / "empty.txt", 3, 640, 480)) == 0


@pytest.mark.parametrize(("line", "reason"), [
    ("0 0.5 0.5 0.2", "expected 5 fields"),
    ("0 0.5 0.5 0.2 0.2 0.9", "expected 5 fields"),
    ("person 0.5 0.5 0.2 0.2", "not numbers"),
    ("3 0.5 0.5 0.2 0.2", "class id 3 is not in the class list"),
    ("-1 0.5 0.5 0.2 0.2", "class id -1 is not in the class list"),
    ("1 0.5 0.5 0 0.2", "positive width and height"),
    ("1 0.5 0.5 nan 0.2", "positive width and height"),
    ("1 0.95 0.5 0.2 0.2", "outside the image"),
    ("1 0.5 -0.1 0.2 0.1", "outside the image"),
])
def test_bad_label_lines_name_the_file_and_line(tmp_path, line, reason):
    path = tmp_path / "00004N.txt"
    path.write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(LabelError, match=rf"00004N\.txt:2: .*{reason}"):
        read_labels(path, 3, 640, 480)


def test_class_lists(tmp_path):
    (tmp_path / "ids.txt").write_text("0 person\n1 bicycle\n2 car\n")
    assert read_classes(tmp_path / "ids.txt") == CLASSES
    (tmp_path / "names.txt").write_text("person\nbicycle\n")
    assert read_classes(tmp_path / "names.txt") == ["person", "bicycle"]
    (tmp_path / "gap.txt").write_text("0 person\n2 car\n")
    with pytest.raises(LabelError, match=r"gap\.txt:2: class id 2 out of order"):
        read_classes(tmp_path / "gap.txt")
    (tmp_path / "none.txt").write_text("\n")
    with pytest.raises(LabelError, match="no classes"):
        read_classes(tmp_path / "none.txt")


# ----------------------------------------------------------------------------- the union rule


def test_union_merges_overlapping_boxes_of_one_class_once():
    infrared = _boxes((0, 0, 0, 10, 20), (2, 100, 100, 140, 130), (0, 50, 50, 60, 70))
    visible = _boxes((0, 1, 1, 11, 21),         # the same person: merged (IoU 0.83)
                     (1, 100, 100, 140, 130),   # same place, another class: both kept
                     (0, 55, 60, 65, 80))       # IoU 0.2 with the third: both kept
    union = merge_union(infrared, visible)
    assert len(union) == 5
    order = np.lexsort((union.xyxy[:, 1], union.xyxy[:, 0], union.classes))
    np.testing.assert_allclose(union.xyxy[order[0]], [0.5, 0.5, 10.5, 20.5])
    assert sorted(union.classes.tolist()) == [0, 0, 0, 1, 2]


def test_union_matches_one_to_one_highest_iou_first():
    infrared = _boxes((0, 0, 0, 10, 10))
    visible = _boxes((0, 0, 0, 10, 9), (0, 0, 0, 10, 10))  # IoU 0.9 and 1.0
    union = merge_union(infrared, visible)
    assert len(union) == 2  # merged with the exact one; the other stays
    np.testing.assert_allclose(sorted(union.xyxy[:, 3].tolist()), [9, 10])
    assert len(merge_union(Boxes.empty(), visible)) == 2
    assert len(merge_union(Boxes.empty(), Boxes.empty())) == 0


# ----------------------------------------------------------------------------- data and split


def test_split_is_the_name_hash_split_and_leftovers_are_reported(msrs_det, tmp_path):
    stems = _stems(msrs_det, 12)
    root = _subset(msrs_det, tmp_path / "det", stems)
    (root / "labels" / "visible" / f"{stems[0]}.txt").unlink()   # an image without labels
    (root / "labels" / "infrared" / "99999N.txt").write_text("")  # labels without an image
    data = load_detection_data(root, "union")
    assert len(data.samples) == 11 and stems[0] not in {s.pair.stem for s in data.samples}
    assert any("labels/visible" in note and stems[0] in note for note in data.notes)
    assert any("99999N" in note and "no image pair" in note for note in data.notes)
    train, test = split_pairs([s.pair for s in data.samples], 0.3)
    assert [s.pair for s in data.train] == train and [s.pair for s in data.test] == test
    again = load_detection_data(root, "union")
    assert [s.pair.stem for s in again.test] == [s.pair.stem for s in data.test]
    # One label set alone needs only its own folder: the unlabelled pair is back.
    assert len(load_detection_data(root, "infrared").samples) == 12


def test_bad_data_fails_before_ray_naming_it(msrs_det, tmp_path):
    stems = _stems(msrs_det, 4)
    root = _subset(msrs_det, tmp_path / "det", stems)
    label = root / "labels" / "infrared" / f"{stems[1]}.txt"
    label.write_text(label.read_text() + "7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(LabelError, match=rf"{stems[1]}\.txt:\d+: class id 7"):
        load_detection_data(root, "union")
    label.write_text("")
    shutil.rmtree(root / "labels" / "fusion")
    with pytest.raises(LabelError, match=r"label folder not found: .*labels/fusion"):
        load_detection_data(root, "fusion")
    one = _subset(msrs_det, tmp_path / "one", stems[:1])
    with pytest.raises(DataError, match=r"empty (training|test) split"):
        load_detection_data(one, "union")
    with pytest.raises(ConfigError, match="--seeds"):
        run_downstream(root, [], tmp_path / "out", seeds=0)
    with pytest.raises(ConfigError, match="unknown baseline 'nope'"):
        run_downstream(root, ["baseline:nope"], tmp_path / "out")
    with pytest.raises(ConfigError, match=r"detector\.epochs"):
        DetectorConfig(epochs=0)


# ----------------------------------------------------------------------------- mAP


def test_map_is_one_for_the_ground_truth_and_zero_for_nothing():
    truth = [_boxes((0, 10, 10, 50, 90), (2, 100, 40, 220, 120)),
             _boxes((0, 300, 200, 340, 300)), Boxes.empty()]
    perfect = [{"boxes": t.xyxy, "scores": np.ones(len(t)), "classes": t.classes}
               for t in truth]
    scores = detection_scores(perfect, truth, CLASSES)
    assert scores["map_50"] == pytest.approx(1.0) and scores["map"] == pytest.approx(1.0)
    assert scores["map_50_per_class"]["person"] == pytest.approx(1.0)
    assert math.isnan(scores["map_50_per_class"]["bicycle"])  # in neither
    nothing = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0)}
               for _ in truth]
    empty = detection_scores(nothing, truth, CLASSES)
    assert empty["map_50"] == 0.0 and empty["map"] == 0.0
    shifted = [{**p, "boxes": p["boxes"] + 4.0} for p in perfect]  # IoU >= 0.5, < 0.95
    partly = detection_scores(shifted, truth, CLASSES)
    assert partly["map_50"] == pytest.approx(1.0) and 0.0 < partly["map"] < 1.0


def test_weights_load_the_tensors_that_fit(tmp_path):
    import torch

    from adaray.downstream.detector import build_detector
    from adaray.errors import ModelFileError

    trained, _ = build_detector("ssdlite320_mobilenet_v3_large", len(CLASSES))
    torch.save(trained.state_dict(), tmp_path / "same.pt")
    model, note = build_detector("ssdlite320_mobilenet_v3_large", len(CLASSES),
                                 tmp_path / "same.pt")
    total = len(model.state_dict())
    assert note == f"started from {total} of {total} tensors of same.pt"
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained.state_dict()[key])
    # Another class count: everything but the class head fits.
    other, _ = build_detector("ssdlite320_mobilenet_v3_large", 9)
    torch.save({"model": other.state_dict()}, tmp_path / "other.pt")
    _, note = build_detector("ssdlite320_mobilenet_v3_large", len(CLASSES), tmp_path / "other.pt")
    assert note.startswith("started from ") and f" of {total} " in note
    assert int(note.split()[2]) < total
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "unrelated.pt")
    with pytest.raises(ModelFileError, match=r"unrelated\.pt: none of its 1 tensors fits"):
        build_detector("ssdlite320_mobilenet_v3_large", len(CLASSES), tmp_path / "unrelated.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match=r"broken\.pt: cannot load"):
        build_detector("ssdlite320_mobilenet_v3_large", len(CLASSES), tmp_path / "broken.pt")


def test_differences_are_called_only_beyond_the_seed_spread():
    from adaray.downstream.report import differences, summarize

    def runs(name, values):
        return [{"input": name, "seed": seed, "map_50": v, "map": v / 2, "train_s": 1.0,
                 "map_50_per_class": dict.fromkeys(CLASSES, v),
                 "map_per_class": dict.fromkeys(CLASSES, v / 2)}
                for seed, v in enumerate(values)]

    results = (runs("infrared", [0.10, 0.12, 0.11]) + runs("visible", [0.20, 0.22, 0.21])
               + runs("fused", [0.30, 0.31, 0.29]) + runs("close", [0.18, 0.23, 0.20]))
    summary = summarize(results, ["infrared", "visible", "fused", "close"], CLASSES)
    assert summary["visible"]["map_50"][0] == pytest.approx(0.21)
    assert summary["visible"]["map_50"][1] == pytest.approx(0.01)  # sample std
    lines = differences(summary)
    assert any(line.startswith("- fused vs visible: +0.090") and "(better;" in line
               for line in lines), lines
    assert any(line.startswith("- infrared vs visible:") and "(worse;" in line for line in lines)
    assert any(line.startswith("- close vs visible:") and "within the seed spread" in line
               for line in lines)
    one = summarize(runs("infrared", [0.1]) + runs("visible", [0.3]), ["infrared", "visible"],
                    CLASSES)
    assert differences(one) == ["- one seed: no spread to compare against, so no difference "
                                "is called"]


# ----------------------------------------------------------------------------- end to end


@pytest.mark.timeout(600)
def test_quick_run_writes_the_report_and_an_mlflow_run(ray_cluster, msrs_det, tmp_path):
    import mlflow

    from adaray import tracking

    root = _subset(msrs_det, tmp_path / "det", _stems(msrs_det, 10))
    with ray_cluster.driver():
        result = run_downstream(root, ["baseline:max"], tmp_path / "out", seeds=2, quick=True,
                                workdir=tmp_path / "work")
    out = result.out
    assert {"summary.md", "summary.json", "per_class.csv", "map.png",
            "detections.png"} <= {p.name for p in out.iterdir()}
    assert list(result.summary) == ["infrared", "visible", "max"]
    assert len(result.results) == 6
    for run in result.results:
        assert 0.0 <= run["map_50"] <= 1.0 and 0.0 <= run["map"] <= run["map_50"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rule"] == "union" and summary["seeds"] == [0, 1]
    assert summary["detector"]["epochs"] == 1
    assert "| max |" in (out / "summary.md").read_text()
    with open(out / "per_class.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 * (len(CLASSES) + 1)
    assert (out / "fusion" / "fused" / "max").is_dir()  # fused through adaray evaluate

    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(tmp_path / "work"))
    run = client.get_run(result.run_id)
    assert run.data.tags["adaray.role"] == "downstream" and run.info.status == "FINISHED"
    assert run.data.params["labels"] == "union" and run.data.params["detector.epochs"] == "1"
    assert {"infrared.map_50", "visible.map", "max.map_50"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "downstream")}
    assert "downstream/summary.md" in artifacts and "downstream/detections.png" in artifacts
