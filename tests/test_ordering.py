import asyncio

from companion.ordering import ChannelLanes


async def test_jobs_in_one_channel_run_in_order_and_channels_run_side_by_side():
    lanes = ChannelLanes(max_pending=10)
    log: list[str] = []
    release = asyncio.Event()

    def job(name: str, wait: bool = False):
        async def run():
            log.append(f"start {name}")
            if wait:
                await release.wait()
            log.append(f"end {name}")

        return run

    assert lanes.submit(1, job("a1", wait=True))
    assert lanes.submit(1, job("a2"))
    assert lanes.submit(2, job("b1"))
    await asyncio.sleep(0.01)
    # b1 finished while a1 is still blocked; a2 has not started.
    assert log == ["start a1", "start b1", "end b1"]
    release.set()
    await asyncio.sleep(0.01)
    assert log[3:] == ["end a1", "start a2", "end a2"]
    assert lanes.pending() == 0


async def test_full_lane_refuses_and_a_failing_job_does_not_stop_the_lane():
    lanes = ChannelLanes(max_pending=2)
    done: list[int] = []
    gate = asyncio.Event()

    async def failing():
        await gate.wait()
        raise ValueError("boom")

    async def ok():
        done.append(1)

    assert lanes.submit(1, failing)
    assert lanes.submit(1, ok)
    assert not lanes.submit(1, ok)
    gate.set()
    await asyncio.sleep(0.01)
    assert done == [1]
    await lanes.close()
