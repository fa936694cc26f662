"""train_bpe against hand-worked examples and a plain, slow reference implementation.

The reference (bpe_reference.py) is the textbook algorithm written as directly as possible. The
fast trainer must give exactly the same vocabulary and merges.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import regex
from bpe_reference import GPT2_PATTERN, reference_train_bpe
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("NLM.min_lm.tokenization.tokenizer", reason="BPETokenizer module not written yet")

from NLM.min_lm.errors import UserError  # noqa: E402
from NLM.min_lm.tokenization import train_bpe  # noqa: E402
from NLM.min_lm.tokenization.pretokenize import (  # noqa: E402
    chunk_boundaries,
    count_pretokens_in_file,
    pretokenize,
)


def write(tmp_path: Path, text: str | bytes, name: str = "input.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_hand_worked_example(tmp_path):
    # Pre-tokens: "low" x1, " low" x4, " lower" x2, " widest" x3, " newest" x6.
    # Pair counts: (" ", "w") 4+2 = 6 ... ("s","t") and ("e","s") 9 = 3 + 6, (" ","n") 6, ("w","e") 2+3+6=11?
    # " widest" has w-i, " newest" has w-e, " lower" has w-e: ("w","e") = 6 + 2 = 8.
    # ("e","s") = 3 + 6 = 9, ("s","t") = 9, ("o","w") = 1 + 4 + 2 = 7, ("l","o") = 7.
    # Tie at 9 between (e,s) and (s,t): the greater pair (s,t) wins, then (e,st) = 9.
    text = "low low low low low lower lower widest widest widest newest newest newest newest newest newest"
    vocab, merges = train_bpe(write(tmp_path, text), 256 + 3, [], num_workers=1)
    assert merges == [(b"s", b"t"), (b"e", b"st"), (b"o", b"w")]
    assert vocab[256] == b"st" and vocab[257] == b"est" and vocab[258] == b"ow"
    assert vocab[0] == b"\x00" and vocab[255] == b"\xff"
    assert (vocab, merges) == reference_train_bpe(text, 259, [])


def test_ties_go_to_the_lexicographically_greater_pair(tmp_path):
    # Pre-tokens are the lines (a lone newline is its own pre-token). All three pairs count 1.
    _, merges = train_bpe(write(tmp_path, "ab\ncd\nba"), 256 + 3, [], num_workers=1)
    assert merges == [(b"c", b"d"), (b"b", b"a"), (b"a", b"b")]
    # Ties are decided on bytes, not on token ids: after (z, z) -> "zz" (id 256), the pairs
    # ("zz", "q") and ("{", "~") both count 2, and "{" > "zz" as bytes although its id is smaller.
    _, merges = train_bpe(write(tmp_path, "zzq\nzzq\nzz\n{~\n{~"), 256 + 3, [], num_workers=1)
    assert merges == [(b"z", b"z"), (b"{", b"~"), (b"zz", b"q")]
    # A longer token is greater than its prefix: ("zz", "a") beats ("z", "q") although "q" > "a".
    text = "zz\nzza\nzza\nzq\nzq"
    _, merges = train_bpe(write(tmp_path, text), 256 + 3, [], num_workers=1)
    assert merges == [(b"z", b"z"), (b"zz", b"a"), (b"z", b"q")]
    assert reference_train_bpe(text, 256 + 3, [])[1] == merges


def test_special_tokens_are_never_merged(tmp_path):
    text = "hello<|endoftext|>hello<|endoftext|><|endoftext|>world<|pad|>hello"
    specials = ["<|endoftext|>", "<|pad|>"]
    vocab, merges = train_bpe(write(tmp_path, text), 300, specials, num_workers=1)
    assert vocab[0] == b"<|endoftext|>" and vocab[1] == b"<|pad|>" and vocab[2] == b"\x00"
    for token in vocab.values():
        if token not in (b"<|endoftext|>", b"<|pad|>"):
            assert b"<|" not in token and b"|>" not in token
    # Without the split, "o<|" or "|>h" would be pre-tokens: every merge stays inside "hello"/"world".
    assert merges and all(a + b in b"hello" or a + b in b"world" for a, b in merges)
    assert (vocab, merges) == reference_train_bpe(text, 300, specials)


def test_matches_reference_on_english_corpus(data_dir):
    path = data_dir / "corpus.en"
    expected = reference_train_bpe(path.read_text(encoding="utf-8"), 500, ["<|endoftext|>"])
    assert train_bpe(path, 500, ["<|endoftext|>"], num_workers=1) == expected
    # Two worker processes and small chunks (the file has no special token: cuts fall at newlines).
    assert train_bpe(path, 500, ["<|endoftext|>"], num_workers=2, chunk_size=10_000) == expected


def test_matches_reference_on_tinystories(data_dir):
    path = data_dir / "tinystories_sample.txt"
    expected = reference_train_bpe(path.read_text(encoding="utf-8"), 400, ["<|endoftext|>"])
    for workers, chunk_size in [(1, 1 << 20), (2, 500), (2, 1)]:
        assert train_bpe(path, 400, ["<|endoftext|>"], num_workers=workers, chunk_size=chunk_size) == expected


def test_chunk_boundaries_sit_at_special_tokens(tmp_path):
    path = write(tmp_path, "one two<|endoftext|>three four<|endoftext|>five six seven<|endoftext|>eight")
    bounds = chunk_boundaries(path, 8, ["<|endoftext|>"])
    data = path.read_bytes()
    assert bounds[0] == 0 and bounds[-1] == len(data) and bounds == sorted(set(bounds))
    assert len(bounds) > 2
    assert all(data[b:].startswith(b"<|endoftext|>") for b in bounds[1:-1])


def test_chunk_boundaries_fall_back_to_lone_newlines(tmp_path):
    # One special token at the start: long documents are still cut, after a "\n" between printables.
    path = write(tmp_path, "<|endoftext|>" + "x = f(x)\nprint(x)\n\n" * 200 + "end")
    data = path.read_bytes()
    bounds = chunk_boundaries(path, 10, ["<|endoftext|>"])
    assert len(bounds) == 11
    assert all(data[b - 2 : b] == b")\n" and data[b : b + 1] in (b"p", b"x") for b in bounds[1:-1])
    # A special token holding a newline turns newline cuts off: it could be cut through.
    assert chunk_boundaries(path, 10, ["<|a\nb|>"]) == [0, len(data)]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="aZ9 \n\t\r\x0b\x1c\x1f'sldvé²٣\u00a0\u0085\u2003.-_😀", max_size=60))
def test_fast_pretokenize_equals_the_gpt2_regex(text):
    # ASCII blocks take a `re` pattern without \p{..} classes; the result must not change.
    assert pretokenize(text) == regex.findall(GPT2_PATTERN, text)
    mixed = f"{text}\nx\n{text.encode('ascii', 'ignore').decode()}"  # non-ASCII and ASCII blocks
    assert pretokenize(mixed) == regex.findall(GPT2_PATTERN, mixed)


_ALPHABET = "ab \n\t\r.,'sé😀1" + "\u00a0\u0085"


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=300), st.integers(1, 40))
def test_counts_do_not_depend_on_chunking(tmp_path_factory, text, chunk_size):
    path = write(tmp_path_factory.mktemp("chunks"), text + "x")
    whole, _ = count_pretokens_in_file(path, [], num_workers=1, chunk_size=1 << 20)
    assert count_pretokens_in_file(path, [], num_workers=1, chunk_size=chunk_size)[0] == whole
    with_special = text.replace("1", "<|endoftext|>") + "x"
    path = write(tmp_path_factory.mktemp("chunks"), with_special)
    whole, _ = count_pretokens_in_file(path, ["<|endoftext|>"], num_workers=1, chunk_size=1 << 20)
    assert count_pretokens_in_file(path, ["<|endoftext|>"], num_workers=1, chunk_size=chunk_size)[0] == whole


def test_invalid_utf8_is_replaced_with_one_warning(tmp_path):
    # Two bad sequences (a lone continuation byte, a truncated 3-byte sequence); a real U+FFFD is not counted.
    path = write(tmp_path, b"caf\xe9 ok \xe2\x82 fine \xef\xbf\xbd end")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vocab, merges = train_bpe(path, 270, [], num_workers=1)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "2 invalid UTF-8" in message and str(path) in message
    assert any("\ufffd".encode() in token for token in vocab.values())


def test_no_warning_for_valid_utf8(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_bpe(write(tmp_path, "héllo wörld \ufffd"), 260, [], num_workers=1)


@pytest.mark.parametrize(
    "content, vocab_size, specials, match",
    [
        (None, 300, [], "no such file"),
        ("", 300, [], "empty"),
        ("text", 255, [], "vocab_size 255 is too small"),
        ("text", 257, ["<a>", "<b>"], "at least 258"),
        ("text", 300, ["<a>", "<a>"], "duplicate special token.*<a>"),
        ("text", 300, [""], "non-empty"),
        ("text", 300.0, [], "must be an integer"),
        ("text", 300, "<|endoftext|>", "list of strings"),
    ],
)
def test_bad_input_raises_user_error(tmp_path, content, vocab_size, specials, match):
    path = tmp_path / "missing.txt" if content is None else write(tmp_path, content)
    with pytest.raises(UserError, match=match):
        train_bpe(path, vocab_size, specials)
    assert issubclass(UserError, ValueError)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(UserError, match="not a regular file"):
        train_bpe(tmp_path, 300, [])


def test_stops_when_pairs_run_out(tmp_path):
    vocab, merges = train_bpe(write(tmp_path, "abc"), 1000, ["<|endoftext|>"], num_workers=1)
    assert merges == [(b"b", b"c"), (b"a", b"bc")]
    assert len(vocab) == 1 + 256 + 2


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet="aaab \n", min_size=1, max_size=200), st.integers(256, 300))
def test_matches_reference_on_repetitive_text(tmp_path_factory, text, vocab_size):
    # Runs like "aaaa" and "abab" exercise the overlapping-occurrence cases of the incremental update.
    path = write(tmp_path_factory.mktemp("rep"), text)
    assert train_bpe(path, vocab_size, [], num_workers=1) == reference_train_bpe(text, vocab_size, [])
