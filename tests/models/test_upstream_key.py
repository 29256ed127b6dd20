"""The upstream's key goes to the upstream's Authorization header and nowhere else: not into log records
(every logger at DEBUG, httpx's and httpcore's too), errors, reprs, or any byte of the cache."""

from __future__ import annotations

import logging
import secrets

import pytest

from matryoshka.errors import UpstreamError
from matryoshka.models.upstream import UpstreamConfig, UpstreamModel
from upstream_server import StandIn

TEXTS = [f"a text about key handling, number {i}" for i in range(10)]


def test_the_key_reaches_the_upstream_and_nothing_else(tmp_path, monkeypatch, caplog):
    key = "sk-" + secrets.token_hex(16)
    monkeypatch.setenv("STAND_IN_KEY", key)
    caplog.set_level(logging.DEBUG)  # the root logger: every record of every library
    with StandIn(dim=16) as api:
        config = UpstreamConfig(api.url, api.model, key_env="STAND_IN_KEY", batch_size=3, retries=1,
                                cache_dir=tmp_path / "cache")
        seen: list[str] = [repr(config)]
        with UpstreamModel(config) as model:
            seen.append(repr(model))
            model.encode(TEXTS)
            api.misbehave("429", times=1, retry_after="0")  # a retry, logged
            model.encode(["one more text"])
            for mode in ("echo_key", "500", "malformed"):
                api.misbehave(mode)
                with pytest.raises(UpstreamError) as caught:
                    model.encode([f"fails in mode {mode}"])
                seen += [str(caught.value), repr(caught.value)]
            assert "***" in seen[-6]  # the echoed key was blotted out of the upstream's message
        assert set(api.authorizations) == {f"Bearer {key}"}
    records = [record.getMessage() for record in caplog.records]
    assert any("try 2 of 2" in line for line in records)  # the logs were captured, at every level
    files = sorted((tmp_path / "cache").iterdir())
    assert files, "the cache wrote nothing"
    for text in seen + records:
        assert key not in text, text
    for path in files:
        assert key.encode() not in path.read_bytes(), path


def test_no_key_variable_sends_no_authorization(tmp_path):
    with StandIn(dim=8) as api, UpstreamModel(UpstreamConfig(api.url, api.model, cache_dir=None)) as model:
        model.encode(["a text"])
        assert api.authorizations == [None]
