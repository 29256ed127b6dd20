"""Index directories: round trips, atomic replacement, and every way a directory can be damaged."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from matryoshka.indexes.faiss import FunnelIndex, store
from matryoshka.indexes.faiss.store import directory, layout, read_manifest
from matryoshka.retrieval import IndexCorruptError, Stage, parse_stages

FUNNEL = parse_stages("8:float32:20,full:float32:10")


def make_index(count: int = 40, dim: int = 16, seed: int = 0, storage: str = "float32") -> FunnelIndex:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    ids = [f"doc-{seed}-{i}" for i in range(count)]
    texts = [f"text {i} ✓" if i % 5 else None for i in range(count)]
    return FunnelIndex.from_vectors(vectors, ids, texts, model_name="all-MiniLM-L6-v2", stages=FUNNEL, storage=storage)  # type: ignore[arg-type]


def write_v1(path: Path, index: FunnelIndex) -> Path:
    """An index directory in format version 1 (``vectors.npy``, one sha256 per file), as older releases wrote it."""
    path.mkdir()
    np.save(path / "vectors.npy", np.asarray(index._vectors), allow_pickle=False)
    (path / "ids.json").write_text(json.dumps(index.ids))
    files = {}
    for name in ("vectors.npy", "ids.json"):
        data = (path / name).read_bytes()
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    from matryoshka.retrieval.stages import format_stages

    manifest = {"format": "matryoshka-funnel-index", "format_version": 1, "model_name": index.model_name,
                "dim": index.dim, "count": len(index), "storage": index.storage,
                "stages": format_stages(index.stages), "files": files, "created": "2026-01-01T00:00:00+00:00"}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture
def saved(tmp_path: Path) -> tuple[FunnelIndex, Path]:
    index = make_index()
    path = tmp_path / "index"
    index.save(path)
    return index, path


def test_round_trip(saved) -> None:
    index, path = saved
    loaded = FunnelIndex.load(path)
    assert (loaded.model_name, loaded.dim, loaded.storage, loaded.stages, loaded.ids) == (
        index.model_name,
        index.dim,
        index.storage,
        index.stages,
        index.ids,
    )
    np.testing.assert_array_equal(loaded._vectors, index._vectors)
    queries = np.random.default_rng(9).standard_normal((5, 16)).astype(np.float32)
    assert loaded.search(queries, k=4) == index.search(queries, k=4)


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_mmap_round_trip(tmp_path: Path, storage: str) -> None:
    index = make_index(storage=storage)
    index.save(tmp_path / "ix")
    mapped = FunnelIndex.load(tmp_path / "ix", mmap=True)
    assert isinstance(mapped._vectors, np.memmap) and mapped._vectors.dtype == np.dtype(storage)
    queries = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    for stages in (None, [Stage(16, "binary", 40), Stage(0, "float32", 5)]):
        assert mapped.search(queries, k=5, stages=stages) == index.search(queries, k=5, stages=stages)
    mapped.add(np.ones((1, 16), dtype=np.float32), ["new"])  # copies out of the read-only map
    mapped.save(tmp_path / "ix")
    assert len(FunnelIndex.load(tmp_path / "ix")) == 41


def test_directory_layout_and_manifest(saved) -> None:
    index, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["ids.json", "manifest.json", "texts.json", "vectors.bin"]
    manifest = read_manifest(path)
    assert manifest["format"] == "matryoshka-funnel-index"
    assert manifest["format_version"] == store.FORMAT_VERSION
    assert (manifest["model_name"], manifest["dim"], manifest["count"], manifest["storage"]) == (
        "all-MiniLM-L6-v2",
        16,
        40,
        "float32",
    )
    assert manifest["stages"] == "8:float32:20,full:float32:10"
    for name, meta in manifest["files"].items():
        data = (path / name).read_bytes()
        if name == "vectors.bin":
            assert meta == {"bytes": len(data), "chunk_bytes": store.CHUNK_BYTES,
                            "sha256_chunks": [hashlib.sha256(data).hexdigest()]}
        else:
            assert meta == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    # plain formats, no pickle: raw little-endian rows and readable JSON
    np.testing.assert_array_equal(np.fromfile(path / "vectors.bin", dtype="<f4").reshape(40, 16), index._vectors)
    assert json.loads((path / "ids.json").read_text())[:2] == ["doc-0-0", "doc-0-1"]
    assert json.loads((path / "texts.json").read_text(encoding="utf-8"))[:2] == [None, "text 1 ✓"]


def test_index_without_texts_and_empty_index(tmp_path: Path) -> None:
    FunnelIndex.from_vectors(np.ones((2, 8)), ["a", "b"]).save(tmp_path / "plain")
    assert "texts.json" not in read_manifest(tmp_path / "plain")["files"]
    assert FunnelIndex.load(tmp_path / "plain").search(np.ones(8), k=1)[0][0].text is None
    upserted = FunnelIndex.from_vectors(np.zeros((0, 8)), [])
    upserted.upsert(["a", "b"], np.ones((2, 8)))  # upsert fills absent texts and metadata with None
    upserted.save(tmp_path / "upserted")
    assert sorted(read_manifest(tmp_path / "upserted")["files"]) == ["ids.json", "vectors.bin"]
    upserted.upsert(["c"], np.ones((1, 8)), texts=["t"], metadata=[{"lang": "en"}])
    upserted.save(tmp_path / "upserted")
    again = FunnelIndex.load(tmp_path / "upserted")
    assert [again.metadata(i) for i in "abc"] == [None, None, {"lang": "en"}]
    assert {h.id: h.text for h in again.search(np.ones(8), k=3)[0]} == {"a": None, "b": None, "c": "t"}
    FunnelIndex.from_vectors(np.zeros((0, 8)), []).save(tmp_path / "empty")
    assert len(FunnelIndex.load(tmp_path / "empty")) == 0


def test_add_and_delete_persist(saved) -> None:
    _, path = saved
    index = FunnelIndex.load(path)
    index.add(np.ones((2, 16)), ["x", "y"], texts=["ex", "why"])
    assert index.delete(["doc-0-0", "unknown"]) == 1
    index.save(path)
    again = FunnelIndex.load(path)
    assert len(again) == 41 and again.ids[-2:] == ["x", "y"] and "doc-0-0" not in again


def test_save_replaces_an_existing_index(saved, tmp_path: Path) -> None:
    _, path = saved
    make_index(count=7, seed=1).save(path)
    assert len(FunnelIndex.load(path)) == 7
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no staging or old copies left


def test_save_without_atomic_exchange_falls_back_to_renames(saved, tmp_path: Path, monkeypatch) -> None:
    _, path = saved
    monkeypatch.setattr(directory, "_exchange", lambda a, b: False)
    make_index(count=9, seed=2).save(path)
    assert len(FunnelIndex.load(path)) == 9
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_crash_mid_save_leaves_the_old_index(saved, tmp_path: Path, monkeypatch) -> None:
    old, path = saved
    written = []

    def crash_after_vectors(target: Path, value, indent=None):
        written.append(target.name)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(directory, "write_json", crash_after_vectors)
    with pytest.raises(OSError, match="simulated"):
        make_index(count=5, seed=3).save(path)
    assert written == ["ids.json"]  # vectors.npy was already written to the staging directory
    monkeypatch.undo()
    assert FunnelIndex.load(path).ids == old.ids
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # the staging directory was removed


def test_hard_kill_before_the_swap_leaves_the_old_index(saved, tmp_path: Path, monkeypatch) -> None:
    old, path = saved

    def killed(staging: Path, target: Path) -> None:
        raise SystemExit("killed")  # nothing after this point runs in a real crash...

    monkeypatch.setattr(directory, "_commit", killed)
    monkeypatch.setattr(directory.shutil, "rmtree", lambda *a, **k: None)  # ...not even the cleanup
    with pytest.raises(SystemExit):
        make_index(count=5, seed=4).save(path)
    monkeypatch.undo()
    leftovers = [p for p in tmp_path.iterdir() if p.name != "index"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".index.tmp-")
    assert FunnelIndex.load(path).ids == old.ids  # the complete-but-unswapped copy is ignored
    make_index(count=6, seed=5).save(path)  # and a later save still works
    assert len(FunnelIndex.load(path)) == 6


def test_new_index_dir_does_not_exist_until_complete(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(directory, "write_json", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        make_index().save(tmp_path / "fresh")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_what_is_not_an_index(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        make_index().save(tmp_path / "file")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an index"):
        make_index().save(tmp_path / "notes")
    (tmp_path / "empty").mkdir()
    make_index().save(tmp_path / "empty")  # an empty directory is fine
    assert len(FunnelIndex.load(tmp_path / "empty")) == 40


def _rewrite_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("mmap", [False, True])
def test_truncated_vectors(saved, mmap: bool) -> None:
    _, path = saved
    data = (path / "vectors.bin").read_bytes()
    (path / "vectors.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexCorruptError, match=r"vectors.bin is \d+ bytes, manifest.json says \d+ \(truncated"):
        FunnelIndex.load(path, mmap=mmap)
    # even with a manifest that agrees with the damage, its count does not
    files = json.loads((path / "manifest.json").read_text())["files"]
    files["vectors.bin"] = {"bytes": len(data) // 2, "chunk_bytes": store.CHUNK_BYTES,
                            "sha256_chunks": [hashlib.sha256(data[: len(data) // 2]).hexdigest()]}
    _rewrite_manifest(path, files=files)
    with pytest.raises(IndexCorruptError, match=r"listed with 1280 bytes, but count 40 x dim 16 float32 takes 2560"):
        FunnelIndex.load(path, mmap=mmap)


@pytest.mark.parametrize("mmap", [False, True])
def test_changed_vector_bytes_are_caught_in_every_chunk(tmp_path: Path, monkeypatch, mmap: bool) -> None:
    monkeypatch.setattr(layout, "CHUNK_BYTES", 1000)  # 2,560 bytes of vectors: chunks of 1000, 1000 and 560
    index = make_index()
    index.save(tmp_path / "ix")
    assert len(read_manifest(tmp_path / "ix")["files"]["vectors.bin"]["sha256_chunks"]) == 3
    for offset in (10, 1500, 2559):
        path = tmp_path / f"copy-{offset}"
        path.mkdir()
        for file in (tmp_path / "ix").iterdir():
            (path / file.name).write_bytes(file.read_bytes())
        data = bytearray((path / "vectors.bin").read_bytes())
        data[offset] ^= 1
        (path / "vectors.bin").write_bytes(bytes(data))
        with pytest.raises(IndexCorruptError, match=rf"vectors.bin does not match its sha256 .*chunk {offset // 1000}"):
            FunnelIndex.load(path, mmap=mmap)
        assert len(FunnelIndex.load(path, mmap=mmap, verify=False)) == 40  # verify=False trusts sizes only


def test_bytes_after_the_committed_vectors_are_ignored(saved) -> None:
    """A killed streaming append leaves bytes after what the manifest lists: they are no part of the index."""
    index, path = saved
    with open(path / "vectors.bin", "ab") as handle:
        handle.write(b"\xff" * 1000)
    for mmap in (False, True):
        np.testing.assert_array_equal(FunnelIndex.load(path, mmap=mmap)._vectors, index._vectors)


def test_checksum_mismatch(saved) -> None:
    _, path = saved
    text = (path / "ids.json").read_text()
    (path / "ids.json").write_text(text.replace("doc-0-3", "doc-0-X"))  # same size, different bytes
    with pytest.raises(IndexCorruptError, match="ids.json does not match its sha256"):
        FunnelIndex.load(path)
    assert "doc-0-X" in FunnelIndex.load(path, verify=False)  # verify=False trusts sizes and shapes only


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"count": 41}, r"listed with 2560 bytes, but count 41 x dim 16 float32 takes 2624"),
        ({"dim": 8}, r"count 40 x dim 8 float32 takes 1280"),
        ({"storage": "float16"}, "dim 16 float16 takes 1280"),
        ({"storage": "int4"}, "unknown storage"),
        ({"stages": "8:float32"}, "bad stages"),
        ({"stages": "64:float32:10"}, "bad stages"),
        ({"format_version": 99}, "newer than this matryoshka reads"),
        ({"format": "something-else"}, "is not a matryoshka-funnel-index manifest"),
        ({"model_name": None}, "field 'model_name' is missing"),
        ({"files": {"vectors.bin": {}, "ids.json": {}, "../etc/passwd": {}}}, "files must list"),
        ({"files": {"vectors.npy": {}, "ids.json": {}}}, "files must list vectors.bin"),
        ({"files": {"vectors.bin": {"bytes": 2560}, "ids.json": {}}}, "must hold 'bytes', 'chunk_bytes'"),
        ({"files": {"vectors.bin": {"bytes": 2560, "chunk_bytes": store.CHUNK_BYTES, "sha256_chunks": []},
                    "ids.json": {}}}, "wrong number of chunk checksums"),
    ],
)
def test_edited_manifest(saved, changes: dict, message: str) -> None:
    _, path = saved
    _rewrite_manifest(path, **changes)
    with pytest.raises(IndexCorruptError, match=message):
        FunnelIndex.load(path)


def test_manifest_not_json(saved) -> None:
    _, path = saved
    (path / "manifest.json").write_text("{ not json")
    with pytest.raises(IndexCorruptError, match="not valid JSON"):
        FunnelIndex.load(path)


@pytest.mark.parametrize("name", ["vectors.bin", "ids.json", "texts.json"])
def test_missing_file(saved, name: str) -> None:
    _, path = saved
    (path / name).unlink()
    with pytest.raises(IndexCorruptError, match=f"{name} is missing"):
        FunnelIndex.load(path)


def test_missing_manifest_and_missing_directory(saved, tmp_path: Path) -> None:
    _, path = saved
    (path / "manifest.json").unlink()
    with pytest.raises(IndexCorruptError, match="manifest.json is missing"):
        FunnelIndex.load(path)
    with pytest.raises(FileNotFoundError, match="no index at"):
        FunnelIndex.load(tmp_path / "nowhere")


def test_ids_that_do_not_match_count(saved) -> None:
    _, path = saved
    ids = json.loads((path / "ids.json").read_text())
    data = json.dumps(ids[:-1]).encode()
    (path / "ids.json").write_bytes(data)
    files = json.loads((path / "manifest.json").read_text())["files"]
    files["ids.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _rewrite_manifest(path, files=files)
    with pytest.raises(IndexCorruptError, match="list of 40 entries, got a list of 39"):
        FunnelIndex.load(path)


def test_pickled_array_is_refused_in_a_version_1_index(tmp_path: Path) -> None:
    path = write_v1(tmp_path / "v1", make_index())
    np.save(path / "vectors.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    data = (path / "vectors.npy").read_bytes()
    files = json.loads((path / "manifest.json").read_text())["files"]
    files["vectors.npy"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _rewrite_manifest(path, files=files)
    with pytest.raises(IndexCorruptError, match="cannot be read as a .npy array"):
        FunnelIndex.load(path)


def test_saved_files_get_ordinary_permissions(tmp_path: Path) -> None:
    """Staging in a private temp dir must not leave the index or a result file readable only by us."""
    from matryoshka.files import write_atomic

    old = os.umask(0o022)
    try:
        make_index().save(tmp_path / "index")
        write_atomic(tmp_path / "results.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "index").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "index" / "manifest.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644


def test_stale_staging_folders_of_dead_writers_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    target = tmp_path / "index"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".index.tmp-{dead.pid}-abc123"
        live = tmp_path / f".index.tmp-{alive.pid}-def456"
        old = tmp_path / ".index.old-0badf00d"
        unrelated = tmp_path / ".other.tmp-1-x"
        for folder in (stale, live, old, unrelated):
            folder.mkdir()
            (folder / "vectors.npy").write_bytes(b"half written")
        make_index().save(target)
        assert not stale.exists() and not old.exists()  # a killed save's leftovers are gone
        assert live.exists() and unrelated.exists()  # a save in progress and other names are untouched
        assert FunnelIndex.load(target).ids == make_index().ids
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".index.tmp-") and p != live]
    finally:
        alive.kill()
        alive.wait()


def test_killed_save_leaves_staging_that_the_next_save_removes(tmp_path: Path) -> None:
    """kill -9 a process in the middle of a save (it waits inside the staging folder), then save again."""
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "index"
    code = f"""
