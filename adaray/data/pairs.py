"""Finding, checking and splitting image pairs.

A pair folder holds an A folder and a B folder whose files pair up by stem (extension and its
case do not matter): `infrared/FLIR_00006.jpg` pairs with `visible/FLIR_00006.png`. The folder
names come from the task table (`adaray.tasks`), matched case-insensitively. Layouts found:

- the seed layout `<root>/<split>/IVF/infrared|visible` (point `data` at the split or at IVF);
- the shared datasets `<root>/IVF/RoadScene/infrared|visible` and, for MIF, every one of
  `<root>/MIF/Harvard-CT|Harvard-PET|Harvard-SPECT/...` (point `data` at the root or the task);
- any folder given explicitly with `a_dir` / `b_dir`;
- a manifest file (CSV or Parquet, columns `a`, `b` and optionally `group`) listing the pairs.

`data` may be a local folder or an object-store prefix (`s3://bucket/prefix`): both are read
through `adaray.data.location`, with the same rules and the same errors.

Each pair carries a `group`, the name of its pair folder ("RoadScene", "Harvard-CT", "IVF"), so
that the train/validation split, a hash of (group, stem), does not depend on where `data`
points. Problems raise `PairError` naming the folders and files involved.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adaray.data.io import ImageReadError, is_image_file, read_image
from adaray.data.location import Location, missing
from adaray.errors import ConfigError, DataError
from adaray.tasks import TASKS, TaskSpec, get_task

MAX_SEARCH_DEPTH = 4  # folder levels below `data` searched for pair folders
MAX_LISTED = 5  # names quoted in an error message before "..."
MANIFEST_SUFFIXES = (".csv", ".parquet")


class PairError(DataError):
    """Image pairs cannot be found or do not match; the message names the folders and files."""


@dataclass(frozen=True)
class ImagePair:
    """Two aligned source images of one scene."""

    stem: str
    a_path: Location  # a local path or an object URI (`str()` gives it)
    b_path: Location
    group: str  # name of the folder holding the A and B folders, e.g. "Harvard-CT"


def _by_name(pair: ImagePair) -> tuple[str, str]:
    return pair.group, pair.stem


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (", ..." if len(names) > MAX_LISTED else "")


def _images_by_stem(folder: Location) -> dict[str, Location]:
    """Image files of `folder` keyed by stem; hidden and non-image files are ignored."""
    by_stem: dict[str, Location] = {}
    for path, is_dir in folder.entries():
        if is_dir or path.name.startswith(".") or not is_image_file(path.name):
            continue
        if path.stem in by_stem:
            raise PairError(
                f"{folder}: two images with stem {path.stem!r}: {by_stem[path.stem].name} and "
                f"{path.name}; keep one"
            )
        by_stem[path.stem] = path
    return by_stem


def pair_folder(a_dir: Location, b_dir: Location, group: str) -> list[ImagePair]:
    """Pair the images of `a_dir` and `b_dir` by stem; every image must have a partner."""
    for folder in (a_dir, b_dir):
        if not folder.is_dir():
            raise PairError(f"image folder {folder} does not exist")
    a_files, b_files = _images_by_stem(a_dir), _images_by_stem(b_dir)
    only_a = sorted(a_files.keys() - b_files.keys())
    only_b = sorted(b_files.keys() - a_files.keys())
    if only_a or only_b:
        problems = [
            f"{len(missing)} image(s) in {here} have no partner in {there}: {_listing(missing)}"
            for missing, here, there in ((only_a, a_dir, b_dir), (only_b, b_dir, a_dir))
            if missing
        ]
        raise PairError("unmatched stems: " + "; ".join(problems))
    return [ImagePair(stem, a_files[stem], b_files[stem], group) for stem in sorted(a_files)]


def _subfolders(folder: Location) -> dict[str, Location]:
    """Visible subfolders keyed by lower-case name."""
    return {path.name.lower(): path for path, is_dir in folder.entries()
            if is_dir and not path.name.startswith(".")}


def _pick(subfolders: dict[str, Location], names: Iterable[str],
          where: Location) -> Location | None:
    """The one subfolder named like one of `names`; an error when several are present."""
    found = [subfolders[n.lower()] for n in names if n.lower() in subfolders]
    if len(found) > 1:
        raise PairError(
            f"{where}: several candidate folders ({', '.join(p.name for p in found)}); "
            "choose with a_dir / b_dir (--a-dir / --b-dir)"
        )
    return found[0] if found else None


def find_pair_folders(data: Location, task: TaskSpec) -> list[tuple[Location, Location]]:
    """(A folder, B folder) of every pair folder at or below `data` (MAX_SEARCH_DEPTH levels).

    Folders named like another task's folder (MEF, MFF, ... when looking for IVF) are skipped,
    and the search does not descend into a pair folder.
    """
    other_tasks = {spec.folder.lower() for spec in TASKS.values() if spec.name != task.name}
    found: list[tuple[Location, Location]] = []
    level = [data]
    for _ in range(MAX_SEARCH_DEPTH + 1):
        next_level: list[Location] = []
        for folder in level:
            subfolders = _subfolders(folder)
            a_dir = _pick(subfolders, task.a_dirs, folder)
            b_dir = _pick(subfolders, task.b_dirs, folder)
            if a_dir and b_dir:
                found.append((a_dir, b_dir))
            else:
                next_level += [p for name, p in subfolders.items() if name not in other_tasks]
        level = sorted(next_level, key=str)
    return found


def is_manifest(data: str | Path | Location) -> bool:
    """True when `data` names a manifest file (.csv or .parquet) rather than a folder."""
    return Location.of(data).suffix.lower() in MANIFEST_SUFFIXES


def read_manifest(manifest: Location) -> list[ImagePair]:
    """The pairs a manifest lists: columns `a` and `b` (paths relative to the manifest's folder,
    absolute paths or URIs) and an optional `group` (default: the folder above A's folder, as
    for folders). Every listed file must exist; errors name the manifest and the row."""
    import pyarrow.csv
    import pyarrow.parquet

    try:
        data = manifest.read_bytes()
    except OSError as exc:
        raise PairError(f"manifest {manifest} cannot be read ({exc})") from None
    try:
        source = pyarrow.BufferReader(data)
        table = (pyarrow.parquet.read_table(source) if manifest.suffix.lower() == ".parquet"
                 else pyarrow.csv.read_csv(source))
    except pyarrow.ArrowException as exc:
        raise PairError(f"manifest {manifest}: not a readable table ({exc})") from None
    missing_columns = sorted({"a", "b"} - set(table.column_names))
    if missing_columns:
        raise PairError(f"manifest {manifest}: no column {missing_columns[0]!r} (needs a, b "
                        f"and optionally group; has {', '.join(table.column_names)})")
    rows = table.to_pylist()
    pairs = []
    for number, row in enumerate(rows, start=2):  # row 1 of a CSV is its header
        if not row["a"] or not row["b"]:
            raise PairError(f"manifest {manifest}, row {number}: empty a or b")
        a, b = manifest.parent / str(row["a"]), manifest.parent / str(row["b"])
        group = str(row.get("group") or a.parent.parent.name)
        pairs.append(ImagePair(a.stem, a, b, group))
    if not pairs:
        raise PairError(f"manifest {manifest} lists no pairs")
    absent = {str(location) for location in missing([p.a_path for p in pairs] +
                                                     [p.b_path for p in pairs])}
    if absent:
        rows_missing = [f"row {n}: {loc}" for n, p in enumerate(pairs, start=2)
                        for loc in (p.a_path, p.b_path) if str(loc) in absent]
        raise PairError(f"manifest {manifest} names {len(rows_missing)} missing file(s): "
                        f"{_listing(rows_missing)}")
    seen: dict[tuple[str, str], int] = {}
    for number, pair in enumerate(pairs, start=2):
        if (pair.group, pair.stem) in seen:
            raise PairError(f"manifest {manifest}: rows {seen[(pair.group, pair.stem)]} and "
                            f"{number} are both {pair.group}/{pair.stem}; give them distinct "
                            "groups")
        seen[(pair.group, pair.stem)] = number
    return sorted(pairs, key=_by_name)


def discover_pairs(
    data: str | Path | Location,
    task: str | TaskSpec,
    a_dir: str | Path | None = None,
    b_dir: str | Path | None = None,
) -> list[ImagePair]:
    """All image pairs of `task` under `data`, sorted by (group, stem), with absolute paths.

    `data` is a local folder, an object-store URI (`s3://bucket/prefix`) or a manifest file
    (`read_manifest`). With `a_dir` and `b_dir` (absolute, or relative to `data`) exactly those
    two folders are paired; otherwise every pair folder at or below `data` is used (see the
    module doc).
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    data = Location.of(data)
    if (a_dir is None) != (b_dir is None):
        given, missing_dir = ("a_dir", "b_dir") if b_dir is None else ("b_dir", "a_dir")
        raise PairError(f"{given} given without {missing_dir}: give both folders or neither")
    if is_manifest(data):
        if a_dir is not None:
            raise PairError(f"{data} is a manifest: it pairs its files itself; drop a_dir / "
                            "b_dir")
        return read_manifest(data)
    if a_dir is not None and b_dir is not None:
        a_path, b_path = data / a_dir, data / b_dir
        pairs = pair_folder(a_path, b_path, group=a_path.parent.name)
        if not pairs:
            raise PairError(f"no images in {a_path} and {b_path}")
        return pairs

    if not data.is_dir():
        raise PairError(f"data folder {data} does not exist")
    folders = find_pair_folders(data, spec)
    if not folders:
        raise PairError(
            f"no {spec.folder} pair folders under {data}: looked for a folder holding one of "
            f"({', '.join(spec.a_dirs)}) and one of ({', '.join(spec.b_dirs)}), case-insensitive, "
            f"up to {MAX_SEARCH_DEPTH} levels deep (or give a_dir / b_dir)"
        )
    groups: dict[str, Location] = {}
    pairs = []
    for a_folder, b_folder in folders:
        root = a_folder.parent
        if root.name in groups:
            raise PairError(
                f"pair folders {groups[root.name]} and {root} have the same name; point data at "
                "one of them (for example one split), or give a_dir / b_dir"
            )
        groups[root.name] = root
        pairs += pair_folder(a_folder, b_folder, group=root.name)
    if not pairs:
        found = ", ".join(str(a.parent) for a, _ in folders)
        raise PairError(f"no image pairs in {found}")
    return sorted(pairs, key=_by_name)


