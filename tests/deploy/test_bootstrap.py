""".ci/bootstrap's choice of what to install, run for real with a stand-in ``uv`` that records
what it is asked to do instead of installing: ``make demo`` gets the runtime part of the lock
(deploy/runtime_requirements.py's, as the image), ``make test`` all of it, and switching
between them, or changing the lock, installs what is missing and nothing else."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.support import REPO

DEV_TOOLS = ("pytest", "mypy", "ruff", "hypothesis", "pyyaml", "py-spy", "pyinstrument")
RUNTIME = ("numpy", "redis", "hiredis", "msgspec", "rich", "paho-mqtt", "aiomqtt")

# Records each call; ``uv venv`` makes .venv/bin/python, ``uv pip sync FILE`` logs the names
# pinned in FILE; FAKE_UV_FAIL makes the sync fail, as a broken download would.
FAKE_UV = r"""#!/usr/bin/env bash
set -euo pipefail
if [ "$1" = venv ]; then
  mkdir -p .venv/bin && ln -sf "$FAKE_UV_PYTHON" .venv/bin/python
  echo "venv" >> "$FAKE_UV_LOG"
elif [ "$1 $2" = "pip sync" ]; then
  file="${*: -1}"
  [ -z "${FAKE_UV_FAIL:-}" ] || exit 1
  echo "sync $file $(grep -oE '^[A-Za-z0-9][A-Za-z0-9._-]*==' "$file" | tr -d = | tr '\n' ' ')" \
    >> "$FAKE_UV_LOG"
elif [ "$1 $2" = "pip install" ]; then
  echo "install ${*: -1}" >> "$FAKE_UV_LOG"
fi
"""


def _found(name: str) -> bool:  # the bootstrap's own test: on PATH, or in /usr/sbin, /usr/bin
    return bool(shutil.which(name)) or any(
        Path(d, name).is_file() for d in ("/usr/sbin", "/usr/bin")
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    # With a package missing, the bootstrap would run apt-get (as root): not in a test.
    missing = [
        n
        for n in ("mosquitto", "mosquitto_passwd", "redis-server", "promtool", "chromium")
        if not _found(n)
    ]
    if missing:
        pytest.skip(f"the bootstrap would install {missing}")
    root = tmp_path / "checkout"
    for relative in (".ci/bootstrap", "requirements.lock", "pyproject.toml",
                     "deploy/runtime_requirements.py"):  # fmt: skip
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, root / relative)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "uv").write_text(FAKE_UV, encoding="utf-8")
    (bin_dir / "uv").chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable)  # a Python >= 3.11 whatever PATH has
    return root


def bootstrap(checkout: Path, *args: str, fail: bool = False) -> list[str]:
    """Run it; the stand-in uv's calls, one line each (the log is reset for every run)."""
    log = checkout.parent / "uv.log"
    log.write_text("", encoding="utf-8")
    env = {
        "PATH": f"{checkout.parent / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(checkout.parent),
        "FAKE_UV_LOG": str(log),
        "FAKE_UV_PYTHON": sys.executable,
        **({"FAKE_UV_FAIL": "1"} if fail else {}),
    }
    result = subprocess.run(
        ["bash", str(checkout / ".ci" / "bootstrap"), *args],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if fail:
        assert result.returncode != 0, result.stderr
    else:
        assert result.returncode == 0, result.stderr
    return log.read_text(encoding="utf-8").splitlines()


def synced(calls: list[str]) -> tuple[str, set[str]]:
    """(file, pinned names) of the one ``uv pip sync`` among ``calls``."""
    syncs = [call.split() for call in calls if call.startswith("sync ")]
    assert len(syncs) == 1, calls
    return syncs[0][1], set(syncs[0][2:])


def stamp(checkout: Path) -> str:
    return (checkout / ".venv" / ".streamer-lock").read_text(encoding="utf-8").split()[0]


def test_demo_installs_the_runtime_part_and_test_tops_it_up(checkout: Path) -> None:
    calls = bootstrap(checkout)  # make demo, on a fresh checkout
    assert calls[0] == "venv"
    file, names = synced(calls)
    assert file == ".venv/runtime-requirements.lock"
    assert set(RUNTIME) <= names and not names & set(DEV_TOOLS), names
    assert calls[-1] == "install ."
    assert stamp(checkout) == "runtime"
    assert bootstrap(checkout) == []  # installed: nothing to do

    calls = bootstrap(checkout, "--test")  # make test after make demo
    file, names = synced(calls)
    assert file == "requirements.lock" and set(DEV_TOOLS) <= names
    assert "venv" not in calls  # the same environment, completed
    assert stamp(checkout) == "full"
    assert bootstrap(checkout) == []  # make demo after make test: the full lock serves it
    assert bootstrap(checkout, "--test") == []


def test_a_changed_lock_reinstalls_and_a_failed_install_is_not_stamped(checkout: Path) -> None:
    bootstrap(checkout, "--test")
    with (checkout / "pyproject.toml").open("a", encoding="utf-8") as f:
        f.write("\n# changed\n")
    file, names = synced(bootstrap(checkout))  # the full install is of another lock now
    assert file == ".venv/runtime-requirements.lock" and not names & set(DEV_TOOLS)
    bootstrap(checkout, "--test", fail=True)
    assert not (checkout / ".venv" / ".streamer-lock").exists()
    assert synced(bootstrap(checkout))[0] == ".venv/runtime-requirements.lock"  # tried again


def test_a_stamp_from_before_the_split_counts_as_the_full_lock(checkout: Path) -> None:
    bootstrap(checkout, "--test")
    path = checkout / ".venv" / ".streamer-lock"
    path.write_text(path.read_text(encoding="utf-8").split()[1] + "\n", encoding="utf-8")
    assert bootstrap(checkout, "--test") == [] and bootstrap(checkout) == []


def test_make_demo_and_make_test_ask_for_their_parts() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")

    def recipe(target: str) -> list[str]:
        match = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, flags=re.MULTILINE)
        assert match, f"no {target} target"
        return [line.strip().lstrip("@") for line in match.group(1).splitlines()]

    assert recipe("demo")[0] == ".ci/bootstrap"
    assert recipe("test")[0] == ".ci/bootstrap --test"
