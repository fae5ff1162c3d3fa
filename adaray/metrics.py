"""Fusion-quality metrics exactly as defined in shared/docs/METRICS.md.

Every metric scores a fused image F, and most also score it against the sources A and B. Inputs
are 2-D arrays of gray values in 0..255 (any real dtype; computed in float64); `read_gray` makes
them from files. `METRICS` maps the published names, in canonical table order, to callables of
(F, A, B); `evaluate` scores one triple on all or some of them and computes what metrics share
only once.

The code is vectorised for sweeps that score every validation pair of every trial: the VIF
Gaussian windows are applied separably as banded matrix products, the Sobel filters as shifted
sums, MI counts joint values with `np.bincount`, and elementwise work runs over row strips.

One module of about 580 lines, on purpose: it follows METRICS.md section by section (EN, SD,
SF, AG; MI; SCD, CC, PSNR; SSIM; VIF; Qabf; the registry), so each definition can be checked
against the spec reading top to bottom, and the sections share the input checks and the
row-strip helpers at the top.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import ArrayLike
from scipy.ndimage import uniform_filter

from adaray.errors import ConfigError, DataError

__all__ = [
    "METRICS",
    "ag",
    "cc",
    "entropy",
    "evaluate",
    "mi",
    "psnr",
    "qabf",
    "read_gray",
    "scd",
    "sd",
    "sf",
    "ssim",
    "ssim_dr2",
    "vif",
]

MetricFn = Callable[[ArrayLike, ArrayLike, ArrayLike], float]


def read_gray(path: str | Path) -> np.ndarray:
    """Read an image file as float64 gray values 0..255, the way METRICS.md scores files.

    OpenCV decodes the file to 8-bit BGR (cv2.IMREAD_COLOR: gray files are replicated to three
    channels, alpha is dropped, and 16-bit files keep their high byte, i.e. value >> 8); BGR2GRAY
    then weighs 0.114 B + 0.587 G + 0.299 R and rounds to integers. Raises DataError naming the
    path when the file is missing or cannot be decoded.
    """
    if not Path(path).is_file():
        raise DataError(f"cannot read image {path}: no such file")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"cannot read image {path}: OpenCV could not decode it")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float64)


def _as_image(image: ArrayLike, name: str = "F") -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D gray image, got an array of shape {array.shape}")
    return array


def _as_triple(F: ArrayLike, A: ArrayLike, B: ArrayLike) -> tuple[np.ndarray, ...]:
    F, A, B = _as_image(F, "F"), _as_image(A, "A"), _as_image(B, "B")
    if not F.shape == A.shape == B.shape:
        raise ValueError(
            f"F, A and B must have the same shape, got F {F.shape}, A {A.shape}, B {B.shape}"
        )
    return F, A, B


def _require_side(image: np.ndarray, side: int, metric: str) -> None:
    if min(image.shape) < side:
        raise ValueError(f"{metric} needs images of at least {side}x{side}, got {image.shape}")


# --- strips ------------------------------------------------------------------------------------

# Whole-image elementwise work runs over row strips of about this many pixels: their
# temporaries stay in cache and are recycled by the allocator, where whole-image temporaries
# cost fresh pages (page faults) on every call.
_STRIP_PIXELS = 1 << 14


def _strips(start: int, stop: int, width: int, multiple: int = 1) -> Iterator[slice]:
    """Consecutive row ranges covering start..stop, each a multiple of `multiple` rows."""
    step = max(1, _STRIP_PIXELS // (width * multiple)) * multiple
    for top in range(start, stop, step):
        yield slice(top, min(top + step, stop))


def _strip_sum(term: Callable[..., np.ndarray], *images: np.ndarray) -> float:
    """Sum of term(*rows of images) over row strips of equally shaped images."""
    height, width = images[0].shape
    return sum(float(term(*(X[rows] for X in images)).sum()) for rows in _strips(0, height, width))


# --- EN, SD, SF, AG: the fused image alone ---------------------------------------------------


def _entropy_nats(counts: np.ndarray, total: int | None = None) -> float:
    """Shannon entropy (nats) of the distribution given by occurrence counts.

    Values seen once add 1 log 1 = 0 to the sum, so they are skipped, and `counts` may leave
    them out when `total` gives the number of observations.
    """
    total = counts.sum() if total is None else total
    repeated = counts[counts > 1]
    return math.log(total) - float(np.dot(repeated, np.log(repeated))) / total


def entropy(F: ArrayLike) -> float:
    """EN: entropy (bits) of the 256-bin histogram of uint8(round(F)) (saturating cast)."""
    F = _as_image(F)
    counts = np.zeros(256, dtype=np.intp)
    for rows in _strips(0, F.shape[0], F.shape[1]):
        levels = np.clip(np.round(F[rows]), 0, 255).astype(np.intp)
        counts += np.bincount(levels.ravel(), minlength=256)
    return _entropy_nats(counts) / math.log(2)


def sd(F: ArrayLike) -> float:
    """SD: population standard deviation of F."""
    F = _as_image(F)
    mean = F.mean()
    return math.sqrt(_strip_sum(lambda f: (f - mean) ** 2, F) / F.size)


def sf(F: ArrayLike) -> float:
    """SF: spatial frequency, sqrt(mean squared row step + mean squared column step)."""
    F = _as_image(F)
    _require_side(F, 2, "SF")
    height, width = F.shape
    row_steps = _strip_sum(lambda f: np.diff(f, axis=1) ** 2, F) / (height * (width - 1))
    col_steps = _strip_sum(lambda lower, upper: (lower - upper) ** 2, F[1:], F[:-1])
    return math.sqrt(row_steps + col_steps / ((height - 1) * width))


def _gradient_strength(
    rows: np.ndarray, above: np.ndarray, below: np.ndarray, span: int
) -> np.ndarray:
    """sqrt((Gx^2 + Gy^2) / 2) of `rows`, Gy = (below - above) / span (np.gradient's terms)."""
    Gx = np.gradient(rows, axis=1)
    Gy = (below - above) / span
    return np.sqrt((Gx * Gx + Gy * Gy) / 2)


def ag(F: ArrayLike) -> float:
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2), central differences inside, one-sided at borders."""
    F = _as_image(F)
    _require_side(F, 2, "AG")
    inside = _strip_sum(functools.partial(_gradient_strength, span=2), F[1:-1], F[:-2], F[2:])
    top = _gradient_strength(F[:1], F[:1], F[1:2], span=1).sum()
    bottom = _gradient_strength(F[-1:], F[-2:-1], F[-1:], span=1).sum()
    return float(inside + top + bottom) / F.size


# --- MI ----------------------------------------------------------------------------------------

# Integral images spanning fewer levels than this are coded by value without sorting.
_MAX_VALUE_LEVELS = 1 << 16
# Joint codes up to this many bins are counted with np.bincount, beyond it with np.unique.
_MAX_JOINT_BINS = 1 << 22


def _value_codes(X: np.ndarray) -> tuple[np.ndarray, int]:
    """Label every pixel by its exact value: (codes in 0..levels-1, levels)."""
    flat = X.ravel()
    shifted = flat - flat.min()
    if shifted.max() < _MAX_VALUE_LEVELS:
        codes = shifted.astype(np.intp)
        if np.array_equal(codes, shifted):
            return codes, int(codes.max()) + 1
    # The rank of each value among the distinct ones: np.unique's inverse, at half its cost.
    order = np.argsort(flat)
    ordered = flat[order]
    new_value = np.empty(flat.size, dtype=bool)
    new_value[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new_value[1:])
    ranks = np.cumsum(new_value) - 1
    codes = np.empty_like(ranks)
    codes[order] = ranks
    return codes, int(ranks[-1]) + 1


def _mutual_information(
    f_codes: np.ndarray, f_counts: np.ndarray, f_entropy: float, X: np.ndarray
) -> float:
    """MI (nats) between labelled F and the exact values of X, as sklearn's mutual_info_score."""
    x_codes, x_levels = _value_codes(X)
    joint = f_codes * x_levels + x_codes
    if f_counts.size * x_levels <= _MAX_JOINT_BINS:
        joint_counts = np.bincount(joint)
    else:
        # Too many bins to count densely: sort instead, and only the pixels whose F value repeats
        # (few, for a continuous F), since a joint value seen once adds nothing to the sum.
        joint_counts = np.unique(joint[f_counts[f_codes] > 1], return_counts=True)[1]
    information = (
        f_entropy
        + _entropy_nats(np.bincount(x_codes))
        - _entropy_nats(joint_counts, total=f_codes.size)
    )
    return max(information, 0.0)


