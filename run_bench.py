#!/usr/bin/env python3
"""Run the benchmarks inside the project's virtual environment: `python -m bench` there.

python3 run_bench.py                      every benchmark; writes bench/results.json
python3 run_bench.py --quick              a smoke run; writes bench/results-quick.json
python3 run_bench.py --only rebuild       some of them
"""

import sys

from scripts.bootstrap import exec_in_venv

if __name__ == "__main__":
    exec_in_venv("requirements-dev.lock", ["-m", "bench", *sys.argv[1:]])
