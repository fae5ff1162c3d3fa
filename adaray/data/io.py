"""Reading and writing images as float arrays in [0, 1].

`read_image` is the one way adaray loads a source image (training, evaluation, serving). It
decodes with OpenCV and returns float32 in [0, 1]: (H, W) for gray files, (H, W, 3) in RGB order
for color files. 8-bit samples are scaled by 255, 16-bit ones by 65535. An alpha channel is
dropped (not composited): fusion sources are opaque, and blending onto an invented background
would change the pixels being fused. EXIF orientation is ignored, so both sources of a pair
keep their stored pixel grids.

Broken files fail loudly with `ImageReadError`, naming the file and the reason. Truncated JPEG,
PNG and BMP files are detected from their structure before decoding (some OpenCV builds decode
a cut JPEG into a partly grey image with only a log warning). `image_dimensions` reads the
width and height from a PNG, JPEG, BMP or TIFF header without decoding pixels, so a server can
refuse a decompression bomb before it allocates anything.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from adaray.data.location import Location
from adaray.errors import ConfigError, DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
_BMP_SIGNATURE = b"BM"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_SAMPLE_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


class ImageReadError(DataError):
    """An image file is missing, unreadable, truncated or not an image; the message names it."""


def is_image_file(path: str | Path) -> bool:
    """True when `path` has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _jpeg_is_complete(data: bytes) -> bool:
    """Walk the JPEG marker segments; True when the end-of-image marker is reached."""
    size = len(data)
    pos = 2  # after SOI
    while pos + 1 < size:
        if data[pos] != 0xFF:  # stray bytes between segments, tolerated as libjpeg does
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return False
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        if pos + 4 > size:
            return False
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: skip entropy-coded data up to the next marker
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= size:
                    return False
                follower = data[pos + 1]
                if follower == 0x00 or 0xD0 <= follower <= 0xD7:  # stuffed byte or restart
                    pos += 2
                elif follower == 0xFF:
                    pos += 1
                else:
                    break
    return False


def _png_is_complete(data: bytes) -> bool:
    """Walk the PNG chunks; True when a whole IEND chunk is present."""
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunk_end = pos + 12 + length  # length, type, data, CRC
        if chunk_end > len(data):
            return False
        if data[pos + 4 : pos + 8] == b"IEND":
            return True
        pos = chunk_end
    return False


