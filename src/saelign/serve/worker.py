"""One model worker: a thread that runs queued jobs one at a time: the model and its hooks are never shared.

A job is an event stream computed step by step; between steps the worker checks whether the client left
(`cancel`) and whether the request's time limit has passed, so a stopped or abandoned request frees the model
after at most one more decoding step. The queue is bounded: a full queue refuses new work at once.
"""

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from saelign.errors import SaelignError
from saelign.progress import logger

Event = dict[str, Any]


class Busy(Exception):
    """The queue is full; the client should retry later."""


@dataclass
class Job:
    events: Callable[[], Iterator[Event]]  # started by the worker, not before its turn
    deliver: Callable[[Event | None], None]  # thread-safe; None ends the stream
    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)


class Worker:
    def __init__(self, queue_size: int, time_limit_s: float):
        self.time_limit_s = time_limit_s
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._loop, name="saelign-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the running job, drop the waiting ones, end the thread."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.deliver({"event": "error", "message": "the server is shutting down"})
                job.deliver(None)
        self._queue.put(None)
        self._thread.join(timeout=self.time_limit_s)

    def submit(self, events: Callable[[], Iterator[Event]], deliver: Callable[[Event | None], None]) -> Job:
        job = Job(events, deliver, time.monotonic() + self.time_limit_s)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Busy from None
        return job

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            self._run(job)

    def _run(self, job: Job) -> None:
        stream: Iterator[Event] | None = None
        try:
            if job.cancelled.is_set():
                return
            stream = job.events()
            for event in stream:
                if job.cancelled.is_set():
                    return
                job.deliver(event)
                if time.monotonic() > job.deadline:
                    job.deliver(
                        {
                            "event": "error",
                            "message": f"the request reached its time limit of "
                            f"{self.time_limit_s:g} s; ask for fewer tokens",
                        }
                    )
                    return
        except SaelignError as exc:
            job.deliver({"event": "error", "message": str(exc)})
        except Exception:  # the worker must outlive any one request
            logger.exception("serve: request failed")
            job.deliver({"event": "error", "message": "internal error while generating; see the server log"})
        finally:
            if stream is not None and hasattr(stream, "close"):
                stream.close()
            job.deliver(None)
