"""Shared fixtures: offline hub, local data, one loaded default model per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_REPO = Path(__file__).resolve().parents[1]
if not os.environ.get("MATRYOSHKA_DATA"):
    for candidate in (_REPO.parent / "shared" / "data", _REPO / "shared" / "data"):
        if candidate.is_dir():
            os.environ["MATRYOSHKA_DATA"] = str(candidate)
            break

DATA_DIR = Path(os.environ["MATRYOSHKA_DATA"]) if os.environ.get("MATRYOSHKA_DATA") else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local data directory (``MATRYOSHKA_DATA``, default ``../shared/data``)."""
    if DATA_DIR is None or not DATA_DIR.is_dir():
        pytest.fail("set MATRYOSHKA_DATA to the shared data directory (e.g. ../shared/data)")
    return DATA_DIR


@pytest.fixture(scope="session")
def model():
    """The packaged all-MiniLM-L6-v2, loaded once."""
    from matryoshka.models import load_model

    return load_model(device="cpu")


from postgres_server import postgres_url  # noqa: E402, F401  (a real throw-away PostgreSQL server, one per session)
