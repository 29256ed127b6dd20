"""NLI triplets (anchor, entailment, contradiction), the training data of the Matryoshka article.

From the hub: ``sentence-transformers/all-nli`` (subset ``triplet``). Locally: built from SNLI dev and
test (``snli/snli_{dev,test}.tsv[.gz]``, columns premise, hypothesis, label) by grouping hypotheses
by premise and pairing every entailment with every contradiction of the same premise.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from matryoshka.data.local import data_root, find_file, read_lines
from matryoshka.errors import DataError

HUB_NAME = "sentence-transformers/all-nli"
LABELS = ("entailment", "neutral", "contradiction")


@dataclass(frozen=True)
class Triplet:
    """A premise, a hypothesis it entails and one it contradicts."""

    anchor: str
    positive: str
    negative: str


def read_nli_file(path: Path) -> list[tuple[str, str, str]]:
    """Parse a ``premise<TAB>hypothesis<TAB>label`` file with a header row."""
    rows: list[tuple[str, str, str]] = []
    for number, line in read_lines(path):
        if number == 1:
            if line.split("\t")[:3] != ["premise", "hypothesis", "label"]:
                raise DataError("expected the header premise<TAB>hypothesis<TAB>label", path, number)
            continue
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(f"expected 3 tab-separated fields, found {len(fields)}", path, number)
        premise, hypothesis, label = fields
        if label not in LABELS:
            raise DataError(f"unknown label {label!r} (expected one of {', '.join(LABELS)})", path, number)
        if not premise.strip() or not hypothesis.strip():
            raise DataError("empty sentence", path, number)
        rows.append((premise, hypothesis, label))
    if not rows:
        raise DataError("no NLI pairs found", path)
    return rows


def triplets_from_pairs(rows: list[tuple[str, str, str]]) -> list[Triplet]:
    """Group labelled pairs by premise into (premise, entailment, contradiction) triplets."""
    grouped: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for premise, hypothesis, label in rows:
        grouped[premise][label].append(hypothesis)
    triplets = []
    for premise, by_label in grouped.items():
        for positive in by_label["entailment"]:
            for negative in by_label["contradiction"]:
                triplets.append(Triplet(premise, positive, negative))
    return triplets


def load_nli_triplets(source: str | Path | None = None, hub_split: str = "train") -> list[Triplet]:
    """Load NLI triplets from a directory with ``snli_{dev,test}.tsv[.gz]``, ``$MATRYOSHKA_DATA/snli`` or the hub.

    Example:
        >>> triplets = load_nli_triplets()
        >>> triplets[0].anchor, triplets[0].positive, triplets[0].negative  # doctest: +SKIP
    """
    directory = Path(source) if source is not None else None
    if directory is None:
        root = data_root()
        if root is None:
            from datasets import load_dataset

            rows = load_dataset(HUB_NAME, "triplet", split=hub_split)
            return [Triplet(r["anchor"], r["positive"], r["negative"]) for r in rows]
        directory = root / "snli"
    rows = []
    for split in ("dev", "test"):
        rows.extend(read_nli_file(find_file(directory, f"snli_{split}.tsv")))
    return triplets_from_pairs(rows)
