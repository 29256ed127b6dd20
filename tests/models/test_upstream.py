"""The upstream model over real HTTP against a stand-in API (tests/upstream_server.py): order, batching,
concurrency, retries, every failure's error, and the vector cache."""

from __future__ import annotations

import email.utils
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from matryoshka.errors import InputError, UpstreamError
from matryoshka.models.upstream import UpstreamConfig, UpstreamModel
from matryoshka.models.upstream.cache import CACHE_FILE
from matryoshka.models.upstream.client import RETRY_AFTER_CAP_S, plan_batches, retry_after_seconds
from upstream_server import StandIn, vector_of

DIM = 24
TEXTS = [f"text number {i} about {'cats' if i % 2 else 'stars'}" for i in range(23)]


@pytest.fixture(scope="module")
def server():
    with StandIn(dim=DIM) as api:
        yield api


@pytest.fixture
def api(server):
    server.reset()
    yield server
    server.reset()


def config(api: StandIn, **changes) -> UpstreamConfig:
    base = UpstreamConfig(api.url, api.model, batch_size=4, concurrency=2, timeout=5.0, retries=1, cache_dir=None)
    return replace(base, **changes)


def expected(texts: list[str]) -> np.ndarray:
    return np.stack([vector_of(t, DIM) for t in texts])


