"""Saves that only append: rows streamed into vectors.bin while they are ingested, and every way that can end."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from matryoshka.indexes.faiss import FunnelIndex
from matryoshka.indexes.faiss.store import directory, layout, read_manifest, tails
from matryoshka.retrieval import IndexCorruptError

DIM = 16


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def inode(path: Path) -> int:
    return (path / "vectors.bin").stat().st_ino


def check_against_manifest(path: Path) -> None:
    """Every chunk checksum in the manifest is the sha256 of that piece of the file."""
    meta = read_manifest(path)["files"]["vectors.bin"]
    data = (path / "vectors.bin").read_bytes()[: meta["bytes"]]
    size = meta["chunk_bytes"]
    assert meta["sha256_chunks"] == [hashlib.sha256(data[i : i + size]).hexdigest() for i in range(0, len(data), size)]


@pytest.fixture(autouse=True, params=["direct", "buffered"])
def tail(request, monkeypatch) -> str:
    """Every test runs with both writers: O_DIRECT blocks (small, so blocks split rows and appends) and the page cache."""
    monkeypatch.setattr(tails, "DIRECT_IO", request.param == "direct" and tails.DIRECT_IO)
    monkeypatch.setattr(tails, "_DIRECT_BYTES", 2 * tails._DIRECT_ALIGN)
    return request.param


def direct_io_works(folder: Path) -> bool:
    probe = folder / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
    except OSError:
        return False
    return True


def test_the_log_writes_with_o_direct_where_the_file_system_allows(tmp_path: Path, tail: str) -> None:
    if not (hasattr(os, "O_DIRECT") and direct_io_works(tmp_path)):
        pytest.skip("no O_DIRECT on this platform or file system")
    index = FunnelIndex.open(tmp_path / "ix", dim=DIM, checkpoint_seconds=None)
    data = rows(3000, 40)  # 3000 x 64 bytes: 23 direct blocks of 8 KiB and a partial one
    for start in range(0, 3000, 333):
        index.upsert([str(i) for i in range(start, min(start + 333, 3000))], data[start : start + 333])
        if start == 999:
            index.flush()  # a sync in the middle of a block: padded, cut back, rewritten by the next write
            assert (tmp_path / "ix" / "vectors.bin").stat().st_size == 1332 * DIM * 4
    assert isinstance(index._checkpoints.log._tail, tails.DirectTail if tail == "direct" else tails.BufferedTail)
    index.close()
    check_against_manifest(tmp_path / "ix")
    assert (tmp_path / "ix" / "vectors.bin").stat().st_size == 3000 * DIM * 4
    np.testing.assert_allclose(FunnelIndex.load(tmp_path / "ix")._vectors, unit(data), rtol=1e-6)


def test_a_file_system_that_refuses_o_direct_gets_page_cache_writes(tmp_path: Path, monkeypatch) -> None:
    def refuse(*args: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument (simulated: no O_DIRECT here)")

    monkeypatch.setattr(tails, "DirectTail", refuse)
    index = FunnelIndex.open(tmp_path / "ix", dim=DIM, checkpoint_seconds=None)
    index.upsert(["a"], rows(1, 41))
    index.flush()
    index.upsert(["b", "c"], rows(2, 42))
    assert isinstance(index._checkpoints.log._tail, tails.BufferedTail)
    index.close()
    check_against_manifest(tmp_path / "ix")
    assert FunnelIndex.load(tmp_path / "ix").ids == ["a", "b", "c"]


@pytest.fixture(params=[layout.CHUNK_BYTES, 1000], ids=["64MiB-chunks", "1000-byte-chunks"])
def chunk(request, monkeypatch) -> int:
    """Small chunks put chunk boundaries inside rows and inside appends."""
    monkeypatch.setattr(layout, "CHUNK_BYTES", request.param)
    monkeypatch.setattr(tails, "_SYNC_BYTES", 700)
    return request.param


def test_appends_extend_one_file_across_saves_and_reopens(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "ix"
    data = rows(300, 0)
    index = FunnelIndex.open(path, dim=DIM, checkpoint_seconds=None)
    first = inode(path)
    for start in range(0, 100, 7):
        index.upsert([str(i) for i in range(start, min(start + 7, 100))], data[start : min(start + 7, 100)])
    index.flush()
    assert index._checkpoints.log is not None and inode(path) == first  # linked into the new directory, not written again
    check_against_manifest(path)
    index.upsert([str(i) for i in range(100, 200)], data[100:200])
    index.close()
    assert index._checkpoints.log is None and inode(path) == first
    check_against_manifest(path)
    reopened = FunnelIndex.open(path, checkpoint_vectors=50)  # count checkpoints while streaming
    for start in range(200, 300, 10):
        reopened.upsert([str(i) for i in range(start, start + 10)], data[start : start + 10])
    reopened.close()
    assert inode(path) == first
    check_against_manifest(path)
    for mmap in (False, True):
        loaded = FunnelIndex.load(path, mmap=mmap)
        assert loaded.ids == [str(i) for i in range(300)]
        np.testing.assert_allclose(loaded._vectors, unit(data), rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]


def test_delete_and_replace_write_a_new_file_then_stream_again(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "ix"
    data = rows(60, 1)
    index = FunnelIndex.open(path, dim=DIM, checkpoint_seconds=None)
    index.upsert([str(i) for i in range(40)], data[:40])
    index.flush()
    first = inode(path)
    index.delete(["3"])
    index.upsert(["5"], data[40:41])  # replaces id 5: it moves to the end
    index.flush()
    assert inode(path) != first
    second = inode(path)
    index.upsert([str(i) for i in range(41, 60)], data[41:60])
    index.close()
    assert inode(path) == second
    check_against_manifest(path)
    loaded = FunnelIndex.load(path)
    expected = [str(i) for i in range(40) if i not in (3, 5)] + ["5"] + [str(i) for i in range(41, 60)]
    assert loaded.ids == expected
    np.testing.assert_allclose(loaded._vectors[-20], unit(data[40:41])[0], rtol=1e-6)


def test_clear_then_append(tmp_path: Path) -> None:
    path = tmp_path / "ix"
    index = FunnelIndex.open(path, dim=DIM)
    index.upsert(["a", "b"], rows(2, 2))
    index.flush()
    index.clear()
    index.upsert(["c"], rows(1, 3))
    index.close()
    assert FunnelIndex.load(path).ids == ["c"]


def test_killed_while_streaming_leaves_the_last_save(tmp_path: Path) -> None:
    """kill -9 a writer after its rows reached the file but before a save listed them."""
    path = tmp_path / "ix"
    code = f"""
