"""The project's error types: bad input that the user can fix, with a message that names the
file, field or request. The CLI reports these in one line and exits 2; any other exception is
a bug or an infrastructure fault and keeps its traceback."""

from __future__ import annotations


class AdarayError(Exception):
    """Bad input: a config, argument, data file, model file or request."""


class ConfigError(AdarayError, ValueError):
    """A configuration value is missing, unknown or invalid; the message names the field."""


class DataError(AdarayError, ValueError):
    """Image data cannot be used (pairs, image files); the message names the files."""


class ModelFileError(AdarayError, ValueError):
    """A model file or model URI cannot be loaded; the message names it."""


class InputNotFoundError(AdarayError, FileNotFoundError):
    """A file or folder the user named does not exist; the message names it."""


class RequestError(AdarayError):
    """A refused request to the Serve app: HTTP `status` and a reason for the caller."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}  # e.g. Retry-After of a 503
