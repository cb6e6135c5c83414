#!/usr/bin/env python3
"""Run the whole test suite inside the project's virtual environment.

Extra arguments go to pytest, e.g. `python3 run_tests.py -m soak` for the
long fault-injection runs.
"""

import sys

from scripts.bootstrap import exec_in_venv

if __name__ == "__main__":
    exec_in_venv("requirements-dev.lock", ["-m", "pytest", *sys.argv[1:]])
