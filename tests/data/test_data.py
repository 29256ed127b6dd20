import gzip

import pytest

from matryoshka.data import (
    DataError,
    load_distillation_pairs,
    load_nli_triplets,
    load_sts,
)
from matryoshka.data.nli import read_nli_file, triplets_from_pairs
from matryoshka.data.sts import read_sts_file


@pytest.mark.parametrize("split,count", [("train", 5749), ("dev", 1500), ("test", 1379)])
def test_sts_real_splits(data_dir, split, count):
    pairs = load_sts(split)
    assert len(pairs) == count
    assert all(0.0 <= p.score <= 1.0 for p in pairs)
    assert all(p.sentence1 and p.sentence2 for p in pairs)
    assert not any("\r" in p.sentence2 for p in pairs)


def test_sts_test_first_row(data_dir):
    first = load_sts("test")[0]
    assert first.sentence1 == "A girl is styling her hair."
    assert first.score == pytest.approx(0.5)


def test_nli_triplets_from_local_snli(data_dir):
    triplets = load_nli_triplets()
    assert len(triplets) > 6000
    t = triplets[0]
    assert t.anchor and t.positive and t.negative and t.positive != t.negative


def test_triplets_group_by_premise():
    rows = [("p", "e1", "entailment"), ("p", "c1", "contradiction"), ("p", "e2", "entailment"),
            ("q", "n", "neutral"), ("q", "e", "entailment")]
    triplets = triplets_from_pairs(rows)
    assert [(t.anchor, t.positive, t.negative) for t in triplets] == [("p", "e1", "c1"), ("p", "e2", "c1")]


def test_distillation_pairs_are_unique_and_shuffled(data_dir):
    pairs = load_distillation_pairs(("stsb", "snli"))
    assert len(pairs) == len(set(pairs)) > 20000
    assert pairs == load_distillation_pairs(("stsb", "snli"))
    assert pairs != load_distillation_pairs(("stsb", "snli"), seed=1)
    wordnet = load_distillation_pairs(("wordnet",), limit=10)
    assert len(wordnet) == 10 and all(a and b for a, b in wordnet)
    with pytest.raises(ValueError, match="unknown pair sources"):
        load_distillation_pairs(("msmarco",))


def test_malformed_sts_names_file_and_line(tmp_path):
    path = tmp_path / "sts-test.csv"
    path.write_text("g\tf\t2012\t1\t5.0\ta\tb\r\ng\tf\t2012\t2\tfive\ta\tb\r\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"sts-test.csv, line 2: score 'five'"):
        read_sts_file(path)
    path.write_text("g\tf\t2012\t1\t5.0\tonly six fields\r\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1: expected at least 7"):
        read_sts_file(path)
    path.write_text("g\tf\t2012\t1\t7.5\ta\tb\n", encoding="utf-8")
    with pytest.raises(DataError, match="outside 0..5"):
        read_sts_file(path)


def test_sts_gzip_and_missing_file(tmp_path):
    with gzip.open(tmp_path / "sts-dev.csv.gz", "wt", encoding="utf-8") as f:
        f.write("g\tf\t2012\t1\t2.5\ta \"quoted\" one\tb\tlicense\textra\n")
    pairs = load_sts("dev", source=tmp_path)
    assert pairs[0].sentence1 == 'a "quoted" one' and pairs[0].score == 0.5
    with pytest.raises(DataError, match=r"sts-train.csv\[.gz\]"):
        load_sts("train", source=tmp_path)
    (tmp_path / "sts-test.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="sts-test.csv.gz"):
        load_sts("test", source=tmp_path)


def test_malformed_nli(tmp_path):
    path = tmp_path / "snli_dev.tsv"
    path.write_text("premise\thypothesis\tlabel\np\th\tmaybe\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: unknown label 'maybe'"):
        read_nli_file(path)
    path.write_text("sentence\tlabel\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1: expected the header"):
        read_nli_file(path)
    path.write_text("premise\thypothesis\tlabel\np\th\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: expected 3"):
        read_nli_file(path)


def test_bad_data_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MATRYOSHKA_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="MATRYOSHKA_DATA"):
        load_sts("test")


def test_read_lines_names_a_binary_file(tmp_path):
    from matryoshka.data.local import read_lines

    path = tmp_path / "image.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(DataError, match=r"image.txt: not UTF-8 text \(a binary file\?\): invalid start byte at byte 0x89"):
        list(read_lines(path))
