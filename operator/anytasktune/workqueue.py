"""The operator's work queue of TaskFineTunes: coalescing, one pass per key at a time,
delayed adds, and two priorities.

- **Coalescing, serialized** (client-go's workqueue semantics): any number of adds for a
  key while it is queued collapse into one pass; adds during its pass schedule exactly
  one more, after it.
- **Events first.** A pass that shows someone a change (the TaskFineTune's own event, a
  RayJob's or RayCluster's, a finished manifest read) starts before those that only look
  again (a timer, a retry after an error, the resync), as controller-runtime's priority
  queue does for its resync. At 1,000 TaskFineTunes a resync queues ~1,000 passes every
  30 s; in one FIFO line they sat in front of every RayJob's status change behind them.
- **No starvation.** While both lines wait, every `EVENTS_PER_BACKGROUND + 1`th pass
  comes from the background line: a saturated operator still gives background passes a
  share, so a backoff or a deadline is late, never lost.
- An add at event priority for a key waiting in the background line moves it to the
  event line (its old place is skipped when reached).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from enum import Enum, IntEnum

from anytasktune import metrics

Key = tuple[str, str]  # (namespace, name)
EVENTS_PER_BACKGROUND = 4


class Trigger(str, Enum):
    """What made a pass due (the first cause counts when several coalesce)."""

    TaskFineTune = "taskfinetune"  # an event of the TaskFineTune itself
    Child = "child"  # a RayJob or RayCluster event that changed what a pass reads
    Read = "read"  # a manifest read finished (news: at once), or its retry is due (a repeated failure)
    Timer = "timer"  # the planner asked to look again later (a deadline, a backoff, a poll)
    Retry = "retry"  # the last pass failed
    Resync = "resync"  # the safety net

    @property
    def priority(self) -> Priority:
        return Priority.Background if self in (Trigger.Timer, Trigger.Retry, Trigger.Resync) else Priority.Event


class Priority(IntEnum):
    """Lower goes first."""

    Event = 0  # someone waits to see it in the status
    Background = 1  # a look again that no change asked for

    @property
    def label(self) -> str:
        return self.name.lower()


class WorkQueue:
    """Coalescing, per-key serialized, with delayed adds (earliest wins) and two priorities."""

    def __init__(self, process: Callable[[Key], Awaitable[None]], workers: int) -> None:
        self._process = process
        self._workers = workers
        self._lines: tuple[deque[Key], deque[Key]] = (deque(), deque())  # by Priority
        self._ready = asyncio.Semaphore(0)  # one per key queued
        self._events_in_a_row = 0
        self._queued: dict[Key, Priority] = {}
        self._active: set[Key] = set()
        self._dirty: dict[Key, Trigger] = {}  # added during its pass: queued again after it
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
        now = asyncio.get_running_loop().time()
        priority = trigger.priority
        if key in self._active:
            if key not in self._dirty or priority < self._dirty[key].priority:
                self._dirty[key] = trigger
            self._due_since.setdefault(key, (now, trigger))
            return
        queued = self._queued.get(key)
        if queued is not None and queued <= priority:
            return  # coalesced into the pass already waiting
        if queued is not None:  # promoted: its wait at event priority starts now
            self._due_since[key] = (now, trigger)
        else:
            self._due_since.setdefault(key, (now, trigger))
            self._ready.release()
        self._queued[key] = priority
        self._lines[priority].append(key)
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
        self._dirty.pop(key, None)
        if key not in self._queued and key not in self._active:
            self._due_since.pop(key, None)

    def __len__(self) -> int:
        return len(self._queued)

    def active(self, key: Key) -> bool:
        return key in self._active

    def _next(self) -> tuple[Key, Priority]:
        """The next key to pass: the event line's head, but the background line's after
        EVENTS_PER_BACKGROUND event passes in a row while it waited. Skips the places
        that keys promoted to the event line left behind."""
        while True:
            events, background = self._lines
            if background and (not events or self._events_in_a_row >= EVENTS_PER_BACKGROUND):
                key, line = background.popleft(), Priority.Background
                self._events_in_a_row = 0
            else:
                key, line = events.popleft(), Priority.Event
                self._events_in_a_row = self._events_in_a_row + 1 if background else 0
            if self._queued.get(key) == line:
                del self._queued[key]
                return key, line

    async def _work(self) -> None:
        while True:
            await self._ready.acquire()
            key, priority = self._next()
            metrics.QUEUE_DEPTH.set(len(self._queued))
            if (due := self._due_since.pop(key, None)) is not None:
                metrics.QUEUE_WAIT_SECONDS.labels(priority=priority.label).observe(asyncio.get_running_loop().time() - due[0])
                metrics.PASSES.labels(trigger=due[1].value).inc()
            self._active.add(key)
            try:
                await self._process(key)
            finally:
                self._active.discard(key)
                if (trigger := self._dirty.pop(key, None)) is not None:
                    self.add(key, trigger=trigger)
                else:  # forgotten during its pass after an event: nothing is due any more
                    self._due_since.pop(key, None)
