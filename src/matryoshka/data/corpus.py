"""Read a corpus to encode: a .txt or .jsonl file of texts, or a BEIR data set by name or directory.

Shared by ``index build``, ``adapt``, and corpus ingestion into a backend, so every command that takes
``--corpus`` reads the same sources the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_corpus(source: str) -> tuple[list[str | None], list[str]]:
    """Texts to index from a .txt/.jsonl file or a BEIR data set (name or directory): ``(ids, texts)``."""
    path = Path(source).expanduser()
    if path.is_file():
        return read_text_file(path)
    from matryoshka.data.beir import load_beir, resolve_beir_dir
    from matryoshka.data.beir import read_corpus as read_beir_corpus
    from matryoshka.data.local import find_file

    directory = resolve_beir_dir(source)
    corpus = read_beir_corpus(find_file(directory, "corpus.jsonl")) if directory else load_beir(source).corpus
    return list(corpus), list(corpus.values())


def read_text_file(path: Path) -> tuple[list[str | None], list[str]]:
    """Read ``(ids, texts)`` from a .txt file (one text per line, no ids) or a .jsonl[.gz] file whose lines
    are strings or objects with ``text`` and optional ``_id``/``id`` and ``title``.

    Raises:
        DataError: the file is missing, empty or malformed (the message names the line).
    """
    from matryoshka.data.errors import DataError
    from matryoshka.data.local import read_lines

    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", path=path)
    ids: list[str | None] = []
    texts: list[str] = []
    is_jsonl = path.name.endswith((".jsonl", ".jsonl.gz", ".ndjson"))
    for number, line in read_lines(path):
        if not line.strip():
            continue
        if not is_jsonl:
            ids.append(None)
            texts.append(line.strip())
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", path=path, line=number) from None
        if isinstance(record, str):
            record = {"text": record}
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError("expected a string or an object with a string 'text'", path=path, line=number)
        doc_id = record.get("_id", record.get("id"))
        if doc_id is not None and (isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or str(doc_id) == ""):
            raise DataError(f"id must be a non-empty string or integer, got {doc_id!r}", path=path, line=number)
        ids.append(None if doc_id is None else str(doc_id))
        texts.append(f"{record.get('title') or ''} {record['text']}".strip())
    if not texts:
        raise DataError("no texts found", path=path)
    return ids, texts


def fill_ids(ids: list[str | None], existing: list[str]) -> list[str]:
    """Give texts without an id the next free integers (after the largest numeric id in use)."""
    numeric = [int(i) for i in [*existing, *ids] if i is not None and i.isdigit()]
    next_id = max(numeric) + 1 if numeric else len(existing)
    filled = []
    for doc_id in ids:
        if doc_id is None:
            doc_id, next_id = str(next_id), next_id + 1
        filled.append(doc_id)
    return filled


def read_documents(source: str | os.PathLike[str]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Documents from a .txt/.jsonl file or a BEIR data set, as :func:`~matryoshka.data.corpus.read_corpus`
    reads them; texts without an id get their position (``"0"``, ``"1"``...), stable across re-runs.
    A .jsonl line's ``metadata`` object (flat: strings, numbers, booleans) is kept for filters."""
    ids, texts = read_corpus(str(source))
    metadata = jsonl_metadata(Path(source), len(texts))
    return list(zip(fill_ids(ids, existing=[]), texts, metadata))


def jsonl_metadata(path: str | os.PathLike[str], count: int) -> list[dict[str, Any] | None]:
    """The ``metadata`` of each record of a .jsonl file (``None`` where absent or not a .jsonl file)."""
    from matryoshka.data.errors import DataError
    from matryoshka.data.local import read_lines
    from matryoshka.retrieval.filters import check_metadata

    path = Path(path)
    if not (path.is_file() and path.name.endswith((".jsonl", ".jsonl.gz", ".ndjson"))):
        return [None] * count
    out: list[dict[str, Any] | None] = []
    for number, line in read_lines(path):
        if line.strip():
            record = json.loads(line)
            try:
                out.append(check_metadata(record.get("metadata")) if isinstance(record, dict) else None)
            except (TypeError, ValueError) as exc:
                raise DataError(f"bad metadata: {exc}", path=path, line=number) from None
    return out
