"""Create or refresh the project's virtual environment, using only the standard library.

The environment lives in `.venv/` beside this repository's files, installed
from a lock file (`requirements.lock`, or `requirements-dev.lock` for tests and
benchmarks) with `pip install --require-hashes`: every package, dependencies
included, at the locked version and only from a file with a locked SHA-256. A
stamp file records a hash of the lock last installed, so the install runs again
only when it changes (or the environment is missing). A lock that no longer
matches its requirement file's pins stops here: `python3 scripts/lock_requirements.py`
refreshes it.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
MIN_PYTHON = (3, 11)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)
INCLUDE = re.compile(r"^-r\s+(\S+)", re.MULTILINE)


def venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def _lock_hash(lock: Path) -> str:
    digest = hashlib.sha256()
    digest.update(sys.version.encode())
    digest.update(lock.name.encode() + b"\0" + lock.read_bytes())
    return digest.hexdigest()


def _pins(text: str) -> dict[str, str]:
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in PIN.findall(text)}


def _hand_pins(requirements: Path) -> dict[str, str]:
    """The `name==version` pins of a requirement file and the files it includes with `-r`."""
    text = requirements.read_text()
    pins = _pins(text)
    for included in INCLUDE.findall(text):
        pins |= _hand_pins(requirements.parent / included)
    return pins


def _check_lock_is_current(lock: Path) -> None:
    """Exit if the lock misses a pin of its requirement file (edited since the lock was made)."""
    requirements = lock.with_suffix(".txt")
    locked = _pins(lock.read_text())
    stale = [f"{name}=={version}" for name, version in _hand_pins(requirements).items() if locked.get(name) != version]
    if stale:
        sys.exit(
            f"error: {lock.name} does not match {requirements.name} ({', '.join(stale)}): "
            "run `python3 scripts/lock_requirements.py`"
        )


def ensure_venv(lock_file: str) -> Path:
    """Make sure `.venv` exists with `lock_file` installed; returns its python."""
    if sys.version_info < MIN_PYTHON:
        sys.exit(f"error: Python {'.'.join(map(str, MIN_PYTHON))}+ is needed, this is {sys.version.split()[0]}")
    lock = ROOT / lock_file
    _check_lock_is_current(lock)
    stamp = VENV / f".installed-{lock.stem}"
    wanted = _lock_hash(lock)
    python = venv_python()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    if not python.exists():
        print(f"creating virtual environment in {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    print(f"installing {lock_file} into {VENV}", file=sys.stderr)
    install = [
        str(python),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "-q",
        "--require-hashes",
        "-r",
        str(lock),
    ]
    result = subprocess.run(install, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"error: installing {lock_file} failed (pip exit code {result.returncode})")
    stamp.write_text(wanted + "\n")
    return python


def exec_in_venv(lock_file: str, args: list[str]) -> None:
    """Run `python args...` inside the environment, replacing this process where possible."""
    python = ensure_venv(lock_file)
    command = [str(python), *args]
    if os.name == "nt":
        sys.exit(subprocess.run(command, cwd=ROOT).returncode)
    os.chdir(ROOT)
    os.execv(str(python), command)
