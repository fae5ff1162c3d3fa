"""adaray: train, tune, track and serve AdaSFFuse on Ray."""

from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
# The files that ship with adaray, kept once at the top of the source tree: configs/ (recipes),
# tune_spaces/ (search spaces), serve/ (Serve configs), samples/ (demo pairs) and models/ (trained
# recipe models). A wheel carries them inside the package as adaray/_files/<name>/
# (pyproject.toml maps them there); a checkout or an editable install reads the source tree.
SHIPPED_FOLDERS = ("configs", "tune_spaces", "serve", "samples", "models")
_INSTALLED_FILES = PACKAGE_DIR / "_files"
SOURCE_TREE = PACKAGE_DIR.parent


def shipped_path(folder: str, *parts: str) -> Path:
    """A file or folder shipped with adaray, e.g. `shipped_path("configs", "ivf.yaml")`."""
    if folder not in SHIPPED_FOLDERS:
        raise ValueError(f"{folder!r} is not a shipped folder (one of: "
                         f"{', '.join(SHIPPED_FOLDERS)})")
    root = _INSTALLED_FILES if _INSTALLED_FILES.is_dir() else SOURCE_TREE
    return root.joinpath(folder, *parts)