def read_pair(pair: ImagePair) -> tuple[np.ndarray, np.ndarray]:
    """Both images of `pair` (see `read_image`); PairError naming both files and sizes when
    they differ, ImageReadError for an unreadable file."""
    image_a, image_b = read_image(pair.a_path), read_image(pair.b_path)
    (a_height, a_width), (b_height, b_width) = image_a.shape[:2], image_b.shape[:2]
    if (a_height, a_width) != (b_height, b_width):
        raise PairError(
            f"sizes differ: {pair.a_path} is {a_width}x{a_height}, "
            f"{pair.b_path} is {b_width}x{b_height} (width x height)"
        )
    return image_a, image_b


def _pair_problem(pair: ImagePair) -> str | None:
    try:
        read_pair(pair)
    except (ImageReadError, PairError) as exc:
        return str(exc)
    return None


def check_pairs(pairs: Sequence[ImagePair], threads: int = 4) -> None:
    """Decode every image of `pairs`; raise PairError listing the unreadable or truncated
    files and the pairs whose A and B sizes differ. Decoding runs on `threads` threads."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        problems = [p for p in pool.map(_pair_problem, pairs) if p]
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        hidden = len(problems) - MAX_LISTED
        more = f"\n  ... and {hidden} more" if hidden > 0 else ""
        raise PairError(f"{len(problems)} of {len(pairs)} pairs are unusable:\n  {shown}{more}")


def split_score(pair: ImagePair) -> float:
    """A stable number in [0, 1) from (group, stem): the same on every machine and run."""
    digest = hashlib.sha256(f"{pair.group}/{pair.stem}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_pairs(
    pairs: Sequence[ImagePair], val_fraction: float = 0.1, max_val: int | None = None
) -> tuple[list[ImagePair], list[ImagePair]]:
    """Split into (train, val) by `split_score`: a pair is in val when its score is below
    `val_fraction`, whatever the other pairs or their order.

    With val_fraction > 0 and at least two pairs, both parts are non-empty (the lowest-scoring
    pair moves to val, or the highest to train). `max_val` keeps the val pairs with the lowest
    scores; the others are dropped, not trained on, so validation pairs never reach training.
    Both lists are sorted by (group, stem).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ranked = sorted(pairs, key=lambda p: (split_score(p), p.group, p.stem))
    cut = sum(1 for p in ranked if split_score(p) < val_fraction)
    if val_fraction > 0 and len(ranked) >= 2:
        cut = min(max(cut, 1), len(ranked) - 1)
    val = ranked[:cut] if max_val is None else ranked[: min(cut, max_val)]
    return sorted(ranked[cut:], key=_by_name), sorted(val, key=_by_name)
