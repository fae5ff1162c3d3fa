"""Packaging: the wheel carries every subpackage and the shipped folders (configs/,
tune_spaces/, serve/, samples/, models/), and an installed wheel works from any folder.

The wheel, installed into a fresh venv (tests/wheel_venv.py; adaray there is only the wheel's
copy, checked here), runs `adaray info` and a fuse with the shipped model in a folder outside the
checkout. Its `adaray demo --quick` (train, sweep, registry, Serve, evaluate) runs in test_demo.py,
as the second demo in one work folder.
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest
import tomllib
from conftest import REPO
from wheel_venv import InstalledWheel

from adaray import SHIPPED_FOLDERS, shipped_path

SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_and_shipped_folder_is_packaged():
    subpackages = {".".join(p.parent.relative_to(REPO).parts)
                   for p in (REPO / "adaray").rglob("__init__.py")}
    listed = set(SETUPTOOLS["packages"])
    assert subpackages <= listed, f"add to pyproject.toml packages: {subpackages - listed}"
    mapped = {name.removeprefix("adaray._files."): folder
              for name, folder in SETUPTOOLS["package-dir"].items()}
    assert mapped == {folder: folder for folder in SHIPPED_FOLDERS}
    assert listed - subpackages == {f"adaray._files.{folder}" for folder in SHIPPED_FOLDERS}


def test_shipped_paths_of_a_checkout_are_its_top_level_folders():
    assert shipped_path("configs", "tiny.yaml") == REPO / "configs" / "tiny.yaml"
    assert shipped_path("serve", "config.yaml").is_file()
    with pytest.raises(ValueError, match="not a shipped folder"):
        shipped_path("docs")


def test_installed_wheel_carries_the_shipped_folders_and_runs_from_any_folder(
        installed_wheel: InstalledWheel, tmp_path):
    wheel = installed_wheel.wheel
    names = zipfile.ZipFile(wheel).namelist()
    for path in ("adaray/_files/configs/ivf.yaml", "adaray/_files/tune_spaces/mef.yaml",
                 "adaray/_files/serve/config.yaml", "adaray/_files/models/mif.pt",
                 "adaray/_files/samples/MIF/CT/2004.png", "adaray/serving/app.py",
                 "adaray/tracking/__init__.py", "adaray/tune/__init__.py"):
        assert path in names, f"{path} not in {wheel.name}"
    venv, adaray = installed_wheel.venv, installed_wheel.adaray
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args: str) -> str:
        done = subprocess.run([adaray, *args], cwd=elsewhere, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        return done.stdout + done.stderr

    location = subprocess.run([installed_wheel.python, "-c",
                               "import adaray; print(adaray.shipped_path('configs'))"],
                              cwd=elsewhere, capture_output=True, text=True, check=True).stdout
    assert Path(location.strip()).is_relative_to(venv), location
    assert "adaray 0.1.0" in run("info")
    pair = shipped_path("samples", "MIF")
    run("fuse", str(pair / "CT" / "2004.png"), str(pair / "MRI" / "2004.png"), "-o", "fused.png",
        "--task", "mif")
    assert (elsewhere / "fused.png").stat().st_size > 0
