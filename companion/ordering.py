"""Run turns in order within a channel, and concurrently across channels."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


@dataclass
class _Lane:
    jobs: deque[Job] = field(default_factory=deque)
    runner: asyncio.Task[None] | None = None
    running: bool = False

    @property
    def load(self) -> int:
        return len(self.jobs) + self.running


class ChannelLanes:
    """One lane per channel: jobs in a lane run one after another, lanes run side by side.

    A lane's task exists only while it has work, so idle channels cost
    nothing. `submit` refuses work beyond `max_pending` per lane, and the
    caller tells the user instead of dropping the message silently.
    """

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._lanes: dict[int, _Lane] = {}
        self._closed = False

    def submit(self, channel_id: int, job: Job) -> bool:
        """Queue `job` behind the channel's earlier jobs; False if the lane is full."""
        if self._closed:
            return False
        lane = self._lanes.setdefault(channel_id, _Lane())
        if lane.load >= self.max_pending:
            return False
        lane.jobs.append(job)
        if lane.runner is None:
            lane.runner = asyncio.create_task(self._drain(channel_id, lane), name=f"channel-lane-{channel_id}")
        return True

    def pending(self, channel_id: int | None = None) -> int:
        """Jobs waiting or running, in one channel or in all."""
        lanes = [self._lanes.get(channel_id)] if channel_id is not None else list(self._lanes.values())
        return sum(lane.load for lane in lanes if lane)

    async def _drain(self, channel_id: int, lane: _Lane) -> None:
        try:
            while lane.jobs:
                job = lane.jobs.popleft()
                lane.running = True
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("a turn in channel %s failed", channel_id)
                finally:
                    lane.running = False
        finally:
            lane.runner = None
            if not lane.jobs and self._lanes.get(channel_id) is lane:
                del self._lanes[channel_id]

    async def close(self, grace_seconds: float = 5.0) -> None:
        """Stop taking work; let running turns finish for a moment, then cancel them."""
        self._closed = True
        runners = [lane.runner for lane in self._lanes.values() if lane.runner is not None]
        for lane in self._lanes.values():
            lane.jobs.clear()
        if not runners:
            return
        _, still_running = await asyncio.wait(runners, timeout=grace_seconds)
        for task in still_running:
            task.cancel()
        await asyncio.gather(*still_running, return_exceptions=True)
