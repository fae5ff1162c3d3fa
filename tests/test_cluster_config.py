"""cluster.yaml: valid for Ray's cluster launcher, and set up the way adaray needs.

Validation is Ray's own, offline: `prepare_config` (merge with the AWS provider defaults, as
`ray up` does before any cloud call) then `validate_config` (the JSON schema
`ray/autoscaler/ray-schema.json` plus Ray's cross-field checks). No AWS access.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

# EC2 families with NVIDIA GPUs (instance type "<family>.<size>").
NVIDIA_FAMILIES = {"g4dn", "g5", "g6", "g6e", "gr6", "p3", "p3dn", "p4d", "p4de", "p5", "p5e",
                   "p5en"}
# rayproject/ray:<ray version>-py<XY>-<platform>, platform cuXYZ / gpu / cpu.
IMAGE_RE = re.compile(
    r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d{2,3})-(?P<platform>\w+)$")
GPU_INSTALL_FLAGS = ("MAMBA_FORCE_BUILD=TRUE", "MAMBA_SKIP_CUDA_BUILD=TRUE",
                     "CAUSAL_CONV1D_FORCE_BUILD=TRUE", "CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE",
                     "--no-build-isolation", '".[gpu]"')


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before touching AWS; returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """cluster.yaml as written."""
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    """cluster.yaml merged with Ray's AWS defaults and validated."""
    return ray_validate(raw)


def head_type(config: dict[str, Any]) -> dict[str, Any]:
    """The head node type."""
    return config["available_node_types"][config["head_node_type"]]


def gpu_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Worker node types that provide GPUs (declared, or by instance family)."""
    return {name: node for name, node in config["available_node_types"].items()
            if name != config["head_node_type"] and provides_gpu(node)}


def provides_gpu(node: dict[str, Any]) -> bool:
    """Whether a node type declares GPU resources or uses an NVIDIA GPU instance type."""
    family = node["node_config"].get("InstanceType", "").split(".")[0]
    return node.get("resources", {}).get("GPU", 0) > 0 or family in NVIDIA_FAMILIES


def test_valid_per_ray_schema(raw: dict[str, Any], prepared: dict[str, Any]) -> None:
    """The file as written matches the schema, and so does Ray's prepared version."""
    jsonschema.validate(raw, json.loads(SCHEMA.read_text()))
    assert prepared["cluster_name"] == "adaray"
    assert prepared["provider"]["type"] == "aws"
    assert isinstance(prepared["provider"]["cache_stopped_nodes"], bool)
    assert prepared["auth"]["ssh_user"] == "ubuntu"
    assert prepared["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("mutate, message", [
    (lambda c, gpu: c.update(max_workers="many"), "'many' is not of type 'integer'"),
    (lambda c, gpu: c.update(worker_count=4), "Additional properties are not allowed"),
    (lambda c, gpu: c["docker"].update(gpus="all"), "Additional properties are not allowed"),
    (lambda c, gpu: gpu.update(resources={"GPU": "one"}), "'one' is not of type 'integer'"),
    (lambda c, gpu: gpu.pop("node_config"), "'node_config' is a required property"),
], ids=["max_workers-string", "unknown-top-level-key", "unknown-docker-key",
        "gpu-count-string", "missing-node_config"])
def test_invalid_copies_are_rejected(raw: dict[str, Any], mutate: Any, message: str) -> None:
    """The same validator rejects a broken copy, so the test above can fail."""
    broken = copy.deepcopy(raw)
    (gpu_node,) = gpu_types(broken).values()
    mutate(broken, gpu_node)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        ray_validate(broken)


def test_head_is_cpu_only(prepared: dict[str, Any]) -> None:
    """The head coordinates (driver, Train controller, Tune trials) and has no GPU."""
    head = head_type(prepared)
    assert head["resources"].get("GPU", 0) == 0
    assert not provides_gpu(head), head["node_config"]["InstanceType"]
    assert head["max_workers"] == 0, "the head node type does not autoscale"
    assert head["resources"].get("CPU") != 0, "the head should keep CPUs for coordinators"


def test_gpu_workers_autoscale_from_zero(prepared: dict[str, Any]) -> None:
    """One GPU worker type, scaled 0..N within the global max_workers."""
    gpus = gpu_types(prepared)
    assert len(gpus) == 1, f"expected one GPU worker type, got {sorted(gpus)}"
    (node,) = gpus.values()
    assert node["min_workers"] == 0, "GPU nodes should only run while there is work"
    assert 1 <= node["max_workers"] <= prepared["max_workers"], node["max_workers"]


def test_setup_installs_gpu_extra(prepared: dict[str, Any]) -> None:
    """Every node installs torch and the project's `gpu` extra with README's build flags."""
    repo_dir = next((remote for remote, local in prepared["file_mounts"].items()
                     if (REPO / local).resolve() == REPO), None)
    assert repo_dir, "file_mounts does not ship the repository"
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged in
        commands = prepared[key]
        install = [c for c in commands if ".[gpu]" in c]
        assert len(install) == 1, f"{key}: no single `pip install .[gpu]` in {commands}"
        for flag in GPU_INSTALL_FLAGS:
            assert flag in install[0], f"{key}: {flag} missing from {install[0]!r}"
        cd_target = re.search(r"cd (\S+) &&", install[0]).group(1)
        assert cd_target.replace("~", "/home/ray", 1) == repo_dir
        torch_pins = [c for c in commands[:commands.index(install[0])] if '"torch==' in c]
        assert torch_pins, f"{key}: torch must be installed before the gpu extra"


def test_image_matches_installed_ray(prepared: dict[str, Any]) -> None:
    """Every node runs a CUDA rayproject/ray image of exactly this Ray version."""
    docker = prepared["docker"]
    images = {docker.get(k) for k in ("image", "head_image", "worker_image")} - {None}
    images |= {n["docker"]["worker_image"] for n in prepared["available_node_types"].values()
               if "worker_image" in n.get("docker", {})}
    assert images
    for image in images:
        match = IMAGE_RE.match(image)
        assert match, f"unexpected image tag {image!r}"
        assert match["ray"] == ray.__version__, f"{image} != ray {ray.__version__}"
        assert re.fullmatch(r"cu\d{3}|gpu", match["platform"]), f"{image} is not a CUDA image"
    assert docker["container_name"]
    assert docker["pull_before_run"] is True


def test_file_mounts_ship_repo_and_token(prepared: dict[str, Any]) -> None:
    """The repository and the auth token reach every node; .gitignore keeps .venv out."""
    mounts = prepared["file_mounts"]
    assert any((REPO / local).resolve() == REPO for local in mounts.values()), mounts
    assert "~/.ray/auth_token" in mounts.values()
    assert ".gitignore" in prepared["rsync_filter"]


def test_start_commands(prepared: dict[str, Any]) -> None:
    """Head and workers start Ray with token auth; workers join the head's GCS."""
    head = " ".join(prepared["head_start_ray_commands"])
    worker = " ".join(prepared["worker_start_ray_commands"])
    assert prepared["head_start_ray_commands"][0] == "ray stop"
    assert prepared["worker_start_ray_commands"][0] == "ray stop"
    for flag in ("--head", "--port=6379", "--dashboard-host=0.0.0.0",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml"):
        assert flag in head
    assert "--address=$RAY_HEAD_IP:6379" in worker
    for commands in (head, worker):
        assert "RAY_AUTH_MODE=token" in commands, f"token auth not explicit in {commands!r}"
