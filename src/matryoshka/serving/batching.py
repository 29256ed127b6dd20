"""Micro-batching: merge the texts of concurrent requests into one model call.

Why our own: a transformer forward pass over 32 texts costs far less than 32 passes over one text,
but each HTTP request usually carries only a few texts. Serving stacks that batch across requests
(Triton, TorchServe, text-embeddings-inference, Ray Serve's ``@serve.batch``) run the model in their
own process or runtime; none of them batches a ``SentenceTransformer`` that lives inside a FastAPI
process. This module is that missing piece, in about a hundred lines: an asyncio queue collects
requests for up to ``max_wait_ms`` or ``max_texts`` texts, a single worker runs one call in a
thread (so the event loop keeps accepting requests while the model works), and each caller gets
its own rows back. While one call runs, new requests queue up and form the next batch, so under load
batches grow by themselves and an idle server adds at most ``max_wait_ms`` of latency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

#: A batch function maps a list of texts to one or more arrays whose first axis runs over the texts.
BatchFunction = Callable[[list[str]], tuple[np.ndarray, ...]]


class BatcherClosed(RuntimeError):
    """The batcher was closed (server shutting down) before the request ran."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future[tuple[np.ndarray, ...]]


@dataclass
class BatchStats:
    """Counters for tests and logs: how many calls ran and how many requests and texts they merged."""

    calls: int = 0
    requests: int = 0
    texts: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0
    sizes: list[int] = field(default_factory=list)


class MicroBatcher:
    """Queue texts from concurrent callers and run ``fn`` once per batch, in a single worker thread.

    Args:
        fn: called with the merged texts; returns a tuple of arrays with one row per text.
        max_texts: a batch closes once it holds this many texts (a single larger request still runs whole).
        max_wait_ms: how long the first request of a batch waits for others when the queue is empty.
        executor: where ``fn`` runs; default a private one-thread pool, so model calls never overlap
            (PyTorch already uses every core it is given inside one call).
    """

    def __init__(
        self,
        fn: BatchFunction,
        max_texts: int = 256,
        max_wait_ms: float = 2.0,
        executor: Executor | None = None,
        name: str = "batcher",
    ) -> None:
        self.fn = fn
        self.max_texts = max_texts
        self.max_wait = max_wait_ms / 1000.0
        self.name = name
        self.stats = BatchStats()
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._pending: _Job | None = None
        self._busy = False
        self._gathering: list[_Job] = []

    def start(self) -> None:
        """Start the worker on the running event loop (called lazily by :meth:`submit`)."""
        loop = asyncio.get_running_loop()
        if self._worker is not None and self._loop is loop and not self._worker.done():
            return
        self._loop = loop
        self._queue = asyncio.Queue()
        self._pending = None
        self._worker = loop.create_task(self._run(), name=f"{self.name}-worker")

    async def submit(self, texts: Sequence[str]) -> tuple[np.ndarray, ...]:
        """Run ``fn`` on ``texts`` as part of a batch and return this caller's rows."""
        if self._closed:
            raise BatcherClosed(f"{self.name} is closed")
        self.start()
        assert self._queue is not None
        future: asyncio.Future[tuple[np.ndarray, ...]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(list(texts), future))
        return await future

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new requests, let queued ones finish for up to ``timeout`` seconds, then stop the worker.

        Requests still queued after that fail with :class:`BatcherClosed`.
        """
        self._closed = True
        deadline = time.perf_counter() + timeout
        while self._worker is not None and not self._worker.done() and time.perf_counter() < deadline:
            idle = not (self._busy or self._gathering or self._pending)
            if idle and (self._queue is None or self._queue.empty()):
                break
            await asyncio.sleep(0.01)
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
        if self._queue is not None:
            left = [*self._gathering, *([self._pending] if self._pending is not None else [])]
            self._pending, self._gathering = None, []
            while not self._queue.empty():
                left.append(self._queue.get_nowait())
            for job in left:
                if not job.future.done():
                    job.future.set_exception(BatcherClosed(f"{self.name} closed before the request ran"))
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _collect(self) -> list[_Job]:
        """Wait for one job, then take more until ``max_texts`` or ``max_wait`` is reached."""
        assert self._queue is not None
        if self._pending is not None:
            first, self._pending = self._pending, None
        else:
            first = await self._queue.get()
        jobs = self._gathering = [first]  # visible to close() while we wait for company
        count = len(first.texts)
        deadline = time.perf_counter() + self.max_wait
        while count < self.max_texts:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                # Poll rather than wait_for(queue.get()): cancelling a get can drop an item on 3.11.
                await asyncio.sleep(min(remaining, 0.0005))
                continue
            if count + len(job.texts) > self.max_texts:
                self._pending = job  # too big to join: it opens the next batch
                break
            jobs.append(job)
            count += len(job.texts)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            gathered = await self._collect()
            self._gathering = []
            jobs = [j for j in gathered if not j.future.done()]  # skip callers that went away
            if not jobs:
                continue
            texts = [t for job in jobs for t in job.texts]
            started = time.perf_counter()
            self._busy = True
            try:
                outputs = await loop.run_in_executor(self._executor, self.fn, texts)
            except asyncio.CancelledError:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(BatcherClosed(f"{self.name} closed during the request"))
                raise
            except Exception as exc:  # the model failed: every caller in the batch gets the error
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._busy = False
                self._record(len(jobs), len(texts), time.perf_counter() - started)
            start = 0
            for job in jobs:
                end = start + len(job.texts)
                if not job.future.done():
                    job.future.set_result(tuple(out[start:end] for out in outputs))
                start = end

    def _record(self, requests: int, texts: int, seconds: float) -> None:
        stats = self.stats
        stats.calls += 1
        stats.requests += requests
        stats.texts += texts
        stats.largest_batch = max(stats.largest_batch, texts)
        stats.busy_seconds += seconds
        if len(stats.sizes) < 10_000:
            stats.sizes.append(texts)
