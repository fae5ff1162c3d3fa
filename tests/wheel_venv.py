"""The wheel of this checkout, installed into a fresh venv, for tests of an installed adaray.

    venv = install_wheel(REPO, tmp_path)  # conftest's session fixture `installed_wheel`
    subprocess.run([venv.adaray, "info"], cwd=elsewhere)

The wheel is built from a copy of the tree (a build writes build/ and egg-info beside its
sources). The fresh venv takes the dependencies (torch, Ray, MLflow, ...) from this one through a
path file listed after its own site-packages, so no network is needed and its adaray is only the
wheel's copy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from adaray import SHIPPED_FOLDERS

__all__ = ["InstalledWheel", "install_wheel"]


@dataclass(frozen=True)
class InstalledWheel:
    """The built wheel and the venv it is installed in."""

    wheel: Path
    venv: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def adaray(self) -> str:
        return str(self.venv / "bin" / "adaray")


def _build_wheel(repo: Path, tmp: Path) -> Path:
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "adaray", *SHIPPED_FOLDERS):
        copy = shutil.copytree if (repo / name).is_dir() else shutil.copyfile
        copy(repo / name, source / name)
    shutil.rmtree(source / "adaray" / "_files", ignore_errors=True)
    for cache in source.rglob("__pycache__"):
        shutil.rmtree(cache)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(source)], check=True, timeout=300)
    return next((tmp / "dist").glob("adaray-*.whl"))


def install_wheel(repo: Path, tmp: Path) -> InstalledWheel:
    """Build the wheel of the checkout `repo` in `tmp`; install it into the new venv tmp/venv."""
    wheel = _build_wheel(repo, tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = InstalledWheel(wheel, venv)
    site = subprocess.run([installed.python, "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], capture_output=True, text=True, check=True).stdout
    Path(site.strip(), "deps-of-the-test-venv.pth").write_text(sysconfig.get_path("purelib"))
    subprocess.run([installed.python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, timeout=300)
    return installed
