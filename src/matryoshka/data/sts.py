"""STS Benchmark: sentence pairs with gold similarity scores from 0 to 5.

Locally it reads the official tab-separated files ``stsb/sts-{train,dev,test}.csv[.gz]`` (columns
genre, file, year, id, score, sentence1, sentence2, sometimes followed by license columns; CRLF
endings; quotes are literal). From the hub it reads ``sentence-transformers/stsb`` (scores 0-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from matryoshka.data.local import data_root, find_file, read_lines
from matryoshka.errors import DataError, InputError

Split = Literal["train", "dev", "test"]
HUB_NAME = "sentence-transformers/stsb"


@dataclass(frozen=True)
class StsPair:
    """Two sentences and their gold similarity, normalized to 0..1."""

    sentence1: str
    sentence2: str
    score: float


def read_sts_file(path: Path) -> list[StsPair]:
    """Parse one official STS-B file; a malformed line raises `DataError` naming file and line."""
    pairs: list[StsPair] = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 7:
            raise DataError(f"expected at least 7 tab-separated fields, found {len(fields)}", path, number)
        try:
            score = float(fields[4])
        except ValueError:
            raise DataError(f"score {fields[4]!r} is not a number", path, number) from None
        if not 0.0 <= score <= 5.0:
            raise DataError(f"score {score} is outside 0..5", path, number)
        if not fields[5].strip() or not fields[6].strip():
            raise DataError("empty sentence", path, number)
        pairs.append(StsPair(fields[5], fields[6], score / 5.0))
    if not pairs:
        raise DataError("no STS pairs found", path)
    return pairs


def load_sts(split: Split = "test", source: str | Path | None = None) -> list[StsPair]:
    """Load an STS-B split.

    Args:
        split: ``train``, ``dev`` or ``test``.
        source: a directory holding ``sts-<split>.csv[.gz]``; by default ``$MATRYOSHKA_DATA/stsb``,
            or the hub data set ``sentence-transformers/stsb`` when ``MATRYOSHKA_DATA`` is unset.

    Example:
        >>> pairs = load_sts("test")
        >>> len(pairs), pairs[0].score
        (1379, 1.0)
    """
    if split not in ("train", "dev", "test"):
        raise InputError(f"split must be train, dev or test, got {split!r}")
    directory = Path(source) if source is not None else None
    if directory is None:
        root = data_root()
        if root is None:
            return _load_sts_hub(split)
        directory = root / "stsb"
    return read_sts_file(find_file(directory, f"sts-{split}.csv"))


def _load_sts_hub(split: Split) -> list[StsPair]:
    from datasets import load_dataset

    hub_split = {"dev": "validation"}.get(split, split)
    rows = load_dataset(HUB_NAME, split=hub_split)
    return [StsPair(r["sentence1"], r["sentence2"], float(r["score"])) for r in rows]
