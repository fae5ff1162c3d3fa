"""Packaging: the wheel carries every subpackage and the shipped folders (configs/,
tune_spaces/, serve/, samples/, models/), and an installed wheel works from any folder.

The end-to-end test builds the wheel from a copy of the tree, installs it into a fresh venv
and runs `adaray info`, a fuse with the shipped model and `adaray demo --quick` (train, sweep,
registry, Serve, evaluate) on the venv's own local Ray, in a folder outside the checkout. The
fresh venv takes the dependencies (torch, Ray, MLflow, ...) from this one through a path file,
so the test needs no network; adaray itself is only the wheel's copy there (checked).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib
from conftest import REPO
from ray_cluster import own_ray_process

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


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the tree (the build writes build/ and egg-info beside its
    sources, so it must not run in the checkout)."""
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "adaray", *SHIPPED_FOLDERS):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copyfile
        copy(REPO / name, source / name)
    shutil.rmtree(source / "adaray" / "_files", ignore_errors=True)
    for cache in source.rglob("__pycache__"):
        shutil.rmtree(cache)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(source)], check=True, timeout=300)
    return next((tmp / "dist").glob("adaray-*.whl"))


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new venv with the wheel installed; its dependencies come from this venv's
    site-packages, listed after its own (whose adaray is the wheel's)."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], capture_output=True, text=True, check=True).stdout
    Path(site.strip(), "deps-of-the-test-venv.pth").write_text(sysconfig.get_path("purelib"))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, timeout=300)
    return venv


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_installed_wheel_runs_info_fuse_and_quick_demo_from_any_folder(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for path in ("adaray/_files/configs/ivf.yaml", "adaray/_files/tune_spaces/mef.yaml",
                 "adaray/_files/serve/config.yaml", "adaray/_files/models/mif.pt",
                 "adaray/_files/samples/MIF/CT/2004.png", "adaray/serving/app.py",
                 "adaray/tracking/__init__.py", "adaray/tune/__init__.py"):
        assert path in names, f"{path} not in {wheel.name}"
    venv = _fresh_venv(tmp_path, wheel)
    adaray = str(venv / "bin" / "adaray")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args: str) -> str:
        done = subprocess.run([adaray, *args], cwd=elsewhere, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        return done.stdout + done.stderr

    location = subprocess.run([str(venv / "bin" / "python"), "-c",
                               "import adaray; print(adaray.shipped_path('configs'))"],
                              cwd=elsewhere, capture_output=True, text=True, check=True).stdout
    assert Path(location.strip()).is_relative_to(venv), location
    assert "adaray 0.1.0" in run("info")
    pair = shipped_path("samples", "MIF")
    run("fuse", str(pair / "CT" / "2004.png"), str(pair / "MRI" / "2004.png"), "-o", "fused.png",
        "--task", "mif")
    assert (elsewhere / "fused.png").stat().st_size > 0

    log = tmp_path / "demo.log"
    with own_ray_process([adaray, "demo", "--quick", "--workdir", "work"], log, "adaray-wh-",
                         cwd=elsewhere) as (process, _):
        code = process.wait(timeout=600)
    text = log.read_text()
    assert code == 0, text[-5000:]
    for number in range(1, 6):
        assert f"=== [{number}/5]" in text
    assert "fused over HTTP" in text
    assert (elsewhere / "work").is_dir()
