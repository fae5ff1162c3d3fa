"""Fusion metrics: analytic properties, read_gray, evaluate(), and agreement on real pairs with a
deliberately plain reference implementation written straight from shared/docs/METRICS.md."""

from __future__ import annotations

import functools
import math
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity
from sklearn.metrics import mutual_info_score

from adaray.metrics import (
    METRICS,
    ag,
    cc,
    entropy,
    evaluate,
    mi,
    psnr,
    qabf,
    read_gray,
    scd,
    sd,
    sf,
    ssim,
    ssim_dr2,
    vif,
)

CANONICAL_ORDER = [
    "EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "SSIM_dr2", "PSNR", "CC",
]  # fmt: skip

# --- reference implementation: literal, slow, independent of adaray.metrics -------------------


def ref_en(F):
    hist, _ = np.histogram(np.round(F).astype(np.uint8), bins=256, range=(0, 256))
    p = hist[hist > 0] / hist.sum()
    return -np.sum(p * np.log2(p))


def ref_sd(F):
    return math.sqrt(np.mean((F - F.mean()) ** 2))


def ref_sf(F):
    return math.sqrt(np.mean((F[:, 1:] - F[:, :-1]) ** 2) + np.mean((F[1:, :] - F[:-1, :]) ** 2))


def ref_differences_along_columns(F):
    """Central differences inside, one-sided at the first and last column."""
    d = np.empty_like(F)
    d[:, 1:-1] = (F[:, 2:] - F[:, :-2]) / 2
    d[:, 0] = F[:, 1] - F[:, 0]
    d[:, -1] = F[:, -1] - F[:, -2]
    return d


def ref_ag(F):
    Gx = ref_differences_along_columns(F)
    Gy = ref_differences_along_columns(F.T).T
    return np.mean(np.sqrt((Gx**2 + Gy**2) / 2))


def ref_mi(F, A, B):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn calls gray values "continuous" labels
        return mutual_info_score(F.ravel(), A.ravel()) + mutual_info_score(F.ravel(), B.ravel())


def ref_corr(x, y):
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN for a constant array
        return np.corrcoef(x.ravel(), y.ravel())[0, 1]


def ref_scd(F, A, B):
    return ref_corr(A, F - B) + ref_corr(B, F - A)


def ref_cc(F, A, B):
    return (ref_corr(A, F) + ref_corr(B, F)) / 2


def ref_psnr(F, A, B):
    mse = (np.mean((A - F) ** 2) + np.mean((B - F) ** 2)) / 2
    return 10 * math.log10(F.max() ** 2 / mse)


def ref_ssim(F, A, B, data_range):
    return structural_similarity(F, A, data_range=data_range) + structural_similarity(
        F, B, data_range=data_range
    )


def ref_gaussian_window(N):
    m = (N - 1) / 2
    y, x = np.mgrid[-m : m + 1, -m : m + 1]
    h = np.exp(-(x * x + y * y) / (2 * (N / 5) ** 2))
    h[h < np.finfo(np.float64).eps * h.max()] = 0
    return h / h.sum()


def ref_viff(ref, dist):
    num = den = 0.0
    for s in range(1, 5):
        N = 2 ** (4 - s + 1) + 1
        win = ref_gaussian_window(N)
        if s > 1:
            ref = convolve2d(ref, win, mode="valid")[::2, ::2]
            dist = convolve2d(dist, win, mode="valid")[::2, ::2]
        mu1 = convolve2d(ref, win, mode="valid")
        mu2 = convolve2d(dist, win, mode="valid")
        sigma1_sq = convolve2d(ref * ref, win, mode="valid") - mu1 * mu1
        sigma2_sq = convolve2d(dist * dist, win, mode="valid") - mu2 * mu2
        sigma12 = convolve2d(ref * dist, win, mode="valid") - mu1 * mu2
        sigma1_sq[sigma1_sq < 0] = 0
        sigma2_sq[sigma2_sq < 0] = 0
        g = sigma12 / (sigma1_sq + 1e-10)
        sv_sq = sigma2_sq - g * sigma12
        mask = sigma1_sq < 1e-10
        g[mask] = 0
        sv_sq[mask] = sigma2_sq[mask]
        sigma1_sq[mask] = 0
        mask = sigma2_sq < 1e-10
        g[mask] = 0
        sv_sq[mask] = 0
        mask = g < 0
        sv_sq[mask] = sigma2_sq[mask]
        g[mask] = 0
        sv_sq[sv_sq < 1e-10] = 1e-10
        num += np.sum(np.log10(1 + g**2 * sigma1_sq / (sv_sq + 2)))
        den += np.sum(np.log10(1 + sigma1_sq / 2))
    with np.errstate(invalid="ignore"):
        viff = np.float64(num) / den
    return 1.0 if np.isnan(viff) else viff


