"""A stand-in for an embeddings API (no tests here): a real HTTP server on a free port, in a thread, that
answers ``POST /v1/embeddings`` as OpenAI does, or misbehaves on purpose.

    with StandIn(dim=32) as api:
        api.misbehave("429", times=1, retry_after="1")   # the next call gets 429 + Retry-After: 1, then good ones
        ...  # call api.url ("http://127.0.0.1:PORT/v1")
        api.calls, api.inputs, api.authorizations          # what it was sent

Modes (each for ``times`` calls after ``after`` good ones, then good answers again; ``times=None``: until
changed):
``ok``, ``429`` (with ``retry_after``), ``500``, ``401``, ``slow`` (answers after ``delay`` seconds),
``wrong_dim`` (vectors ``dim + 1`` wide), ``ragged`` (one row shorter), ``fewer`` (one embedding
fewer than inputs), ``malformed`` (a body that is not JSON), ``no_data`` (JSON without ``data``),
``nan`` (a NaN in a vector), ``reversed`` (rows in reverse order, with their indexes), ``echo_key``
(a 401 whose message repeats the Authorization header it got), ``drop`` (closes the connection),
``floats_only`` (a 422 for ``encoding_format: base64``, as a server that knows only floats; good floats otherwise).
Good answers follow the request's ``encoding_format`` (``float``, the default, or ``base64``), as OpenAI's do.
Good vectors are a function of the text alone (:func:`vector_of`), so any test can compute them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

__all__ = ["MODES", "StandIn", "vector_of"]

MODES = ("ok", "429", "500", "401", "slow", "wrong_dim", "ragged", "fewer", "malformed", "no_data", "nan",
         "reversed", "echo_key", "drop", "floats_only")


def vector_of(text: str, dim: int) -> np.ndarray:
    """The unit float32 vector the stand-in gives ``text``: seeded by the text's SHA-256."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


@dataclass
class _Plan:
    mode: str = "ok"
    after: int = 0
    times: int | None = None
    retry_after: str | None = None
    delay: float = 0.0


class StandIn:
    """The stand-in server; see the module docstring. ``max_inputs`` answers 413 to larger calls."""

    def __init__(self, dim: int = 32, model: str = "stand-in", max_inputs: int | None = None) -> None:
        self.dim, self.model, self.max_inputs = dim, model, max_inputs
        self.calls = 0
        self.inputs: list[list[str]] = []
        self.authorizations: list[str | None] = []
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = self.peak_in_flight = 0
        self._plan = _Plan()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def misbehave(self, mode: str, times: int | None = None, retry_after: str | None = None, delay: float = 0.0,
                  after: int = 0) -> None:
        """Answer ``after`` calls well, then the next ``times`` calls (all, with ``None``) in ``mode``."""
        assert mode in MODES, mode
        with self._lock:
            self._plan = _Plan(mode, after, times, retry_after, delay)

    def reset(self) -> None:
        """Good answers, and forget what was sent."""
        with self._lock:
            self._plan = _Plan()
            self.calls = 0
            self.inputs.clear()
            self.authorizations.clear()
            self.bodies.clear()
            self.peak_in_flight = 0

    @property
    def texts(self) -> int:
        """Texts received over all calls."""
        return sum(len(batch) for batch in self.inputs)

    def _next_mode(self) -> _Plan:
        with self._lock:
            plan = self._plan
            if plan.after > 0:
                plan.after -= 1
                return _Plan()
            if plan.times is not None:
                plan.times -= 1
                if plan.times <= 0:
                    self._plan = _Plan()
            return plan

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: no delayed-ACK wait between

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                body = json.loads(raw)
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                with stand_in._lock:
                    stand_in.calls += 1
                    stand_in.inputs.append(list(texts))
                    stand_in.authorizations.append(self.headers.get("Authorization"))
                    stand_in.bodies.append(body)
                    stand_in.in_flight += 1
                    stand_in.peak_in_flight = max(stand_in.peak_in_flight, stand_in.in_flight)
                plan = stand_in._next_mode()
                try:
                    if self.path != "/v1/embeddings":
                        return self._send(404, {"error": {"message": f"no route {self.path}"}})
                    if stand_in.max_inputs is not None and len(texts) > stand_in.max_inputs:
                        return self._send(413, {"error": {"message": f"at most {stand_in.max_inputs} inputs"}})
                    self._answer(plan, texts, body.get("encoding_format", "float"))
                finally:
                    with stand_in._lock:
                        stand_in.in_flight -= 1

            def _answer(self, plan: _Plan, texts: list[str], fmt: str) -> None:
                mode, dim = plan.mode, stand_in.dim
                if mode == "floats_only" and fmt != "float":
                    return self._send(422, {"error": {"message": f"encoding_format {fmt!r} is not supported"}})
                if mode == "429":
                    headers = {"Retry-After": plan.retry_after} if plan.retry_after is not None else {}
                    return self._send(429, {"error": {"message": "rate limited"}}, headers)
                if mode == "500":
                    return self._send(500, {"error": {"message": "upstream exploded"}})
                if mode == "401":
                    return self._send(401, {"error": {"message": "invalid api key"}})
                if mode == "echo_key":
                    return self._send(401, {"error": {"message": f"bad key: {self.headers.get('Authorization')}"}})
                if mode == "malformed":
                    return self._send_raw(200, b'{"data": [ {"embedding": [0.1, 0.2,', "application/json")
                if mode == "no_data":
                    return self._send(200, {"object": "list", "results": []})
                if mode == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                if mode == "slow":
                    time.sleep(plan.delay)
                rows = [vector_of(text, dim + (1 if mode == "wrong_dim" else 0)).tolist() for text in texts]
                if mode == "ragged" and rows:
                    rows[-1] = rows[-1][:-1]
                if mode == "nan" and rows:
                    rows[0][0] = float("nan")
                if fmt == "base64":
                    rows = [base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode() for row in rows]
                data = [{"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(rows)]
                if mode == "fewer":
                    data = data[:-1]
                if mode == "reversed":
                    data = data[::-1]
                self._send(200, {"object": "list", "data": data, "model": stand_in.model,
                                 "usage": {"prompt_tokens": 0, "total_tokens": 0}})

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_raw(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

        return Handler
