"""Corpora (ptb, wikitext2, kjv): real file formats, vocabulary order, the KJV build and cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from maxup.data import build_dataset, dataset_info, list_datasets
from maxup.data import corpus as C
from maxup.errors import DataError

PTB_TRAIN = " aer banknote berlitz \n the <unk> company N years old \n"
PTB_VALID = " the company said \n"
PTB_TEST = " old berlitz quote \n"


def write_ptb(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ptb.train.txt").write_text(PTB_TRAIN)
    (root / "ptb.valid.txt").write_text(PTB_VALID)
    (root / "ptb.test.txt").write_text(PTB_TEST)


def test_ptb_reader_matches_awd_lstm_data_py(tmp_path):
    write_ptb(tmp_path)
    corpus = C.load_corpus("ptb", tmp_path)
    # ids by first appearance over train, valid, test; one <eos> per line
    assert corpus.words == ["aer", "banknote", "berlitz", "<eos>", "the", "<unk>", "company",
                            "N", "years", "old", "said", "quote"]
    assert corpus.splits["train"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3]
    assert corpus.splits["valid"].tolist() == [4, 6, 10, 3]
    assert corpus.splits["test"].tolist() == [9, 2, 11, 3]
    assert corpus.splits["train"].dtype == torch.long
    assert corpus.facts()["tokens"] == {"train": 11, "valid": 4, "test": 4}
    # the registry path gives the same split
    assert torch.equal(build_dataset("ptb", split="train", root=tmp_path),
                       corpus.splits["train"])
    assert {"ptb", "wikitext2", "kjv"} <= set(list_datasets())
    assert dataset_info("ptb").kind == "text" and dataset_info("digits").kind == "image"


def test_wikitext2_reader_keeps_headings_and_blank_lines(tmp_path):
    # The tokens release: headings, blank lines (a lone <eos> each, as awd-lstm-lm counts them)
    (tmp_path / "wiki.train.tokens").write_text(
        " \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 @-@ <unk> \n")
    (tmp_path / "wiki.valid.tokens").write_text(" \n = Homarus = \n")
    (tmp_path / "wiki.test.tokens").write_text(" \n = Robert <unk> = \n")
    corpus = C.load_corpus("wikitext2", tmp_path)
    train = [corpus.words[i] for i in corpus.splits["train"].tolist()]
    assert train == ["<eos>", "=", "Valkyria", "Chronicles", "III", "=", "<eos>", "<eos>",
                     "Senjō", "no", "Valkyria", "3", "@-@", "<unk>", "<eos>"]
    # 10 distinct words in train, Homarus in valid, Robert in test
    assert corpus.vocab_size == len(set(corpus.words)) == 12
    assert corpus.words[-2:] == ["Homarus", "Robert"]


def test_checksum_changes_with_the_text(tmp_path):
    write_ptb(tmp_path / "a")
    write_ptb(tmp_path / "b")
    (tmp_path / "b" / "ptb.test.txt").write_text(" old berlitz quote quote \n")
    a, b = C.load_corpus("ptb", tmp_path / "a"), C.load_corpus("ptb", tmp_path / "b")
    assert len(a.sha256) == 64 and a.sha256 != b.sha256
    assert a.sha256 == C.load_corpus("ptb", tmp_path / "a").sha256


@pytest.mark.parametrize(("name", "missing"), [("ptb", "ptb.valid.txt"),
                                                 ("wikitext2", "wiki.train.tokens")])
def test_missing_file_is_one_line_naming_it(tmp_path, name, missing):
    write_ptb(tmp_path)
    for f in C.FILES["wikitext2"]:
        (tmp_path / f).write_text(" a \n")
    (tmp_path / missing).unlink()
    with pytest.raises(DataError) as exc:
        C.load_corpus(name, tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and missing in msg and "data.root" in msg


def test_no_root_for_ptb_says_where_to_put_the_files():
    with pytest.raises(DataError, match="data.root: null.*ptb.train.txt"):
        C.load_corpus("ptb", None)


def test_tokenize_verse_ptb_style():
    assert C.tokenize_verse("Ge1:1 In the beginning God created the heaven and the earth.") == [
        "in", "the", "beginning", "god", "created", "the", "heaven", "and", "the", "earth"]
    assert C.tokenize_verse("Ex3:5 the LORD'S house; (his sons') ass-colt!") == [
        "the", "lord", "'s", "house", "his", "sons", "ass", "colt"]


def test_preprocess_kjv_split_and_vocab_by_hand():
    lines = [f"Ge1:{i} a b a c." for i in range(1, 19)] + ["Ge1:19 d a", "Ge1:20 e b"]
    train, valid, test = C.preprocess_kjv(lines, vocab=4)
    # 20 verses: 18 train, 1 valid, 1 test; train counts a 36, b 18, <eos> 18, c 18 -> the
    # 3 most frequent (ties alphabetical: '<eos>' < 'b' < 'c') are a, <eos>, b; c is <unk>
    assert train.splitlines() == ["a b a <unk>"] * 18
    assert valid == "<unk> a\n" and test == "<unk> b\n"


def test_kjv_without_the_bible_command_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    with pytest.raises(DataError) as exc:
        C.load_corpus("kjv", tmp_path)
    assert "apt-get install bible-kjv" in str(exc.value) and "\n" not in str(exc.value)


def test_kjv_build_is_cached_and_a_tampered_cache_refused(tmp_path, monkeypatch):
    lines = [f"Ge1:{i} w{i % 7} x{i % 3}." for i in range(1, 41)]
    monkeypatch.setattr(C, "_kjv_lines", lambda: lines)
    a = C.load_corpus("kjv", tmp_path, version=1)
    meta = json.loads((tmp_path / "kjv.json").read_text())
    assert meta["sha256"] == a.sha256 and meta["version"] == C.KJV_PREPROCESS_VERSION == 1
    monkeypatch.setattr(C, "_kjv_lines", lambda: pytest.fail("rebuilt a valid cache"))
    b = C.load_corpus("kjv", tmp_path, version=1)
    assert b.sha256 == a.sha256 and torch.equal(a.splits["test"], b.splits["test"])
    with open(tmp_path / "kjv.valid.txt", "a") as f:
        f.write("w1\n")
    with pytest.raises(DataError, match="checksum"):
        C.load_corpus("kjv", tmp_path, version=1)


@pytest.mark.skipif(shutil.which("bible") is None, reason="needs Debian's bible-kjv")
def test_real_kjv_corpus(tmp_path):
    """Version 1 (the stored reproduction's corpus): the contiguous split by verse."""
    corpus = C.load_corpus("kjv", tmp_path, version=1)
    n = {k: int(v.numel()) for k, v in corpus.splits.items()}
    total = sum(n.values())
    # 31,102 verses (one <eos> each) and ~790k words
    eos = corpus.words.index("<eos>")
    assert sum(int((v == eos).sum()) for v in corpus.splits.values()) == 31_102
    assert 780_000 < total - 31_102 < 800_000
    assert corpus.vocab_size == 10_000
    assert abs(n["train"] / total - 0.9) < 0.01 and abs(n["valid"] / total - 0.05) < 0.01
    unk = corpus.words.index("<unk>")
    coverage = 1 - sum(int((v == unk).sum()) for v in corpus.splits.values()) / total
    assert 0.99 < coverage < 1.0
    # deterministic: a second build elsewhere gives the same checksum
    assert C.load_corpus("kjv", tmp_path / "again", version=1).sha256 == corpus.sha256
    first = [corpus.words[i] for i in corpus.splits["train"][:11].tolist()]
    assert first == ["in", "the", "beginning", "god", "created", "the", "heaven", "and", "the",
                     "earth", "<eos>"]
