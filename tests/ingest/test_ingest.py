"""Ingestion (:mod:`matryoshka.ingest`): encoding a corpus with Ray Data into an index: same vectors as ``encode``, resume, refusals, a kill test.

One local Ray instance (2 CPUs, 200 MB object store, no dashboard, token auth off) serves the whole
module; the kill test's subprocesses join it by address, so killing one only ends its driver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from matryoshka.errors import InputError
from matryoshka.indexes.faiss.index import FunnelIndex
from matryoshka.ingest import encode_to_index
from matryoshka.ingest import stream as ingest

pytestmark = pytest.mark.ray

torch.set_num_threads(1)
N_DOCS = 40


class RecordingIndex(FunnelIndex):
    """The real in-memory index, noting the ids of every write call (to count batches)."""

    writes: list[list[str]]

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, texts=None, metadata=None) -> None:
        self.writes.append(list(ids))
        super().upsert(ids, vectors, texts, metadata)

    def row(self, doc_id: str) -> tuple[np.ndarray, str | None, dict | None]:
        """(stored vector, text, metadata) of one document."""
        position = self.ids.index(doc_id)
        texts = self._texts
        return self._vectors[position], texts[position] if texts else None, self.metadata(doc_id)


def recording(dim: int = 384, model_name: str = "") -> RecordingIndex:
    index = RecordingIndex.from_vectors(np.zeros((0, dim), np.float32), [], model_name=model_name)
    index.writes = []
    return index


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance shared by the module; yields its address for subprocesses to join."""
    import ray

    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture(scope="module")
def glosses(data_dir) -> tuple[list[str], list[str]]:
    """40 WordNet glosses: (ids, texts)."""
    from matryoshka.data.wordnet import load_glosses

    ids, texts = load_glosses(limit=N_DOCS)
    assert len(ids) == N_DOCS
    return ids, texts


def test_vectors_match_encode(ray_cluster, glosses, model):
    from matryoshka.embeddings.vectors import encode

    ids, texts = glosses
    backend = recording()
    docs = [(i, t, {"n": n}) for n, (i, t) in enumerate(zip(ids, texts))]
    report = encode_to_index(docs, backend, batch_size=8, write_batch=10, num_workers=2, show_progress=False)

    assert (report.total, report.skipped_existing, report.written, report.workers) == (N_DOCS, 0, N_DOCS, 2)
    assert sorted(len(w) for w in backend.writes) == [10, 10, 10, 10]
    expected = encode(model, texts)
    for n, doc_id in enumerate(ids):
        vector, text, meta = backend.row(doc_id)
        np.testing.assert_allclose(vector, expected[n], atol=1e-5, err_msg=doc_id)
        assert (text, meta) == (texts[n], {"n": n})


def test_resume_skips_existing_ids(ray_cluster, glosses):
    ids, texts = glosses
    backend = recording()
    done = ids[:30]
    marker = np.ones((len(done), 384), dtype=np.float32)
    backend.upsert(done, marker)
    backend.writes.clear()

    report = encode_to_index(list(zip(ids, texts)), backend, batch_size=4, write_batch=4, num_workers=1, show_progress=False)

    assert (report.total, report.skipped_existing, report.written, report.workers) == (N_DOCS, 30, 10, 1)
    written = [i for w in backend.writes for i in w]
    assert sorted(written) == sorted(ids[30:])  # each missing id written once, no existing id again
    assert max(len(w) for w in backend.writes) <= 4
    assert all(np.allclose(backend.row(i)[0], marker[0] / np.linalg.norm(marker[0])) for i in done)
    assert len(backend) == N_DOCS