def ref_vif(F, A, B):
    return ref_viff(A, F) + ref_viff(B, F)


SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


def ref_strength_angle(X):
    Sx = convolve2d(X, SOBEL_X, mode="same")
    Sy = convolve2d(X, SOBEL_Y, mode="same")
    g = np.sqrt(Sx**2 + Sy**2)
    alpha = np.full(X.shape, np.pi / 2)
    nonzero = Sx != 0
    alpha[nonzero] = np.arctan(Sy[nonzero] / Sx[nonzero])
    return g, alpha


def ref_edge_preservation(gX, aX, gF, aF):
    G = np.empty_like(gF)
    G[gX > gF] = gF[gX > gF] / gX[gX > gF]
    G[gX < gF] = gX[gX < gF] / gF[gX < gF]
    G[gX == gF] = gF[gX == gF]
    orientation = 1 - np.abs(aX - aF) / (np.pi / 2)
    Qg = 0.9994 / (1 + np.exp(-15 * (G - 0.5)))
    Qa = 0.9879 / (1 + np.exp(-22 * (orientation - 0.8)))
    return Qg * Qa


def ref_qabf(F, A, B):
    gF, aF = ref_strength_angle(F)
    gA, aA = ref_strength_angle(A)
    gB, aB = ref_strength_angle(B)
    QAF = ref_edge_preservation(gA, aA, gF, aF)
    QBF = ref_edge_preservation(gB, aB, gF, aF)
    return np.sum(QAF * gA + QBF * gB) / np.sum(gA + gB)


REFERENCE = {
    "EN": lambda F, A, B: ref_en(F),
    "SD": lambda F, A, B: ref_sd(F),
    "SF": lambda F, A, B: ref_sf(F),
    "AG": lambda F, A, B: ref_ag(F),
    "MI": ref_mi,
    "SCD": ref_scd,
    "VIF": ref_vif,
    "Qabf": ref_qabf,
    "SSIM": lambda F, A, B: ref_ssim(F, A, B, 255),
    "SSIM_dr2": lambda F, A, B: ref_ssim(F, A, B, 2),
    "PSNR": ref_psnr,
    "CC": ref_cc,
}

# --- real pairs --------------------------------------------------------------------------------

# (folder, A subfolder, B subfolder, stem): one pair per task, small enough for the reference.
PAIRS = {
    "IVF": ("IVF/RoadScene", "infrared", "visible", "FLIR_00006"),  # gray JPEG + RGB JPEG
    "MFF": ("MFF/MFIFB", "imageA", "imageB", "newspaper"),  # RGB BMP
    "MEF": ("MEF/MEFB", "low", "over", "Chair"),  # RGB JPEG
    "MIF": ("MIF/Harvard-CT", "CT", "MRI", "16003"),  # gray PNG
}

# Fused images: integral (max, a source), half-integral (mean) and non-grid (weighted) values,
# which take different paths through the MI counting.
FUSIONS = {
    "mean": lambda A, B: (A + B) / 2,
    "max": np.maximum,
    "weighted": lambda A, B: 0.7 * A + 0.3 * B,
    "sourceA": lambda A, B: A.copy(),
}
CASES = [
    ("IVF", "mean"),
    ("IVF", "weighted"),
    ("MFF", "max"),
    ("MFF", "weighted"),
    ("MEF", "mean"),
    ("MEF", "sourceA"),
    ("MIF", "mean"),
    ("MIF", "max"),
]


