"""The tokenize command: .npy files equal to BPETokenizer.encode, in any number of workers; clean errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from NLM.min_lm.scripts import tokenize
from NLM.min_lm.tokenization import documents, encode_files
from NLM.min_lm.tokenization.tokenizer import END_OF_TEXT, BPETokenizer

EOT = END_OF_TEXT


@pytest.fixture(scope="module")
def gpt2(data_dir) -> BPETokenizer:
    return BPETokenizer.from_files(data_dir / "gpt2_vocab.json", data_dir / "gpt2_merges.txt", [EOT])


@pytest.fixture
def small_blocks(monkeypatch):
    """Read 64 bytes and encode ~100 characters at a time, so small files span many blocks."""
    monkeypatch.setattr(documents, "READ_BYTES", 64)
    monkeypatch.setattr(encode_files, "BLOCK_CHARS", 100)


def _gpt2_args(data_dir, *inputs, out, **flags) -> list[str]:
    argv = ["--inputs", *map(str, inputs), "--vocab_path", str(data_dir / "gpt2_vocab.json"),
            "--merges_path", str(data_dir / "gpt2_merges.txt"), "--output_dir", str(out), "--no-progress"]
    for name, value in flags.items():
        argv += [f"--{name}", str(value)]
    return argv


@pytest.mark.parametrize("workers", [1, 2])
def test_npy_equals_encode(workers, tmp_path, data_dir, gpt2, small_blocks):
    # Multi-byte characters straddle the 64-byte reads; \r\n must survive (the file is read as bytes).
    mixed = tmp_path / "mixed.txt"
    mixed.write_bytes(("Grüße, 世界! 😀\r\n  indented line\tTab" + EOT + "\n\n").encode("utf-8") * 7)
    inputs = [data_dir / "tinystories_sample.txt", data_dir / "german.txt", mixed]
    assert tokenize.main(_gpt2_args(data_dir, *inputs, out=tmp_path / "out", workers=workers)) == 0
    for path in inputs:
        ids = np.load(tmp_path / "out" / f"{path.stem}.npy")
        assert ids.dtype == np.uint16
        assert ids.tolist() == gpt2.encode(path.read_bytes().decode("utf-8"))
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["german.npy", "mixed.npy", "tinystories_sample.npy"]  # no temporary files left


def test_run_returns_counts_and_empty_files_give_empty_arrays(tmp_path, data_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    config = tokenize.TokenizeConfig(
        inputs=[str(empty), str(data_dir / "address.txt")], vocab_path=str(data_dir / "gpt2_vocab.json"),
        merges_path=str(data_dir / "gpt2_merges.txt"), output_dir=str(tmp_path / "out"), progress=False)
    results = tokenize.run(config)
    assert [r.num_tokens for r in results][0] == 0 and results[1].num_tokens > 200
    assert np.load(tmp_path / "out" / "empty.npy").shape == (0,)


def test_ids_beyond_uint16_are_stored_as_uint32(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)} | {70_000: b"ab"}
    BPETokenizer(vocab, [(b"a", b"b")]).save(tmp_path / "v.json", tmp_path / "m.txt")
    (tmp_path / "in.txt").write_text("abc ab")
    argv = ["--inputs", str(tmp_path / "in.txt"), "--vocab_path", str(tmp_path / "v.json"),
            "--merges_path", str(tmp_path / "m.txt"), "--output_dir", str(tmp_path), "--no-progress"]
    assert tokenize.main(argv) == 0
    ids = np.load(tmp_path / "in.npy")
    assert ids.dtype == np.uint32
    # The default special token is not in this vocab, so it was appended as id 70_001 (unused here).
    assert ids.tolist() == [70_000, ord("c"), ord(" "), 70_000]


def test_command_line_entry_point(tmp_path, data_dir, gpt2):
    argv = _gpt2_args(data_dir, data_dir / "address.txt", out=tmp_path)
    proc = subprocess.run([sys.executable, "-m", "NLM.min_lm.scripts.tokenize", *argv[:-1]],
                          capture_output=True, text=True, check=True)
    assert "bytes/token" in proc.stdout and "MB/s" in proc.stdout
    ids = np.load(tmp_path / "address.npy")
    assert ids.tolist() == gpt2.encode((data_dir / "address.txt").read_text(encoding="utf-8"))


def _assert_one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    for fragment in fragments:
        assert fragment in err, err


def test_missing_input_exits_2(tmp_path, data_dir, capsys):
    assert tokenize.main(_gpt2_args(data_dir, tmp_path / "nope.txt", out=tmp_path)) == 2
    _assert_one_line_error(capsys, "nope.txt")


def test_malformed_vocab_exits_2(tmp_path, data_dir, capsys):
    (tmp_path / "bad.json").write_text('{"a": 0,\n"b": }')
    (tmp_path / "in.txt").write_text("hello")
    argv = ["--inputs", str(tmp_path / "in.txt"), "--vocab_path", str(tmp_path / "bad.json"),
            "--merges_path", str(data_dir / "gpt2_merges.txt"), "--output_dir", str(tmp_path)]
    assert tokenize.main(argv) == 2
    _assert_one_line_error(capsys, "bad.json:2", "invalid JSON")


def test_vocab_that_is_not_byte_level_exits_2(tmp_path, capsys):
    (tmp_path / "v.json").write_text('{"a": 0}')
    (tmp_path / "m.txt").write_text("")
    (tmp_path / "in.txt").write_text("hello")
    argv = ["--inputs", str(tmp_path / "in.txt"), "--vocab_path", str(tmp_path / "v.json"),
            "--merges_path", str(tmp_path / "m.txt"), "--output_dir", str(tmp_path)]
    assert tokenize.main(argv) == 2
    _assert_one_line_error(capsys, "single bytes")


def test_invalid_utf8_leaves_no_output(tmp_path, data_dir, capsys, small_blocks):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text " * 30 + b"\xff" + b" more")
    out = tmp_path / "out"
    assert tokenize.main(_gpt2_args(data_dir, bad, out=out)) == 2
    _assert_one_line_error(capsys, "bad.txt", "not UTF-8", "offset 300")
    assert list(out.iterdir()) == []


def test_bad_worker_count_exits_2(tmp_path, data_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tokenize.main(_gpt2_args(data_dir, data_dir / "address.txt", out=tmp_path, workers=0))
    assert exit_info.value.code == 2
    assert "--workers" in capsys.readouterr().err
