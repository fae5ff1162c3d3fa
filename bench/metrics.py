"""Time every fusion metric on one real triple at 768x576, on one thread.

    python bench/metrics.py [--pair IVF|MFF|MEF|MIF] [--fused mean|float] [--repeats N]

Loads the first pair of the task from the shared data (ADARAY_SHARED_DATA, else
<repo>/../shared/data/fusion), resizes both gray sources to 768x576 (width x height), fuses
them by averaging (`float` adds a little noise, so that nearly every value is distinct, as in a
network's output) and prints the best-of-N seconds of each metric, their total, one evaluate()
call (what a sweep runs; it shares the SSIM moments), and the scikit-image / scikit-learn calls
that SSIM and MI would otherwise cost.
"""

from __future__ import annotations

import os

for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
):
    os.environ[_var] = "1"  # before numpy loads its BLAS

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from adaray import SOURCE_TREE  # noqa: E402
from adaray.metrics import METRICS, evaluate, read_gray  # noqa: E402

SIZE = (768, 576)  # (width, height), as cv2.resize takes it
PAIRS = {  # task -> (folder, A subfolder, B subfolder)
    "IVF": ("IVF/RoadScene", "infrared", "visible"),
    "MFF": ("MFF/MFIFB", "imageA", "imageB"),
    "MEF": ("MEF/MEFB", "low", "over"),
    "MIF": ("MIF/Harvard-CT", "CT", "MRI"),
}


def shared_data() -> Path:
    default = SOURCE_TREE.parent / "shared" / "data" / "fusion"
    return Path(os.environ.get("ADARAY_SHARED_DATA", default))


def load_triple(task: str, fused: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    folder, a_dir, b_dir = PAIRS[task]
    root = shared_data() / folder
    path_a = sorted((root / a_dir).iterdir())[0]
    (path_b,) = (root / b_dir).glob(f"{path_a.stem}.*")
    A, B = (
        cv2.resize(read_gray(path), SIZE, interpolation=cv2.INTER_AREA).round()
        for path in (path_a, path_b)
    )
    F = (A + B) / 2
    if fused == "float":
        F = np.clip(F + np.random.default_rng(0).normal(0, 0.5, F.shape), 0, 255)
    return path_a.stem, F, A, B


def best_time(call: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def baselines(F: np.ndarray, A: np.ndarray, B: np.ndarray) -> dict[str, Callable[[], object]]:
    """The library calls a plain implementation would make for SSIM, SSIM_dr2 and MI."""
    from skimage.metrics import structural_similarity
    from sklearn.metrics import mutual_info_score

    def ssim_pair(data_range: float) -> Callable[[], object]:
        return lambda: [structural_similarity(F, X, data_range=data_range) for X in (A, B)]

    def mi_pair() -> list[float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn calls gray values "continuous" labels
            return [mutual_info_score(F.ravel(), X.ravel()) for X in (A, B)]

    return {
        "SSIM (skimage x2)": ssim_pair(255),
        "SSIM_dr2 (skimage x2)": ssim_pair(2),
        "MI (sklearn x2)": mi_pair,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="IVF")
    parser.add_argument("--fused", choices=["mean", "float"], default="mean")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cv2.setNumThreads(1)

    stem, F, A, B = load_triple(args.pair, args.fused)
    print(f"{args.pair} pair {stem!r} at {F.shape[1]}x{F.shape[0]}, fused: {args.fused}")
    print(f"one thread, best of {args.repeats}\n")
    print(f"{'metric':<24}{'seconds':>10}{'value':>14}")
    total = 0.0
    for name, metric in METRICS.items():
        seconds = best_time(lambda metric=metric: metric(F, A, B), args.repeats)
        total += seconds
        print(f"{name:<24}{seconds:>10.4f}{metric(F, A, B):>14.6f}")
    print(f"{'total':<24}{total:>10.4f}")
    print(f"{'evaluate() all 12':<24}{best_time(lambda: evaluate(F, A, B), args.repeats):>10.4f}")
    print("\nbaselines")
    for name, call in baselines(F, A, B).items():
        print(f"{name:<24}{best_time(call, min(args.repeats, 2)):>10.4f}")


if __name__ == "__main__":
    main()
