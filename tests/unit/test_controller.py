"""The controller's runtime, without an API server: the work queue coalesces and
serializes, and a TaskFineTune deleted while its pass is in flight leaves nothing behind."""

from __future__ import annotations

import asyncio
import threading

import pytest

from anytasktune import metrics
from anytasktune.actions import Plan
from anytasktune.config import OperatorConfig
from anytasktune.controller import Controller, resync_delays, resync_due
from anytasktune.executor import ManifestReads
from anytasktune.spec import SubtaskPhase, SubtaskStatus, TaskFineTuneStatus
from anytasktune.storagereads import Breaker
from anytasktune.workqueue import Trigger
from anytasktune_contract.backoff import Backoff
from anytasktune_contract.failures import StorageUnavailableError, same_error


@pytest.mark.parametrize("then", ["nothing", "a child's event"])
def test_a_taskfinetune_deleted_during_its_pass_leaves_no_state_or_metrics(then: str) -> None:
    """Also when the garbage collector's deletion of its RayJobs queues the parent again
    before the pass ends (a child's event is no news that the TaskFineTune exists again):
    that once left its metrics series behind in the churn test."""
    controller = Controller(OperatorConfig(), client=None)
    in_pass, go_on = threading.Event(), threading.Event()  # the pass waits for the deletion
    status = TaskFineTuneStatus(subtasks=[SubtaskStatus(name="kw", phase=SubtaskPhase.Running)])

    def pass_in_flight(namespace: str, name: str) -> Plan | None:
        if in_pass.is_set():
            return None  # a later pass: the API server says 404
        in_pass.set()
        go_on.wait(5)
        controller.reads.setdefault((namespace, name), object())  # type: ignore[arg-type]
        metrics.observe_status(namespace, name, status)  # what a pass records
        return Plan(status=status)

    controller.reconcile_once = pass_in_flight  # type: ignore[method-assign]

    async def scenario() -> None:
        controller.queue.start()
        controller.enqueue("ns", "gone")
        await asyncio.to_thread(in_pass.wait, 5)
        controller.forget("ns", "gone")  # the DELETED event arrives mid-pass
        if then == "a child's event":
            controller.enqueue("ns", "gone")  # a RayJob of it deleted by the garbage collector
        go_on.set()
        await asyncio.sleep(0.3)
        await controller.queue.stop()

    asyncio.run(scenario())
    series = [s for m in metrics.SUBTASKS.collect() for s in m.samples if s.labels.get("taskfinetune") == "gone"]
    assert series == [] and ("ns", "gone") not in controller.reads and not controller._deleted
    controller.read_pool.shutdown()


@pytest.mark.parametrize(("count", "delays"), [(0, []), (1, [0.0]), (4, [0.0, 3.75, 7.5, 11.25])])
def test_a_resync_spreads_its_passes_over_half_its_period(count: int, delays: list[float]) -> None:
    """A resync of 1,000 TaskFineTunes queues its passes over 15 s, not all in front of the
    next event's pass."""
    assert resync_delays(count, 30.0) == delays


@pytest.mark.parametrize(("last_pass", "due"), [
    ({}, ["a", "b"]),  # never passed since the operator started
    ({("ns", "a"): 105.0}, ["b"]),  # "a" passed within the period: its resync pass is spared
    ({("ns", "a"): 99.0, ("ns", "b"): 100.0}, ["a"]),  # "a" before the period began
])
def test_a_resync_queues_only_what_had_no_pass_within_its_period(last_pass: dict[tuple[str, str], float], due: list[str]) -> None:
    assert [name for _, name in resync_due([("ns", "a"), ("ns", "b")], last_pass, since=100.0)] == due


