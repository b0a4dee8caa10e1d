"""deploy/Dockerfile, checked without a Docker engine: its structure, that everything it copies
is in the build context, and the runtime subset of the lock it installs."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.deploy.support import DEPLOY, REPO

DOCKERFILE = DEPLOY / "Dockerfile"

Instruction = tuple[str, str]  # (keyword, arguments)


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        piece = stripped.removesuffix("\\").strip()
        pending = f"{pending} {piece}" if pending else piece
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = pending.partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        pending = ""
    return found


def stages() -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for keyword, arguments in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, arguments))
    return result


def load_runtime_requirements() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "runtime_requirements", DEPLOY / "runtime_requirements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def dockerignore_admits(path: str) -> bool:
    """Whether ``path`` (relative to the context) survives Dockerfile.dockerignore."""
    admitted = True
    for raw in (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.removeprefix("!").rstrip("/")
        parts = Path(path).parts
        # A rule about a directory applies to everything under it.
        candidates = [str(Path(*parts[:n])) for n in range(1, len(parts) + 1)]
        if any(pattern == "**" or fnmatch.fnmatch(c, pattern) for c in candidates):
            admitted = negate
    return admitted


def test_multi_stage_slim_build() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "build and runtime stages"
    for stage in all_stages:
        keyword, arguments = stage[0]
        assert keyword == "FROM" and " AS " in arguments.upper()
    args = dict(a.split("=", 1) for k, a in instructions() if k == "ARG" and "=" in a)
    assert "slim" in args["PYTHON_IMAGE"]


def test_dependencies_install_from_the_lock_with_hashes() -> None:
    build = " ".join(a for k, a in stages()[0] if k == "RUN")
    assert "--require-hashes" in build
    assert "runtime_requirements.py requirements.lock pyproject.toml" in build
    assert "--no-deps" in build


def test_runtime_stage_is_non_root_with_a_healthcheck() -> None:
    runtime = stages()[-1]
    users = [a for k, a in runtime if k == "USER"]
    assert users, "the runtime stage must switch user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid (runAsNonRoot checks it)"
    assert f"--uid {uid}" in " ".join(a for k, a in runtime if k == "RUN")
    healthcheck = " ".join(a for k, a in runtime if k == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    copies_from_build = [a for k, a in runtime if k == "COPY" and a.startswith("--from=")]
    assert copies_from_build, "the runtime stage takes the built environment from the build stage"


def test_copied_sources_are_in_the_context() -> None:
    for keyword, arguments in instructions():
        if keyword != "COPY" or arguments.startswith("--from="):
            continue
        *sources, _ = shlex.split(arguments)
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert dockerignore_admits(source.rstrip("/")), f"COPY {source}: dockerignored"
    for excluded in (".venv", ".git", "tests/conftest.py"):
        assert not dockerignore_admits(excluded), f"{excluded} would be sent to the builder"


def test_default_command_runs_the_image_config_on_the_exposed_port() -> None:
    runtime = stages()[-1]
    entrypoint = json.loads(next(a for k, a in runtime if k == "ENTRYPOINT"))
    command = json.loads(next(a for k, a in runtime if k == "CMD"))
    assert entrypoint == ["streamer"]
    assert "run" in command
    config = command[command.index("--config") + 1]
    copies = [shlex.split(a) for k, a in runtime if k == "COPY" and not a.startswith("--from=")]
    image_files = {
        dest.rstrip("/") + "/" + path.relative_to(REPO / src.rstrip("/")).as_posix()
        for *srcs, dest in copies
        for src in srcs
        for path in (REPO / src.rstrip("/")).rglob("*")
    }
    assert config in image_files, f"{config} is not in the image"
    environment = " ".join(a for k, a in runtime if k == "ENV")
    listen = re.search(r"STREAMER_METRICS_LISTEN=(\S+)", environment)
    assert listen is not None
    exposed = [a for k, a in runtime if k == "EXPOSE"]
    assert exposed == [listen.group(1).rpartition(":")[2]]
    assert listen.group(1).startswith("0.0.0.0:")
    # The variable wins over [metrics].listen: the configs compose and Kubernetes mount say the
    # same, so that nobody reads a port there that the image silently overrides.
    k8s_config = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())["data"]
    for where, text in (
        ("deploy/compose/streamer.toml", (DEPLOY / "compose" / "streamer.toml").read_text()),
        ("deploy/k8s/configmap.yaml", k8s_config["streamer.toml"]),
    ):
        assert tomllib.loads(text)["metrics"]["listen"] == listen.group(1), where


def test_runtime_subset_of_the_lock() -> None:
    module = load_runtime_requirements()
    subset = module.render(REPO / "requirements.lock", REPO / "pyproject.toml")
    pinned = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", subset, flags=re.MULTILINE))
    for runtime in (
        "aiomqtt",
        "paho-mqtt",
        "msgspec",
        "numpy",
        "redis",
        "hiredis",
        "prometheus-client",
        "rich",
        "uvloop",
        "matplotlib",  # streamer tracking's chart
    ):
        assert runtime in pinned, f"{runtime} missing from the image's requirements"
    for dev in ("pytest", "mypy", "ruff", "hypothesis", "pyyaml", "py-spy", "pyinstrument"):
        assert dev not in pinned, f"{dev} would be installed in the image"
    # Every kept package keeps the lock's hashes, so pip's hash-checking mode still applies.
    _, packages = module.parse_lock((REPO / "requirements.lock").read_text(encoding="utf-8"))
    for name in pinned:
        lines = packages[name].lines
        assert any("--hash=sha256:" in line for line in lines), name
        assert all(line in subset.splitlines() for line in lines), name


def test_runtime_subset_refuses_a_dependency_missing_from_the_lock(tmp_path: Path) -> None:
    module = load_runtime_requirements()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["numpy>=2", "left-pad"]\n')
    with pytest.raises(ValueError, match="left-pad"):
        module.render(REPO / "requirements.lock", pyproject)
