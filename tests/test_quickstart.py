"""The quickstart: the corpus helpers on hand-made files, and `--tiny` end to end as a subprocess."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from NLM.min_lm.corpus import (
    EOS,
    build_corpus,
    read_documents,
    split_train_valid,
    stdlib_root,
    stdlib_sources,
    unigram_entropy,
)
from NLM.min_lm.errors import UserError
from NLM.min_lm.scripts.quickstart import QuickstartConfig, main

RUN_FILES = ["train.txt", "valid.txt", "train_vocab.json", "train_merges.txt", "train.npy", "valid.npy",
             "model.pt", "model_best.pt", "metrics.jsonl", "loss.png", "samples.txt", "summary.json"]


# ---- corpus --------------------------------------------------------------------------------------


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
    docs = ["a" * 50, "b" * 40, "c" * 9]  # joined: a [0, 50), EOS [50, 63), b [63, 103), EOS [103, 116), c
    assert split_train_valid(docs, 0.7) == ("a" * 50, "b" * 40 + EOS + "c" * 9)  # 95% point 37
    assert split_train_valid(docs, 0.5) == ("a" * 50 + EOS + "b" * 40, "c" * 9)  # 62: inside the 1st EOS
    assert split_train_valid(docs, 0.05) == (EOS.join(docs)[:118], "c" * 7)  # 118: no boundary left
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
    assert train == EOS.join(f"document {i}\n" * 5 for i in range(39))
    assert (corpus.train_bytes, corpus.valid_bytes) == (len(train.encode()), len(valid.encode()))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(UserError, match="too small"):
        build_corpus([tmp_path / "x.txt"], tmp_path / "out", 100, skip_undecodable=False)


def test_unigram_entropy_hand_worked():
    assert unigram_entropy(np.array([3, 3, 3])) == 0.0
    assert unigram_entropy(np.array([0, 1, 0, 1], dtype=np.uint16)) == pytest.approx(math.log(2))
    assert unigram_entropy(np.array([5, 5, 7, 9])) == pytest.approx(1.5 * math.log(2))


# ---- the command ---------------------------------------------------------------------------------


def test_tiny_sizes_are_defaults_that_flags_override():
    tiny = QuickstartConfig(tiny=True, d_model=96)
    assert (tiny.d_model, tiny.max_bytes, tiny.vocab_size) == (96, 300_000, 512)
    assert QuickstartConfig().vocab_size == 4096
    with pytest.raises(UserError, match="--max_iters"):
        QuickstartConfig(max_iters=0)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--data", "does/not/exist.txt"], "does/not/exist.txt"),
        (["--vocab_size", "100"], "--vocab_size"),
        (["--top_p", "0"], "--top_p"),
        (["--d_model", "100", "--num_heads", "3"], "--d_model"),  # caught before any stage runs
    ],
)
def test_user_mistakes_are_one_line_exit_2(tmp_path, capsys, argv, expected):
    try:
        code = main([*argv, "--out_dir", str(tmp_path / "run"), "--no-progress"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err


def test_tiny_quickstart_end_to_end(tmp_path):
    out_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "NLM.min_lm.cli", "quickstart", "--tiny", "--out_dir", str(out_dir)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in RUN_FILES:
        assert (out_dir / name).is_file() and (out_dir / name).stat().st_size > 0, name
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["best_val_loss"] < summary["valid_unigram_entropy"] - 0.5
    samples = (out_dir / "samples.txt").read_text(encoding="utf-8")
    assert samples.count("--- sample") == 3 and len(samples) > 200
    assert "unigram entropy" in result.stdout and "val loss" in result.stdout
    assert all(f"[{i}/5]" in result.stdout for i in range(1, 6))


def test_quickstart_on_user_data(tmp_path, capsys):
    data = tmp_path / "story.txt"
    data.write_text(EOS.join(f"Story {i}: the cat sat on mat number {i}.\n" * 3 for i in range(200)))
    out_dir = tmp_path / "run"
    argv = ["--data", str(data), "--out_dir", str(out_dir), "--tiny", "--max_iters", "20", "--d_model", "32",
            "--num_samples", "1", "--sample_tokens", "10", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["corpus"] == "1 file(s) from --data" and summary["iterations"] == 20
    assert (out_dir / "valid.txt").read_text().startswith("Story ")
    assert Path(summary["files"]["checkpoint"]).is_file()


def test_quickstart_with_the_speedrun_recipe(tmp_path):
    data = tmp_path / "story.txt"
    data.write_text(EOS.join(f"Story {i}: the cat sat on mat number {i}.\n" * 3 for i in range(200)))
    out_dir = tmp_path / "run"
    argv = ["--data", str(data), "--out_dir", str(out_dir), "--tiny", "--max_iters", "20", "--d_model", "32",
            "--num_samples", "1", "--sample_tokens", "10", "--no-progress", "--device", "cpu",
            "--recipe", "speedrun"]
    assert main(argv) == 0
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["model_config"]["qk_norm"] and summary["model_config"]["zero_init_proj"]
    saved = torch.load(out_dir / "model.pt", weights_only=True)
    assert saved["train_config"]["optimizer"] == "muon" and saved["train_config"]["lr_schedule"] == "wsd"
    assert summary["best_val_loss"] < math.log(summary["vocab_size"])  # it learned: better than uniform
