"""Run every benchmark: `python -m bench [--quick] [--only NAME ...]`.

Each `bench/bench_<name>.py` runs in its own Python process (its own memory,
threads and event loop, and nothing cached between benchmarks but the
datasets on disk), exactly as `python -m bench.bench_<name>` would run it.
Its output is echoed, its closing JSON line collected. At the end one table
of every figure is printed, and the results are written to
`bench/results.json` (a `--quick` run writes `bench/results-quick.json`).
With `--only`, the named benchmarks' entries replace theirs in that file and
the others' stay; every entry says when it ran, for how long, and the
machine's load average before and after (other work on the machine slows
every figure).

Exit status: 0 if every benchmark ran, 1 if any failed (its error is in
the file). Missed targets are shown in the table, not in the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, RESULTS_PATH, Result, Row, format_table, machine

REPO = BENCH_DIR.parent
QUICK_RESULTS_PATH = BENCH_DIR / "results-quick.json"
JSON_PREFIX = '{"machine":'


def discover() -> list[str]:
    """The names of every benchmark module, `bench/bench_<name>.py`."""
    return sorted(path.stem.removeprefix("bench_") for path in BENCH_DIR.glob("bench_*.py"))


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """Run one benchmark in a child process; its result entry (with `error` if it failed)."""
    command = [sys.executable, "-m", f"bench.bench_{name}", *(["--quick"] if quick else [])]
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    entry: dict[str, Any] = {"benchmark": name, "started_at": _now(), "load_before": _load()}
    started = time.perf_counter()
    payload = None
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its progress lines as they come
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, bufsize=1) as child:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(JSON_PREFIX):
                payload = json.loads(line)
            else:
                print(f"  | {line}", end="", flush=True)
        returncode = child.wait()
    entry["seconds"] = round(time.perf_counter() - started, 1)
    entry["load_after"] = _load()
    if returncode != 0 or payload is None:
        entry["error"] = f"exit status {returncode}" + ("" if payload else ", no result line")
        print(f"=== {name} FAILED ({entry['error']})", flush=True)
    else:
        [entry["result"]] = payload["results"]
        print(f"=== {name} done in {entry['seconds']:.0f}s", flush=True)
    return entry


def to_result(entry: dict[str, Any]) -> Result:
    """A result entry back as a Result, for the table."""
    if "result" not in entry:
        return Result(entry["benchmark"], [Row("FAILED: " + entry.get("error", "?"), float("nan"), "")])
    data = entry["result"]
    rows = [Row(metric, m["value"], m["unit"], m["target"], m["ok"]) for metric, m in data["metrics"].items()]
    return Result(data["name"], rows, data.get("extra", {}))


def main(argv: Sequence[str] | None = None) -> int:
    names = discover()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run of each benchmark")
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"run only these: {', '.join(names)}")
    args = parser.parse_args(argv)
    selected = args.only or names
    output = QUICK_RESULTS_PATH if args.quick else RESULTS_PATH

    started = time.perf_counter()
    entries = [run_one(name, args.quick) for name in selected]
    total = time.perf_counter() - started

    print("\n" + format_table([to_result(entry) for entry in entries]))
    count = f"{len(entries)} benchmark{'s' if len(entries) != 1 else ''}"
    print(f"\n{count} in {total / 60:.1f} min; results in {output.relative_to(REPO)}")
    _write(output, entries, total, args)
    return 1 if any("error" in entry for entry in entries) else 0


def _write(output: Path, entries: list[dict[str, Any]], total: float, args: argparse.Namespace) -> None:
    previous: dict[str, Any] = {}
    if args.only and output.exists():
        try:
            previous = {entry["benchmark"]: entry for entry in json.loads(output.read_text())["benchmarks"]}
        except (ValueError, KeyError, TypeError):
            previous = {}
    merged = {**previous, **{entry["benchmark"]: entry for entry in entries}}
    document = {
        "command": "python -m bench" + (" --quick" if args.quick else ""),
        "machine": machine(),
        "finished_at": _now(),
        "last_run": {"benchmarks": [e["benchmark"] for e in entries], "seconds": round(total, 1)},
        "benchmarks": [merged[name] for name in discover() if name in merged],
    }
    output.write_text(json.dumps(document, indent=2) + "\n")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


if __name__ == "__main__":
    sys.exit(main())