def pair_path(root: Path, task: str, side: int) -> Path:
    folder, a_dir, b_dir, stem = PAIRS[task]
    (path,) = (root / folder / (a_dir, b_dir)[side]).glob(f"{stem}.*")
    return path


@functools.cache
def load_triple(root: Path, task: str, fusion: str):
    A = read_gray(pair_path(root, task, 0))
    B = read_gray(pair_path(root, task, 1))
    return FUSIONS[fusion](A, B), A, B


@functools.cache
def reference_scores(root: Path, task: str, fusion: str) -> dict[str, float]:
    F, A, B = load_triple(root, task, fusion)
    return {name: float(score(F, A, B)) for name, score in REFERENCE.items()}


@pytest.mark.shared_data
@pytest.mark.parametrize(("task", "fusion"), CASES, ids=[f"{t}-{f}" for t, f in CASES])
def test_metrics_match_the_reference_on_real_pairs(shared_data, task, fusion):
    F, A, B = load_triple(shared_data, task, fusion)
    expected = reference_scores(shared_data, task, fusion)
    scores = evaluate(F, A, B)
    assert list(scores) == CANONICAL_ORDER
    for name in CANONICAL_ORDER:
        # NaN only for SCD with F = A: corr(B, F - A) of a constant difference is undefined.
        assert scores[name] == pytest.approx(expected[name], rel=1e-6, abs=1e-9, nan_ok=True), name
    undefined = {name for name, score in scores.items() if math.isnan(score)}
    assert undefined == ({"SCD"} if fusion == "sourceA" else set())


@pytest.mark.shared_data
def test_every_metric_function_matches_evaluate(shared_data):
    F, A, B = load_triple(shared_data, "IVF", "mean")
    scores = evaluate(F, A, B)
    for name, metric in METRICS.items():
        assert metric(F, A, B) == pytest.approx(scores[name], rel=1e-12, abs=1e-12), name
    assert entropy(F) == scores["EN"]
    assert (sd(F), sf(F), ag(F)) == (scores["SD"], scores["SF"], scores["AG"])


@pytest.mark.shared_data
def test_ssim_matches_scikit_image_closely(shared_data):
    # Here a box filter summing in another order than scipy's drifts by ~1e-10 at data_range 2.
    F, A, B = load_triple(shared_data, "MIF", "weighted")
    assert ssim(F, A, B) == pytest.approx(ref_ssim(F, A, B, 255), rel=0, abs=1e-10)
    assert ssim_dr2(F, A, B) == pytest.approx(ref_ssim(F, A, B, 2), rel=0, abs=1e-10)


@pytest.mark.shared_data
@pytest.mark.parametrize("grid", [0.0, 1 / 1024], ids=["distinct", "repeating"])
def test_mi_matches_sklearn_on_fine_valued_images(shared_data, grid):
    # Too many joint values to count densely: with every F value distinct, and with repeats.
    _, A, B = load_triple(shared_data, "MIF", "mean")
    F = A + np.random.default_rng(0).normal(0, 4, A.shape)
    if grid:
        F = np.round(F / grid) * grid
    assert mi(F, A, B) == pytest.approx(ref_mi(F, A, B), rel=1e-10)


# --- analytic properties -----------------------------------------------------------------------