def test_rows_come_back_in_input_order_with_each_distinct_text_sent_once(api):
    texts = [*TEXTS, TEXTS[3], TEXTS[0]]
    with UpstreamModel(config(api)) as model:
        vectors = model.encode(texts)
        assert vectors.dtype == np.float32 and vectors.shape == (len(texts), DIM)
        np.testing.assert_allclose(vectors, expected(texts), atol=1e-7)
        sent = [t for batch in api.inputs for t in batch]
        assert sorted(sent) == sorted(TEXTS)  # the repeats were not paid for twice
        assert model.stats.calls == api.calls == -(-len(TEXTS) // 4) and model.stats.texts == len(TEXTS)
        assert all(body["model"] == api.model and body["encoding_format"] == "base64" for body in api.bodies)
        single = model.encode(TEXTS[5])
        assert single.shape == (DIM,)
        np.testing.assert_allclose(single, vector_of(TEXTS[5], DIM), atol=1e-7)


def test_rows_are_put_back_by_index_when_the_upstream_answers_out_of_order(api):
    api.misbehave("reversed")
    with UpstreamModel(config(api, batch_size=8)) as model:
        np.testing.assert_allclose(model.encode(TEXTS[:8]), expected(TEXTS[:8]), atol=1e-7)


def test_calls_respect_the_input_and_character_limits():
    texts = ["x" * 30, "y" * 30, "z" * 30, "short", "w" * 100, "v" * 10]
    assert plan_batches(texts, batch_size=10, max_chars=70) == [[0, 1], [2, 3], [4], [5]]
    assert plan_batches(texts, batch_size=2, max_chars=1000) == [[0, 1], [2, 3], [4, 5]]
    assert plan_batches([], 4, 10) == []


def test_the_upstream_sees_only_calls_within_its_limits(api):
    texts = [f"{i} " + "word " * (i % 7) for i in range(40)]
    with UpstreamModel(config(api, batch_size=5, max_chars=60)) as model:
        np.testing.assert_allclose(model.encode(texts), expected(texts), atol=1e-7)
    assert max(len(batch) for batch in api.inputs) <= 5
    assert max(sum(map(len, batch)) for batch in api.inputs) <= 60
    assert sorted(t for batch in api.inputs for t in batch) == sorted(texts)


def test_calls_run_concurrently_up_to_the_bound(api):
    api.misbehave("slow", delay=0.3)
    with UpstreamModel(config(api, batch_size=1, concurrency=3)) as model:
        started = time.perf_counter()
        model.encode(TEXTS[:9])
        elapsed = time.perf_counter() - started
    assert api.peak_in_flight == 3
    assert elapsed < 9 * 0.3 / 2  # three at a time: about a third of the serial time


def test_a_429_with_retry_after_is_waited_out(api):
    api.misbehave("429", times=1, retry_after="1")
    with UpstreamModel(config(api, retries=2)) as model:
        started = time.perf_counter()
        vectors = model.encode(TEXTS[:3])
        assert time.perf_counter() - started >= 1.0
        assert model.stats.calls == 2 and model.stats.retries == 1
    np.testing.assert_allclose(vectors, expected(TEXTS[:3]), atol=1e-7)


def test_retry_after_reads_seconds_and_dates_and_is_capped():
    now = time.time()
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(email.utils.formatdate(now + 10, usegmt=True), now=now) == pytest.approx(10, abs=1)
    assert retry_after_seconds(str(10 * RETRY_AFTER_CAP_S)) == RETRY_AFTER_CAP_S
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


FAILURES = [
    # mode, times, HTTP status it maps to, words of the message, calls made with retries=1
    ("429", None, 503, "429", 2),
    ("500", None, 502, "answered 500: upstream exploded", 2),
    ("slow", None, 504, "timed out after 0.5s", 2),
    ("fewer", None, 502, "3 embeddings for 4 inputs", 1),
    ("malformed", None, 502, "not JSON", 1),
    ("no_data", None, 502, "no 'data' list", 1),
    ("ragged", None, 502, "different sizes", 1),
    ("nan", None, 502, "NaN", 1),
    ("401", None, 502, "refused the call with 401 (check --upstream-key-env): invalid api key", 1),
    ("drop", None, 502, "broke off its answer", 2),
]


@pytest.mark.parametrize(("mode", "times", "status", "words", "calls"), FAILURES, ids=[f[0] for f in FAILURES])
def test_every_failure_is_a_clear_upstream_error_and_nothing_is_cached(api, tmp_path, mode, times, status, words, calls):
    api.misbehave(mode, times=times, delay=2.0)
    with UpstreamModel(config(api, timeout=0.5, cache_dir=tmp_path)) as model:
        with pytest.raises(UpstreamError) as caught:
            model.encode(TEXTS[:4])
        assert caught.value.status == status
        assert words in str(caught.value) and api.url in str(caught.value)
        assert "\n" not in str(caught.value)
        assert api.calls == calls == model.stats.calls
        assert len(model.cache) == 0  # type: ignore[arg-type]
        api.reset()
        np.testing.assert_allclose(model.encode(TEXTS[:4]), expected(TEXTS[:4]), atol=1e-7)
        assert api.calls == 1  # nothing was served from a cache of the failed call


def test_vectors_of_another_size_than_before_are_refused(api):
    with UpstreamModel(config(api)) as model:
        model.encode(TEXTS[:2])
        api.misbehave("wrong_dim")
        with pytest.raises(UpstreamError, match=rf"{DIM + 1}-d vectors, expected {DIM}-d") as caught:
            model.encode(TEXTS[2:4])
        assert caught.value.status == 502


def test_a_cached_size_is_required_of_the_upstream_too(api, tmp_path):
    with UpstreamModel(config(api, cache_dir=tmp_path)) as model:
        model.encode(TEXTS[:2])
    api.misbehave("wrong_dim")
    with UpstreamModel(config(api, cache_dir=tmp_path)) as model, pytest.raises(UpstreamError) as caught:
        model.encode(TEXTS[2:4])
    assert f"expected {DIM}-d (the size cached in {tmp_path}" in str(caught.value) and "--no-cache" in str(caught.value)


def test_an_unreachable_upstream_is_a_503(api):
    with StandIn(dim=DIM) as gone:
        url = gone.url
    with UpstreamModel(replace(config(api), url=url, retries=0)) as model, pytest.raises(UpstreamError) as caught:
        model.encode(["anything"])
    assert caught.value.status == 503 and "cannot be reached" in str(caught.value)


def test_a_failed_call_stops_the_others_and_keeps_what_was_answered(api, tmp_path):
    api.misbehave("500", after=2)
    with UpstreamModel(config(api, batch_size=2, concurrency=1, retries=0, cache_dir=tmp_path)) as model:
        with pytest.raises(UpstreamError):
            model.encode(TEXTS[:12])
        assert api.calls == 3  # two answered, the third failed, the other three never sent
        cache = model.cache
        assert cache is not None and len(cache) == 4
        answered = {t for batch in api.inputs[:2] for t in batch}
        assert set(cache.get([_key(t) for t in answered])) == {_key(t) for t in answered}


def _key(text: str) -> bytes:
    from matryoshka.models.upstream.cache import text_key

    return text_key(text)


def test_the_cache_answers_a_second_model_with_no_calls(api, tmp_path):
    with UpstreamModel(config(api, cache_dir=tmp_path)) as first:
        first.encode(TEXTS)
        assert first.stats.cache_misses == len(TEXTS) and first.stats.cache_hits == 0
    calls = api.calls
    with UpstreamModel(config(api, cache_dir=tmp_path)) as second:
        assert second.get_embedding_dimension() == DIM  # from the cache: no probe call
        np.testing.assert_allclose(second.encode(TEXTS[::-1]), expected(TEXTS[::-1]), atol=1e-7)
        assert api.calls == calls and second.stats.calls == 0
        assert second.stats.cache_hits == len(TEXTS) and second.stats.hit_rate == 1.0
    with UpstreamModel(config(api, cache_dir=None)) as uncached:
        uncached.encode(TEXTS)
        assert uncached.stats.calls > 0 and uncached.stats.hit_rate is None


def test_an_upstream_that_knows_only_floats_is_asked_for_floats(api):
    """base64 first (smaller answers, no float parsing); a 422 for it switches the client to floats for good."""
    api.misbehave("floats_only")
    with UpstreamModel(config(api)) as model:
        np.testing.assert_allclose(model.encode(TEXTS), expected(TEXTS), atol=1e-7)
        formats = [body["encoding_format"] for body in api.bodies]
        refused = formats.count("base64")  # the calls already in flight (concurrency 2) when the first was refused
        assert formats[0] == "base64" and 1 <= refused <= 2 and formats.count("float") == -(-len(TEXTS) // 4)
        assert model.stats.texts == len(TEXTS)
        api.reset()
        model.encode(["one more"])
        assert [body["encoding_format"] for body in api.bodies] == ["float"]


def test_repeated_texts_are_remembered_in_memory_within_its_bound(api, tmp_path):
    """``remembered`` answers only when every text is held in memory, and never calls or reads the file."""
    from matryoshka.models.upstream.cache import VectorCache, text_key

    with UpstreamModel(config(api, cache_dir=tmp_path)) as model:
        assert model.remembered(TEXTS[:3]) is None
        model.encode(TEXTS[:3])
        calls = api.calls
        np.testing.assert_allclose(model.remembered([TEXTS[2], TEXTS[0]]), expected([TEXTS[2], TEXTS[0]]), atol=1e-7)
        assert model.remembered([TEXTS[0], TEXTS[5]]) is None and api.calls == calls
    with UpstreamModel(config(api, cache_dir=tmp_path)) as reopened:  # a new process's memory starts empty
        assert reopened.remembered(TEXTS[:3]) is None
        reopened.encode(TEXTS[:3])  # read from the file, then held
        assert reopened.remembered(TEXTS[:3]) is not None and api.calls == calls
    small = VectorCache(tmp_path / "small", "label", memory_bytes=2 * DIM * 4)  # room for two rows
    keys = [text_key(t) for t in TEXTS[:3]]
    small.put(zip(keys, expected(TEXTS[:3])), DIM)
    assert small.remembered(keys[:1]) is None and small.remembered(keys[1:]) is not None
    rows = small.remembered(keys[1:])
    assert rows is not None and not rows[0].flags.writeable  # callers cannot change what others get
    assert sorted(small.get(keys)) == sorted(keys)  # the file still has all three
    small.close()


def test_another_upstream_model_does_not_share_cached_vectors(api, tmp_path):
    with UpstreamModel(config(api, cache_dir=tmp_path)) as first:
        first.encode(TEXTS[:4])
    with UpstreamModel(config(api, model="another", cache_dir=tmp_path)) as other:
        other.encode(TEXTS[:4])
        assert other.stats.cache_hits == 0 and other.stats.calls == 1


def test_the_dimension_is_asked_once(api):
    with UpstreamModel(config(api)) as model:
        assert model.get_embedding_dimension() == DIM
        assert model.get_embedding_dimension() == DIM
        assert api.calls == 1
        assert model.encode([]).shape == (0, DIM)


def test_two_processes_share_one_cache(api, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from matryoshka.models.upstream import UpstreamConfig, UpstreamModel
        texts = [f"shared text {{i}}" for i in range(int(sys.argv[1]), int(sys.argv[1]) + 300)]
        config = UpstreamConfig({api.url!r}, {api.model!r}, batch_size=3, concurrency=2, cache_dir={str(tmp_path)!r})
        with UpstreamModel(config) as model:
            model.encode(texts)
    """)
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    runs = [subprocess.Popen([sys.executable, "-c", script, str(start)], env=env, stderr=subprocess.PIPE, text=True)
            for start in (0, 150)]
    for run in runs:
        assert run.wait(timeout=120) == 0, run.stderr.read() if run.stderr else ""
    texts = [f"shared text {i}" for i in range(450)]
    with UpstreamModel(config(api, cache_dir=tmp_path)) as model:
        calls = api.calls
        np.testing.assert_allclose(model.encode(texts), expected(texts), atol=1e-7)
        assert api.calls == calls and model.stats.cache_hits == 450


def test_normalize_and_the_options_an_api_has_not(api):
    with UpstreamModel(config(api)) as model:
        rows = model.encode(TEXTS[:3], normalize_embeddings=True)
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
        with pytest.raises(InputError, match="no prompts"):
            model.encode(TEXTS[:3], prompt_name="query")
        with pytest.raises(InputError, match="strings"):
            model.encode(["ok", 3])  # type: ignore[list-item]


def test_bad_settings_are_input_errors(api, monkeypatch):
    monkeypatch.delenv("MISSING_UPSTREAM_KEY", raising=False)
    with pytest.raises(InputError, match="MISSING_UPSTREAM_KEY"):
        UpstreamModel(config(api, key_env="MISSING_UPSTREAM_KEY"))
    with pytest.raises(InputError, match="http"):
        UpstreamModel(config(api, url="ftp://example.com/v1"))
    with pytest.raises(InputError, match="batch_size"):
        UpstreamModel(config(api, batch_size=0))


def test_a_corrupt_cache_file_is_a_clear_error(api, tmp_path):
    (tmp_path / CACHE_FILE).write_bytes(b"not a database at all" * 100)
    with pytest.raises(InputError, match="not a usable vector cache"):
        UpstreamModel(config(api, cache_dir=tmp_path))


def test_load_model_and_encode_take_an_upstream(api):
    from matryoshka import encode
    from matryoshka.embeddings.vectors import truncate
    from matryoshka.models.loading import load_model, model_dimension

    model = load_model(upstream=config(api))
    try:
        assert isinstance(model, UpstreamModel) and model_dimension(model) == DIM
        np.testing.assert_allclose(encode(model, TEXTS[:5], dim=8), truncate(expected(TEXTS[:5]), 8), atol=1e-6)
        assert encode(model, TEXTS[:5], dim=16, precision="binary").shape == (5, 2)
    finally:
        model.close()
    with pytest.raises(InputError, match="takes no backend, layers"):
        load_model(backend="onnx", layers=2, upstream=config(api))  # type: ignore[call-overload]


def test_cache_files_hold_no_text_url_or_model_name(api, tmp_path):
    with UpstreamModel(config(api, cache_dir=tmp_path)) as model:
        model.encode(TEXTS)
    blob = b"".join(path.read_bytes() for path in Path(tmp_path).iterdir())
    for needle in (TEXTS[0], api.url, api.model, "127.0.0.1"):
        assert needle.encode() not in blob
