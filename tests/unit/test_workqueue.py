"""The work queue without an API server: it coalesces, serializes each key, measures the
wait and counts passes by what made them due."""

from __future__ import annotations

import asyncio

from anytasktune import metrics
from anytasktune.workqueue import Trigger, WorkQueue


def test_work_queue_coalesces_and_never_runs_a_key_twice_at_once() -> None:
    async def scenario() -> tuple[list[str], int]:
        runs: list[str] = []
        concurrent = {"now": 0, "max": 0}
        release = asyncio.Event()

        async def process(key: tuple[str, str]) -> None:
            concurrent["now"] += 1
            concurrent["max"] = max(concurrent["max"], concurrent["now"])
            runs.append(key[1])
            if len(runs) == 1:
                await release.wait()
            concurrent["now"] -= 1

        queue = WorkQueue(process, workers=4)
        queue.start()
        queue.add(("ns", "a"))
        await asyncio.sleep(0.05)  # the first pass of "a" is running
        for _ in range(10):
            queue.add(("ns", "a"))  # ten events during the pass: one more pass, after it
        release.set()
        await asyncio.sleep(0.1)
        await queue.stop()
        return runs, concurrent["max"]

    runs, most = asyncio.run(scenario())
    assert runs == ["a", "a"] and most == 1


def _wait_histogram() -> tuple[float, float]:
    samples = {s.name: s.value for m in metrics.QUEUE_WAIT_SECONDS.collect() for s in m.samples}
    return samples["anytasktune_workqueue_wait_seconds_count"], samples["anytasktune_workqueue_wait_seconds_sum"]


async def _queue_held_by(name: str) -> tuple[WorkQueue, asyncio.Event]:
    """A queue with one worker, which the pass of `name` holds until the event is set."""
    release = asyncio.Event()

    async def process(key: tuple[str, str]) -> None:
        if key[1] == name:
            await release.wait()

    queue = WorkQueue(process, workers=1)
    queue.start()
    queue.add(("ns", name))
    await asyncio.sleep(0.05)  # its pass holds the only worker
    return queue, release


def test_work_queue_measures_how_long_a_due_pass_waits_and_how_many_wait() -> None:
    """One worker busy with "a" for 0.3 s: "b", due meanwhile, waits about that long; a
    delayed pass counts its wait from when it fell due, not from when it was asked for."""
    async def scenario() -> tuple[list[float], list[float]]:
        depths: list[float] = []
        queue, release = await _queue_held_by("a")
        queue.add(("ns", "b"))
        queue.add(("ns", "c"), delay=0.5)  # due at 0.55 s, started at once then
        depths.append(metrics.QUEUE_DEPTH._value.get())  # type: ignore[attr-defined]
        await asyncio.sleep(0.3)
        count0, sum0 = _wait_histogram()
        release.set()
        await asyncio.sleep(0.4)
        count1, sum1 = _wait_histogram()
        depths.append(metrics.QUEUE_DEPTH._value.get())  # type: ignore[attr-defined]
        await queue.stop()
        return [count1 - count0, sum1 - sum0], depths

    (count, total), depths = asyncio.run(scenario())
    assert depths == [1, 0]  # "b" waited; then nothing
    assert count == 2  # "b" and the delayed "c"
    assert 0.29 <= total < 0.75  # "b" ~0.3 s, "c" ~0 s: counted from the add, "c" alone would be > 0.5 s


def test_a_key_forgotten_during_its_pass_after_an_event_leaves_no_due_time() -> None:
    """Else a TaskFineTune created again under the same name would count its first wait
    from the deleted one's last event."""
    async def scenario() -> dict[object, float]:
        release = asyncio.Event()

        async def process(key: tuple[str, str]) -> None:
            await release.wait()

        queue = WorkQueue(process, workers=1)
        queue.start()
        queue.add(("ns", "gone"))
        await asyncio.sleep(0.05)
        queue.add(("ns", "gone"))  # an event during its pass...
        queue.forget(("ns", "gone"))  # ...then its deletion
        release.set()
        await asyncio.sleep(0.05)
        await queue.stop()
        return dict(queue._due_since)

    assert asyncio.run(scenario()) == {}


def _passes() -> dict[str, float]:
    return {s.labels["trigger"]: s.value for m in metrics.PASSES.collect() for s in m.samples if s.name.endswith("_total")}


def test_each_pass_is_counted_by_what_made_it_due_first() -> None:
    """Several causes coalesced into one pass count once, as the first; a delayed add counts
    as what asked for it, when it fires."""
    async def scenario() -> None:
        async def process(key: tuple[str, str]) -> None:
            await asyncio.sleep(0)

        queue = WorkQueue(process, workers=1)
        queue.add(("ns", "a"), trigger=Trigger.Child)
        queue.add(("ns", "a"), trigger=Trigger.Resync)  # coalesced into the child's pass
        queue.add(("ns", "b"), delay=0.05, trigger=Trigger.Timer)
        queue.start()
        await asyncio.sleep(0.2)
        await queue.stop()

    before = _passes()
    asyncio.run(scenario())
    after = _passes()
    assert {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)} == {"child": 1, "timer": 1}
