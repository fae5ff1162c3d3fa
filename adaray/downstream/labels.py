"""Object labels for the downstream detection benchmark: YOLO text files, read and checked, and
the one ground-truth rule that every input is scored against.

A label file holds one box per line, `class cx cy w h`, normalised to [0, 1] by the image width
and height; an empty file means no box. `read_labels` turns it into `Boxes` (pixel corners) and
stops at the first bad line with a `LabelError` that names the file and the line.

Ground truth (`LABEL_SETS`): the boxes annotated on the infrared image, on the visible image, on
a fused image, or `union` (the default): the infrared and the visible boxes together, where a
box of one set and a box of the other with the same class and IoU >= `MERGE_IOU` are one object
(kept once, as the mean of the two boxes). Each set alone misses what its sensor cannot show
(few people in visible night scenes, cold objects in infrared), so scoring every input against
one set would favour the input it was drawn on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adaray.errors import DataError

LABEL_SETS = ("union", "infrared", "visible", "fusion")
UNION_OF = ("infrared", "visible")
MERGE_IOU = 0.5
EDGE_TOLERANCE = 1e-3  # normalised: a box may overhang the image by this much (< 1 pixel)


class LabelError(DataError):
    """A label or class file that cannot be used (names the file and line)."""


@dataclass(frozen=True)
class Boxes:
    """The boxes of one image: `xyxy` (N, 4) float32 pixel corners, `classes` (N,) int64."""

    xyxy: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.classes)

    @staticmethod
    def empty() -> Boxes:
        return Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))


def read_classes(path: Path) -> list[str]:
    """Class names from `classes.txt`: one `id name` (or just `name`) per line, ids 0, 1, ..."""
    names: list[str] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise LabelError(f"{path}: cannot read the class list: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, start=1):
        fields = line.split(maxsplit=1)
        if not fields:
            continue
        if len(fields) == 2 and fields[0].isdigit():
            if int(fields[0]) != len(names):
                raise LabelError(f"{path}:{number}: class id {fields[0]} out of order "
                                 f"(expected {len(names)})")
            names.append(fields[1].strip())
        else:
            names.append(line.strip())
    if not names:
        raise LabelError(f"{path}: no classes listed")
    return names


def read_labels(path: Path, num_classes: int, width: int, height: int) -> Boxes:
    """The boxes of a YOLO label file, in pixels of a `width` x `height` image.

    Raises LabelError naming the file and line: not five numbers, a class id outside
    0..num_classes-1, a box without area or outside the image.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot read the label file: {exc}") from None
    xyxy, classes = [], []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 5:
            raise LabelError(f"{where}: expected 5 fields 'class cx cy w h', got {len(fields)}")
        try:
            class_id = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise LabelError(f"{where}: not numbers: {line.strip()!r}") from None
        if not 0 <= class_id < num_classes:
            raise LabelError(f"{where}: class id {class_id} is not in the class list "
                             f"(0-{num_classes - 1})")
        if not all(math.isfinite(v) for v in (cx, cy, w, h)) or w <= 0 or h <= 0:
            raise LabelError(f"{where}: a box needs a positive width and height, got "
                             f"{line.strip()!r}")
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if min(x0, y0) < -EDGE_TOLERANCE or max(x1, y1) > 1 + EDGE_TOLERANCE:
            raise LabelError(f"{where}: box ({x0:.4f}, {y0:.4f})-({x1:.4f}, {y1:.4f}) lies "
                             f"outside the image (normalised coordinates must be in [0, 1])")
        xyxy.append((max(x0, 0.0) * width, max(y0, 0.0) * height, min(x1, 1.0) * width,
                     min(y1, 1.0) * height))
        classes.append(class_id)
    if not classes:
        return Boxes.empty()
    return Boxes(np.asarray(xyxy, np.float32), np.asarray(classes, np.int64))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (N, 4) with every box of `b` (M, 4), xyxy: (N, M)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def merge_union(first: Boxes, second: Boxes, iou: float = MERGE_IOU) -> Boxes:
    """Both sets' boxes, where a box of `first` and one of `second` with the same class and
    IoU >= `iou` count once (their mean). Pairs are matched greedily, highest IoU first; boxes
    within one set are never merged with each other."""
    overlap = box_iou(first.xyxy, second.xyxy)
    overlap[first.classes[:, None] != second.classes[None, :]] = 0.0
    used_first, used_second, merged = set(), set(), []
    for index in np.argsort(-overlap, axis=None, kind="stable"):
        i, j = (int(k) for k in np.unravel_index(index, overlap.shape))
        if overlap[i, j] < iou:
            break
        if i in used_first or j in used_second:
            continue
        used_first.add(i)
        used_second.add(j)
        merged.append((i, j))
    xyxy = [(first.xyxy[i] + second.xyxy[j]) / 2 for i, j in merged]
    classes = [first.classes[i] for i, _ in merged]
    for boxes, used in ((first, used_first), (second, used_second)):
        keep = [k for k in range(len(boxes)) if k not in used]
        xyxy.extend(boxes.xyxy[keep])
        classes.extend(boxes.classes[keep])
    if not classes:
        return Boxes.empty()
    return Boxes(np.asarray(xyxy, np.float32).reshape(-1, 4), np.asarray(classes, np.int64))


def ground_truth(sets: dict[str, Boxes], rule: str) -> Boxes:
    """The boxes `rule` (one of LABEL_SETS) takes from an image's label sets."""
    if rule not in LABEL_SETS:
        raise LabelError(f"--labels: {rule!r} is not one of {', '.join(LABEL_SETS)}")
    if rule == "union":
        return merge_union(*(sets[name] for name in UNION_OF))
    return sets[rule]


def needed_sets(rule: str) -> Sequence[str]:
    """The label sets (folders under labels/) that `rule` reads."""
    return UNION_OF if rule == "union" else (rule,)
