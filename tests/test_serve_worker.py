"""The one model worker: jobs run one at a time in order, the queue is bounded, a cancelled job stops after
the step in progress, the time limit ends a job, and a failing job leaves the worker serving."""

from __future__ import annotations

import threading
import time

import pytest

from saelign.errors import SaelignError
from saelign.serve.worker import Busy, Worker


class Sink:
    def __init__(self) -> None:
        self.events: list = []
        self.ended = threading.Event()

    def __call__(self, event) -> None:
        if event is None:
            self.ended.set()
        else:
            self.events.append(event)


def counting(n: int, log: list, pause: float = 0.0, gate: threading.Event | None = None):
    def events():
        for i in range(n):
            if gate is not None:
                gate.wait(5)
            time.sleep(pause)
            log.append(i)
            yield {"i": i}

    return events


@pytest.fixture
def worker():
    worker = Worker(queue_size=2, time_limit_s=5.0)
    worker.start()
    yield worker
    worker.stop()


def test_jobs_run_in_order_and_the_queue_is_bounded(worker):
    gate, log, sinks = threading.Event(), [], [Sink() for _ in range(3)]
    worker.submit(counting(2, log, gate=gate), sinks[0])
    time.sleep(0.1)  # the worker holds the first job; two more fill the queue
    worker.submit(counting(2, log), sinks[1])
    worker.submit(counting(2, log), sinks[2])
    with pytest.raises(Busy):
        worker.submit(counting(1, log), Sink())
    gate.set()
    assert all(s.ended.wait(5) for s in sinks)
    assert log == [0, 1] * 3 and all(s.events == [{"i": 0}, {"i": 1}] for s in sinks)


def test_a_cancelled_job_stops_after_the_current_step(worker):
    log, sink = [], Sink()
    job = worker.submit(counting(100, log, pause=0.01), sink)
    while not sink.events:
        time.sleep(0.005)
    job.cancelled.set()
    assert sink.ended.wait(5)
    assert len(log) < 10
    waiting = worker.submit(counting(5, log), Sink())
    waiting.cancelled.set()  # cancelled before its turn: never started


def test_time_limit_and_failures_end_the_job_with_an_error_event():
    worker = Worker(queue_size=2, time_limit_s=0.05)
    worker.start()
    try:
        log, sink = [], Sink()
        worker.submit(counting(100, log, pause=0.01), sink)
        assert sink.ended.wait(5) and "time limit" in sink.events[-1]["message"] and len(log) < 20

        def broken():
            yield {"i": 0}
            raise RuntimeError("boom")

        def refused():
            raise SaelignError("the prompt is too long")
            yield

        failed, told, after = Sink(), Sink(), Sink()
        worker.submit(broken, failed)
        worker.submit(refused, told)
        assert failed.ended.wait(5) and told.ended.wait(5)
        assert failed.events[-1]["message"].startswith("internal error") and "boom" not in str(failed.events)
        assert told.events == [{"event": "error", "message": "the prompt is too long"}]
        worker.submit(counting(1, []), after)
        assert after.ended.wait(5) and after.events == [{"i": 0}]
    finally:
        worker.stop()
