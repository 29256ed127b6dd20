"""Load BEIR-style retrieval sets: a corpus, the queries of one split and their relevance judgements.

A BEIR directory holds ``corpus.jsonl[.gz]`` (``{"_id", "title", "text"}`` per line),
``queries.jsonl[.gz]`` (``{"_id", "text"}``) and ``qrels/<split>.tsv`` (header
``query-id corpus-id score``). The same data loads by name from ``$MATRYOSHKA_DATA`` (offline) or
from the Hugging Face hub (``BeIR/<name>``).

Example:
    >>> scifact = load_beir("scifact")
    >>> len(scifact.corpus), len(scifact.queries)
    (5183, 300)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from matryoshka.data.local import data_root, find_file, read_jsonl_records, read_lines
from matryoshka.errors import DataError

#: Names resolved under ``$MATRYOSHKA_DATA`` to their directory there.
LOCAL_NAMES = {"scifact": "scifact", "npl": "npl-vaswani", "npl-vaswani": "npl-vaswani"}
QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass
class BeirDataset:
    """A retrieval set: ``corpus`` maps doc id to ``title + " " + text``, ``queries`` holds only the
    queries judged in the split, and ``qrels`` maps query id to ``{doc id: relevance}``."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str
    split: str = "test"

    def __repr__(self) -> str:
        return (
            f"BeirDataset(name={self.name!r}, split={self.split!r}, corpus={len(self.corpus)}, "
            f"queries={len(self.queries)}, qrels={sum(len(r) for r in self.qrels.values())})"
        )


def load_beir(name_or_path: str | os.PathLike[str], split: str = "test") -> BeirDataset:
    """Load a BEIR data set from a directory, from ``$MATRYOSHKA_DATA`` or from the hub.

    Args:
        name_or_path: a directory in BEIR layout, or a name such as ``"scifact"`` or ``"npl"``.
            With ``MATRYOSHKA_DATA`` set, names resolve to ``$MATRYOSHKA_DATA/scifact`` and
            ``$MATRYOSHKA_DATA/npl-vaswani``; otherwise ``BeIR/<name>`` is loaded from the hub.
        split: the qrels split, e.g. ``"test"``, ``"dev"`` or ``"train"``.

    Raises:
        DataError: a file is missing or malformed (the message names the file and line).
    """
    directory = resolve_beir_dir(name_or_path)
    if directory is None:
        return _load_hub(str(name_or_path), split)
    dataset = _load_directory(directory, split)
    if not Path(name_or_path).expanduser().is_dir():
        dataset.name = str(name_or_path).lower().removeprefix("beir/")
    return dataset