def test_a_repeated_read_failure_queues_its_pass_for_the_retry_not_now() -> None:
    """A first failure is news (the status shows it): a pass at once. The same failure again
    changes nothing: the next pass is due when the retry is, one pass per retry, not two."""
    controller = Controller(OperatorConfig(), client=None)
    queued: list[tuple[float, Trigger]] = []
    finished = threading.Semaphore(0)

    class Down:
        def get_bytes(self, uri: str) -> tuple[bytes, str]:
            raise ConnectionError("connection refused")

    def enqueue(namespace: str, name: str, delay: float = 0.0, *, trigger: Trigger = Trigger.TaskFineTune, **_: object) -> None:
        queued.append((delay, trigger))
        finished.release()

    controller._endpoint = lambda settings: (Down(), Breaker("http://s3"))  # type: ignore[method-assign,assignment,return-value]
    controller.enqueue = enqueue  # type: ignore[method-assign]
    tft = {"metadata": {"namespace": "ns", "name": "t"}, "spec": {"storage": {"output": "s3://adapters/out/"}}}
    reads = controller.reads.setdefault(("ns", "t"), ManifestReads(Backoff(5, 300)))

    async def scenario() -> None:
        controller._loop = asyncio.get_running_loop()
        for _ in range(2):
            controller._start_read(tft, reads, "s3://adapters/run/manifest.json")
            await asyncio.to_thread(finished.acquire, True, 5)

    asyncio.run(scenario())
    controller.read_pool.shutdown()
    (first, first_trigger), (second, second_trigger) = queued
    assert first == 0.0 and 9.0 < second <= 10.0 and first_trigger == second_trigger == Trigger.Read


def test_reads_of_an_endpoint_that_keeps_failing_are_held_until_a_probe_gets_an_answer() -> None:
    """Five reads in a row find the endpoint down: the next reads fail unsent, their status
    saying why, until the cooldown lets one through; its answer sends the rest again."""
    controller = Controller(OperatorConfig(), client=None)
    now = [0.0]
    breaker = Breaker("http://s3:9000", threshold=5, cooldown=5.0, clock=lambda: now[0])
    sent: list[str] = []
    finished = threading.Semaphore(0)
    up = [False]

    class Store:
        def get_bytes(self, uri: str) -> tuple[bytes, str]:
            sent.append(uri)
            if up[0]:
                return b'{"runId": "r"}', "etag"
            try:
                raise ConnectionRefusedError("connection refused")
            except ConnectionRefusedError:
                raise StorageUnavailableError(f"get: storage unavailable after 1 attempts: {uri}") from None

    controller._endpoint = lambda settings: (Store(), breaker)  # type: ignore[method-assign,assignment,return-value]
    controller.enqueue = lambda *args, **kwargs: finished.release()  # type: ignore[method-assign]
    tft = {"metadata": {"namespace": "ns", "name": "t"}, "spec": {"storage": {"output": "s3://adapters/out/"}}}
    reads = controller.reads.setdefault(("ns", "t"), ManifestReads(Backoff(5, 300)))
    held_before = metrics.READS_HELD._value.get()

    async def read(i: int) -> None:
        controller._start_read(tft, reads, f"s3://adapters/run{i}/manifest.json")
        await asyncio.to_thread(finished.acquire, True, 5)

    async def scenario() -> None:
        controller._loop = asyncio.get_running_loop()
        for i in range(8):
            await read(i)
        assert len(sent) == 5 and metrics.READS_HELD._value.get() - held_before == 3
        held = reads.snapshot()["s3://adapters/run7/manifest.json"]
        assert held.error.startswith("StorageUnavailableError: http://s3:9000 failed 5 reads in a row (the last: ConnectionRefusedError)")
        assert held.failures == 1 and held.next_try is not None  # a held read fails like a sent one: its backoff
        # Before the breaker opened a read shows its own error; from then on every one shows the
        # breaker's (one text per outage: a probe's failure changes no status).
        assert reads.snapshot()["s3://adapters/run3/manifest.json"].error.startswith("StorageUnavailableError: get: storage unavailable")
        assert same_error(reads.snapshot()["s3://adapters/run4/manifest.json"].error, held.error)
        now[0] += 5.0
        up[0] = True
        await read(8)  # the probe
        await read(9)
        assert sent[5:] == ["s3://adapters/run8/manifest.json", "s3://adapters/run9/manifest.json"]
        assert reads.snapshot()["s3://adapters/run9/manifest.json"].manifest is not None

    asyncio.run(scenario())
    controller.read_pool.shutdown()


def test_a_read_that_finishes_after_the_operator_stopped_queues_nothing() -> None:
    """Manifest reads and watch events run on threads: after the loop is closed (SIGTERM)
    they must not fail (once 2,159 'loop is closed' tracebacks at one shutdown)."""
    controller = Controller(OperatorConfig(), client=None)
    loop = asyncio.new_event_loop()
    controller._loop = loop
    loop.close()
    controller._enqueue_threadsafe("ns", "t", Trigger.Read)  # no RuntimeError
    assert len(controller.queue) == 0
