"""The operator's work queue of TaskFineTunes: coalescing, one pass per key at a time,
delayed adds (client-go's workqueue semantics). Any number of adds for a key while it is
queued collapse into one pass; adds during its pass schedule exactly one more, after it.
One FIFO line: passes for events ahead of timer and resync passes measured no better at
300 and 1,000 TaskFineTunes (docs/decisions.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import Enum

from anytasktune import metrics

Key = tuple[str, str]  # (namespace, name)


class Trigger(str, Enum):
    """What made a pass due (the first cause counts when several coalesce)."""

    TaskFineTune = "taskfinetune"  # an event of the TaskFineTune itself
    Child = "child"  # a RayJob or RayCluster event that changed what a pass reads
    Read = "read"  # a manifest read finished (news: at once), or its retry is due (a repeated failure)
    Timer = "timer"  # the planner asked to look again later (a deadline, a backoff, a poll)
    Retry = "retry"  # the last pass failed
    Resync = "resync"  # the safety net


class WorkQueue:
    """Coalescing, per-key serialized, with delayed adds (earliest wins)."""

    def __init__(self, process: Callable[[Key], Awaitable[None]], workers: int) -> None:
        self._process = process
        self._workers = workers
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        self._due_since: dict[Key, tuple[float, Trigger]] = {}  # when a pass became due and why, for the metrics
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add(self, key: Key, delay: float = 0.0, trigger: Trigger = Trigger.TaskFineTune) -> None:
        if delay > 0:
            self._add_later(key, delay, trigger)
            return
        self._due_since.setdefault(key, (asyncio.get_running_loop().time(), trigger))
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)
            metrics.QUEUE_DEPTH.set(len(self._queued))

    def _add_later(self, key: Key, delay: float, trigger: Trigger) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        current = self._timers.get(key)
        if current is not None:
            if current[0] <= when:
                return
            current[1].cancel()
        self._timers[key] = (when, loop.call_at(when, self._fire, key, trigger))

    def _fire(self, key: Key, trigger: Trigger) -> None:
        self._timers.pop(key, None)
        self.add(key, trigger=trigger)

    def forget(self, key: Key) -> None:
        if (timer := self._timers.pop(key, None)) is not None:
            timer[1].cancel()
        self._dirty.discard(key)
        if key not in self._queued and key not in self._active:
            self._due_since.pop(key, None)

    def __len__(self) -> int:
        return len(self._queued)

    def active(self, key: Key) -> bool:
        return key in self._active

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            metrics.QUEUE_DEPTH.set(len(self._queued))
            if (due := self._due_since.pop(key, None)) is not None:
                metrics.QUEUE_WAIT_SECONDS.observe(asyncio.get_running_loop().time() - due[0])
                metrics.PASSES.labels(trigger=due[1].value).inc()
            self._active.add(key)
            try:
                await self._process(key)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
                else:  # forgotten during its pass after an event: nothing is due any more
                    self._due_since.pop(key, None)
