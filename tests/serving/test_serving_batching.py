"""The micro-batcher on its own, with a fake batch function: merging, splitting, limits, failures, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from matryoshka.serving.batching import BatcherClosed, MicroBatcher, QueueFull


class Recorder:
    """A batch function that returns each text's length and records the batches it saw."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.delay, self.fail_on = delay, fail_on
        self.threads: set[str] = set()

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("model failed")
        lengths = np.array([len(t) for t in texts])
        return np.stack([lengths, lengths * 2], axis=1), lengths


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_one_call():
    fn = Recorder()

    async def main():
        batcher = MicroBatcher(fn, max_texts=100, max_wait_ms=50)
        requests = [["a" * i, "b" * (i + 1)] for i in range(1, 11)]
        results = await asyncio.gather(*[batcher.submit(r) for r in requests])
        await batcher.close()
        return requests, results, batcher.stats

    requests, results, stats = run(main())
    assert len(fn.batches) == 1 and len(fn.batches[0]) == 20
    for texts, (rows, lengths) in zip(requests, results):  # every caller gets exactly its own rows, in order
        assert lengths.tolist() == [len(t) for t in texts]
        assert rows[:, 1].tolist() == [2 * len(t) for t in texts]
    assert stats.calls == 1 and stats.requests == 10 and stats.texts == 20
    assert all(name.startswith("batcher") for name in fn.threads)  # off the event loop's thread


def test_max_texts_splits_batches():
    fn = Recorder()

    async def main():
        batcher = MicroBatcher(fn, max_texts=4, max_wait_ms=20)
        await asyncio.gather(*[batcher.submit([f"t{i}"]) for i in range(10)])
        await batcher.close()

    run(main())
    assert [len(b) for b in fn.batches] == [4, 4, 2]
    assert [t for b in fn.batches for t in b] == [f"t{i}" for i in range(10)]  # arrival order kept


def test_large_request_is_split_into_bounded_batches():
    fn = Recorder()

    async def main():
        batcher = MicroBatcher(fn, max_texts=4, max_wait_ms=20)
        small, big = await asyncio.gather(batcher.submit(["s"]), batcher.submit([f"b{i}" for i in range(10)]))
        await batcher.close()
        return small, big, batcher.stats

    small, big, stats = run(main())
    assert max(len(b) for b in fn.batches) <= 4 and stats.largest_batch <= 4
    assert sorted(t for b in fn.batches for t in b) == sorted(["s", *[f"b{i}" for i in range(10)]])
    assert big[1].tolist() == [2] * 10 and big[0][:, 0].tolist() == [2] * 10  # its rows, in order, rejoined
    assert len(small[1]) == 1


def test_small_request_overtakes_a_large_one():
    """A request arriving while a large one is being worked through runs in the next call."""
    fn = Recorder(delay=0.05)

    async def main():
        batcher = MicroBatcher(fn, max_texts=8, max_wait_ms=0)
        big = asyncio.create_task(batcher.submit([f"big{i}" for i in range(80)]))
        await asyncio.sleep(0.01)  # the first slice of the large request is in the model now
        await batcher.submit(["tiny"])
        calls_when_small_done = len(fn.batches)
        await big
        await batcher.close()
        return calls_when_small_done

    calls_when_small_done = run(main())
    assert sum(map(len, fn.batches)) == 81 and max(map(len, fn.batches)) <= 8  # in slices of at most 8
    with_tiny = next(i for i, batch in enumerate(fn.batches) if "tiny" in batch)
    assert sum(len(b) for b in fn.batches[:with_tiny]) <= 8  # it waited for the slice in progress only
    assert calls_when_small_done <= with_tiny + 2  # answered before the large request went on much further


def test_full_queue_refuses_at_once():
    fn = Recorder(delay=0.1)

    async def main():
        batcher = MicroBatcher(fn, max_texts=4, max_wait_ms=0, max_queued_texts=10)
        first = asyncio.create_task(batcher.submit([f"a{i}" for i in range(10)]))
        await asyncio.sleep(0.01)  # 4 texts running, 6 queued
        with pytest.raises(QueueFull) as refused:
            await batcher.submit([f"b{i}" for i in range(5)])
        ok = await batcher.submit(["fits"])  # 6 + 1 <= 10
        await first
        await batcher.close()
        return refused.value, ok, batcher.stats

    refused, ok, stats = run(main())
    assert refused.retry_after >= 1 and stats.rejected == 1
    assert ok[1].tolist() == [4]


def test_requests_arriving_during_a_call_form_the_next_batch():
    fn = Recorder(delay=0.2)

    async def main():
        batcher = MicroBatcher(fn, max_texts=100, max_wait_ms=0)
        first = asyncio.create_task(batcher.submit(["first"]))
        await asyncio.sleep(0.05)  # the first call is running now
        rest = [asyncio.create_task(batcher.submit([f"later{i}"])) for i in range(5)]
        await asyncio.gather(first, *rest)
        await batcher.close()

    run(main())
    assert [len(b) for b in fn.batches] == [1, 5]


def test_failure_reaches_every_caller_of_the_batch_and_batcher_survives():
    fn = Recorder(fail_on="boom")

    async def main():
        batcher = MicroBatcher(fn, max_texts=100, max_wait_ms=30)
        results = await asyncio.gather(batcher.submit(["ok"]), batcher.submit(["boom"]), return_exceptions=True)
        after = await batcher.submit(["fine"])
        await batcher.close()
        return results, after

    results, after = run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert after[1].tolist() == [4]


