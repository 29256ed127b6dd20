"""Micro-batching: merge the texts of concurrent requests into one model call, fairly and within bounds.

Why our own: a transformer forward pass over 32 texts costs far less than 32 passes over one text,
but each HTTP request usually carries only a few texts. Serving stacks that batch across requests
(Triton, TorchServe, text-embeddings-inference, Ray Serve's ``@serve.batch``) run the model in their
own process or runtime; none of them batches a ``SentenceTransformer`` that lives inside a FastAPI
process. This module is that missing piece: requests wait in a queue, a worker runs the calls in a
thread (so the event loop keeps accepting requests while the model works), one at a time for a local
model and up to ``max_in_flight`` at once for an upstream API, and each caller gets its own rows back.

Scheduling, in three rules:

1. **Bounded batches.** A call never holds more than ``max_texts`` texts; a larger request is cut
   into slices that run in successive calls, and its caller gets all its rows once the last slice ran.
2. **Fair sharing.** Small requests go first, in arrival order; large ones (and the rest of any
   request already under way) share at most a quarter of each call while small ones wait, half of
   it when none do. A small request waits for at most a short call in progress plus its own, never
   for the whole of a large request, and a large request still moves on every call.
3. **Bounded queue.** The queue holds at most ``max_queued_texts`` texts not yet run; a request that
   would go past it is refused at once with :class:`QueueFull` (the server answers 429 with
   ``Retry-After``) instead of waiting behind work it cannot catch up with.

When the queue is empty the first request waits ``max_wait_ms`` for company; under load batches
fill by themselves while a call runs.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from matryoshka.errors import BatcherClosed, InputError, QueueFull

#: A batch function maps a list of texts to one or more arrays whose first axis runs over the texts.
BatchFunction = Callable[[list[str]], tuple[np.ndarray, ...]]


@dataclass(eq=False)
class _Job:
    texts: list[str]
    future: asyncio.Future[tuple[np.ndarray, ...]]
    order: int
    sent: int = 0  # texts handed to a call so far
    done: int = 0  # texts whose rows came back
    parts: list[tuple[int, tuple[np.ndarray, ...]]] = field(default_factory=list)  # (first text, rows), any order

    @property
    def remaining(self) -> int:
        return len(self.texts) - self.sent


@dataclass
class BatchStats:
    """Counters for tests, logs and ``/health``: calls, merged requests and texts, queue and refusals."""

    calls: int = 0
    requests: int = 0
    texts: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0
    rejected: int = 0
    queued_texts: int = 0
    sizes: list[int] = field(default_factory=list)


class MicroBatcher:
    """Queue texts from concurrent callers and run ``fn`` on fair, bounded batches in one worker thread.

    Args:
        fn: called with the merged texts; returns a tuple of arrays with one row per text.
        max_texts: most texts in one call; larger requests are split across calls.
        max_wait_ms: how long the first request of a batch waits for others when the queue is empty.
        max_queued_texts: most texts waiting (not yet run) at once; past it :meth:`submit` raises
            :class:`QueueFull`. ``None``: unbounded.
        executor: where ``fn`` runs; default a private pool of ``max_in_flight`` threads.
        max_in_flight: calls running at once. 1 (the default) for a local model: PyTorch already uses
            every core it is given inside one call. More for an upstream API, whose calls mostly wait on
            the network: the next batch is planned and sent while earlier ones are in flight.
    """

    def __init__(
        self,
        fn: BatchFunction,
        max_texts: int = 256,
        max_wait_ms: float = 2.0,
        executor: Executor | None = None,
        name: str = "batcher",
        max_queued_texts: int | None = None,
        max_in_flight: int = 1,
    ) -> None:
        if max_texts < 1 or max_in_flight < 1:
            raise InputError(f"max_texts and max_in_flight must be at least 1, got {max_texts} and {max_in_flight}")
        self.fn = fn
        self.max_texts = max_texts
        self.max_wait = max_wait_ms / 1000.0
        self.max_queued_texts = max_queued_texts
        self.name = name
        self.stats = BatchStats()
        self._own_executor = executor is None
        self.max_in_flight = max_in_flight
        self._executor = executor or ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix=name)
        self._jobs: list[_Job] = []  # waiting or partly run, in arrival order
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._busy = 0  # calls running
        self._slots: asyncio.Semaphore | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._order = itertools.count()
        self._texts_per_second = 0.0  # smoothed throughput, for Retry-After

    def start(self) -> None:
        """Start the worker on the running event loop (called lazily by :meth:`submit`)."""
        loop = asyncio.get_running_loop()
        if self._worker is not None and self._loop is loop and not self._worker.done():
            return
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._calls = set()
        self._jobs = []
        self._worker = loop.create_task(self._run(), name=f"{self.name}-worker")

    @property
    def queued_texts(self) -> int:
        """Texts accepted but not yet handed to the model."""
        return sum(job.remaining for job in self._jobs if not job.future.done())

    def retry_after(self) -> int:
        """Whole seconds until the queue has likely drained (at least 1)."""
        rate = self._texts_per_second
        return max(1, math.ceil(self.queued_texts / rate)) if rate > 0 else 1

    async def submit(self, texts: Sequence[str]) -> tuple[np.ndarray, ...]:
        """Run ``fn`` on ``texts`` (in one or more batches) and return this caller's rows.

        Raises:
            BatcherClosed: the batcher is closing.
            QueueFull: the queue cannot take ``len(texts)`` more texts now.
        """
        if self._closed:
            raise BatcherClosed(f"{self.name} is closed")
        self.start()
        texts = list(texts)
        if self.max_queued_texts is not None:
            queued = self.queued_texts
            if queued + len(texts) > self.max_queued_texts:
                self.stats.rejected += 1
                raise QueueFull(
                    f"The server is busy: {queued} texts are queued and the limit is {self.max_queued_texts}.",
                    self.retry_after(),
                )
        if not texts:
            raise InputError("submit at least one text")
        future: asyncio.Future[tuple[np.ndarray, ...]] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(texts, future, next(self._order)))
        self.stats.queued_texts = self.queued_texts
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await future
        finally:
            if not future.done():  # the caller went away (client disconnect, cancel): drop its rest
                future.cancel()

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new requests, let queued ones finish for up to ``timeout`` seconds, then stop the worker.

        Requests still queued after that fail with :class:`BatcherClosed`.
        """
        self._closed = True
        deadline = time.perf_counter() + timeout
        while self._worker is not None and not self._worker.done() and time.perf_counter() < deadline:
            if not self._busy and not any(not job.future.done() for job in self._jobs):
                break
            await asyncio.sleep(0.01)
        for task in [self._worker, *self._calls]:
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(BatcherClosed(f"{self.name} closed before the request ran"))
        self._jobs = []
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _plan(self) -> list[tuple[_Job, int, int]]:
        """The next call: ``(job, start, end)`` slices, at most ``max_texts`` texts.

        *Small* requests (not started yet, at most ``max_texts // 2`` texts) go first, in arrival order.
        Everything else (large requests, and the rest of any request already under way) is *bulk*: it
        shares at most a quarter of a call while small requests wait and at most half of one when none
        do, least served first. So a small request waits for at most a short call in progress plus its
        own, a large one still advances every call, and a request cut at the edge of a call finishes in
        the next one rather than behind the rest of a large request.
        """
        self._jobs = [job for job in self._jobs if not job.future.done()]  # callers that went away
        waiting = sorted((job for job in self._jobs if job.remaining), key=lambda job: job.order)
        small = [job for job in waiting if not job.sent and len(job.texts) <= self.max_texts // 2]
        bulk = sorted((job for job in waiting if job not in small), key=lambda job: (job.sent, job.order))
        bulk_cap = max(1, self.max_texts // 4 if small else self.max_texts // 2)
        plan: list[tuple[_Job, int, int]] = []

        def take(jobs: list[_Job], budget: int) -> int:
            used = 0
            for job in jobs:
                if used >= budget:
                    break
                count = min(job.remaining, budget - used)
                if count > 0:
                    plan.append((job, job.sent, job.sent + count))
                    job.sent += count
                    used += count
            return used

        room = self.max_texts
        room -= take(small, room - (bulk_cap if bulk else 0))
        room -= take(bulk, min(room, bulk_cap))
        take([job for job in small if job.remaining], room)  # small ones that did not fit their share
        return plan

    async def _gather(self) -> None:
        """Wait for work; when the queue was empty, wait ``max_wait`` for company (until ``max_texts``)."""
        assert self._wakeup is not None
        while not any(job.remaining for job in self._jobs if not job.future.done()):
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = time.perf_counter() + self.max_wait
        while self.queued_texts < self.max_texts:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, 0.0005))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._slots is not None
        while True:
            await self._slots.acquire()  # a free call slot first: with one slot, the next batch forms meanwhile
            try:
                await self._gather()
                plan = self._plan()
            except BaseException:
                self._slots.release()
                raise
            if not plan:
                self._slots.release()
                continue
            call = loop.create_task(self._call(plan))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _call(self, plan: list[tuple[_Job, int, int]]) -> None:
        """Run one planned call in the executor and hand each caller its rows (or the call's error)."""
        assert self._slots is not None
        try:
            texts = [t for job, start, end in plan for t in job.texts[start:end]]
            self.stats.queued_texts = self.queued_texts
            started = time.perf_counter()
            self._busy += 1
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self.fn, texts)
            except asyncio.CancelledError:
                for job, _, _ in plan:
                    if not job.future.done():
                        job.future.set_exception(BatcherClosed(f"{self.name} closed during the request"))
                raise
            except Exception as exc:  # the model failed: every caller in the batch gets the error
                for job, _, _ in plan:
                    if not job.future.done():
                        job.future.set_exception(exc)
                return
            finally:
                self._busy -= 1
                self._record(len({id(job) for job, _, _ in plan}), len(texts), time.perf_counter() - started)
            offset = 0
            for job, start, end in plan:
                count = end - start
                if not job.future.done():
                    job.parts.append((start, tuple(out[offset : offset + count] for out in outputs)))
                    job.done += count
                    if job.done == len(job.texts):
                        job.future.set_result(_join(job.parts))
                        job.parts = []
                offset += count
            self._jobs = [job for job in self._jobs if not job.future.done()]
        finally:
            self._slots.release()

    def _record(self, requests: int, texts: int, seconds: float) -> None:
        stats = self.stats
        stats.calls += 1
        stats.requests += requests
        stats.texts += texts
        stats.largest_batch = max(stats.largest_batch, texts)
        stats.busy_seconds += seconds
        stats.queued_texts = self.queued_texts
        if seconds > 0:
            rate = texts / seconds
            self._texts_per_second = rate if self._texts_per_second == 0 else 0.8 * self._texts_per_second + 0.2 * rate
        if len(stats.sizes) < 10_000:
            stats.sizes.append(texts)


def _join(parts: list[tuple[int, tuple[np.ndarray, ...]]]) -> tuple[np.ndarray, ...]:
    """A request's rows from its slices, put back in order (calls in flight together may finish in any order)."""
    if len(parts) == 1:
        return parts[0][1]
    ordered = [rows for _, rows in sorted(parts, key=lambda part: part[0])]
    return tuple(np.concatenate(arrays) for arrays in zip(*ordered))