def mi(F: ArrayLike, A: ArrayLike, B: ArrayLike) -> float:
    """MI: MI(F, A) + MI(F, B) in nats over the exact pixel values.

    Exact values make a float F whose values are nearly all distinct (a raw network output)
    score about H(A) + H(B); round F to 8 bits first to score it as a saved image would be.
    """
    F, A, B = _as_triple(F, A, B)
    f_codes, f_levels = _value_codes(F)
    f_counts = np.bincount(f_codes, minlength=f_levels)
    f_entropy = _entropy_nats(f_counts)
    return sum(_mutual_information(f_codes, f_counts, f_entropy, X) for X in (A, B))


# --- SCD, CC, PSNR -----------------------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either array is constant (undefined)."""
    mean_x, mean_y = x.mean(), y.mean()
    sums = np.zeros(3)  # sum of dx dy, dx^2, dy^2
    for rows in _strips(0, x.shape[0], x.shape[1]):
        dx = (x[rows] - mean_x).ravel()
        dy = (y[rows] - mean_y).ravel()
        sums += np.dot(dx, dy), np.dot(dx, dx), np.dot(dy, dy)
    scale = math.sqrt(sums[1] * sums[2])
    return float(sums[0] / scale) if scale > 0 else math.nan


def scd(F: ArrayLike, A: ArrayLike, B: ArrayLike) -> float:
    """SCD: corr(A, F - B) + corr(B, F - A); NaN where a correlation is undefined."""
    F, A, B = _as_triple(F, A, B)
    return _pearson(A, F - B) + _pearson(B, F - A)


