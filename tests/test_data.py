"""Reading images, finding/checking/splitting pairs, paired augmentation and the dataset.

Real images throughout: the shared datasets where present (tests marked `shared_data`), and the
bundled samples, from which the broken and unusual files below are made in tmp_path.
"""

from __future__ import annotations

import pickle
import random
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import SAMPLES
from torch.utils.data import DataLoader

from adaray.config import ConfigError, from_dict, load_yaml
from adaray.data import (
    IMAGE_EXTENSIONS,
    DataConfig,
    FusionPairDataset,
    ImagePair,
    ImageReadError,
    PairError,
    build_datasets,
    check_pairs,
    discover_pairs,
    paired_transform,
    read_image,
    read_pair,
    split_pairs,
    write_image,
)

SHARED_COUNTS = {"ivf": 171, "mef": 80, "mff": 85, "mif": 184 + 269 + 326}
SHARED_FOLDERS = {  # task -> (task folder, [(pair folder, A, B, pairs)])
    "ivf": ("IVF", [("RoadScene", "infrared", "visible", 171)]),
    "mef": ("MEF", [("MEFB", "low", "over", 80)]),
    "mff": ("MFF", [("MFIFB", "imageA", "imageB", 85)]),
    "mif": (
        "MIF",
        [("Harvard-CT", "CT", "MRI", 184), ("Harvard-PET", "PET", "MRI", 269),
         ("Harvard-SPECT", "SPECT", "MRI", 326)],
    ),
}
SAMPLE_COUNTS = {"ivf": 3, "mef": 2, "mff": 3, "mif": 3}
IR = SAMPLES / "IVF" / "infrared"  # gray PNGs
VIS = SAMPLES / "IVF" / "visible"  # RGB PNGs


