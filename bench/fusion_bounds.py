"""How high can Qabf and VIF go? Classical fusion rules and variants on a task's val pairs.

    python bench/fusion_bounds.py --task ivf [--pairs N]

Scores the baselines of `adaray.baselines` and variants of them that a network trained with
MODEL.md's losses could approach (max intensities with added detail, a Laplacian pyramid with
a max base, unsharp masking) on the task's validation pairs (training's split, 10 %), with
`adaray.metrics` as the results page does. It shows which goal bars of issue F any of these
outputs can pass. Data: the shared tree (ADARAY_SHARED_DATA, else <repo>/../shared/data/fusion).
"""

from __future__ import annotations

import argparse
import os

import cv2
import numpy as np

from adaray import SOURCE_TREE
from adaray.baselines import LumaFuser, fuse_average, fuse_laplacian, fuse_max, pick_larger
from adaray.data.dataset import DataConfig, build_datasets
from adaray.metrics import evaluate_images


def detail(x: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """x minus its Gaussian blur: the band a gradient loss rewards."""
    return x - cv2.GaussianBlur(x, (0, 0), sigma)


def unsharp(fuse: LumaFuser, amount: float) -> LumaFuser:
    """`fuse`, then its own detail band added `amount` times more (unsharp masking)."""
    def fused_and_sharpened(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        fused = fuse(a, b)
        return fused + amount * detail(fused)
    return fused_and_sharpened


VARIANTS: dict[str, LumaFuser] = {
    "average": fuse_average,
    "max": fuse_max,
    "laplacian": fuse_laplacian,
    "laplacian, max base": lambda a, b: fuse_laplacian(a, b, base=fuse_max),
    "max + 0.5 stronger detail": lambda a, b: fuse_max(a, b) + 0.5 * pick_larger(detail(a),
                                                                                 detail(b)),
    "max, unsharp 0.5": unsharp(fuse_max, 0.5),
    "max, unsharp 1.0": unsharp(fuse_max, 1.0),
    "laplacian, unsharp 0.5": unsharp(fuse_laplacian, 0.5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--pairs", type=int, help="the first N validation pairs only")
    args = parser.parse_args()
    data = os.environ.get("ADARAY_SHARED_DATA", SOURCE_TREE.parent / "shared" / "data" / "fusion")
    _, val_set = build_datasets(data, args.task, DataConfig(val_fraction=0.1), check=False)
    count = len(val_set) if args.pairs is None else min(args.pairs, len(val_set))
    scores: dict[str, list[list[float]]] = {name: [] for name in VARIANTS}
    for index in range(count):
        a, b = (plane.astype(np.float32) for plane in val_set.luma_planes(index))
        for name, fuse in VARIANTS.items():
            s = evaluate_images(np.clip(fuse(a, b), 0, 1), a, b, ["Qabf", "VIF", "SSIM"])
            scores[name].append([s["Qabf"], s["VIF"], s["SSIM"]])
    print(f"{args.task}: mean over {count} validation pairs\n")
    print("| fusion | Qabf | VIF | SSIM |\n|---|---|---|---|")
    for name, rows in scores.items():
        qabf, vif, ssim = np.mean(rows, axis=0)
        print(f"| {name} | {qabf:.4f} | {vif:.4f} | {ssim:.4f} |")


if __name__ == "__main__":
    main()
