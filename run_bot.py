#!/usr/bin/env python3
"""Start the bot (or one of its CLI verbs) inside the project's virtual environment.

python3 run_bot.py                   run with ./config.toml
python3 run_bot.py --config PATH     run with another config file
python3 run_bot.py backup list       any verb of bot.py
"""

import sys

from scripts.bootstrap import exec_in_venv

if __name__ == "__main__":
    exec_in_venv("requirements.lock", ["bot.py", *sys.argv[1:]])
