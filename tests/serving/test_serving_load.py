"""Behaviour under load and faults, against a real uvicorn server on 127.0.0.1: fair scheduling, a bounded
queue, header/body/keep-alive deadlines, and client hang-ups logged as 499, not as 500.

No test asserts a wall-clock time: they check the order things happen in and what the server answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import httpx
import pytest
import torch

from matryoshka.serving import ServeConfig, ServerThread, create_app

torch.set_num_threads(1)

NAME = "all-MiniLM-L6-v2"


def words(i: int) -> str:
    return f"text number {i} about nesting dolls and their painted faces"


@pytest.fixture(scope="module")
def server(model):
    config = ServeConfig(
        models=[NAME],
        max_inputs=512,
        batch_max_texts=16,
        max_queued_texts=1100,
        timeout_header_s=1.0,
        timeout_body_s=1.0,
        timeout_keep_alive_s=1.0,
    )
    with ServerThread(create_app(config, models={NAME: model})) as running:
        yield running


def health(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=30).json()["batches"][NAME]


def test_small_request_does_not_wait_for_a_large_one(server):
    """2 x 512 texts in flight, then a 1-text request: it is answered while the large ones still run,
    and no model call holds more than ``batch_max_texts`` texts."""
    finished: list[str] = []

    async def main() -> tuple[httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:

            async def large(tag: str) -> httpx.Response:
                response = await http.post("/v1/embeddings", json={"input": [words(i) for i in range(512)]})
                finished.append(tag)
                return response

            big = [asyncio.create_task(large("large")) for _ in range(2)]
            calls_before = health(server)["calls"]
            while (await http.get("/health")).json()["batches"][NAME]["calls"] < calls_before + 2:
                await asyncio.sleep(0.05)  # the large requests are being worked through now
            small = await http.post("/v1/embeddings", json={"input": "hi", "dimensions": 8})
            finished.append("small")
            return small, await asyncio.gather(*big)

    small, big = asyncio.run(main())
    assert small.status_code == 200 and len(small.json()["data"][0]["embedding"]) == 8
    assert all(r.status_code == 200 and len(r.json()["data"]) == 512 for r in big)
    assert finished[0] == "small", finished
    stats = health(server)
    assert 0 < stats["largest_batch"] <= 16


def test_full_queue_answers_429_with_retry_after_at_once(server):
    async def main() -> tuple[httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
            body = {"input": [words(i) for i in range(512)]}
            first = [asyncio.create_task(http.post("/v1/embeddings", json=body)) for _ in range(2)]
            while (await http.get("/health")).json()["batches"][NAME]["queued_texts"] <= 700:
                await asyncio.sleep(0.02)
            refused = await http.post("/v1/embeddings", json={"input": [words(i) for i in range(400)]})
            return refused, await asyncio.gather(*first)

    refused, done = asyncio.run(main())
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    assert all(r.status_code == 200 for r in done)  # the queued work is unharmed
    assert health(server)["rejected"] >= 1


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket timeout turns a hang into a failure)."""
    sock.settimeout(30)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_partial_headers_get_408_and_a_closed_connection(server):
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_trickled_headers_are_cut_off(server):
    """A slowloris client sends one header byte every 0.1 s; the deadline is for all headers, not each read."""
    header = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 300
    closed_after = None
    with socket.create_connection((server.host, server.port)) as sock:
        for sent, byte in enumerate(header):
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_after = sent
                break
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                if sock.recv(65536) is not None:
                    closed_after = sent
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
    assert closed_after is not None and closed_after < len(header), "the trickling client was never cut off"


def test_partial_body_gets_408_and_is_not_a_500(server, caplog):
    caplog.set_level(logging.INFO, logger="matryoshka.serving")
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"input\": "
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_timeout"
    time.sleep(0.1)
    statuses = [r.status for r in caplog.records if getattr(r, "event", None) == "request"]
    assert 408 in statuses and 500 not in statuses


@pytest.mark.parametrize("how", ["partial body then close", "body shorter than content-length"])
def test_client_hang_up_is_logged_as_499(server, caplog, how):
    caplog.set_level(logging.INFO, logger="matryoshka.serving")
    with socket.create_connection((server.host, server.port)) as sock:
        head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        if how == "partial body then close":
            sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"inp\r\n")
        else:
            sock.sendall(head + b"Content-Length: 500\r\n\r\n{\"input\": \"short\"}")
        time.sleep(0.2)
    deadline = time.monotonic() + 20
    records = []
    while time.monotonic() < deadline and not records:
        records = [r for r in caplog.records if getattr(r, "event", None) == "request" and r.status != 200]
        time.sleep(0.05)
    assert records, "no log line for the hung-up request"
    assert records[-1].status == 499 and getattr(records[-1], "client_closed", False) is True
    assert all(r.status != 500 for r in caplog.records if getattr(r, "event", None) == "request")


def test_idle_keep_alive_connection_is_closed(server):
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(sock)  # returns only because the server closes the idle connection
    assert answer.startswith(b"HTTP/1.1 200")


def test_many_slow_connections_are_all_closed(server):
    """50 connections that send half their headers are all closed by the server; it still answers after."""
    socks = [socket.create_connection((server.host, server.port)) for _ in range(50)]
    results: list[bytes] = [b""] * len(socks)

    def drain(i: int) -> None:
        results[i] = read_until_closed(socks[i])

    for sock in socks:
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
    threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(socks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for sock in socks:
        sock.close()
    assert all(r.startswith(b"HTTP/1.1 408") for r in results)
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200


def test_queue_must_hold_the_largest_request():
    with pytest.raises(ValueError, match="max_queued_texts"):
        ServeConfig(max_inputs=2048, max_queued_texts=100)


def test_a_client_that_hangs_up_while_queued_frees_the_model(server, caplog):
    """A 512-text request whose client goes away right after sending it is taken off the queue (logged 499)."""
    caplog.set_level(logging.INFO, logger="matryoshka.serving")
    before = health(server)["texts"]
    body = json.dumps({"input": [words(i) for i in range(512)]}).encode()
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        deadline = time.monotonic() + 60
        while health(server)["texts"] == before and time.monotonic() < deadline:
            time.sleep(0.02)  # its first slice is in the model
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(getattr(r, "status", None) == 499 for r in caplog.records):
        time.sleep(0.05)
    time.sleep(0.5)  # let a slice in progress finish
    assert any(getattr(r, "status", None) == 499 and r.client_closed for r in caplog.records)
    assert health(server)["queued_texts"] == 0
    assert health(server)["texts"] - before < 512  # the rest never ran


def test_the_header_deadline_rides_on_either_parser():
    """httptools (C) when installed, as it is with this package; h11 on request. Both carry the deadline."""
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from matryoshka.serving.http.header_deadline import HeaderDeadline, header_timeout_protocol

    auto, h11 = header_timeout_protocol(2.5), header_timeout_protocol(1.0, parser="h11")
    assert issubclass(auto, HttpToolsProtocol) and issubclass(auto, HeaderDeadline) and auto.header_timeout == 2.5
    assert issubclass(h11, H11Protocol) and issubclass(h11, HeaderDeadline) and h11.header_timeout == 1.0
