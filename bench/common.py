"""What every benchmark shares: timing helpers, the printed table and the JSON line.

A benchmark module `bench/bench_<name>.py` exposes

    def run(quick: bool = False) -> Result

and ends with `if __name__ == "__main__": main(run)`, so it runs on its own
(`python -m bench.bench_<name> [--quick]`) or as part of `python -m bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_PATH = BENCH_DIR / "results.json"


@dataclass
class Row:
    """One line of the table: a metric, its value with unit, and the target if there is one."""

    metric: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None


@dataclass
class Result:
    name: str
    rows: list[Row] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, metric: str, value: float, unit: str, target: str = "", ok: bool | None = None) -> None:
        self.rows.append(Row(metric, value, unit, target, ok))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metrics": {
                row.metric: {"value": row.value, "unit": row.unit, "target": row.target, "ok": row.ok}
                for row in self.rows
            },
            **({"extra": self.extra} if self.extra else {}),
        }


def percentile(samples: Sequence[float], pct: float) -> float:
    """The pct-th percentile (0-100) by nearest rank."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def format_table(results: Sequence[Result]) -> str:
    lines = [f"{'benchmark':<18} {'metric':<52} {'value':>14}  {'target':<18} ok"]
    lines.append("-" * len(lines[0]))
    for result in results:
        for row in result.rows:
            value = f"{row.value:,.3f}" if abs(row.value) < 1000 else f"{row.value:,.0f}"
            ok = "" if row.ok is None else ("yes" if row.ok else "NO")
            lines.append(f"{result.name:<18} {row.metric:<52} {value:>10} {row.unit:<4} {row.target:<18} {ok}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def report(results: Sequence[Result]) -> None:
    """Print the table and one JSON line (what `python -m bench` collects into bench/results.json)."""
    print(format_table(results))
    payload = {"machine": machine(), "results": [r.to_json() for r in results]}
    print(json.dumps(payload, separators=(",", ":")))


def main(run: Callable[..., Result], argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    report([result])
    sys.stdout.flush()
