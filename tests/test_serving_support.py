"""Helpers for the serving tests (no tests here): a small real corpus of WordNet glosses."""

from __future__ import annotations

import os
from pathlib import Path

# -- a small real corpus ---------------------------------------------------------------------------------


def wordnet_sample(n: int = 300) -> tuple[list[str], list[str]]:
    """``n`` real WordNet glosses, ids with their lemmas: from Debian's files or the staged JSON-lines copy."""
    from matryoshka.data.wordnet import JSONL_RELATIVE, find_source, load_glosses

    roots = [os.environ.get("MATRYOSHKA_DATA"), str(Path(__file__).resolve().parents[2] / "shared" / "data")]
    for root in roots:
        if root and (Path(root) / JSONL_RELATIVE).exists():
            return load_glosses(n, Path(root) / JSONL_RELATIVE)
    return load_glosses(n, find_source())
