"""infra/cloud/*.yaml through Ray's own cluster-launcher validation (the ray-schema.json shipped in the installed ray
package, after the provider defaults `ray up` merges), plus the pins, token auth and GPU node types."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.infra.conftest import CLOUD_CONFIGS, project_version, pyproject_pin

IMAGE = re.compile(r"^[a-z0-9./-]+/rsvheat:(?P<version>[0-9.]+)-ray(?P<ray>[0-9.]+)-py311-(?P<variant>cpu|gpu)$")


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before it talks to the cloud: merge the provider defaults, then validate."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_there_is_an_aws_and_a_gcp_config() -> None:
    assert {path.name for path in CLOUD_CONFIGS} == {"aws.yaml", "gcp.yaml"}


@pytest.mark.parametrize("path", CLOUD_CONFIGS, ids=lambda path: path.name)
def test_ray_accepts_the_config(path: Path) -> None:
    prepared = ray_validate(load(path))
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("path", CLOUD_CONFIGS, ids=lambda path: path.name)
@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["available_node_types"]["head"].update(min_worker=0),
        lambda c: c.update(idle_timeout_minute=5),
        lambda c: c["docker"].update(worker_imag="x"),
        lambda c: c["available_node_types"]["head"]["resources"].update(CPU=-1),
    ],
    ids=["node-type-typo", "top-level-typo", "docker-typo", "negative-resource"],
)
def test_ray_rejects_a_broken_config(path: Path, mutate: Any) -> None:
    config = load(path)
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(config)


@pytest.mark.parametrize("path", CLOUD_CONFIGS, ids=lambda path: path.name)
def test_images_carry_the_pinned_versions(path: Path) -> None:
    config = load(path)
    images = {"head": config["docker"]["head_image"], "default worker": config["docker"]["worker_image"]}
    images |= {
        name: node["docker"]["worker_image"]
        for name, node in config["available_node_types"].items()
        if "docker" in node
    }
    for name, image in images.items():
        match = IMAGE.match(image)
        assert match, f"{path.name} {name}: {image}"
        assert (match["version"], match["ray"]) == (project_version(), pyproject_pin("ray"))
    assert IMAGE.match(images["head"])["variant"] == "cpu"  # type: ignore[index]


@pytest.mark.parametrize("path", CLOUD_CONFIGS, ids=lambda path: path.name)
def test_gpu_node_types_use_the_gpu_image_and_cpu_types_the_cpu_image(path: Path) -> None:
    config = load(path)
    gpu_types = 0
    for name, node in config["available_node_types"].items():
        if name == config["head_node_type"]:
            assert node["resources"] == {"CPU": 0}, "no tasks on the head: drivers only"
            continue
        image = node.get("docker", {}).get("worker_image", config["docker"]["worker_image"])
        gpus = node["resources"].get("GPU", 0)
        assert image.endswith("-gpu") == (gpus > 0), (name, image)
        assert node["min_workers"] == 0 and node["max_workers"] >= 1, name
        gpu_types += gpus > 0
    assert gpu_types >= 2, "offer more than one GPU worker type"


@pytest.mark.parametrize("path", CLOUD_CONFIGS, ids=lambda path: path.name)
def test_token_auth_on_and_the_dashboard_on_loopback(path: Path) -> None:
    config = load(path)
    token_path = next(iter(config["file_mounts"]))
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    for commands in (head, worker):
        assert "RAY_AUTH_MODE=token" in commands and f"RAY_AUTH_TOKEN_PATH={token_path}" in commands
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert config["file_mounts"][token_path].startswith("~/"), "the token comes from the operator's machine"


@pytest.mark.parametrize("path", CLOUD_CONFIGS, ids=lambda path: path.name)
def test_no_credentials_in_the_config(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|BEGIN [A-Z ]*PRIVATE KEY|ssh_private_key", text, re.I)