def cc(F: ArrayLike, A: ArrayLike, B: ArrayLike) -> float:
    """CC: (corr(A, F) + corr(B, F)) / 2; NaN where a correlation is undefined."""
    F, A, B = _as_triple(F, A, B)
    return (_pearson(A, F) + _pearson(B, F)) / 2


def psnr(F: ArrayLike, A: ArrayLike, B: ArrayLike) -> float:
    """PSNR: 10 log10(max(F)^2 / MSE), MSE averaged over A and B; inf when MSE == 0."""
    F, A, B = _as_triple(F, A, B)
    mse = _strip_sum(lambda f, a, b: (a - f) ** 2 + (b - f) ** 2, F, A, B) / (2 * F.size)
    if mse == 0:
        return math.inf
    peak_power = float(F.max()) ** 2
    return 10 * math.log10(peak_power / mse) if peak_power > 0 else -math.inf


# --- SSIM --------------------------------------------------------------------------------------

_SSIM_WIN = 7  # scikit-image defaults: 7x7 uniform window, sample covariance, K1, K2
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_SSIM_COV_NORM = _SSIM_WIN**2 / (_SSIM_WIN**2 - 1)
_SSIM_DATA_RANGE = {"SSIM": 255.0, "SSIM_dr2": 2.0}


def _ssim_sums(
    F: np.ndarray, A: np.ndarray, B: np.ndarray, data_ranges: tuple[float, ...]
) -> list[float]:
    """SSIM(F, A) + SSIM(F, B) for each data range, filtering every moment once.

    The window means are the full-image uniform_filter passes scikit-image runs (applied to a
    stack, image by image), so the cropped values are bitwise its own; only the final mean is
    summed in another order.
    """
    _require_side(F, _SSIM_WIN, "SSIM")
    height, width = F.shape
    moments = np.empty((8, height, width))  # F, FF, then X, XX, FX for X = A, B
    moments[0] = F
    np.multiply(F, F, out=moments[1])
    for first, X in ((2, A), (5, B)):
        moments[first] = X
        np.multiply(X, X, out=moments[first + 1])
        np.multiply(F, X, out=moments[first + 2])
    # In place, as uniform_filter runs its own second pass: a 1-D pass reads each line whole.
    means = uniform_filter(moments, size=_SSIM_WIN, axes=(1, 2), output=moments)
    pad = (_SSIM_WIN - 1) // 2
    cols = slice(pad, width - pad)
    constants = [((_SSIM_K1 * r) ** 2, (_SSIM_K2 * r) ** 2) for r in data_ranges]
    totals = [0.0] * len(data_ranges)
    for rows in _strips(pad, height - pad, width):
        uf = means[0, rows, cols]
        vf = _SSIM_COV_NORM * (means[1, rows, cols] - uf * uf)
        for first in (2, 5):
            ux = means[first, rows, cols]
            vx = _SSIM_COV_NORM * (means[first + 1, rows, cols] - ux * ux)
            vfx = _SSIM_COV_NORM * (means[first + 2, rows, cols] - uf * ux)
            mean_product, mean_squares = 2 * uf * ux, uf**2 + ux**2
            covariance, variances = 2 * vfx, vf + vx
            for i, (C1, C2) in enumerate(constants):
                ssim_map = ((mean_product + C1) * (covariance + C2)) / (
                    (mean_squares + C1) * (variances + C2)
                )
                totals[i] += float(ssim_map.sum())
    pixels = (height - 2 * pad) * (width - 2 * pad)
    return [total / pixels for total in totals]


