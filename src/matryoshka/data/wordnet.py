"""Read WordNet 3.0 synset glosses: a real English corpus that exists on a fresh Debian machine.

The demo searches "describe a word, find it": each document is a synset's gloss (definition plus
example sentences) and its title is the synset's lemmas. The text comes from Debian's
``wordnet-base`` package (``/usr/share/wordnet/data.{noun,verb,adj,adv}``), parsed here with a small
reader of the documented ``wndb(5)`` line format, or from a staged JSON-lines copy with the same
fields (``$MATRYOSHKA_DATA/wordnet-glosses/wordnet30_glosses.jsonl.gz``).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from matryoshka.errors import DataError, WordNetNotFound

#: Where Debian's ``wordnet-base`` puts the database files.
WORDNET_DIR = Path("/usr/share/wordnet")
#: Parts of speech in the order of the files (and of the staged JSON-lines copy).
POS_FILES = ("noun", "verb", "adj", "adv")
#: Relative path of the staged copy under ``$MATRYOSHKA_DATA``.
JSONL_RELATIVE = Path("wordnet-glosses") / "wordnet30_glosses.jsonl.gz"

_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")



@dataclass(frozen=True)
class Synset:
    """One WordNet synset: ``id`` is ``<pos><offset>`` (e.g. ``n00001740``), ``gloss`` the text after ``|``."""

    id: str
    pos: str
    lexfile: int
    lemmas: tuple[str, ...]
    gloss: str

    @property
    def title(self) -> str:
        """The lemmas joined for display, e.g. ``"abstraction, abstract entity"``."""
        return ", ".join(self.lemmas)


def parse_data_line(line: str) -> Synset | None:
    """Parse one line of a ``data.<pos>`` file; ``None`` for the license header lines.

    Format (``man 5 wndb``): ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt
    [ptr...] [frames...] | gloss``. ``w_cnt`` is two hex digits; ``_`` in words means a space and
    adjectives may carry a syntactic marker ``(a)``, ``(p)`` or ``(ip)``, which is dropped.
    """
    if not line or line.startswith(" "):
        return None
    head, sep, gloss = line.partition(" | ")
    fields = head.split()
    if len(fields) < 6:
        raise DataError(f"not a WordNet data line: {line[:80]!r}")
    offset, lexfile, ss_type, w_cnt = fields[0], int(fields[1]), fields[2], int(fields[3], 16)
    words = fields[4 : 4 + 2 * w_cnt : 2]
    lemmas = tuple(_ADJ_MARKER.sub("", w).replace("_", " ") for w in words)
    return Synset(
        id=f"{ss_type}{offset}", pos=ss_type, lexfile=lexfile, lemmas=lemmas, gloss=gloss.strip() if sep else ""
    )


def read_debian(directory: str | os.PathLike[str] = WORDNET_DIR) -> Iterator[Synset]:
    """Yield every synset of ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv`` in file order."""
    directory = Path(directory)
    for pos in POS_FILES:
        with open(directory / f"data.{pos}", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                synset = parse_data_line(line.rstrip("\n"))
                if synset is not None:
                    yield synset


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[Synset]:
    """Yield synsets from the staged JSON-lines copy (gzip or plain)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                yield Synset(row["id"], row["pos"], int(row["lexfile"]), tuple(row["lemmas"]), row["gloss"])


def find_source(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the WordNet source: the Debian directory if installed, else the staged JSON-lines file.

    The staged file is looked up as ``<data_dir or $MATRYOSHKA_DATA>/wordnet-glosses/wordnet30_glosses.jsonl.gz``.

    Raises:
        WordNetNotFound: with the command that fixes it.
    """
    if (WORDNET_DIR / "data.noun").exists():
        return WORDNET_DIR
    for root in (data_dir, os.environ.get("MATRYOSHKA_DATA")):
        if root and (Path(root) / JSONL_RELATIVE).exists():
            return Path(root) / JSONL_RELATIVE
    raise WordNetNotFound(
        "WordNet glosses not found: run `apt-get install -y wordnet-base` "
        f"or set MATRYOSHKA_DATA to a folder holding {JSONL_RELATIVE}"
    )


def read_synsets(source: str | os.PathLike[str] | None = None) -> Iterator[Synset]:
    """Yield synsets from ``source`` (a Debian WordNet directory or a JSON-lines file; default: :func:`find_source`)."""
    path = Path(source) if source is not None else find_source()
    return read_debian(path) if path.is_dir() else read_jsonl(path)


def sample_evenly(synsets: list[Synset], limit: int | None) -> list[Synset]:
    """Keep ``limit`` synsets spread evenly over the whole list, so every part of speech and topic shows up.

    The files are sorted by part of speech and lexicographer file, so the first ``limit`` lines would be
    all nouns about a few topics; an even stride keeps the corpus varied and deterministic.
    """
    if limit is None or limit >= len(synsets):
        return list(synsets)
    if limit <= 0:
        return []
    step = len(synsets) / limit
    return [synsets[int(i * step)] for i in range(limit)]


def load_glosses(limit: int | None = None, source: str | os.PathLike[str] | None = None) -> tuple[list[str], list[str]]:
    """Return ``(ids, texts)`` for a gloss corpus: ``text`` is the gloss, ``id`` is ``"<lemmas> (<synset id>)"``.

    The id carries the lemmas so that a search hit shows the word it describes; the synset id in
    parentheses keeps ids unique (``bank`` has ten noun senses).
    """
    chosen = sample_evenly([s for s in read_synsets(source) if s.gloss], limit)
    return [f"{s.title} ({s.id})" for s in chosen], [s.gloss for s in chosen]