def test_nothing_left_needs_no_ray(glosses, monkeypatch):
    ids, texts = glosses
    backend = recording()
    backend.upsert(ids, np.ones((len(ids), 384), dtype=np.float32))
    monkeypatch.setattr(ingest, "_run", lambda *a, **k: pytest.fail("Ray should not start"))
    report = encode_to_index(list(zip(ids, texts)), backend, show_progress=False)
    assert (report.skipped_existing, report.written, report.workers) == (N_DOCS, 0, 0)


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        ([], "empty"),
        ([("a", "one"), ("b", "two"), ("a", "three")], "duplicate document id 'a'"),
        ([("", "one")], "empty id"),
    ],
)
def test_bad_input_refused_before_encoding(docs, message, monkeypatch):
    monkeypatch.setattr(ingest, "_run", lambda *a, **k: pytest.fail("no encoding expected"))
    backend = recording()
    with pytest.raises(ValueError, match=message):
        encode_to_index(docs, backend, show_progress=False)
    assert backend.writes == []


def test_text_must_be_a_string():
    with pytest.raises(InputError, match="'a' has a int"):
        encode_to_index([("a", 3)], recording(), show_progress=False)


def test_dim_mismatch_refused_before_encoding(monkeypatch):
    monkeypatch.setattr(ingest, "_run", lambda *a, **k: pytest.fail("no encoding expected"))
    backend = recording(dim=128)
    with pytest.raises(ValueError, match="128-dimensional.*384-dimensional"):
        encode_to_index([("a", "one")], backend, show_progress=False)
    assert backend.writes == []


# --- the kill test -----------------------------------------------------------------------------------


CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from matryoshka.ingest import encode_to_index
from test_ingest import open_persistent

location, corpus, progress, address = sys.argv[1:5]


class Slow:
    # Delegates to a backend; after each upsert notes it in the progress file, then waits a second.

    def __init__(self, inner):
        self.inner = inner
        self.dim, self.model_name, self.url = inner.dim, inner.model_name, inner.url

    def upsert(self, ids, vectors, texts=None, metadata=None):
        self.inner.upsert(ids, vectors, texts, metadata)
        with open(progress, "a") as handle:
            handle.write(str(len(ids)) + chr(10))
        time.sleep(1.0)

    def __getattr__(self, name):
        return getattr(self.inner, name)


encode_to_index(corpus, Slow(open_persistent(location)), batch_size=5, write_batch=5,
                  ray_address=address, num_workers=1, show_progress=False)
"""


def open_persistent(location: str):
    """The kill test's index, opened the same way in the child and in the test: a ``faiss://`` directory
    saved at a checkpoint after every write (so each acknowledged write survives the kill)."""
    from matryoshka.indexes import open_index

    return open_index(location, dim=384, model_name="all-MiniLM-L6-v2", checkpoint_vectors=1)


@pytest.mark.slow
def test_killed_load_resumes_without_duplicates(ray_cluster, glosses, tmp_path, model):
    """A child process loads a corpus file 5 documents per write, a second apart, into a persistent
    backend on the shared Ray cluster and is SIGKILLed after its first write; a restarted load (here,
    in the test process) skips what was stored, writes the rest, and each id is stored exactly once."""
    from matryoshka.embeddings.vectors import encode

    ids, texts = glosses
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in zip(ids, texts)))
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent)))
    location = f"faiss://{tmp_path}/idx"
    progress = tmp_path / "progress.txt"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)

    child = subprocess.Popen(
        [sys.executable, str(script), location, str(corpus), str(progress), ray_cluster],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 900  # Ray workers run niced: a busy machine starves them
    while not (progress.exists() and progress.read_text().strip()):
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child ended or stalled before its first write:\n{child.communicate()[0][-3000:]}")
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL

    backend = open_persistent(location)
    stored_at_kill = set(backend.ids)
    backend.close()
    assert 0 < len(stored_at_kill) < N_DOCS

    # The restart: the same corpus file, the index by URL.
    report = encode_to_index(corpus, location, batch_size=8, write_batch=8, num_workers=1, show_progress=False)
    assert (report.total, report.skipped_existing) == (N_DOCS, len(stored_at_kill))
    assert report.written == N_DOCS - len(stored_at_kill)  # only what was missing was encoded again

    backend = open_persistent(location)
    try:
        assert sorted(backend.ids) == sorted(ids)  # every id, each exactly once
        hits = backend.search(encode(model, texts[:3]), k=1)
        assert [(h[0].id, h[0].text) for h in hits] == list(zip(ids[:3], texts[:3]))
    finally:
        backend.close()