def resolve_beir_dir(name_or_path: str | os.PathLike[str]) -> Path | None:
    """The local directory for ``name_or_path``, or ``None`` when it must come from the hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    root = data_root()
    if root is None:
        return None
    name = str(name_or_path).lower().removeprefix("beir/")
    candidate = root / LOCAL_NAMES.get(name, name)
    if candidate.is_dir():
        return candidate
    if name in LOCAL_NAMES:
        raise DataError(f"MATRYOSHKA_DATA is set but has no {LOCAL_NAMES[name]}/ directory", path=candidate)
    return None


def read_beir_corpus(path: Path) -> dict[str, str]:
    """Read a BEIR ``corpus.jsonl[.gz]``: doc id → ``title + " " + text`` (stripped)."""
    corpus: dict[str, str] = {}
    for number, record in read_jsonl_records(path):
        doc_id = _field(record, "_id", path, number)
        text = _field(record, "text", path, number)
        title = record.get("title") or ""
        if not isinstance(title, str):
            raise DataError(f"'title' must be a string, got {type(title).__name__}", path=path, line=number)
        if doc_id in corpus:
            raise DataError(f"duplicate document id {doc_id!r}", path=path, line=number)
        corpus[doc_id] = f"{title} {text}".strip()
    return corpus


def read_queries(path: Path) -> dict[str, str]:
    """Read a BEIR ``queries.jsonl[.gz]``: query id → text."""
    queries: dict[str, str] = {}
    for number, record in read_jsonl_records(path):
        query_id = _field(record, "_id", path, number)
        if query_id in queries:
            raise DataError(f"duplicate query id {query_id!r}", path=path, line=number)
        queries[query_id] = _field(record, "text", path, number).strip()
    return queries


def read_qrels(path: Path) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Read a BEIR ``qrels/<split>.tsv``: ``{query id: {doc id: score}}`` and each query's first line."""
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[str, int] = {}
    lines = read_lines(path)
    header = next(lines, None)
    if header is None:
        raise DataError("empty qrels file, expected the header 'query-id corpus-id score'", path=path, line=1)
    if tuple(header[1].split("\t")) != QRELS_HEADER:
        raise DataError(f"expected the header 'query-id\\tcorpus-id\\tscore', got {header[1]!r}", path=path, line=1)
    for number, line in lines:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(f"expected 3 tab-separated fields, got {len(fields)}: {line!r}", path=path, line=number)
        query_id, doc_id, score = (f.strip() for f in fields)
        try:
            relevance = int(score)
        except ValueError:
            raise DataError(f"score must be an integer, got {score!r}", path=path, line=number) from None
        if not query_id or not doc_id:
            raise DataError("empty query or corpus id", path=path, line=number)
        qrels.setdefault(query_id, {})[doc_id] = relevance
        first_line.setdefault(query_id, number)
    return qrels, first_line


def _load_directory(directory: Path, split: str) -> BeirDataset:
    corpus = read_beir_corpus(find_file(directory, "corpus.jsonl"))
    all_queries = read_queries(find_file(directory, "queries.jsonl"))
    qrels_path = directory / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (directory / "qrels").glob("*.tsv"))
        raise DataError(f"no qrels for split {split!r} (available: {', '.join(available) or 'none'})", path=qrels_path)
    qrels, first_line = read_qrels(qrels_path)
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise DataError(
            f"query id {missing[0]!r} has judgements but no text in the queries file"
            + (f" ({len(missing)} such queries)" if len(missing) > 1 else ""),
            path=qrels_path,
            line=first_line[missing[0]],
        )
    queries = {q: all_queries[q] for q in qrels}
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels, name=directory.name, split=split)


def _load_hub(name: str, split: str) -> BeirDataset:
    """Load ``BeIR/<name>`` (corpus and queries) and ``BeIR/<name>-qrels`` with ``datasets``."""
    from datasets import load_dataset

    repo = name if "/" in name else f"BeIR/{name}"
    try:
        corpus_rows = load_dataset(repo, "corpus", split="corpus")
        query_rows = load_dataset(repo, "queries", split="queries")
        qrel_rows = load_dataset(f"{repo}-qrels", split=split)
    except Exception as exc:
        hint = (
            " (HF_HUB_OFFLINE is set: point MATRYOSHKA_DATA at a local copy)"
            if os.environ.get("HF_HUB_OFFLINE")
            else ""
        )
        raise DataError(f"could not load {repo!r} split {split!r} from the hub{hint}: {exc}") from exc
    corpus = {str(r["_id"]): f"{r.get('title') or ''} {r['text']}".strip() for r in corpus_rows}
    qrels: dict[str, dict[str, int]] = {}
    for row in qrel_rows:
        qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
    all_queries = {str(r["_id"]): str(r["text"]).strip() for r in query_rows}
    queries = {q: all_queries[q] for q in qrels if q in all_queries}
    qrels = {q: qrels[q] for q in queries}
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels, name=repo.split("/")[-1], split=split)


def _field(record: dict, key: str, path: Path, line: int) -> str:
    if key not in record:
        raise DataError(f"missing field {key!r}", path=path, line=line)
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"field {key!r} must be a string, got {type(value).__name__}", path=path, line=line)
    return str(value)