def _png_dimensions(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the first frame header (SOF0-SOF15 but DHT, JPG and DAC)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # scan or end before any frame header
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                return None
            return (int.from_bytes(data[pos + 7 : pos + 9], "big"),
                    int.from_bytes(data[pos + 5 : pos + 7], "big"))
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _bmp_dimensions(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    if int.from_bytes(data[14:18], "little") == 12:  # BITMAPCOREHEADER: 16-bit sizes
        return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = int.from_bytes(data[22:26], "little", signed=True)  # negative: top-down rows
    return abs(width), abs(height)


def _tiff_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the first image file directory (classic TIFF and BigTIFF)."""
    order = "little" if data[:2] == b"II" else "big"
    big = int.from_bytes(data[2:4], order) == 43
    offset_size, count_size, entry_size = (8, 8, 20) if big else (4, 2, 12)
    start = 8 if big else 4
    ifd = int.from_bytes(data[start : start + offset_size], order)
    if ifd + count_size > len(data):
        return None
    count = int.from_bytes(data[ifd : ifd + count_size], order)
    sizes: dict[int, int] = {}
    for index in range(count):
        entry = ifd + count_size + index * entry_size
        if entry + entry_size > len(data):
            return None
        tag = int.from_bytes(data[entry : entry + 2], order)
        kind = int.from_bytes(data[entry + 2 : entry + 4], order)
        value = entry + 4 + offset_size  # after tag, type and count: the value (left-aligned)
        width = {3: 2, 4: 4, 16: 8}.get(kind)  # SHORT, LONG, LONG8
        if tag in (256, 257) and width:
            sizes[tag] = int.from_bytes(data[value : value + width], order)
    if 256 not in sizes or 257 not in sizes:
        return None
    return sizes[256], sizes[257]


def image_dimensions(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from a PNG, JPEG, BMP or TIFF header, without decoding pixels.

    Raises ImageReadError naming `name` for empty data, another format, or a header that is cut
    short or unreadable.
    """
    if not data:
        raise ImageReadError(f"{name}: empty file")
    if data.startswith(_PNG_SIGNATURE):
        kind, size = "PNG", _png_dimensions(data)
    elif data.startswith(_JPEG_SOI):
        kind, size = "JPEG", _jpeg_dimensions(data)
    elif data.startswith(_BMP_SIGNATURE):
        kind, size = "BMP", _bmp_dimensions(data)
    elif data[:4] in _TIFF_SIGNATURES:
        kind, size = "TIFF", _tiff_dimensions(data)
    else:
        raise ImageReadError(f"{name}: not a readable image (not PNG, JPEG, BMP or TIFF data)")
    if size is None:
        raise ImageReadError(f"{name}: truncated or corrupt {kind} (no readable image header)")
    return size


def _truncation_reason(data: bytes) -> str | None:
    """Why `data` looks cut short, or None when its format's structure is complete."""
    if data.startswith(_JPEG_SOI):
        return None if _jpeg_is_complete(data) else "truncated JPEG (no end-of-image marker)"
    if data.startswith(_PNG_SIGNATURE):
        return None if _png_is_complete(data) else "truncated PNG (no complete IEND chunk)"
    if data.startswith(_BMP_SIGNATURE) and len(data) >= 6:
        declared = int.from_bytes(data[2:6], "little")  # 0 is allowed by some writers
        if declared and len(data) < declared:
            return f"truncated BMP ({len(data)} of {declared} bytes)"
    return None


def read_image(path: str | Path | Location) -> np.ndarray:
    """Read an image (a local path or an object URI) as float32 in [0, 1]: (H, W) gray or
    (H, W, 3) RGB.

    Raises ImageReadError (a ValueError) naming the file for missing, empty, truncated, corrupt
    or unsupported files.
    """
    try:
        data = Location.of(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode an image file's bytes as `read_image` does; `name` labels error messages
    (a path, or an upload's field and file name)."""
    if not data:
        raise ImageReadError(f"{name}: empty file")
    reason = _truncation_reason(data)
    if reason:
        raise ImageReadError(f"{name}: {reason}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(f"{name}: not a readable image (unknown format or corrupt data)")
    scale = _SAMPLE_SCALE.get(image.dtype)
    if scale is None:
        raise ImageReadError(f"{name}: unsupported sample type {image.dtype} (need 8 or 16 bit)")
    if image.ndim == 3:  # OpenCV decodes color as BGR or BGRA (gray + alpha too): alpha dropped
        if image.shape[2] not in (3, 4):
            raise ImageReadError(f"{name}: unsupported channel count {image.shape[2]}")
        image = image[:, :, 2::-1]
    pixels = image.astype(np.float32)  # a contiguous copy, also of the channel-reversed view
    pixels /= scale
    return pixels


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write a float image in [0, 1], (H, W) gray or (H, W, 3) RGB, as an 8-bit PNG.

    Values are clipped to [0, 1] and rounded to the nearest 8-bit level; parent folders are
    created. The file name must end in .png.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: write_image writes PNG files; use a .png name")
    encoded = encode_png(image, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded)


def encode_png(image: np.ndarray, name: str = "image") -> bytes:
    """The 8-bit PNG bytes `write_image` would write; `name` labels error messages."""
    array = np.asarray(image)
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: image has NaN or infinite values")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"{name}: expected an (H, W) or (H, W, 3) image, got shape {array.shape}")
    levels = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    if levels.ndim == 3:
        levels = np.ascontiguousarray(levels[:, :, ::-1])  # RGB -> BGR for OpenCV
    ok, encoded = cv2.imencode(".png", levels)
    if not ok:
        raise ValueError(f"{name}: PNG encoding failed")
    return encoded.tobytes()