import numpy as np, time
from matryoshka.indexes.faiss import FunnelIndex
index = FunnelIndex.open({str(path)!r}, dim={DIM}, checkpoint_seconds=None)
data = np.random.default_rng(4).standard_normal((500, {DIM})).astype(np.float32)
index.upsert([str(i) for i in range(100)], data[:100])
index.flush()
index.upsert([str(i) for i in range(100, 500)], data[100:])
index._checkpoints.log.mark().wait()  # the streamed rows are on disk
print("streamed", flush=True)
time.sleep(120)
"""
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "streamed"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert (path / "vectors.bin").stat().st_size == 500 * DIM * 4  # the tail is there...
    loaded = FunnelIndex.load(path)  # ...and is no part of the index
    assert loaded.ids == [str(i) for i in range(100)]
    index = FunnelIndex.open(path)  # the next writer cuts the tail and appends after the committed rows
    index.upsert(["x", "y"], rows(2, 5))
    index.close()
    assert (path / "vectors.bin").stat().st_size == 102 * DIM * 4
    check_against_manifest(path)
    assert FunnelIndex.load(path).ids == [*(str(i) for i in range(100)), "x", "y"]


def test_crash_in_an_appending_save_leaves_the_old_index(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ix"
    index = FunnelIndex.open(path, dim=DIM, checkpoint_seconds=None)
    index.upsert([str(i) for i in range(30)], rows(30, 6))
    index.flush()
    before = FunnelIndex.load(path)
    index.upsert(["late"], rows(1, 7))

    def killed(staging: Path, target: Path) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(directory, "_commit", killed)
    with pytest.raises(SystemExit):
        index.flush()
    monkeypatch.undo()
    assert FunnelIndex.load(path).ids == before.ids  # the appended byte count is not listed anywhere
    np.testing.assert_array_equal(FunnelIndex.load(path)._vectors, before._vectors)
    index.close()  # the next save commits it
    assert FunnelIndex.load(path).ids == [*before.ids, "late"]
    check_against_manifest(path)


def test_an_index_replaced_by_another_writer_is_not_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "ix"
    index = FunnelIndex.open(path, dim=DIM, checkpoint_seconds=None)
    index.upsert(["a"], rows(1, 8))
    index.flush()
    FunnelIndex.from_vectors(rows(5, 9), list("vwxyz")).save(path)  # someone else's save replaces it
    index.upsert(["b"], rows(1, 10))
    index.close()  # last writer wins, with a complete file of its own
    check_against_manifest(path)
    assert FunnelIndex.load(path).ids == ["a", "b"]


def test_a_second_writer_on_the_same_directory_writes_in_full(tmp_path: Path) -> None:
    path = tmp_path / "ix"
    first = FunnelIndex.open(path, dim=DIM, checkpoint_seconds=None)
    first.upsert(["a"], rows(1, 11))
    first.flush()
    second = FunnelIndex.open(path)
    second.upsert(["b"], rows(1, 12))  # the first holds the file's lock: no streaming here
    assert second._checkpoints.log is None and first._checkpoints.log is not None
    second.close()
    assert FunnelIndex.load(path).ids == ["a", "b"]
    first.upsert(["c"], rows(1, 13))
    first.close()  # its log's file was replaced: a full write
    check_against_manifest(path)
    assert FunnelIndex.load(path).ids == ["a", "c"]


def test_mapped_index_streams_appends(tmp_path: Path) -> None:
    path = tmp_path / "ix"
    FunnelIndex.from_vectors(rows(20, 14), [str(i) for i in range(20)]).save(path)
    index = FunnelIndex.open(path, mmap=True, checkpoint_seconds=None)
    assert isinstance(index._vectors, np.memmap)
    index.upsert(["new"], rows(1, 15))
    index.close()
    mapped = FunnelIndex.load(path, mmap=True)
    assert len(mapped) == 21 and mapped.search(unit(rows(1, 15)), k=1)[0][0].id == "new"


def test_save_elsewhere_leaves_the_log_alone(tmp_path: Path) -> None:
    path = tmp_path / "ix"
    index = FunnelIndex.open(path, dim=DIM, checkpoint_seconds=None)
    index.upsert(["a"], rows(1, 16))
    index.save(tmp_path / "copy")
    index.upsert(["b"], rows(1, 17))
    index.close()
    assert FunnelIndex.load(tmp_path / "copy").ids == ["a"]
    assert FunnelIndex.load(path).ids == ["a", "b"]
    assert inode(path) != inode(tmp_path / "copy")


@pytest.mark.parametrize("count", [1, 300], ids=["in-the-last-block", "in-full-blocks"])
def test_a_failed_stream_write_falls_back_to_a_full_save(tmp_path: Path, monkeypatch, count: int) -> None:
    """A write that fails (the last block at a sync, or full blocks on the direct writer's thread)."""
    path = tmp_path / "ix"
    index = FunnelIndex.open(path, dim=DIM, checkpoint_seconds=None)
    index.upsert(["a"], rows(1, 18))
    index.flush()
    monkeypatch.setattr(os, "pwrite", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left (simulated)")))
    added = [f"b{i}" for i in range(count)]
    index.upsert(added, rows(count, 19))
    assert index._checkpoints.log is not None
    index._checkpoints.log.mark().done.wait()
    monkeypatch.undo()
    index.flush()
    check_against_manifest(path)
    assert FunnelIndex.load(path).ids == ["a", *added]
    index.upsert(["c"], rows(1, 23))  # no more streaming from this index: its saves write in full
    assert index._checkpoints.log is None
    index.close()
    assert FunnelIndex.load(path).ids == ["a", *added, "c"]


def test_no_hard_links_falls_back_to_full_saves(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ix"
    index = FunnelIndex.open(path, dim=DIM, checkpoint_seconds=None)
    index.upsert(["a"], rows(1, 24))
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(1, "no links (simulated)")))
    index.flush()
    index.upsert(["b"], rows(1, 25))
    index.close()
    check_against_manifest(path)
    assert FunnelIndex.load(path).ids == ["a", "b"]


def test_edited_vector_entry_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "ix"
    index = FunnelIndex.open(path, dim=DIM)
    index.upsert(["a", "b"], rows(2, 20))
    index.close()
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["vectors.bin"]["sha256_chunks"] = ["0" * 64]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="vectors.bin does not match its sha256"):
        FunnelIndex.load(path)


def test_an_index_with_other_chunks_loads_and_is_rewritten(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ix"
    monkeypatch.setattr(layout, "CHUNK_BYTES", 100)
    FunnelIndex.from_vectors(rows(10, 21), [str(i) for i in range(10)]).save(path)
    monkeypatch.undo()
    index = FunnelIndex.open(path)
    assert len(index) == 10
    index.upsert(["x"], rows(1, 22))
    index.close()
    assert read_manifest(path)["files"]["vectors.bin"]["chunk_bytes"] == layout.CHUNK_BYTES
    check_against_manifest(path)
    assert len(FunnelIndex.load(path)) == 11