def make_ivf_tree(root: Path, stems: list[str] | None = None) -> Path:
    """root/infrared|visible with real sample images under the given stems; returns root."""
    sources = sorted(IR.glob("*.png"))
    stems = stems or [p.stem for p in sources]
    for index, stem in enumerate(stems):
        source = sources[index % len(sources)]
        for folder, original in (("infrared", source), ("visible", VIS / source.name)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(original, root / folder / f"{stem}.png")
    return root


def bgr(image: np.ndarray) -> np.ndarray:
    """float RGB [0, 1] -> uint8 BGR for writing test files with OpenCV."""
    return cv2.cvtColor(np.rint(image * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


# ----------------------------------------------------------------------------- reading images


def test_image_extensions() -> None:
    assert set(IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def test_read_gray_and_rgb_png() -> None:
    gray = read_image(IR / "FLIR_04598.png")
    assert gray.dtype == np.float32 and gray.ndim == 2
    assert gray.min() >= 0.0 and gray.max() <= 1.0

    rgb = read_image(VIS / "FLIR_04598.png")
    assert rgb.dtype == np.float32 and rgb.shape == (*gray.shape, 3)
    expected = cv2.imread(str(VIS / "FLIR_04598.png"))[:, :, ::-1] / 255.0  # BGR -> RGB
    assert np.allclose(rgb, expected, atol=1e-6)
    assert rgb.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".bmp", ".tif", ".TIFF"])
def test_read_other_formats(tmp_path: Path, suffix: str) -> None:
    rgb = read_image(VIS / "FLIR_05164.png")
    path = tmp_path / f"image{suffix}"
    assert cv2.imwrite(str(path), bgr(rgb))
    loaded = read_image(path)
    assert loaded.shape == rgb.shape and loaded.dtype == np.float32
    tolerance = 0.2 if suffix.lower() in (".jpg", ".jpeg") else 1e-6  # JPEG is lossy
    assert np.abs(loaded - rgb).mean() < tolerance


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_read_16_bit(tmp_path: Path, suffix: str) -> None:
    for name, image in (("gray", read_image(IR / "FLIR_07620.png")),
                        ("rgb", read_image(VIS / "FLIR_07620.png"))):
        levels = np.rint(image * 65535).astype(np.uint16)
        if levels.ndim == 3:
            levels = levels[:, :, ::-1].copy()
        path = tmp_path / f"{name}16{suffix}"
        assert cv2.imwrite(str(path), levels)
        loaded = read_image(path)
        assert loaded.dtype == np.float32 and loaded.shape == image.shape
        assert np.abs(loaded - image).max() < 1e-6  # scaled by 65535, not 255


def test_read_rgba_drops_alpha(tmp_path: Path) -> None:
    rgb = read_image(VIS / "FLIR_04598.png")
    bgra = cv2.cvtColor(bgr(rgb), cv2.COLOR_BGR2BGRA)
    bgra[:, :, 3] = np.linspace(0, 255, bgra.shape[1]).astype(np.uint8)  # varying alpha
    path = tmp_path / "rgba.png"
    assert cv2.imwrite(str(path), bgra)
    loaded = read_image(path)
    assert loaded.shape == rgb.shape
    assert np.allclose(loaded, rgb, atol=1e-6)  # color kept as stored, not composited


def test_read_float_tiff_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    assert cv2.imwrite(str(path), read_image(IR / "FLIR_04598.png"))
    with pytest.raises(ImageReadError, match=r"float\.tif.*sample type"):
        read_image(path)


def _truncate(source: Path, target: Path, fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


@pytest.fixture
def real_jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "real.jpg"
    cv2.imwrite(str(path), bgr(read_image(VIS / "FLIR_05164.png")))
    return path


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_jpeg(tmp_path: Path, real_jpeg: Path, fraction: float) -> None:
    cut = _truncate(real_jpeg, tmp_path / "cut.jpg", fraction)
    with pytest.raises(ImageReadError, match=r"cut\.jpg: truncated JPEG"):
        read_image(cut)


def test_jpeg_with_bytes_after_the_end_marker_is_accepted(tmp_path: Path, real_jpeg: Path) -> None:
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(real_jpeg.read_bytes() + b"\x00" * 100)
    assert read_image(padded).shape == read_image(real_jpeg).shape


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_png(tmp_path: Path, fraction: float) -> None:
    cut = _truncate(VIS / "FLIR_05164.png", tmp_path / "cut.png", fraction)
    with pytest.raises(ImageReadError, match=r"cut\.png: truncated PNG"):
        read_image(cut)


def test_truncated_bmp_and_tiff(tmp_path: Path) -> None:
    image = bgr(read_image(VIS / "FLIR_05164.png"))
    for suffix, reason in ((".bmp", "truncated BMP"), (".tif", "not a readable image")):
        whole = tmp_path / f"whole{suffix}"
        cv2.imwrite(str(whole), image)
        cut = _truncate(whole, tmp_path / f"cut{suffix}")
        with pytest.raises(ImageReadError, match=rf"cut\{suffix}: {reason}"):
            read_image(cut)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("noise.png", bytes(range(256)) * 8, "not a readable image"),
        ("text.jpg", b"this is not an image\n", "not a readable image"),
        ("empty.png", b"", "empty file"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=rf"{name}: {reason}"):
        read_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"absent\.png: cannot read file"):
        read_image(tmp_path / "absent.png")
    assert issubclass(ImageReadError, ValueError)


def test_write_image_round_trip(tmp_path: Path) -> None:
    rgb = read_image(VIS / "FLIR_04598.png")
    target = tmp_path / "new" / "folder" / "rgb.png"
    write_image(target, rgb)
    assert np.abs(read_image(target) - rgb).max() < 1e-6  # 8-bit values survive exactly

    gray = np.array([[0.0, 0.5, 1.0, 1.7], [-0.2, 0.25, 0.998, 0.002]], dtype=np.float32)
    write_image(tmp_path / "gray.png", gray)
    levels = cv2.imread(str(tmp_path / "gray.png"), cv2.IMREAD_UNCHANGED)
    assert levels.dtype == np.uint8 and levels.shape == (2, 4)
    assert levels.tolist() == [[0, 128, 255, 255], [0, 64, 254, 1]]  # rounded and clipped

    with pytest.raises(ValueError, match="PNG"):
        write_image(tmp_path / "out.jpg", gray)
    with pytest.raises(ValueError, match="shape"):
        write_image(tmp_path / "bad.png", np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        write_image(tmp_path / "nan.png", np.full((2, 2), np.nan))


# ----------------------------------------------------------------------- pairs on real data


@pytest.mark.shared_data
@pytest.mark.parametrize("task", list(SHARED_COUNTS))
def test_discover_shared_data(shared_data: Path, task: str) -> None:
    task_folder, pair_folders = SHARED_FOLDERS[task]
    from_root = discover_pairs(shared_data, task)
    assert len(from_root) == SHARED_COUNTS[task]
    assert discover_pairs(shared_data / task_folder, task) == from_root
    assert from_root == sorted(from_root, key=lambda p: (p.group, p.stem))
    for group, a_name, b_name, count in pair_folders:
        in_group = [p for p in from_root if p.group == group]
        assert len(in_group) == count
        assert all(p.a_path.parent.name == a_name and p.b_path.parent.name == b_name
                   for p in in_group)
        assert discover_pairs(shared_data / task_folder / group, task) == in_group
        explicit = discover_pairs(shared_data, task, a_dir=f"{task_folder}/{group}/{a_name}",
                                  b_dir=f"{task_folder}/{group}/{b_name}")
        assert explicit == in_group
        absolute = discover_pairs("unused", task, a_dir=shared_data / task_folder / group / a_name,
                                  b_dir=shared_data / task_folder / group / b_name)
        assert absolute == in_group


@pytest.mark.shared_data
@pytest.mark.parametrize("task", list(SHARED_COUNTS))
def test_check_shared_data(shared_data: Path, task: str) -> None:
    check_pairs(discover_pairs(shared_data, task))  # every file decodes, sizes match


@pytest.mark.shared_data
def test_split_does_not_depend_on_where_data_points(shared_data: Path) -> None:
    from_root = split_pairs(discover_pairs(shared_data, "mif"))
    from_task = split_pairs(discover_pairs(shared_data / "MIF", "mif"))
    assert [p.stem for p in from_root[1]] == [p.stem for p in from_task[1]]
    ct_only = split_pairs(discover_pairs(shared_data / "MIF" / "Harvard-CT", "mif"))
    assert set(ct_only[1]) == {p for p in from_root[1] if p.group == "Harvard-CT"}


# ------------------------------------------------------------------------------ samples


@pytest.mark.parametrize("task", list(SAMPLE_COUNTS))
def test_samples_cover_every_task(task: str) -> None:
    pairs = discover_pairs(SAMPLES, task)
    assert len(pairs) == SAMPLE_COUNTS[task]
    check_pairs(pairs)
    for pair in pairs:
        image_a, image_b = read_pair(pair)
        assert image_a.shape[:2] == image_b.shape[:2] and max(image_a.shape[:2]) <= 256
    if task == "mif":
        assert {p.group for p in pairs} == {"MIF", "MIF-PET"}


def test_samples_are_small_pngs() -> None:
    files = [p for p in SAMPLES.rglob("*") if p.is_file() and p.name != "README.md"]
    assert files and all(p.suffix == ".png" for p in files)
    assert sum(p.stat().st_size for p in files) < 3_000_000


# --------------------------------------------------------------------- pair discovery rules


def test_seed_layout_from_split_task_or_pair_folder(tmp_path: Path) -> None:
    make_ivf_tree(tmp_path / "train" / "IVF")
    (tmp_path / "train" / "MEF" / "low").mkdir(parents=True)  # other tasks are not searched
    for data in (tmp_path, tmp_path / "train", tmp_path / "train" / "IVF"):
        pairs = discover_pairs(data, "ivf")
        assert [p.stem for p in pairs] == ["FLIR_04598", "FLIR_05164", "FLIR_07620"]
        assert {p.group for p in pairs} == {"IVF"}
        assert all(Path(p.a_path).is_absolute() for p in pairs)


def test_folder_names_and_extensions_are_case_insensitive(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "Infrared").mkdir(parents=True)
    (root / "VISIBLE").mkdir()
    image = bgr(read_image(VIS / "FLIR_04598.png"))
    cv2.imwrite(str(root / "Infrared" / "a.JPG"), image)
    cv2.imwrite(str(root / "VISIBLE" / "a.png"), image)
    (root / "VISIBLE" / "notes.txt").write_text("not an image")
    (root / "VISIBLE" / ".DS_Store").write_bytes(b"\0")
    pairs = discover_pairs(tmp_path, "ivf")
    assert [(p.stem, p.a_path.name, p.b_path.name) for p in pairs] == [("a", "a.JPG", "a.png")]


def test_no_pair_folders(tmp_path: Path) -> None:
    (tmp_path / "something" / "infrared").mkdir(parents=True)
    with pytest.raises(PairError) as error:
        discover_pairs(tmp_path, "ivf")
    message = str(error.value)
    assert str(tmp_path) in message and "infrared, ir" in message and "visible, vi" in message
    with pytest.raises(PairError, match="does not exist"):
        discover_pairs(tmp_path / "nowhere", "ivf")


def test_unmatched_stems_are_listed_with_counts(tmp_path: Path) -> None:
    root = make_ivf_tree(tmp_path / "IVF")
    extra = [f"extra_{i}" for i in range(7)]
    for stem in extra:
        shutil.copy(IR / "FLIR_04598.png", root / "infrared" / f"{stem}.png")
    (root / "visible" / "FLIR_05164.png").rename(root / "visible" / "lonely.png")
    with pytest.raises(PairError) as error:
        discover_pairs(tmp_path, "ivf")
    message = str(error.value)
    assert "8 image(s) in" in message and "extra_0, extra_1" in message and ", ..." in message
    assert "FLIR_05164" in message  # the image that lost its partner
    assert f"1 image(s) in {root / 'visible'}" in message and "lonely" in message


def test_missing_partner(tmp_path: Path) -> None:
    root = make_ivf_tree(tmp_path / "IVF")
    (root / "visible" / "FLIR_07620.png").unlink()
    with pytest.raises(PairError, match=r"1 image\(s\) in .*infrared have no partner.*FLIR_07620"):
        discover_pairs(root, "ivf")


def test_duplicate_stems_name_both_files(tmp_path: Path) -> None:
    root = make_ivf_tree(tmp_path / "IVF")
    shutil.copy(root / "visible" / "FLIR_04598.png", root / "visible" / "FLIR_04598.jpg")
    with pytest.raises(PairError, match=r"FLIR_04598\.jpg and FLIR_04598\.png"):
        discover_pairs(root, "ivf")


def test_ambiguous_and_repeated_pair_folders(tmp_path: Path) -> None:
    root = make_ivf_tree(tmp_path / "a" / "IVF")
    (root / "ir").mkdir()
    with pytest.raises(PairError, match="several candidate folders"):
        discover_pairs(root, "ivf")
    (root / "ir").rmdir()

    make_ivf_tree(tmp_path / "b" / "IVF")
    with pytest.raises(PairError, match="same name"):
        discover_pairs(tmp_path, "ivf")
    assert len(discover_pairs(tmp_path / "b", "ivf")) == 3


def test_explicit_folders(tmp_path: Path) -> None:
    make_ivf_tree(tmp_path / "mine")
    pairs = discover_pairs(tmp_path, "mff", a_dir="mine/infrared", b_dir="mine/visible")
    assert len(pairs) == 3 and {p.group for p in pairs} == {"mine"}
    with pytest.raises(PairError, match="a_dir given without b_dir"):
        discover_pairs(tmp_path, "ivf", a_dir="mine/infrared")
    with pytest.raises(PairError, match="does not exist"):
        discover_pairs(tmp_path, "ivf", a_dir="mine/infrared", b_dir="mine/nothing")
    (tmp_path / "empty_a").mkdir()
    (tmp_path / "empty_b").mkdir()
    with pytest.raises(PairError, match="no images"):
        discover_pairs(tmp_path, "ivf", a_dir="empty_a", b_dir="empty_b")


def test_check_pairs_reports_sizes_and_broken_files(tmp_path: Path) -> None:
    root = make_ivf_tree(tmp_path / "IVF")
    small = read_image(VIS / "FLIR_05164.png")[:100, :120]
    cv2.imwrite(str(root / "visible" / "FLIR_05164.png"), bgr(small))
    _truncate(IR / "FLIR_07620.png", root / "infrared" / "FLIR_07620.png")
    pairs = discover_pairs(root, "ivf")
    with pytest.raises(PairError) as error:
        check_pairs(pairs)
    message = str(error.value)
    assert "2 of 3 pairs are unusable" in message
    assert f"{root / 'infrared' / 'FLIR_05164.png'} is 256x118" in message
    assert f"{root / 'visible' / 'FLIR_05164.png'} is 120x100" in message
    assert f"{root / 'infrared' / 'FLIR_07620.png'}: truncated PNG" in message
    with pytest.raises(PairError, match="sizes differ"):
        read_pair(pairs[1])


# ---------------------------------------------------------------------------------- splits


def fake_pairs(count: int, group: str = "g") -> list[ImagePair]:
    return [ImagePair(f"s{i:04d}", Path(f"a/s{i}.png"), Path(f"b/s{i}.png"), group)
            for i in range(count)]


def test_split_is_deterministic_and_disjoint() -> None:
    pairs = fake_pairs(1000)
    train, val = split_pairs(pairs, val_fraction=0.1)
    assert 70 <= len(val) <= 130
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(pairs)
    shuffled = pairs[:]
    random.Random(0).shuffle(shuffled)
    assert split_pairs(shuffled, val_fraction=0.1) == (train, val)
    # a pair's side does not depend on the other pairs
    subset_train, subset_val = split_pairs(pairs[::3], val_fraction=0.1)
    assert set(subset_val) == set(val) & set(pairs[::3])
    assert set(subset_train) == set(train) & set(pairs[::3])
    # nor on anything but group and stem
    other_group_val = split_pairs(fake_pairs(1000, group="h"))[1]
    assert [p.stem for p in other_group_val] != [p.stem for p in val]


def test_split_edge_cases() -> None:
    two = fake_pairs(2)
    train, val = split_pairs(two, val_fraction=0.01)
    assert len(train) == 1 and len(val) == 1
    train, val = split_pairs(two, val_fraction=0.99)
    assert len(train) == 1 and len(val) == 1
    one = fake_pairs(1)
    assert split_pairs(one, val_fraction=0.5) in ((one, []), ([], one))
    assert split_pairs(fake_pairs(50), val_fraction=0.0)[1] == []
    full_val = split_pairs(fake_pairs(1000), val_fraction=0.2)[1]
    train, capped = split_pairs(fake_pairs(1000), val_fraction=0.2, max_val=5)
    assert len(capped) == 5 and set(capped) < set(full_val)
    assert set(train).isdisjoint(full_val)  # capped-off validation pairs are not trained on
    with pytest.raises(ValueError, match="val_fraction"):
        split_pairs(two, val_fraction=1.0)


# -------------------------------------------------------------------- augmentation, dataset


def test_paired_transform_same_geometry_for_both() -> None:
    image = read_image(IR / "FLIR_04598.png")
    transform = paired_transform(64, seed=0)
    for _ in range(20):
        out = transform(image=image, image_b=1.0 - image)
        assert out["image"].shape == (64, 64) and out["image"].dtype == np.float32
        assert np.allclose(out["image_b"], 1.0 - out["image"], atol=1e-6)


def test_paired_transform_pads_small_images_by_reflection() -> None:
    small = read_image(IR / "FLIR_04598.png")[:20, :30]
    top, left = (64 - 20) // 2, (64 - 30) // 2
    padded = cv2.copyMakeBorder(small, top, 64 - 20 - top, left, 64 - 30 - left,
                                cv2.BORDER_REFLECT_101)
    dihedral = [np.rot90(flipped, k) for flipped in (padded, padded[:, ::-1]) for k in range(4)]
    transform = paired_transform(64, seed=1)
    for _ in range(8):
        out = transform(image=small, image_b=small)
        assert out["image"].shape == (64, 64)
        assert np.array_equal(out["image"], out["image_b"])
        assert any(np.array_equal(out["image"], d) for d in dihedral)


def test_dataset_train_and_val_items() -> None:
    pairs = discover_pairs(SAMPLES, "ivf")
    train = FusionPairDataset(pairs, patch_size=48, train=True)
    item = train[0]
    assert item["a"].shape == item["b"].shape == (1, 48, 48)
    assert item["a"].dtype == item["b"].dtype == torch.float32
    assert item["stem"] == pairs[0].stem and item["group"] == "IVF"

    val = FusionPairDataset(pairs, train=False)
    item = val[1]
    height, width = read_image(pairs[1].a_path).shape
    assert item["a"].shape == item["b"].shape == (1, height, width)
    y_visible = read_image(pairs[1].b_path) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.allclose(item["b"][0].numpy(), y_visible, atol=1e-6)  # luma of the RGB source

    batch = next(iter(DataLoader(train, batch_size=3)))
    assert batch["a"].shape == (3, 1, 48, 48) and len(batch["stem"]) == 3

    with pytest.raises(ValueError, match="patch_size"):
        FusionPairDataset(pairs, train=True)


def test_dataset_patches_are_reproducible_from_torch_seed() -> None:
    pairs = discover_pairs(SAMPLES, "mef")
    patches = []
    for _ in range(2):
        torch.manual_seed(7)
        dataset = FusionPairDataset(pairs, patch_size=32)
        patches.append([dataset[i]["a"] for i in range(len(dataset))])
    assert all(torch.equal(x, y) for x, y in zip(*patches, strict=True))


def test_dataset_cache(tmp_path: Path) -> None:
    root = make_ivf_tree(tmp_path / "IVF")
    pairs = discover_pairs(root, "ivf")
    cached = FusionPairDataset(pairs, train=False, cache=True)
    uncached = FusionPairDataset(pairs, train=False, cache=False)
    first = cached[0]["a"]
    uncached[0]
    Path(pairs[0].a_path).unlink()
    assert torch.equal(cached[0]["a"], first)  # served from memory
    with pytest.raises(ImageReadError, match="FLIR_04598"):
        uncached[0]
    # pickled (DataLoader workers, Ray) without the cache
    assert pickle.loads(pickle.dumps(cached))._planes == {}


def test_dataset_size_mismatch(tmp_path: Path) -> None:
    root = make_ivf_tree(tmp_path / "IVF")
    cv2.imwrite(str(root / "visible" / "FLIR_04598.png"), np.zeros((10, 12, 3), np.uint8))
    dataset = FusionPairDataset(discover_pairs(root, "ivf"), patch_size=8)
    with pytest.raises(PairError, match=r"visible/FLIR_04598\.png is 12x10"):
        dataset[0]


def test_data_config() -> None:
    assert from_dict(DataConfig, {}) == DataConfig()
    config = from_dict(DataConfig, {"patch_size": "64", "max_val_pairs": 4, "cache": "false"})
    assert (config.patch_size, config.max_val_pairs, config.cache) == (64, 4, False)
    for bad, field in (
        ({"patch_size": 1}, "patch_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"a_dir": "ir"}, "b_dir"),
        ({"max_val_pairs": 0}, "max_val_pairs"),
        ({"patch": 64}, "patch"),
    ):
        with pytest.raises(ConfigError, match=field):
            from_dict(DataConfig, bad)


def test_data_config_yaml(tmp_path: Path) -> None:
    path = tmp_path / "data.yaml"
    path.write_text("patch_size: 96\nval_fraction: 0.2\n")
    assert load_yaml(DataConfig, path) == DataConfig(patch_size=96, val_fraction=0.2)
    path.write_text("val_fraction: 2\n")
    with pytest.raises(ConfigError, match=r"data\.yaml: val_fraction"):
        load_yaml(DataConfig, path)


@pytest.mark.parametrize("task", list(SAMPLE_COUNTS))
def test_build_datasets_from_samples(task: str) -> None:
    train, val = build_datasets(SAMPLES, task, DataConfig(patch_size=32, val_fraction=0.3))
    assert len(train) >= 1 and len(val) >= 1 and len(train) + len(val) == SAMPLE_COUNTS[task]
    assert train[0]["a"].shape == (1, 32, 32)
    assert {p.stem for p in train.pairs}.isdisjoint(p.stem for p in val.pairs)
