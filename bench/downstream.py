"""Detector speed for `adaray downstream`: which torchvision detector fits a CPU budget?

    python bench/downstream.py [--data ../shared/data/downstream/MSRS-det] [--images 8]
                               [--epochs 2] [--threads 1]

For each architecture of `adaray.downstream.detector.ARCHITECTURES`, built as the benchmark
builds it (from scratch, 3 classes), on real MSRS-det pairs (visible images, union labels):
training images/s (batch 4, the step of `train_detector`: forward with losses, backward,
AdamW) and prediction images/s, on `--threads` torch threads. Prints figures only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from adaray import SOURCE_TREE
from adaray.data import read_image
from adaray.downstream.data import load_detection_data
from adaray.downstream.detector import ARCHITECTURES, DetectorConfig, predict, train_detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SOURCE_TREE.parent / "shared" / "data" /
                        "downstream" / "MSRS-det")
    parser.add_argument("--images", type=int, default=8, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (batch 4)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    data = load_detection_data(args.data, "union")
    samples = data.train[:args.images]
    images = [np.rint(read_image(s.pair.b_path) * 255).astype(np.uint8) for s in samples]
    boxes = [s.boxes for s in samples]
    print(f"{len(images)} visible MSRS-det images ({images[0].shape[1]}x{images[0].shape[0]}), "
          f"batch 4, {args.threads} thread(s), torch {torch.__version__}\n")
    print("| detector | train img/s | predict img/s | parameters |")
    print("|---|---|---|---|")
    for arch in ARCHITECTURES:
        cfg = DetectorConfig(arch=arch, epochs=1, warmup_steps=1, threads=args.threads)
        train_detector(images[:4], boxes[:4], len(data.classes), cfg, seed=0)  # warm-up
        cfg = DetectorConfig(arch=arch, epochs=args.epochs, warmup_steps=1, threads=args.threads)
        started = time.perf_counter()
        model, _ = train_detector(images, boxes, len(data.classes), cfg, seed=0)
        train_rate = args.epochs * len(images) / (time.perf_counter() - started)
        started = time.perf_counter()
        predict(model, images)
        predict_rate = len(images) / (time.perf_counter() - started)
        params = sum(p.numel() for p in model.parameters())
        print(f"| {arch} | {train_rate:.2f} | {predict_rate:.2f} | {params:,} |", flush=True)


if __name__ == "__main__":
    main()
