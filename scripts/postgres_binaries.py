"""Make PostgreSQL's server binaries available to the tests, where the machine allows it.

The PostgreSQL tests start a throwaway cluster from `initdb` and `pg_ctl`
(tests/postgres.py). Where they are missing and this runs as root on a
Debian-like system, Debian's `postgresql` package is installed (it brings the
client tools, `pg_dump` and `pg_restore`, too). Anywhere else nothing is
installed: those tests are skipped with the reason, and the rest run.
Standard library only: it runs before the virtual environment exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

DEBIAN_SERVER_ROOT = Path("/usr/lib/postgresql")
INSTALL_TIMEOUT_SECONDS = 600


def server_binaries_found() -> bool:
    """Whether `initdb` is on PATH or in one of Debian's version folders."""
    if shutil.which("initdb"):
        return True
    return any((folder / "initdb").is_file() for folder in DEBIAN_SERVER_ROOT.glob("*/bin"))


def ensure_server_binaries() -> None:
    """Install Debian's `postgresql` package if the binaries are missing and we may; never fails."""
    if os.environ.get("COMPANION_SKIP_POSTGRES_INSTALL") or server_binaries_found():
        return
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return  # the tests say why they skip
    print("PostgreSQL's server binaries are missing: installing Debian's postgresql package", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"could not install PostgreSQL ({exc}); its tests will be skipped", file=sys.stderr)
            return
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            reason = lines[-1] if lines else f"exit status {result.returncode}"
            print(f"could not install PostgreSQL ({reason}); its tests will be skipped", file=sys.stderr)
            return
