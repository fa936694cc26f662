"""The train_tokenizer command: writes GPT-2-format files, prints a summary, fails cleanly."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("NLM.min_lm.tokenization.tokenizer", reason="BPETokenizer module not written yet")

from NLM.min_lm.scripts.train_tokenizer import main  # noqa: E402
from NLM.min_lm.tokenization import BPETokenizer, train_bpe  # noqa: E402


def test_writes_vocab_and_merges_that_load_back(data_dir, tmp_path, capsys):
    source = data_dir / "tinystories_sample.txt"
    out = tmp_path / "tok"
    assert main([str(source), "--vocab_size", "300", "--output_dir", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "300 tokens" in printed and "longest token" in printed and "trained in" in printed
    assert "compiled (_train_core) merge loop" in printed or "pure Python merge loop" in printed
    vocab_path, merges_path = out / "tinystories_sample_vocab.json", out / "tinystories_sample_merges.txt"
    assert sorted(p.name for p in out.iterdir()) == sorted([vocab_path.name, merges_path.name])

    vocab, merges = train_bpe(source, 300, ["<|endoftext|>"], num_workers=1)
    loaded = BPETokenizer.from_files(vocab_path, merges_path, ["<|endoftext|>"])
    text = source.read_text(encoding="utf-8")[:500]
    assert loaded.encode(text) == BPETokenizer(vocab, merges, ["<|endoftext|>"]).encode(text)
    assert loaded.decode(loaded.encode(text)) == text


def test_runs_as_a_module(data_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "NLM.min_lm.scripts.train_tokenizer",
            str(data_dir / "tinystories_sample.txt"),
            "--vocab_size",
            "280",
            "--output_dir",
            str(tmp_path),
            "--special_tokens",
            "<|endoftext|>",
            "<|pad|>",
            "--num_workers",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "280 tokens" in result.stdout
    assert (tmp_path / "tinystories_sample_vocab.json").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "no such file"),
        (["{input}", "--vocab_size", "100"], "vocab_size 100 is too small"),
        (["{input}", "--special_tokens", "<a>", "<a>"], "duplicate special token"),
        (["{input}", "--num_workers", "0"], "--num_workers"),
        (["{input}", "--output_dir", "{input}"], "not a directory"),
        (["{empty}"], "empty"),
    ],
)
def test_user_errors_are_one_line_and_leave_no_files(tmp_path, capsys, args, message):
    source = tmp_path / "in.txt"
    source.write_text("hello world, hello there\n" * 20, encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    out = tmp_path / "out"
    names = {
        "{input}": str(source),
        "{missing}": str(tmp_path / "nope.txt"),
        "{empty}": str(tmp_path / "empty.txt"),
    }
    argv = [names.get(a, a) for a in args]
    if "--output_dir" not in argv:
        argv += ["--output_dir", str(out)]
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("args", [["--vocab_size", "many"], ["--bogus"], []])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, args):
    argv = ([str(tmp_path / "in.txt")] if args else []) + args + ["--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "out").exists()
