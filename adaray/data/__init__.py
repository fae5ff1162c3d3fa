"""Image data for fusion: reading, color conversion, pair discovery, splits and datasets."""

from adaray.data.color import fuse_chroma, merge_luma, rgb_to_ycbcr, split_luma, ycbcr_to_rgb
from adaray.data.dataset import DataConfig, FusionPairDataset, build_datasets, paired_transform
from adaray.data.io import IMAGE_EXTENSIONS, ImageReadError, is_image_file, read_image, write_image
from adaray.data.pairs import (
    ImagePair,
    PairError,
    check_pairs,
    discover_pairs,
    read_pair,
    split_pairs,
    split_score,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataConfig",
    "FusionPairDataset",
    "ImagePair",
    "ImageReadError",
    "PairError",
    "build_datasets",
    "check_pairs",
    "discover_pairs",
    "fuse_chroma",
    "is_image_file",
    "merge_luma",
    "paired_transform",
    "read_image",
    "read_pair",
    "rgb_to_ycbcr",
    "split_luma",
    "split_pairs",
    "split_score",
    "write_image",
    "ycbcr_to_rgb",
]
