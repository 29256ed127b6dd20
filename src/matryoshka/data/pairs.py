"""Unlabelled text pairs for self-distillation: related sentences whose gold labels are not used.

A Matryoshka model can learn to keep, in its first dimensions, the similarities that the untouched
full-size model computes. That needs only text, and pairs of related texts give the batch a spread
of similarities from near-duplicates to unrelated. Local sources (under ``MATRYOSHKA_DATA``):

- ``stsb``: STS-B *train* sentence pairs (gold scores ignored; test is never used for training);
- ``snli``: SNLI dev+test premise/hypothesis pairs (labels ignored);
- ``wordnet``: WordNet lemma and its definition (``"bank" -> "sloping land beside a body of water"``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from matryoshka.data.local import data_root, find_file, read_lines
from matryoshka.data.nli import read_nli_file
from matryoshka.data.sts import load_sts
from matryoshka.errors import DataError, InputError

PAIR_SOURCES = ("stsb", "snli", "wordnet")


def read_wordnet_pairs(path: Path) -> list[tuple[str, str]]:
    """(lemmas, definition) pairs from the glosses JSONL (``{"lemmas": [...], "gloss": "..."}``)."""
    pairs = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            lemmas, gloss = row["lemmas"], row["gloss"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"bad WordNet gloss record: {exc}", path, number) from None
        definition = gloss.split(";")[0].strip()
        if lemmas and definition:
            pairs.append((", ".join(lemmas), definition))
    return pairs


def load_distillation_pairs(
    sources: Sequence[str] = ("stsb", "snli"),
    limit: int | None = None,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """Load, de-duplicate and shuffle text pairs from ``sources`` (see the module docstring).

    Without ``MATRYOSHKA_DATA`` the ``stsb`` and ``snli`` sources come from the hub; ``wordnet`` is local only.
    """
    unknown = set(sources) - set(PAIR_SOURCES)
    if unknown:
        raise InputError(f"unknown pair sources {sorted(unknown)}; choose from {', '.join(PAIR_SOURCES)}")
    root = data_root()
    pairs: list[tuple[str, str]] = []
    for source in sources:
        if source == "stsb":
            pairs.extend((p.sentence1, p.sentence2) for p in load_sts("train"))
        elif source == "snli":
            if root is None:
                from matryoshka.data.nli import load_nli_triplets

                pairs.extend((t.anchor, t.positive) for t in load_nli_triplets())
            else:
                for split in ("dev", "test"):
                    rows = read_nli_file(find_file(root / "snli", f"snli_{split}.tsv"))
                    pairs.extend((premise, hypothesis) for premise, hypothesis, _ in rows)
        elif source == "wordnet":
            if root is None:
                raise DataError("the wordnet pair source needs MATRYOSHKA_DATA (wordnet-glosses/)")
            pairs.extend(read_wordnet_pairs(find_file(root / "wordnet-glosses", "wordnet30_glosses.jsonl")))
    unique = list(dict.fromkeys(pairs))
    random.Random(seed).shuffle(unique)
    return unique[:limit] if limit is not None else unique
