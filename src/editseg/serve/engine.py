"""One worker thread between concurrent requests and the model.

Requests enter a bounded queue (:class:`QueueFullError` when it is full). The worker takes the
oldest request, then whatever else is waiting, up to ``max_batch_expressions`` expressions, and
serves that batch in one turn:

* requests on the same image (same ``image_key``, e.g. the SHA-256 of the uploaded bytes) share one
  ``Segmenter.set_image``, so the image is encoded once per turn;
* their expressions under the same settings go to one ``Segmenter.predict`` call, which runs them
  ``batch_size`` at a time through the transformer; identical expressions are computed once;
* requests whose deadline has passed (or whose client gave up) are skipped, not computed;
* a request whose expression fails (e.g. too many tokens) fails alone: the group is retried
  request by request, so one bad request cannot spoil its neighbours.

Only the worker thread touches the model, so a model that is not thread-safe is fine.
No web dependency here: the HTTP layer (:mod:`editseg.serve.app`) and tests use it directly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Sequence

from PIL import Image

from ..config import MethodConfig
from ..errors import EditsegError
from .limits import ServeLimits

log = logging.getLogger("editseg.serve")


class QueueFullError(EditsegError):
    """Too many requests are waiting for the model (HTTP 429)."""


class RequestTimeout(EditsegError):
    """A request's deadline passed before the model reached it (HTTP 504)."""


@dataclass
class Job:
    """One request: an image, its expressions and settings, and where the answer goes."""

    image: Image.Image
    image_key: str
    expressions: list[str]
    config: MethodConfig | None  # None: the method's own settings
    deadline: float
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    def cancel(self) -> None:
        """The client stopped waiting: skip this job if the worker has not reached it."""
        self.cancelled = True


@dataclass
class BatchInfo:
    """How a job was served, returned with its results (``timings`` in the API)."""

    queue_s: float
    model_s: float
    batch_requests: int
    batch_images: int
    batch_expressions: int


class BatchingEngine:
    """Feeds ``segmenter`` one batch at a time from a bounded queue (see the module docstring)."""

    def __init__(self, segmenter: Any, limits: ServeLimits | None = None):
        self.segmenter = segmenter
        self.limits = limits or ServeLimits()
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=self.limits.queue_size)
        self._held: Job | None = None  # taken from the queue but left for the next turn
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "turns": 0, "expressions": 0, "skipped": 0, "failed": 0}

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "BatchingEngine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="editseg-model", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the turn in progress, fail what still waits, and end the worker."""
        if self._thread is None:
            return
        while True:  # make room for the sentinel
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                self._fail(self._queue.get_nowait(), RequestTimeout("The server is shutting down."))
        self._thread.join(timeout)
        self._thread = None

    @property
    def pending(self) -> int:
        """Requests waiting for the model (not counting the turn in progress)."""
        return self._queue.qsize()

    # -- requests ---------------------------------------------------------------------------------
    def submit(
        self, image: Image.Image, image_key: str, expressions: Sequence[str], config: MethodConfig | None,
        timeout_s: float | None = None,
    ) -> Job:  # fmt: skip
        """Queue a request; its ``future`` resolves to ``(results, BatchInfo)``.

        Raises :class:`QueueFullError` at once when ``queue_size`` requests already wait."""
        timeout = self.limits.timeout_s if timeout_s is None else min(timeout_s, self.limits.timeout_s)
        job = Job(image, image_key, list(expressions), config, deadline=time.perf_counter() + timeout)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(
                f"The model queue is full ({self.limits.queue_size} requests waiting); retry shortly."
            ) from None
        return job

    # -- worker -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job = self._held or self._queue.get()
            self._held = None
            if job is None:
                return
            batch, count = [job], len(job.expressions)
            while count < self.limits.max_batch_expressions:
                try:
                    extra = self._queue.get_nowait()
                except queue.Empty:
                    break
                if extra is None:
                    self._held = None
                    self._queue.put(None)  # stop after this turn
                    break
                if count + len(extra.expressions) > self.limits.max_batch_expressions:
                    self._held = extra  # first in line for the next turn
                    break
                batch.append(extra)
                count += len(extra.expressions)
            try:
                self._turn(batch)
            except Exception as error:  # never let the worker die; fail this turn's requests
                log.exception("model turn failed")
                for item in batch:
                    self._fail(item, error)

    def _turn(self, batch: list[Job]) -> None:
        now = time.perf_counter()
        live = []
        for job in batch:
            if job.cancelled or now > job.deadline:
                self.stats["skipped"] += 1
                self._fail(job, RequestTimeout("The request timed out while waiting for the model."))
            else:
                live.append(job)
        if not live:
            return
        started = time.perf_counter()
        by_image: OrderedDict[str, list[Job]] = OrderedDict()
        for job in live:
            by_image.setdefault(job.image_key, []).append(job)
        outcomes: dict[int, Any] = {}
        for jobs in by_image.values():
            try:
                self.segmenter.set_image(jobs[0].image)
            except Exception as error:
                for job in jobs:
                    outcomes[id(job)] = error
                continue
            by_config: OrderedDict[MethodConfig | None, list[Job]] = OrderedDict()
            for job in jobs:
                by_config.setdefault(job.config, []).append(job)
            for config, group in by_config.items():
                outcomes.update(self._predict_group(group, config))
        model_s = time.perf_counter() - started
        expressions = sum(len(j.expressions) for j in live)
        self.stats["turns"] += 1
        self.stats["requests"] += len(live)
        self.stats["expressions"] += expressions
        for job in live:
            outcome = outcomes[id(job)]
            if isinstance(outcome, BaseException):
                self.stats["failed"] += 1
                self._fail(job, outcome)
            else:
                info = BatchInfo(started - job.submitted, model_s, len(live), len(by_image), expressions)
                try:
                    job.future.set_result((outcome, info))
                except InvalidStateError:  # cancelled by its caller meanwhile
                    pass

    def _predict_group(self, group: list[Job], config: MethodConfig | None) -> dict[int, Any]:
        """Results per job for jobs sharing image and settings; one ``predict`` for all of them."""
        unique = list(OrderedDict.fromkeys(e for job in group for e in job.expressions))
        try:
            results = dict(zip(unique, self.segmenter.predict(unique, config)))
        except Exception as error:
            if len(group) == 1:
                return {id(group[0]): error}
            out: dict[int, Any] = {}
            for job in group:  # isolate the request that fails
                out.update(self._predict_group([job], config))
            return out
        return {id(job): [results[e] for e in job.expressions] for job in group}

    @staticmethod
    def _fail(job: Job | None, error: BaseException) -> None:
        if job is not None:
            try:
                job.future.set_exception(error)
            except InvalidStateError:
                pass
