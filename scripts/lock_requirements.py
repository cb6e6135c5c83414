#!/usr/bin/env python3
"""Regenerate requirements.lock and requirements-dev.lock from the requirement files.

python3 scripts/lock_requirements.py                        keep every pin the locks hold, add what is new
python3 scripts/lock_requirements.py --upgrade-package X    also move X to the newest version allowed
python3 scripts/lock_requirements.py --upgrade              move everything not pinned by hand

Any arguments go to `uv pip compile`. The locks pin the whole dependency tree with
the SHA-256 of every file PyPI has for each version (each platform's wheels and
the sdist), resolved for every platform and Python 3.11+ (`--universal`), so
`pip install --require-hashes` works on any machine. The dev lock is constrained
by the runtime lock: tests run exactly the versions the bot installs.

uv comes from PATH, or is installed (UV_VERSION) into a throwaway environment.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UV_VERSION = "0.13.9"
MIN_PYTHON = "3.11"
# (requirement file, lock file, extra arguments), runtime first: the dev lock is constrained by it.
LOCKS = (
    ("requirements.txt", "requirements.lock", []),
    ("requirements-dev.txt", "requirements-dev.lock", ["--constraint", "requirements.lock"]),
)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def pins(lock: Path) -> dict[str, str]:
    """name -> version of every `name==version` line in a lock (empty if it does not exist)."""
    if not lock.exists():
        return {}
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in PIN.findall(lock.read_text())}


def compile_locks(uv: str, uv_args: list[str]) -> None:
    for requirements, lock, extra in LOCKS:
        before = pins(ROOT / lock)
        command = [
            uv, "pip", "compile", requirements, "--output-file", lock,
            "--universal", "--python-version", MIN_PYTHON, "--generate-hashes", "--quiet",
            "--custom-compile-command", "python3 scripts/lock_requirements.py",
            *extra, *uv_args,
        ]  # fmt: skip
        result = subprocess.run(command, cwd=ROOT)
        if result.returncode != 0:
            sys.exit(f"error: locking {requirements} failed (uv exit code {result.returncode})")
        after = pins(ROOT / lock)
        changes = [
            f"  {name} {before.get(name, '-')} -> {after.get(name, '-')}"
            for name in sorted(before.keys() | after.keys())
            if before.get(name) != after.get(name)
        ]
        print(f"{lock}: {len(after)} packages" + ("" if changes else ", unchanged"))
        for change in changes:
            print(change)


def main() -> None:
    uv = shutil.which("uv")
    if uv is not None:
        compile_locks(uv, sys.argv[1:])
        return
    with tempfile.TemporaryDirectory(prefix="uv-") as tmp:
        print(f"installing uv {UV_VERSION} into a throwaway environment", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(tmp)
        bin_dir = Path(tmp) / ("Scripts" if sys.platform == "win32" else "bin")
        install = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*install, f"uv=={UV_VERSION}"], check=True)
        compile_locks(str(bin_dir / "uv"), sys.argv[1:])


if __name__ == "__main__":
    main()
