"""Create or refresh the project's virtual environment, using only the standard library.

The environment lives in `.venv/` beside this repository's files. A stamp
file records a hash of the requirement files last installed, so the
install runs again only when they change (or the environment is missing).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
MIN_PYTHON = (3, 11)


def venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def _requirements_hash(requirement_files: list[Path]) -> str:
    digest = hashlib.sha256()
    digest.update(sys.version.encode())
    for path in sorted(ROOT.glob("requirements*.txt")):
        if path in requirement_files:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def ensure_venv(requirements: str) -> Path:
    """Make sure `.venv` exists with `requirements` installed; returns its python."""
    if sys.version_info < MIN_PYTHON:
        sys.exit(f"error: Python {'.'.join(map(str, MIN_PYTHON))}+ is needed, this is {sys.version.split()[0]}")
    files = [ROOT / requirements]
    if requirements != "requirements.txt":
        files.append(ROOT / "requirements.txt")
    stamp = VENV / f".installed-{Path(requirements).stem}"
    wanted = _requirements_hash(files)
    python = venv_python()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    if not python.exists():
        print(f"creating virtual environment in {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    print(f"installing {requirements} into {VENV}", file=sys.stderr)
    install = [
        str(python),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "-q",
        "-r",
        str(ROOT / requirements),
    ]
    result = subprocess.run(install, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"error: installing {requirements} failed (pip exit code {result.returncode})")
    stamp.write_text(wanted + "\n")
    return python


def exec_in_venv(requirements: str, args: list[str]) -> None:
    """Run `python args...` inside the environment, replacing this process where possible."""
    python = ensure_venv(requirements)
    command = [str(python), *args]
    if os.name == "nt":
        sys.exit(subprocess.run(command, cwd=ROOT).returncode)
    os.chdir(ROOT)
    os.execv(str(python), command)
