"""The downstream detection data: infrared-visible pairs with object labels, checked and split.

Layout (as `../shared/data/downstream/MSRS-det`): `infrared/` and `visible/` hold the pairs (the
IVF folder rules of `adaray.data.discover_pairs`), `labels/<set>/<stem>.txt` the YOLO boxes of
each label set (`infrared`, `visible`, `fusion`), `classes.txt` the class names.
`load_detection_data` reads all of it before Ray starts: a bad label file stops it naming the
file and line; an image without a label file, or a label file without an image, is reported and
left out. The split is training's deterministic one (`adaray.data.split_pairs`): a pair's side
depends only on its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adaray.data import ImagePair, check_pairs, discover_pairs, read_image, split_pairs
from adaray.data.location import Location
from adaray.downstream.labels import (
    Boxes,
    LabelError,
    ground_truth,
    needed_sets,
    read_classes,
    read_labels,
)
from adaray.errors import DataError

CLASSES_FILE = "classes.txt"
LABELS_DIR = "labels"


@dataclass(frozen=True)
class DetectionSample:
    """One labelled pair: the source pair and its ground-truth boxes (pixels)."""

    pair: ImagePair
    boxes: Boxes


@dataclass
class DetectionData:
    """Everything the benchmark trains and scores on, split into train and test."""

    root: Path
    classes: list[str]
    rule: str  # the ground-truth rule (adaray.downstream.labels.LABEL_SETS)
    train: list[DetectionSample]
    test: list[DetectionSample]
    notes: list[str] = field(default_factory=list)  # what was left out, and why

    @property
    def samples(self) -> list[DetectionSample]:
        return self.train + self.test


def _listing(stems: list[str], limit: int = 5) -> str:
    shown = ", ".join(stems[:limit])
    return f"{shown}, ... ({len(stems)} in all)" if len(stems) > limit else shown


def load_detection_data(root: str | Path, rule: str = "union",
                        test_fraction: float = 0.3) -> DetectionData:
    """Read the pairs, the class list and the label sets `rule` needs; split by name.

    Raises DataError (LabelError for label files) naming the file, line or folder; an empty
    train or test split is an error too.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"--data: folder not found: {root}")
    classes = read_classes(root / CLASSES_FILE)
    pairs = {pair.stem: pair for pair in discover_pairs(Location.of(root), "ivf")}
    check_pairs(list(pairs.values()))
    label_files: dict[str, dict[str, Path]] = {}
    for name in needed_sets(rule):
        folder = root / LABELS_DIR / name
        if not folder.is_dir():
            raise LabelError(f"--labels {rule}: label folder not found: {folder}")
        label_files[name] = {path.stem: path for path in sorted(folder.glob("*.txt"))}

    notes = []
    for name, files in label_files.items():
        unlabelled = sorted(set(pairs) - set(files))
        if unlabelled:
            notes.append(f"{len(unlabelled)} pairs have no label file in {LABELS_DIR}/{name} "
                         f"and are left out: {_listing(unlabelled)}")
        orphans = sorted(set(files) - set(pairs))
        if orphans:
            notes.append(f"{len(orphans)} label files in {LABELS_DIR}/{name} have no image pair "
                         f"and are ignored: {_listing(orphans)}")
    samples = []
    for stem, pair in sorted(pairs.items()):
        if not all(stem in files for files in label_files.values()):
            continue
        height, width = read_image(pair.a_path).shape[:2]
        sets = {name: read_labels(files[stem], len(classes), width, height)
                for name, files in label_files.items()}
        samples.append(DetectionSample(pair, ground_truth(sets, rule)))
    if not samples:
        raise DataError(f"--data {root}: no pair has labels for --labels {rule}")
    by_pair = {sample.pair: sample for sample in samples}
    train, test = split_pairs([s.pair for s in samples], test_fraction)
    if not train or not test:
        raise DataError(f"--data {root}: {len(samples)} labelled pairs give an empty "
                        f"{'training' if not train else 'test'} split at test fraction "
                        f"{test_fraction}; add pairs or change --test-fraction")
    return DetectionData(root, classes, rule, [by_pair[p] for p in train],
                         [by_pair[p] for p in test], notes)
