"""The quickstart's corpus: the standard library's files, capped reading, the train/valid split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from NLM.min_lm.corpus import (
    build_corpus,
    read_documents,
    split_train_valid,
    stdlib_root,
    stdlib_sources,
    unigram_entropy,
)
from NLM.min_lm.errors import UserError
from NLM.min_lm.tokenization import END_OF_TEXT


def test_stdlib_sources_are_deterministic_and_leave_out_site_packages_and_tests():
    files = stdlib_sources()
    assert files == stdlib_sources() and len(files) > 100
    assert files != stdlib_sources(seed=1) and sorted(files) == sorted(stdlib_sources(seed=1))
    root = stdlib_root()
    for path in files:
        parts = path.relative_to(root).parts
        assert path.suffix == ".py" and "site-packages" not in parts and "test" not in parts[:-1]
    assert len(stdlib_sources(include_tests=True)) > len(files)


def test_read_documents_caps_bytes_at_a_line_break(tmp_path):
    a, b, bad = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "bad.txt"
    a.write_text("one\ntwo\n")
    b.write_text("three\nfour\nfive\n")
    bad.write_bytes(b"caf\xe9\n")
    assert list(read_documents([a, b], 100, skip_undecodable=False)) == ["one\ntwo\n", "three\nfour\nfive\n"]
    assert list(read_documents([a, b], 8 + 13, skip_undecodable=False)) == ["one\ntwo\n", "three\nfour\n"]
    assert list(read_documents([a, b], 8, skip_undecodable=False)) == ["one\ntwo\n"]
    assert list(read_documents([bad, a], 100, skip_undecodable=True)) == ["one\ntwo\n"]
    long_line = tmp_path / "long.txt"
    long_line.write_text("é" * 10)  # 20 bytes, no line break: the cap at 5 bytes splits the 3rd "é"
    assert list(read_documents([long_line], 5, skip_undecodable=False)) == ["éé"]
    with pytest.raises(UserError, match="bad.txt is not UTF-8"):
        list(read_documents([bad], 100, skip_undecodable=False))


def test_split_holds_out_the_tail_at_a_document_boundary():
    docs = ["a" * 50, "b" * 40, "c" * 9]  # joined: a [0, 50), EOT [50, 63), b [63, 103), EOT [103, 116), c
    assert split_train_valid(docs, 0.7) == ("a" * 50, "b" * 40 + END_OF_TEXT + "c" * 9)  # 95% point 37
    assert split_train_valid(docs, 0.5) == ("a" * 50 + END_OF_TEXT + "b" * 40, "c" * 9)  # 62: in the 1st EOT
    assert split_train_valid(docs, 0.05) == (END_OF_TEXT.join(docs)[:118], "c" * 7)  # 118: no boundary left
    # one long document: cut after the first line break past the 95% point
    text = "".join(f"line {i}\n" for i in range(100))  # 790 characters; 95% = 750, the "l" of "line 95"
    assert split_train_valid([text]) == (text[: text.index("line 96")], text[text.index("line 96") :])


def test_build_corpus_writes_train_and_valid(tmp_path):
    docs = []
    for i in range(40):
        path = tmp_path / f"doc{i:02}.txt"
        path.write_text(f"document {i}\n" * 5)
        docs.append(path)
    corpus = build_corpus(docs, tmp_path / "out", 10_000, skip_undecodable=False)
    train, valid = corpus.train_path.read_text(), corpus.valid_path.read_text()
    assert corpus.num_documents == 40
    # 2857 characters in all; 95% = 2714 falls in document 38, so validation is document 39
    assert valid == "document 39\n" * 5
    assert train == END_OF_TEXT.join(f"document {i}\n" * 5 for i in range(39))
    assert (corpus.train_bytes, corpus.valid_bytes) == (len(train.encode()), len(valid.encode()))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(UserError, match="too small"):
        build_corpus([tmp_path / "x.txt"], tmp_path / "out", 100, skip_undecodable=False)


def test_unigram_entropy_hand_worked():
    assert unigram_entropy(np.array([3, 3, 3])) == 0.0
    assert unigram_entropy(np.array([0, 1, 0, 1], dtype=np.uint16)) == pytest.approx(math.log(2))
    assert unigram_entropy(np.array([5, 5, 7, 9])) == pytest.approx(1.5 * math.log(2))