import numpy as np, time
from matryoshka.indexes.faiss.store import directory
def hang(*args, **kwargs):
    print("staged", flush=True)
    time.sleep(120)
directory._commit = hang
directory.write_index({str(target)!r}, np.ones((3, 4), np.float32) / 2, ["a", "b", "c"], None, "m", "float32",
                  __import__("matryoshka.retrieval", fromlist=["PRESETS"]).PRESETS["exact"])
"""
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "staged"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".index.tmp-")]
    assert len(leftovers) == 1 and not target.exists()
    time.sleep(0.05)
    make_index().save(target)
    assert not leftovers[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


@pytest.mark.parametrize("mmap", [False, True])
def test_version_1_index_loads_and_the_next_save_writes_version_2(tmp_path: Path, mmap: bool) -> None:
    index = make_index(storage="float16")
    path = write_v1(tmp_path / "v1", index)
    loaded = FunnelIndex.load(path, mmap=mmap)
    assert loaded.ids == index.ids and loaded.storage == "float16"
    np.testing.assert_array_equal(loaded._vectors, index._vectors)
    opened = FunnelIndex.open(path, mmap=mmap)
    opened.upsert(["new"], np.ones((1, 16), np.float32))
    opened.close()
    assert read_manifest(path)["format_version"] == 2
    assert sorted(p.name for p in path.iterdir()) == ["ids.json", "manifest.json", "vectors.bin"]
    again = FunnelIndex.load(path)
    assert again.ids == [*index.ids, "new"]
    np.testing.assert_array_equal(again._vectors[:40], index._vectors)


def test_damaged_version_1_index_is_caught(tmp_path: Path) -> None:
    path = write_v1(tmp_path / "v1", make_index())
    data = bytearray((path / "vectors.npy").read_bytes())
    data[-3] ^= 1
    (path / "vectors.npy").write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="vectors.npy does not match its sha256"):
        FunnelIndex.load(path)
    (path / "vectors.npy").write_bytes(bytes(data[:100]))
    with pytest.raises(IndexCorruptError, match=r"vectors.npy is 100 bytes, manifest.json says \d+ \(truncated"):
        FunnelIndex.load(path)
