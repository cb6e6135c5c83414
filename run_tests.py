#!/usr/bin/env python3
"""Run the whole test suite inside the project's virtual environment.

Extra arguments go to pytest, e.g. `python3 run_tests.py -m soak` for the
long fault-injection runs. PostgreSQL's server binaries, which the tests of
that backend need, are installed first where they are missing and the
machine allows it (scripts/postgres_binaries.py).
"""

import sys

from scripts.bootstrap import exec_in_venv
from scripts.postgres_binaries import ensure_server_binaries

if __name__ == "__main__":
    ensure_server_binaries()
    exec_in_venv("requirements-dev.lock", ["-m", "pytest", *sys.argv[1:]])
