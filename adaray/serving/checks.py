"""Request checks of the Serve app: each refuses a bad request with a `RequestError` carrying
the HTTP status and a reason that names the part or parameter."""

from __future__ import annotations

import numpy as np

from adaray.data.io import ImageReadError, decode_image, image_dimensions
from adaray.errors import RequestError

OUTPUTS = ("png", "json")


def check_task(task: str | None, served: list[str]) -> str:
    """The requested task, or 404 listing the served tasks (422 when none is given)."""
    if not task:
        raise RequestError(422, f"missing 'task' (one of: {', '.join(served)})")
    if task not in served:
        raise RequestError(404, f"task {task!r} is not served here (served: "
                                f"{', '.join(served)})")
    return task


def check_output(output: str | None) -> str:
    """`png` (default) or `json`, else 422."""
    output = output or "png"
    if output not in OUTPUTS:
        raise RequestError(422, f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    return output


def decode_source(data: bytes, field_name: str, filename: str | None,
                  max_pixels: int) -> np.ndarray:
    """An uploaded source as a float image, or 422 (undecodable, empty, not PNG/JPEG/BMP/TIFF)
    / 413 (too large). The size is checked from the image header before any pixel is decoded,
    so a small file that claims a huge image (a decompression bomb) costs nothing."""
    label = f"part {field_name!r}" + (f" ({filename})" if filename else "")
    try:
        width, height = image_dimensions(data, label)
        if width * height > max_pixels:
            raise RequestError(413, f"{label}: {width}x{height} is {width * height} pixels, "
                                    f"above the limit of {max_pixels}")
        image = decode_image(data, label)
    except ImageReadError as exc:
        raise RequestError(422, str(exc)) from None
    height, width = image.shape[:2]
    if min(height, width) < 2:
        raise RequestError(422, f"{label}: {width}x{height} is too small (need at least 2x2)")
    return image


def check_pair(a: np.ndarray, b: np.ndarray) -> None:
    """422 naming both sizes when the sources differ in size."""
    if a.shape[:2] != b.shape[:2]:
        raise RequestError(422, f"sources differ in size: a is {a.shape[1]}x{a.shape[0]}, "
                                f"b is {b.shape[1]}x{b.shape[0]} (width x height)")
