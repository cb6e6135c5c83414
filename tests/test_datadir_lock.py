"""Only one process at a time may own a data folder."""

import subprocess
import sys
from pathlib import Path

import pytest

from storage.datadir_lock import DataDirInUse, DataDirLock

REPO = Path(__file__).resolve().parent.parent


def test_second_holder_is_refused_until_the_first_lets_go(tmp_path):
    first = DataDirLock(tmp_path).acquire("the bot")
    with pytest.raises(DataDirInUse, match="the bot"):
        DataDirLock(tmp_path).acquire("bot.py rebuild")
    first.release()
    DataDirLock(tmp_path).acquire("bot.py rebuild").release()


def test_cli_refuses_restore_and_rebuild_while_the_folder_is_in_use(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[storage]\ndata_dir = "data"\n')
    data_dir = tmp_path / "data"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pathlib import Path; from storage.datadir_lock import DataDirLock;"
            f"lock = DataDirLock(Path({str(data_dir)!r})).acquire('the bot');"
            "print('held', flush=True); time.sleep(60)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for verb in (["rebuild"], ["backup", "restore", "memory-x.db"]):
            result = subprocess.run(
                [sys.executable, str(REPO / "bot.py"), *verb, "--config", str(config)],
                capture_output=True,
                text=True,
                cwd=REPO,
                timeout=60,
            )
            assert result.returncode == 1
            assert result.stderr.count("\n") == 1
            assert f"is in use by pid {holder.pid} (the bot); stop the bot first" in result.stderr
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    # Once the holder is gone (even killed), the folder is free again.
    DataDirLock(data_dir).acquire("test").release()