@pytest.fixture
def textured():
    """Two different smooth-plus-noise sources, 96x120 (VIF needs 81), gray values 0..255."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:96, 0:120]
    A = np.clip(np.round(128 + 60 * np.sin(x / 7) + rng.normal(0, 10, x.shape)), 0, 255)
    B = np.clip(np.round(128 + 60 * np.cos(y / 5) + rng.normal(0, 10, x.shape)), 0, 255)
    return A, B


def test_ssim_of_an_image_with_itself_is_one(textured):
    A, B = textured
    assert ssim(A, A, A) == 2.0
    assert ssim_dr2(A, A, A) == 2.0
    assert ssim(A, A, B) - structural_similarity(A, B, data_range=255) == pytest.approx(1.0)


def test_uniform_histogram_has_entropy_eight_bits():
    F = np.tile(np.arange(256, dtype=np.float64), (4, 3))
    assert entropy(F) == pytest.approx(8.0, abs=1e-12)
    assert entropy(np.full((8, 8), 17.0)) == 0.0


def test_entropy_rounds_then_saturates():
    assert entropy(np.array([[0.4, -3.0], [254.6, 300.0]])) == pytest.approx(1.0)


def test_mi_of_an_image_with_itself_is_its_entropy_in_nats(textured):
    A, _ = textured
    _, counts = np.unique(A, return_counts=True)
    p = counts / counts.sum()
    entropy_nats = -np.sum(p * np.log(p))
    assert mi(A, A, A) == pytest.approx(2 * entropy_nats, rel=1e-12)
    assert entropy(A) == pytest.approx(entropy_nats / math.log(2), rel=1e-12)


def test_mi_with_a_constant_image_is_zero(textured):
    A, _ = textured
    constant = np.full_like(A, 9.0)
    assert mi(constant, A, A) == 0.0
    assert mi(A, constant, constant) == 0.0


@pytest.mark.parametrize("name", ["MI", "SCD", "VIF", "Qabf", "SSIM", "SSIM_dr2", "PSNR", "CC"])
def test_two_source_metrics_are_symmetric_in_the_sources(textured, name):
    A, B = textured
    F = (A + B) / 2
    assert METRICS[name](F, A, B) == pytest.approx(METRICS[name](F, B, A), rel=1e-12)


def test_psnr_is_infinite_when_the_fused_image_equals_both_sources(textured):
    A, B = textured
    assert psnr(A, A, A) == math.inf
    assert math.isfinite(psnr(A, A, B))
    assert psnr(np.zeros_like(A), A, B) == -math.inf


def test_psnr_follows_its_definition():
    F = np.full((8, 8), 200.0)
    A = np.full((8, 8), 190.0)  # squared error 100
    B = np.full((8, 8), 180.0)  # squared error 400
    assert psnr(F, A, B) == pytest.approx(10 * math.log10(200.0**2 / 250.0))


def test_vif_of_constant_images_is_one_per_source_without_warnings():
    flat = np.full((96, 96), 100.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vif(flat, flat, flat) == 2.0
        assert vif(flat, flat, flat + 50) == 2.0


def test_vif_is_finite_for_a_constant_fused_image(textured):
    A, B = textured
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score = vif(np.full_like(A, 128.0), A, B)
    assert math.isfinite(score)
    assert score == pytest.approx(ref_vif(np.full_like(A, 128.0), A, B), rel=1e-9, abs=1e-12)


def test_vif_of_an_image_with_itself_is_one(textured):
    A, _ = textured
    assert vif(A, A, A) == pytest.approx(2.0, rel=1e-9)  # the 1e-10 regulariser keeps it below


def test_vif_needs_81_pixels_a_side_for_its_four_scales():
    rng = np.random.default_rng(3)
    A, B = (rng.integers(0, 256, (81, 90)).astype(np.float64) for _ in range(2))
    assert vif((A + B) / 2, A, B) == pytest.approx(ref_vif((A + B) / 2, A, B), rel=1e-9)
    with pytest.raises(ValueError, match="81x81"):
        vif(A[:80], A[:80], B[:80])


def test_correlations_of_a_constant_image_are_nan_without_warnings(textured):
    A, B = textured
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(cc(np.full_like(A, 3.0), A, B))
        assert math.isnan(scd(A, np.full_like(A, 3.0), np.full_like(A, 3.0)))


def test_qabf_of_edgeless_sources_is_nan_and_bounded_otherwise(textured):
    A, B = textured
    black = np.zeros_like(A)  # any other constant has edges against the zero padding
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(qabf(A, black, black))
    assert 0 < qabf((A + B) / 2, A, B) < 1


def test_qabf_matches_the_reference_on_ramps():
    # Exact ramps give Sx == 0 (orientation pi/2) and gX == gF (the G = gF quirk) on most pixels.
    y, x = np.mgrid[0:16, 0:16].astype(np.float64)
    A = 10 * y
    B = 10 * x
    for F in (A, B, (A + B) / 2, 255 - A):
        assert qabf(F, A, B) == pytest.approx(ref_qabf(F, A, B), rel=1e-12)


def test_single_image_metrics_follow_their_definitions():
    F = np.array([[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]])
    assert sd(F) == pytest.approx(np.sqrt(np.mean((F - 5) ** 2)))
    assert sf(F) == pytest.approx(math.sqrt(4 + 36))
    assert ag(F) == pytest.approx(math.sqrt((2**2 + 6**2) / 2))


@pytest.mark.parametrize("name", CANONICAL_ORDER)
def test_metrics_accept_integer_arrays(textured, name):
    A, B = textured
    F = np.maximum(A, B)
    as_uint8 = [X.astype(np.uint8) for X in (F, A, B)]
    assert METRICS[name](*as_uint8) == pytest.approx(METRICS[name](F, A, B), rel=1e-12)


# --- read_gray ---------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_read_gray_of_an_rgb_file_is_opencvs_gray(shared_data):
    path = pair_path(shared_data, "IVF", 1)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr.ndim == 3
    gray = read_gray(path)
    assert gray.dtype == np.float64
    np.testing.assert_array_equal(gray, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    weighted = bgr.astype(np.float64) @ np.array([0.114, 0.587, 0.299])
    assert np.abs(gray - weighted).max() <= 1.0
    np.testing.assert_array_equal(gray, np.round(gray))


@pytest.mark.shared_data
def test_read_gray_of_a_gray_file_keeps_its_values(shared_data):
    path = pair_path(shared_data, "IVF", 0)
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored.ndim == 2
    np.testing.assert_array_equal(read_gray(path), stored)


def test_read_gray_of_a_16_bit_file_keeps_the_high_byte(tmp_path):
    values = np.array([[0, 255, 256, 511, 384, 40000, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), values)
    np.testing.assert_array_equal(read_gray(path), values >> 8)


def test_read_gray_rejects_a_corrupt_file_naming_it(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG not really an image" * 8)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "bad.png"))):
        read_gray(path)


def test_read_gray_rejects_a_missing_file_naming_it(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "missing.jpg"))):
        read_gray(tmp_path / "missing.jpg")


# --- evaluate ----------------------------------------------------------------------------------


def test_metric_names_are_in_canonical_order():
    assert list(METRICS) == CANONICAL_ORDER


def test_evaluate_scores_a_subset_in_the_order_asked(textured):
    A, B = textured
    F = (A + B) / 2
    scores = evaluate(F, A, B, ["SSIM_dr2", "EN", "MI"])
    assert list(scores) == ["SSIM_dr2", "EN", "MI"]
    assert scores == {"SSIM_dr2": ssim_dr2(F, A, B), "EN": entropy(F), "MI": mi(F, A, B)}
    assert evaluate(F, A, B, "Qabf") == {"Qabf": qabf(F, A, B)}


def test_evaluate_rejects_unknown_metric_names_listing_valid_ones(textured):
    A, B = textured
    with pytest.raises(ValueError, match="Nope") as error:
        evaluate(A, A, B, ["EN", "Nope"])
    assert all(name in str(error.value) for name in CANONICAL_ORDER)


def test_evaluate_rejects_mismatched_shapes_naming_them(textured):
    A, B = textured
    with pytest.raises(ValueError, match=r"\(96, 120\).*\(96, 119\)"):
        evaluate(A, A, B[:, :-1])


def test_metrics_reject_arrays_that_are_not_2d(textured):
    A, B = textured
    with pytest.raises(ValueError, match="2-D"):
        mi(np.stack([A, A, A], axis=-1), A, B)