def ssim(F: ArrayLike, A: ArrayLike, B: ArrayLike) -> float:
    """SSIM: SSIM(F, A) + SSIM(F, B), scikit-image defaults with data_range=255."""
    return _ssim_sums(*_as_triple(F, A, B), (_SSIM_DATA_RANGE["SSIM"],))[0]


def ssim_dr2(F: ArrayLike, A: ArrayLike, B: ArrayLike) -> float:
    """SSIM_dr2: as SSIM with data_range=2, the scale of CDDFuse-family tables."""
    return _ssim_sums(*_as_triple(F, A, B), (_SSIM_DATA_RANGE["SSIM_dr2"],))[0]


# --- VIF ---------------------------------------------------------------------------------------

_VIF_NOISE_VAR = 2.0
_VIF_EPS = 1e-10
_BAND_ROWS = 8  # outputs per banded-matrix block (tuned on 768x576 for windows of 5..33 taps)
# Smallest side the four scales fit in: 81 -> 33 (17 taps, halved) -> 13 (9 taps, halved) -> 5.
_VIF_MIN_SIDE = 81


@functools.cache
def _gaussian_taps(size: int) -> np.ndarray:
    """1-D factor of the normalised size x size Gaussian window with sigma = size / 5.

    METRICS.md zeroes 2-D entries below machine-eps times the maximum; the smallest entry is
    exp(-6.25 (1 - 1/size)^2) > 1e-3 of the maximum, so that never applies and the window is
    exactly separable.
    """
    offsets = np.arange(size) - (size - 1) / 2
    taps = np.exp(-(offsets**2) / (2 * (size / 5) ** 2))
    taps /= taps.sum()
    taps.flags.writeable = False
    return taps


@functools.cache
def _band_matrix(size: int, stride: int, rows: int) -> np.ndarray:
    """Row i holds the `size` Gaussian taps from column stride * i: `rows` filter outputs."""
    taps = _gaussian_taps(size)
    band = np.zeros((rows, stride * (rows - 1) + size))
    for i in range(rows):
        band[i, stride * i : stride * i + size] = taps
    band.flags.writeable = False
    return band


def _row_blocks(
    x: np.ndarray, count: int, step: int, length: int, writeable: bool = False
) -> np.ndarray:
    """View of x (..., H, W) as `count` blocks of `length` rows starting every `step` rows."""
    *lead, row, col = x.strides
    shape = (*x.shape[:-2], count, length, x.shape[-1])
    return as_strided(x, shape, (*lead, step * row, row, col), writeable=writeable)


