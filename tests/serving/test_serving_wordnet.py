"""The WordNet gloss reader behind the demo corpus."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from matryoshka.data.wordnet import (
    WORDNET_DIR,
    Synset,
    WordNetNotFound,
    find_source,
    load_glosses,
    parse_data_line,
    read_debian,
    read_jsonl,
    sample_evenly,
)

NOUN = "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04431553 n 0000 | that which is perceived or known or inferred to have its own distinct existence (living or nonliving)  "
ADJ = '00020410 00 s 04 unapproachable 0 unreachable 0 unreached 0 out_of_reach(p) 0 001 & 00019874 a 0000 | inaccessibly located or situated; "an unapproachable chalet high in the mountains"  '
MANY = "02084071 05 n 0b dog 0 domestic_dog 0 Canis_familiaris 0 a 0 b 0 c 0 d 0 e 0 f 0 g 0 h 0 000 | a member of the genus Canis"


def test_parse_noun_line():
    synset = parse_data_line(NOUN)
    assert synset == Synset(
        "n00001740",
        "n",
        3,
        ("entity",),
        "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)",
    )
    assert synset.title == "entity"


def test_parse_adjective_markers_and_underscores():
    synset = parse_data_line(ADJ)
    assert synset.id == "s00020410"
    assert synset.lemmas == ("unapproachable", "unreachable", "unreached", "out of reach")
    assert synset.gloss.startswith("inaccessibly located") and synset.gloss.endswith('mountains"')


def test_word_count_is_hexadecimal():
    assert len(parse_data_line(MANY).lemmas) == 11
    assert parse_data_line(MANY).lemmas[:3] == ("dog", "domestic dog", "Canis familiaris")


def test_license_header_lines_are_skipped():
    assert parse_data_line("  1 This software and database is being provided to you, the LICENSEE, by  ") is None
    assert parse_data_line("") is None


def test_jsonl_reader(tmp_path):
    path = tmp_path / "g.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "n1", "pos": "n", "lexfile": 3, "lemmas": ["a b"], "gloss": "g"}) + "\n")
    assert list(read_jsonl(path)) == [Synset("n1", "n", 3, ("a b",), "g")]


def test_sample_evenly_spreads_and_is_deterministic():
    items = list(range(1000))
    picked = sample_evenly(items, 10)  # type: ignore[arg-type]
    assert picked == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
    assert sample_evenly(items, None) == items  # type: ignore[arg-type]
    assert sample_evenly(items, 5000) == items  # type: ignore[arg-type]


def test_missing_source_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr("matryoshka.data.wordnet.WORDNET_DIR", tmp_path / "none")
    monkeypatch.delenv("MATRYOSHKA_DATA", raising=False)
    with pytest.raises(WordNetNotFound, match="apt-get install -y wordnet-base"):
        find_source()


@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").exists(), reason="Debian wordnet-base is not installed")
def test_debian_files_match_the_staged_copy(data_dir: Path, tmp_path: Path):
    """Our parser of Debian's files gives exactly the staged JSON lines (first 3,000 noun lines, all adjectives and adverbs)."""
    staged = data_dir / "wordnet-glosses" / "wordnet30_glosses.jsonl.gz"
    if not staged.exists():
        pytest.skip("no staged WordNet copy to compare with")
    with open(WORDNET_DIR / "data.noun", encoding="utf-8") as handle:
        (tmp_path / "data.noun").write_text("".join(line for _, line in zip(range(3029), handle)), encoding="utf-8")
    (tmp_path / "data.verb").write_text("", encoding="utf-8")
    for pos in ("adj", "adv"):
        (tmp_path / f"data.{pos}").write_bytes((WORDNET_DIR / f"data.{pos}").read_bytes())
    ours = list(read_debian(tmp_path))
    wanted = {s.id for s in ours}
    theirs = [s for s in read_jsonl(staged) if s.id in wanted]
    assert len(ours) > 20_000 and {s.pos for s in ours} == {"n", "a", "s", "r"}
    assert ours == theirs


def test_load_glosses_ids_are_unique_and_carry_lemmas(data_dir: Path):
    staged = data_dir / "wordnet-glosses" / "wordnet30_glosses.jsonl.gz"
    source = staged if staged.exists() else None
    ids, texts = load_glosses(500, source)
    assert len(ids) == len(texts) == 500 and len(set(ids)) == 500
    assert ids[0] == "entity (n00001740)"
    assert {i.rsplit("(", 1)[1][0] for i in ids} >= {"n", "v", "a", "r"}  # every part of speech is there