def test_cancelled_caller_is_skipped():
    fn = Recorder(delay=0.1)

    async def main():
        batcher = MicroBatcher(fn, max_texts=100, max_wait_ms=0)
        busy = asyncio.create_task(batcher.submit(["busy"]))
        await asyncio.sleep(0.02)
        gone = asyncio.create_task(batcher.submit(["gone"]))
        kept = asyncio.create_task(batcher.submit(["kept"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.gather(busy, kept)
        await batcher.close()

    run(main())
    assert fn.batches == [["busy"], ["kept"]]


def test_close_finishes_queued_work_then_refuses():
    fn = Recorder(delay=0.05)

    async def main():
        batcher = MicroBatcher(fn, max_texts=1, max_wait_ms=0)
        tasks = [asyncio.create_task(batcher.submit([f"q{i}"])) for i in range(3)]
        await asyncio.sleep(0)
        await batcher.close(timeout=5)
        done = await asyncio.gather(*tasks)
        with pytest.raises(BatcherClosed):
            await batcher.submit(["late"])
        return done

    assert len(run(main())) == 3


def test_close_timeout_fails_what_is_left():
    fn = Recorder(delay=0.3)

    async def main():
        batcher = MicroBatcher(fn, max_texts=1, max_wait_ms=0)
        tasks = [asyncio.create_task(batcher.submit([f"q{i}"])) for i in range(4)]
        await asyncio.sleep(0.01)
        await batcher.close(timeout=0.05)
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(main())
    assert any(isinstance(r, BatcherClosed) for r in results)  # nobody is left hanging
    assert all(isinstance(r, (tuple, BatcherClosed)) for r in results)


def test_a_large_request_is_not_starved_by_many_small_ones():
    fn = Recorder()

    async def main():
        batcher = MicroBatcher(fn, max_texts=8, max_wait_ms=0)
        big = asyncio.create_task(batcher.submit([f"big{i}" for i in range(40)]))
        smalls = [asyncio.create_task(batcher.submit([f"s{i}"])) for i in range(200)]
        order = []
        big.add_done_callback(lambda _: order.append("big"))
        for task in smalls:
            task.add_done_callback(lambda _: order.append("small"))
        await asyncio.gather(big, *smalls)
        await batcher.close()
        return order

    order = run(main())
    assert order.index("big") < len(order) - 50  # done while many small requests were still waiting
    with_big = [b for b in fn.batches if any(t.startswith("big") for t in b)]
    assert all(sum(t.startswith("big") for t in b) >= 2 for b in with_big[:-1])  # a quarter of every call
    assert all(len(b) <= 8 for b in fn.batches)


def test_a_small_request_cut_at_the_edge_of_a_call_finishes_next():
    """A small request split by the end of a call must not then queue behind the rest of a large request."""
    fn = Recorder(delay=0.02)

    async def main():
        batcher = MicroBatcher(fn, max_texts=8, max_wait_ms=0)
        big = asyncio.create_task(batcher.submit([f"big{i}" for i in range(80)]))
        await asyncio.sleep(0.01)  # the large request is under way
        first, second = asyncio.create_task(batcher.submit(["x1", "x2", "x3", "x4"])), asyncio.create_task(batcher.submit(["y1", "y2", "y3", "y4"]))
        await asyncio.gather(first, second)
        calls_when_done = len(fn.batches)
        await big
        await batcher.close()
        return calls_when_done

    calls_when_done = run(main())
    with_y = [i for i, batch in enumerate(fn.batches) if any(t.startswith("y") for t in batch)]
    assert len(with_y) == 2  # "y" was cut by the edge of a call (6 slots for small requests: x1-x4, y1-y2)
    assert with_y[1] == with_y[0] + 1  # and finished in the very next call, not after the large request
    assert calls_when_done <= with_y[1] + 2


class Overlap:
    """A batch function that waits ``delay(texts)`` seconds and records how many calls ran at once."""

    def __init__(self, delay):
        self.delay, self.running, self.peak = delay, 0, 0
        self.lock = threading.Lock()

    def __call__(self, texts: list[str]) -> tuple[np.ndarray]:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.delay(texts))
        with self.lock:
            self.running -= 1
        return (np.array([int(t) for t in texts]),)


def test_calls_overlap_up_to_max_in_flight_and_rows_keep_their_order():
    """For an upstream API (``max_in_flight`` > 1) the next batch goes out while others wait on the network.
    Slices of one request that finish out of order are put back in order."""
    late_first = Overlap(lambda texts: 0.02 * (12 - int(texts[0]) // 2))  # the first slices finish last

    async def main():
        batcher = MicroBatcher(late_first, max_texts=4, max_wait_ms=0, max_in_flight=3)
        (rows,) = await batcher.submit([str(i) for i in range(24)])
        await batcher.close()
        return rows, batcher.stats

    rows, stats = run(main())
    assert rows.tolist() == list(range(24)) and stats.calls == 12  # a lone large request: half a call each
    assert late_first.peak == 3
    one_at_a_time = Overlap(lambda texts: 0.02)

    async def serial():
        batcher = MicroBatcher(one_at_a_time, max_texts=1, max_wait_ms=0)  # a local model's default: one call
        results = await asyncio.gather(*[batcher.submit([str(i)]) for i in range(5)])
        await batcher.close()
        return [r[0].tolist() for r in results]

    assert run(serial()) == [[i] for i in range(5)] and one_at_a_time.peak == 1
    with pytest.raises(ValueError, match="max_in_flight"):
        MicroBatcher(one_at_a_time, max_in_flight=0)