def _filter_rows_valid(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Gaussian-filter axis -2 of x (any strides), 'valid' mode, keeping every stride-th row."""
    count = (x.shape[-2] - size) // stride + 1
    rows = min(_BAND_ROWS, count)
    band = _band_matrix(size, stride, rows)
    full_blocks = count // rows
    out = np.empty((*x.shape[:-2], count, x.shape[-1]))
    np.matmul(
        band,
        _row_blocks(x, full_blocks, stride * rows, band.shape[1]),
        out=_row_blocks(out, full_blocks, rows, rows, writeable=True),
    )
    done = full_blocks * rows
    if done < count:
        tail = band[: count - done, : stride * (count - done - 1) + size]
        start = stride * done
        np.matmul(tail, x[..., start : start + tail.shape[1], :], out=out[..., done:, :])
    return out


def _gaussian_valid_transposed(images: np.ndarray, size: int, stride: int = 1) -> np.ndarray:
    """Separable 2-D Gaussian filtering of the last two axes ('valid', every stride-th output).

    The result comes back transposed (..., W', H'): filtering the transposed view of the first
    pass along its rows avoids a copy. The window is symmetric and VIF only sums elementwise
    statistics, so the orientation never matters to it.
    """
    first_pass = _filter_rows_valid(images, size, stride)
    return _filter_rows_valid(first_pass.swapaxes(-1, -2), size, stride)


def _vif_sums(
    ref_a: np.ndarray, ref_b: np.ndarray, dist: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One scale's numerator and denominator sums of VIFF(A, F) and VIFF(B, F)."""
    num = np.zeros(2)
    den = np.zeros(2)
    valid_rows = dist.shape[0] - size + 1
    for rows in _strips(0, valid_rows, dist.shape[1], multiple=_BAND_ROWS):
        window = slice(rows.start, rows.stop + size - 1)
        a, b, f = ref_a[window], ref_b[window], dist[window]
        products = np.empty((8, *f.shape))  # A, B, F, AA, BB, FF, AF, BF
        products[0:3] = a, b, f
        np.multiply(products[0:3], products[0:3], out=products[3:6])
        np.multiply(products[0:2], f, out=products[6:8])
        means = _gaussian_valid_transposed(products, size)
        mu_ref, mu_dist = means[0:2], means[2]
        var_ref = np.maximum(means[3:5] - mu_ref * mu_ref, 0)
        var_dist = np.maximum(means[5] - mu_dist * mu_dist, 0)
        cov = means[6:8] - mu_ref * mu_dist

        g = cov / (var_ref + _VIF_EPS)
        sv_sq = np.maximum(var_dist - g * cov, _VIF_EPS)
        # METRICS.md zeroes the gain g where either variance is below eps or g < 0, and the
        # reference variance where it is below eps: such pixels add log10(1) = 0.
        textured_ref = var_ref >= _VIF_EPS
        kept = textured_ref & (var_dist >= _VIF_EPS) & (g >= 0)
        # METRICS.md sums log10 terms; VIFF is a ratio of such sums, so the natural log (about
        # twice as fast) gives the same value.
        information = np.where(kept, g * g * var_ref / (sv_sq + _VIF_NOISE_VAR), 0)
        num += np.log(1 + information).sum(axis=(1, 2))
        den += np.log(1 + np.where(textured_ref, var_ref, 0) / _VIF_NOISE_VAR).sum(axis=(1, 2))
    return num, den


def vif(F: ArrayLike, A: ArrayLike, B: ArrayLike) -> float:
    """VIF: VIFF(A, F) + VIFF(B, F), pixel-domain multi-scale visual information fidelity."""
    F, A, B = _as_triple(F, A, B)
    _require_side(F, _VIF_MIN_SIDE, "VIF")
    images = (A, B, F)  # the two references and the distorted image
    num = np.zeros(2)
    den = np.zeros(2)
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1
        if scale > 1:
            images = tuple(_gaussian_valid_transposed(X, size, stride=2) for X in images)
        scale_num, scale_den = _vif_sums(*images, size)
        num += scale_num
        den += scale_den
    # A reference without any variance gives 0 / 0: VIFF is then 1 by definition.
    return sum(n / d if d > 0 else 1.0 for n, d in zip(num, den, strict=True))


# --- Qabf --------------------------------------------------------------------------------------


def _sobel_strength_angle(X: np.ndarray, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength and orientation of X[rows] from Sobel responses (2-D convolution of the
    whole image, zero padding, 'same' size).

    Convolution flips the kernels: Sy = [[1,2,1],[0,0,0],[-1,-2,-1]] weighs the row below by
    +[1,2,1] and the row above by -[1,2,1]; Sx = [[-1,0,1],[-2,0,2],[-1,0,1]] weighs the column
    to the left by +[1,2,1] and the one to the right by -[1,2,1]. The terms are added in the
    order scipy.signal.convolve2d adds them (kernel rows, then columns, right to left), so that
    non-integral images round exactly like the reference evaluator: Qabf's quirks (G = gF only
    where gX == gF exactly, pi/2 only where Sx == 0 exactly) are discontinuous, and a separable
    sum in another order moves published-style scores by up to ~1e-3.
    """
    top, bottom = max(rows.start - 1, 0), min(rows.stop + 1, X.shape[0])
    padded = np.zeros((rows.stop - rows.start + 2, X.shape[1] + 2))
    padded[top - rows.start + 1 : bottom - rows.start + 1, 1:-1] = X[top:bottom]
    below, middle, above = padded[2:], padded[1:-1], padded[:-2]
    right, centre, left = slice(2, None), slice(1, -1), slice(None, -2)
    Sy = below[:, right] + 2 * below[:, centre]
    Sy += below[:, left]
    Sy -= above[:, right]
    Sy -= 2 * above[:, centre]
    Sy -= above[:, left]
    Sx = below[:, left] - below[:, right]
    Sx -= 2 * middle[:, right]
    Sx += 2 * middle[:, left]
    Sx -= above[:, right]
    Sx += above[:, left]
    strength = np.sqrt(Sx * Sx + Sy * Sy)
    # arctan(inf) = pi/2, the orientation METRICS.md assigns where Sx = 0.
    angle = np.arctan(np.divide(Sy, Sx, out=np.full_like(Sy, np.inf), where=Sx != 0))
    return strength, angle


def qabf(F: ArrayLike, A: ArrayLike, B: ArrayLike) -> float:
    """Qabf: Xydeas-Petrovic edge preservation, with the reference's G = gF where gX == gF."""
    F, A, B = _as_triple(F, A, B)
    weighted = 0.0
    weights = 0.0
    for rows in _strips(0, F.shape[0], F.shape[1]):
        g_f, angle_f = _sobel_strength_angle(F, rows)
        for X in (A, B):
            g_x, angle_x = _sobel_strength_angle(X, rows)
            G = np.divide(
                np.minimum(g_x, g_f), np.maximum(g_x, g_f), out=g_f.copy(), where=g_x != g_f
            )
            orientation = 1 - np.abs(angle_x - angle_f) / (np.pi / 2)
            Q_strength = 0.9994 / (1 + np.exp(-15 * (G - 0.5)))
            Q_orientation = 0.9879 / (1 + np.exp(-22 * (orientation - 0.8)))
            weighted += float(np.dot((Q_strength * Q_orientation).ravel(), g_x.ravel()))
            weights += float(g_x.sum())
    # Two edgeless sources leave nothing to preserve: the ratio is undefined.
    return weighted / weights if weights > 0 else math.nan


# --- registry ----------------------------------------------------------------------------------


def _of_fused_image(metric: Callable[[ArrayLike], float]) -> MetricFn:
    """Give a metric of F alone the (F, A, B) signature shared by METRICS."""

    @functools.wraps(metric)
    def on_triple(F: ArrayLike, A: ArrayLike, B: ArrayLike) -> float:
        return metric(F)

    return on_triple


METRICS: dict[str, MetricFn] = {
    "EN": _of_fused_image(entropy),
    "SD": _of_fused_image(sd),
    "SF": _of_fused_image(sf),
    "AG": _of_fused_image(ag),
    "MI": mi,
    "SCD": scd,
    "VIF": vif,
    "Qabf": qabf,
    "SSIM": ssim,
    "SSIM_dr2": ssim_dr2,
    "PSNR": psnr,
    "CC": cc,
}
"""Metric name -> callable(F, A, B) -> float, in canonical table order."""


def evaluate(
    F: ArrayLike, A: ArrayLike, B: ArrayLike, metrics: str | Iterable[str] | None = None
) -> dict[str, float]:
    """Score F against A and B on `metrics` (default: all, canonical order), in the order given.

    SSIM and SSIM_dr2 share their windowed moments. Raises ValueError for an unknown metric name
    or for images whose shapes differ.
    """
    if metrics is None:
        names = list(METRICS)
    else:
        names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; valid names: {', '.join(METRICS)}")
    F, A, B = _as_triple(F, A, B)
    scores: dict[str, float] = {}
    ssim_names = [name for name in _SSIM_DATA_RANGE if name in names]
    if ssim_names:
        ssim_ranges = tuple(_SSIM_DATA_RANGE[name] for name in ssim_names)
        scores.update(zip(ssim_names, _ssim_sums(F, A, B, ssim_ranges), strict=True))
    for name in names:
        if name not in scores:
            scores[name] = METRICS[name](F, A, B)
    return {name: scores[name] for name in names}


def as_8bit_luma(image: ArrayLike) -> np.ndarray:
    """The luma of a float image in [0, 1], (H, W) or (H, W, 3) RGB, as the 0..255 levels an
    8-bit file would hold (how published fusion numbers are scored)."""
    from adaray.data.color import split_luma

    return np.round(np.clip(split_luma(np.asarray(image, dtype=np.float64))[0], 0.0, 1.0) * 255.0)


def evaluate_images(
    fused: ArrayLike, a: ArrayLike, b: ArrayLike, metrics: str | Iterable[str] | None = None
) -> dict[str, float]:
    """`evaluate` on the 8-bit luma of float images in [0, 1] (gray or RGB): the scoring used by
    validation, `adaray evaluate` and the Serve app's `metrics=true`."""
    return {name: float(value) for name, value in
            evaluate(as_8bit_luma(fused), as_8bit_luma(a), as_8bit_luma(b), metrics).items()}
