"""Calls to an OpenAI-compatible ``POST /embeddings``: batched to the API's limits, bounded in concurrency,
timed out, retried with backoff that honours ``Retry-After``, and every answer checked before it is used.

The key is read once from the environment variable the user names and lives only in the HTTP client's
headers: no message, log record or ``repr`` of this module holds it (an upstream's error text is
quoted with the key blotted out, in case the upstream echoes it).
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import httpx
import numpy as np

from matryoshka.errors import InputError, UpstreamError
from matryoshka.models.upstream.config import UpstreamConfig, public_url

__all__ = ["BACKOFF_BASE_S", "BACKOFF_CAP_S", "RETRY_AFTER_CAP_S", "UpstreamClient", "UpstreamStats", "plan_batches",
           "read_key", "retry_after_seconds"]

logger = logging.getLogger(__name__)

#: First backoff after a failed try (doubled per try, with jitter), and the most any backoff waits.
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 30.0
#: The most a ``Retry-After`` is honoured for: a longer one is waited this long, then the call is tried again.
RETRY_AFTER_CAP_S = 60.0
#: Characters of an upstream's error body quoted in an error message.
QUOTE_CHARS = 200


@dataclass
class UpstreamStats:
    """What the model cost so far.

    Attributes:
        calls: HTTP requests sent (every try counts: each one costs the upstream's rate limit).
        retries: the tries among ``calls`` that repeated a failed one.
        texts: texts the upstream embedded (in answers that passed the checks).
        cache_hits, cache_misses: distinct texts found in / missing from the vector cache.
    """

    calls: int = 0
    retries: int = 0
    texts: int = 0
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def hit_rate(self) -> float | None:
        """Share of looked-up texts the cache held (``None`` before any lookup)."""
        looked = self.cache_hits + self.cache_misses
        return self.cache_hits / looked if looked else None


def read_key(key_env: str | None) -> str | None:
    """The key in the environment variable ``key_env`` (``None`` when no variable is named).

    Raises:
        InputError: the variable is not set or empty (the message names the variable, never a value).
    """
    if key_env is None:
        return None
    key = os.environ.get(key_env, "").strip()
    if not key:
        raise InputError(f"the environment variable {key_env} (named by --upstream-key-env) is not set or is empty")
    return key


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) as seconds from now, capped at
    :data:`RETRY_AFTER_CAP_S`; ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with jitter before try ``attempt + 1`` (half the step fixed, half random)."""
    step = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
    return step / 2 + random.uniform(0, step / 2)


def plan_batches(texts: Sequence[str], batch_size: int, max_chars: int) -> list[list[int]]:
    """Positions of ``texts`` grouped into calls of at most ``batch_size`` inputs and ``max_chars`` characters.

    A text longer than ``max_chars`` alone goes in a call of its own (the upstream truncates or refuses it).
    """
    batches: list[list[int]] = []
    current: list[int] = []
    chars = 0
    for position, text in enumerate(texts):
        if current and (len(current) >= batch_size or chars + len(text) > max_chars):
            batches.append(current)
            current, chars = [], 0
        current.append(position)
        chars += len(text)
    if current:
        batches.append(current)
    return batches


class _Stop:
    """What the calls of one :meth:`UpstreamClient.embed` share: the first error that ended it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: UpstreamError | None = None
        self._lock = threading.Lock()

    def fail(self, error: UpstreamError) -> UpstreamError:
        """Record ``error`` unless another came first; the one to raise."""
        with self._lock:
            if self.error is None:
                self.error = error
            self.event.set()
            return self.error


@dataclass(frozen=True)
class _Retry:
    """One try failed in a way worth another: ``error`` is what the caller gets if none is left, ``wait``
    what the upstream asked to wait (``Retry-After``), if it did."""

    error: UpstreamError
    wait: float | None = None


class UpstreamClient:
    """The HTTP side of an :class:`~matryoshka.models.upstream.UpstreamModel`: one ``httpx.Client`` shared by
    a pool of ``concurrency`` threads; a semaphore keeps calls in flight at ``concurrency`` however many
    callers encode at once."""

    def __init__(self, config: UpstreamConfig, stats: UpstreamStats | None = None) -> None:
        if not config.url.startswith(("http://", "https://")):
            raise InputError(f"--upstream must be an http:// or https:// URL, got {public_url(config.url)!r}")
        for name, value in (("batch_size", config.batch_size), ("max_chars", config.max_chars),
                            ("concurrency", config.concurrency)):
            if value < 1:
                raise InputError(f"upstream {name} must be at least 1, got {value}")
        if config.retries < 0 or config.timeout <= 0:
            raise InputError(f"upstream retries must be >= 0 and timeout > 0, got {config.retries} and {config.timeout}")
        self.config = config
        self.where = public_url(config.url)
        self.stats = stats if stats is not None else UpstreamStats()
        #: Width of the upstream's vectors: learned from the first good answer (or told), then required;
        #: ``dim_source`` says where a required width came from, for the error that refuses another.
        self.dim: int | None = None
        self.dim_source = "the size it gave before"
        key = read_key(config.key_env)
        self._secret = key  # only to blot it out of quoted upstream text
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            headers=headers, timeout=config.timeout, follow_redirects=False,
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
        )
        self._endpoint = config.url.rstrip("/") + "/embeddings"
        self._slots = threading.Semaphore(config.concurrency)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        #: Vectors are asked for as base64 float32 (a quarter of the JSON, no float parsing on either
        #: side); an upstream that refuses that format with a 400 or 422 is asked for floats from then on.
        self._format = "base64"

    def __repr__(self) -> str:
        return f"UpstreamClient({self.where!r}, model={self.config.model!r})"

    def embed(self, texts: Sequence[str]) -> Iterator[tuple[list[int], np.ndarray]]:
        """Embed ``texts``, yielding ``(positions, rows)`` per call as calls finish (in any order).

        Only checked answers are yielded; the first call that fails for good stops the others (those
        not started are dropped, those waiting to retry give up) and its :class:`UpstreamError` is raised.
        """
        batches = plan_batches(texts, self.config.batch_size, self.config.max_chars)
        stop = _Stop()
        if not batches:
            return
        if len(batches) == 1:  # the common case of a server request: no hop to another thread
            yield batches[0], self._call([texts[i] for i in batches[0]], stop)
            return
        pool = self._executor()
        pending: dict[Future[np.ndarray], list[int]] = {}
        try:
            for positions in batches:
                pending[pool.submit(self._call, [texts[i] for i in positions], stop)] = positions
            while pending and stop.error is None:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    error = future.exception()
                    if error is None:
                        yield pending.pop(future), future.result()
                    elif stop.error is None:  # not an upstream failure: a bug, raised as it is
                        del pending[future]
                        raise error
            for future in pending:  # a call failed for good: drop those not sent, keep those answered meanwhile
                future.cancel()
            wait(list(pending))
            for future, positions in pending.items():
                if not future.cancelled() and future.exception() is None:
                    yield positions, future.result()
            if stop.error is not None:
                raise stop.error
        finally:  # finished, failed, or abandoned by the caller: calls still waiting give up
            stop.fail(UpstreamError(f"upstream {self.where}: the encoding was stopped", 502))
            for future in pending:
                future.cancel()
            wait(list(pending))

    def close(self) -> None:
        """Close the connections and the threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    # -- one call -----------------------------------------------------------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="upstream")
            return self._pool

    def _call(self, inputs: list[str], stop: _Stop) -> np.ndarray:
        """One batch, tried up to ``1 + retries`` times; its checked rows in input order.

        The first call of an :meth:`embed` to fail for good records its error in ``stop``: calls not yet
        sent are then not sent, and calls waiting to retry give up, all with that error.
        """
        tries = 1 + self.config.retries
        for attempt in range(tries):
            if stop.error is not None:
                raise stop.error
            try:
                outcome = self._try(inputs, attempt)
            except UpstreamError as error:
                raise stop.fail(error) from None
            if not isinstance(outcome, _Retry):
                return outcome
            failed = outcome
            if attempt == tries - 1:
                raise stop.fail(failed.error)
            delay = failed.wait if failed.wait is not None else backoff_seconds(attempt)
            logger.info("%s; try %d of %d in %.1fs", failed.error, attempt + 2, tries, delay)
            stop.event.wait(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _try(self, inputs: list[str], attempt: int) -> np.ndarray | _Retry:
        """One HTTP try: the checked rows, a :class:`_Retry` (429, 5xx, timeout, broken connection), or an
        :class:`UpstreamError` raised for an answer no retry would mend."""
        fmt = self._format
        body = {"model": self.config.model, "input": inputs, "encoding_format": fmt}
        with self._lock:
            self.stats.calls += 1
            self.stats.retries += attempt > 0
        try:
            with self._slots:
                response = self._http.post(self._endpoint, json=body)
        except httpx.TimeoutException:
            return _Retry(UpstreamError(f"upstream {self.where} timed out after {self.config.timeout:g}s", 504))
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
            return _Retry(UpstreamError(f"upstream {self.where} cannot be reached ({type(exc).__name__})", 503))
        except httpx.TransportError as exc:
            return _Retry(UpstreamError(f"upstream {self.where} broke off its answer ({type(exc).__name__})", 502))
        status = response.status_code
        if status == 429:
            wait_s = retry_after_seconds(response.headers.get("retry-after"))
            return _Retry(UpstreamError(f"upstream {self.where} kept answering 429 Too Many Requests", 503), wait_s)
        if status >= 500 or status == 408:
            error = UpstreamError(f"upstream {self.where} answered {status}{self._quote(response)}", 502)
            return _Retry(error, retry_after_seconds(response.headers.get("retry-after")))
        if status in (400, 422) and fmt == "base64":
            logger.info("upstream %s refused encoding_format=base64 (%d); asking for floats", self.where, status)
            self._format = "float"
            return self._try(inputs, attempt)
        if status != 200:
            hint = " (check --upstream-key-env)" if status in (401, 403) else ""
            raise UpstreamError(f"upstream {self.where} refused the call with {status}{hint}{self._quote(response)}", 502)
        rows = self._rows(response, len(inputs))
        with self._lock:
            self.stats.texts += len(inputs)
        return rows

    # -- checking an answer -------------------------------------------------------------------------

    def _bad(self, what: str) -> UpstreamError:
        return UpstreamError(f"upstream {self.where} answered badly: {what}", 502)

    def _rows(self, response: httpx.Response, count: int) -> np.ndarray:
        """The answer's embeddings as float32 rows in input order, or a 502 that says what is wrong."""
        try:
            payload = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            raise self._bad("the body is not JSON" + self._quote(response)) from None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise self._bad("no 'data' list of embeddings in the JSON")
        if len(data) != count:
            raise self._bad(f"{len(data)} embeddings for {count} inputs")
        rows: list[np.ndarray | None] = [None] * count
        for position, item in enumerate(data):
            if not isinstance(item, dict):
                raise self._bad(f"data[{position}] is not an object")
            index = item.get("index", position)
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
                raise self._bad(f"data[{position}] has index {index!r}, not one of 0..{count - 1} once each")
            rows[index] = self._vector(item.get("embedding"), position)
        widths = {len(row) for row in rows if row is not None}
        if len(widths) != 1:
            raise self._bad(f"vectors of different sizes in one answer ({', '.join(map(str, sorted(widths)))})")
        width = widths.pop()
        with self._lock:
            expected = self.dim if self.dim is not None else width
            if width != expected or width == 0:
                raise self._bad(f"{width}-d vectors, expected {expected}-d ({self.dim_source})")
            self.dim = width
        return np.stack(rows).astype(np.float32, copy=False)  # type: ignore[arg-type]

    def _vector(self, value: object, position: int) -> np.ndarray:
        if isinstance(value, str):  # base64, from a server that ignores encoding_format
            try:
                vector = np.frombuffer(base64.b64decode(value, validate=True), dtype="<f4")
            except ValueError:
                raise self._bad(f"data[{position}].embedding is neither numbers nor base64 float32") from None
        else:
            array = np.asarray(value) if isinstance(value, list) else None  # numbers only: kinds f and i, flat
            if array is None or array.ndim != 1 or array.dtype.kind not in "fi":
                raise self._bad(f"data[{position}].embedding is not a list of numbers")
            vector = array.astype(np.float32)
        if not np.isfinite(vector).all():
            raise self._bad(f"data[{position}].embedding holds NaN or infinite values")
        return vector.astype(np.float32, copy=False)

    def _quote(self, response: httpx.Response) -> str:
        """``": <start of the body>"`` (an OpenAI-shaped error's message if there is one), key blotted out."""
        try:
            text = response.text
            payload = json.loads(text)
            if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
                text = str(payload["error"].get("message", text))
            elif isinstance(payload, dict) and isinstance(payload.get("error"), str):
                text = payload["error"]
        except (ValueError, UnicodeDecodeError):
            pass
        text = " ".join(text.split())
        if self._secret:
            text = text.replace(self._secret, "***")
        return f": {text[:QUOTE_CHARS]}" if text else ""
