"""Corpus lines are read as awd-lstm-lm's data.py reads them (issue 29)."""

from __future__ import annotations

from pathlib import Path

import pytest

from maxup.data.corpus import EOS, read_token_files


def _reference_ids(paths):
    """awd-lstm-lm data.py, written out: iterate the open file, words + <eos> per line."""
    index, out = {}, []
    for path in paths:
        ids = []
        with open(path, encoding="utf8") as f:
            for line in f:
                for w in line.split() + [EOS]:
                    ids.append(index.setdefault(w, len(index)))
        out.append(ids)
    return out


def _write(tmp_path: Path, texts) -> list[Path]:
    paths = []
    for name, text in zip(("train", "valid", "test"), texts, strict=True):
        p = tmp_path / f"ptb.{name}.txt"
        p.write_bytes(text.encode("utf-8"))
        paths.append(p)
    return paths


@pytest.mark.parametrize("sep", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028",
                                 "\u2029"])
def test_regression_splitlines_separators_do_not_end_a_line(tmp_path, sep):
    """str.splitlines() ended a line (one more <eos>) at these; the reference does not."""
    texts = [f" a b{sep}c d \n e f \n", f" a{sep}b \n", " c \r\n d \r e \n"]
    paths = _write(tmp_path, texts)
    corpus = read_token_files("ptb", paths)
    ref = _reference_ids(paths)
    assert [corpus.splits[s].tolist() for s in ("train", "valid", "test")] == ref
    eos = corpus.words.index(EOS)
    assert corpus.splits["train"].tolist().count(eos) == 2  # splitlines made it 3


def test_plain_newline_files_read_as_before(tmp_path):
    """PTB and WT2 files end lines with \\n only: the token stream is what splitlines gave."""
    texts = [" the cat \n sat on \n\n the mat", " a \n", " b \n c \n"]
    paths = _write(tmp_path, texts)
    corpus = read_token_files("ptb", paths)
    index, before = {}, []
    for t in texts:
        ids = []
        for line in t.splitlines():
            for w in line.split() + [EOS]:
                ids.append(index.setdefault(w, len(index)))
        before.append(ids)
    assert [corpus.splits[s].tolist() for s in ("train", "valid", "test")] == before \
        == _reference_ids(paths)
