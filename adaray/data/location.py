"""Files and folders named by a local path or a URI, listed and read one way.

A `Location` is an absolute local path or a URI that pyarrow's filesystems understand
(`s3://bucket/prefix`, `gs://bucket/prefix`, `hdfs://...`; `file:///path` is a local path).
Pair discovery, manifests and image reading go through it, so a folder on disk and a prefix in
object storage follow the same rules and give the same errors. Credentials and endpoints come
from the environment, as for every AWS client (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, AWS_REGION) or from the machine's instance role; never from a config.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from adaray.errors import InputNotFoundError


@functools.lru_cache(maxsize=16)
def _filesystem(root: str) -> pafs.FileSystem:
    """The pyarrow filesystem of a URI root (`scheme://authority`), made once per process."""
    return pafs.FileSystem.from_uri(root)[0]


def _root(uri: str) -> str:
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


@dataclass(frozen=True)
class Location:
    """A file or folder: an absolute local path, or a URI (`str()` gives it back as given)."""

    uri: str

    @classmethod
    def of(cls, where: str | Path | Location) -> Location:
        """The Location of a local path (made absolute) or a URI."""
        if isinstance(where, Location):
            return where
        text = str(where)
        if text.startswith("file://"):
            text = text.removeprefix("file://")
        elif "://" in text:
            scheme, rest = text.split("://", 1)
            if not rest.split("/", 1)[0]:
                raise InputNotFoundError(f"{text}: no bucket or host after {scheme}://")
            return cls(f"{scheme}://{rest}".rstrip("/"))
        return cls(str(Path(text).expanduser().resolve()))

    @property
    def is_local(self) -> bool:
        """True for a path on this machine's filesystem."""
        return "://" not in self.uri

    @property
    def _posix(self) -> PurePosixPath:
        return PurePosixPath(self.uri.split("://", 1)[-1])

    @property
    def name(self) -> str:
        return self._posix.name

    @property
    def stem(self) -> str:
        return self._posix.stem

    @property
    def suffix(self) -> str:
        return self._posix.suffix

    @property
    def parent(self) -> Location:
        if self.is_local:
            return Location(str(Path(self.uri).parent))
        scheme, rest = self.uri.split("://", 1)
        head, _, _ = rest.rpartition("/")
        return Location(f"{scheme}://{head or rest}")

    def __truediv__(self, part: str | Path) -> Location:
        """A child path; an absolute local path or a URI stands for itself."""
        text = str(part)
        if "://" in text or (self.is_local and Path(text).is_absolute()):
            return Location.of(text)
        if self.is_local:
            return Location(os.path.normpath(Path(self.uri) / text))
        return Location(f"{self.uri}/{text.strip('/')}")

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        if not self.is_local:
            raise TypeError(f"{self.uri} is not a local path")
        return self.uri

    def _fs_path(self) -> tuple[pafs.FileSystem, str]:
        if self.is_local:
            return pafs.LocalFileSystem(), self.uri
        return _filesystem(_root(self.uri)), self.uri.split("://", 1)[1]

    def _type(self) -> pafs.FileType:
        fs, path = self._fs_path()
        return fs.get_file_info(path).type

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def entries(self) -> list[tuple[Location, bool]]:
        """(child, is a folder) of every entry of this folder, sorted by name; one listing
        request, so it stays cheap on object storage."""
        fs, path = self._fs_path()
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
        return sorted(((self / info.base_name, info.type == pafs.FileType.Directory)
                       for info in infos), key=lambda entry: entry[0].name)

    def read_bytes(self) -> bytes:
        """The file's content; OSError (FileNotFoundError when it is missing) otherwise."""
        if self.is_local:
            return Path(self.uri).read_bytes()
        fs, path = self._fs_path()
        with fs.open_input_file(path) as stream:
            return stream.read()


def missing(locations: list[Location]) -> list[Location]:
    """The locations that do not exist, asked in one request per filesystem."""
    by_root: dict[str, list[Location]] = {}
    for location in locations:
        by_root.setdefault("" if location.is_local else _root(location.uri), []).append(location)
    absent = []
    for group in by_root.values():
        fs, _ = group[0]._fs_path()
        infos = fs.get_file_info([location._fs_path()[1] for location in group])
        absent += [loc for loc, info in zip(group, infos, strict=True)
                   if info.type == pafs.FileType.NotFound]
    return absent
