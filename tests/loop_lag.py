"""Measure how late the event loop runs its callbacks: a stall shows up as lag."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class LoopLagProbe:
    """A ticker on the running loop: every `interval` seconds it notes how much later than asked
    it woke up. Any synchronous work on the loop (a blocking call, a long computation) delays
    every tick behind it by as much."""

    interval: float = 0.01
    samples: list[float] = field(default_factory=list)
    worst: float = 0.0
    worst_at: float = 0.0  # loop time of the worst tick, to find what caused it
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick(), name="loop-lag-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - asked)
            if lag > self.worst:
                self.worst, self.worst_at = lag, asked
            self.samples.append(lag)

    def percentile(self, share: float) -> float:
        ordered = sorted(self.samples)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    def summary(self) -> str:
        return (
            f"loop lag over {len(self.samples)} ticks: p50 {self.percentile(0.5) * 1000:.1f} ms,"
            f" p99 {self.percentile(0.99) * 1000:.1f} ms, max {self.worst * 1000:.1f} ms"
        )
