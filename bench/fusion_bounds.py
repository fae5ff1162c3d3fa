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
from collections.abc import Callable

import cv2
import numpy as np

from adaray import REPO_ROOT
from adaray.baselines import (
    _laplacian_pyramid,
    _pick_larger,
    fuse_average,
    fuse_laplacian,
    fuse_max,
)
from adaray.data.dataset import DataConfig, build_datasets
from adaray.metrics import evaluate_images

Fusion = Callable[[np.ndarray, np.ndarray], np.ndarray]


def laplacian_max_base(a: np.ndarray, b: np.ndarray, levels: int = 4) -> np.ndarray:
    """Laplacian pyramid fusion whose base is the max of the sources' bases (not the mean)."""
    pa, pb = _laplacian_pyramid(a, levels), _laplacian_pyramid(b, levels)
    out = np.maximum(pa[-1], pb[-1])
    for la, lb in zip(reversed(pa[:-1]), reversed(pb[:-1]), strict=True):
        out = cv2.pyrUp(out, dstsize=la.shape[::-1]) + _pick_larger(la, lb)
    return out


def detail(x: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """x minus its Gaussian blur: the band a gradient loss rewards."""
    return x - cv2.GaussianBlur(x, (0, 0), sigma)


VARIANTS: dict[str, Fusion] = {
    "average": fuse_average,
    "max": fuse_max,
    "laplacian": fuse_laplacian,
    "laplacian, max base": laplacian_max_base,
    "max + 0.5 stronger detail": lambda a, b: fuse_max(a, b) + 0.5 * _pick_larger(detail(a),
                                                                                  detail(b)),
    "max, unsharp 0.5": lambda a, b: fuse_max(a, b) + 0.5 * detail(fuse_max(a, b)),
    "max, unsharp 1.0": lambda a, b: fuse_max(a, b) + 1.0 * detail(fuse_max(a, b)),
    "laplacian, unsharp 0.5": lambda a, b: fuse_laplacian(a, b) + 0.5 * detail(
        fuse_laplacian(a, b)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--pairs", type=int, help="the first N validation pairs only")
    args = parser.parse_args()
    data = os.environ.get("ADARAY_SHARED_DATA", REPO_ROOT.parent / "shared" / "data" / "fusion")
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
