"""BPETokenizer: ids identical to tiktoken's GPT-2 encoding, streaming, special tokens, GPT-2 files."""

from __future__ import annotations

import json
import re
from itertools import pairwise

import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from NLM.min_lm.errors import UserError
from NLM.min_lm.tokenization.pretokenize import GPT2_REGEX, GPT2_SPLIT_PATTERN, split_on_special_tokens
from NLM.min_lm.tokenization.tokenizer import (
    GPT2_ASCII_REGEX,
    WHITESPACE,
    BPETokenizer,
    bytes_to_unicode,
    from_printable,
    to_printable,
)

EOT = "<|endoftext|>"
CORPORA = [
    "address.txt",
    "german.txt",
    "tinystories_sample.txt",
    "corpus.en",
    "special_token_double_newlines_non_whitespace.txt",
    "special_token_trailing_newlines.txt",
]


class SmallBlocks(BPETokenizer):
    """Tiny blocks and caches, so that short test strings exercise stream cuts and cache turnover."""

    BLOCK_CHARS = 8
    CACHE_SIZE = 16


@pytest.fixture(scope="module")
def gpt2_files(data_dir):
    return data_dir / "gpt2_vocab.json", data_dir / "gpt2_merges.txt"


@pytest.fixture(scope="module")
def gpt2(gpt2_files) -> BPETokenizer:
    return BPETokenizer.from_files(*gpt2_files, special_tokens=[EOT])


@pytest.fixture(scope="module")
def gpt2_small_blocks(gpt2_files) -> BPETokenizer:
    return SmallBlocks.from_files(*gpt2_files, special_tokens=[EOT])


@pytest.fixture(scope="module")
def reference(gpt2) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding, built offline from the same files (GPT-2's ranks are its ids)."""
    ranks = {token: token_id for token_id, token in gpt2.vocab.items() if token_id != gpt2.encode(EOT)[0]}
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256})


# ------------------------------------------------------------------------------ printable alphabet


def test_printable_alphabet_is_a_bijection_onto_visible_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    every_byte = bytes(range(256))
    assert from_printable(to_printable(every_byte)) == every_byte


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_ascii_pattern_splits_ascii_text_like_gpt2s(text):
    assert GPT2_ASCII_REGEX.findall(text) == GPT2_REGEX.findall(text)


def test_chunk_whitespace_class_is_the_regex_modules_whitespace():
    every_char = "".join(map(chr, range(0x110000)))
    assert re.findall(f"[{WHITESPACE}]", every_char) == regex.findall(r"\s", every_char)


# ------------------------------------------------------------------------------ a hand-worked example


@pytest.fixture
def tiny() -> BPETokenizer:
    """Single bytes keep their byte value as id; 256 = "he", 257 = "th", 258 = "the"."""
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"he", 257: b"th", 258: b"the"}
    merges = [(b"h", b"e"), (b"t", b"h"), (b"t", b"he")]
    return BPETokenizer(vocab, merges, special_tokens=["<|eot|>"])


def test_hand_worked_merges_apply_lowest_rank_first(tiny):
    # "the": (h, e) has rank 0, so t|he, then (t, he) -> the. Merging (t, h) first would give th|e.
    assert tiny.encode("the") == [258]
    # "thhe": he first (rank 0), then th (rank 1); (th, he) is no merge.
    assert tiny.encode("thhe") == [257, 256]
    # " cat" has no merges: its bytes; "the" never merges across the pre-token boundary.
    assert tiny.encode("the cat") == [258, 32, 99, 97, 116]
    assert tiny.encode(" the") == [32, 258]  # " the" is one pre-token, but no merge joins " " and "the"


def test_special_token_not_in_vocab_gets_the_next_id(tiny):
    assert tiny.vocab[259] == b"<|eot|>"
    assert tiny.encode("the<|eot|>the") == [258, 259, 258]
    assert tiny.decode([258, 259, 32]) == "the<|eot|> "
    assert len(tiny) == 260


def test_vocab_without_all_single_bytes_is_refused():
    with pytest.raises(ValueError, match="single bytes"):
        BPETokenizer({0: b"a"}, [])


def test_empty_special_token_is_refused():
    with pytest.raises(ValueError, match="empty"):
        BPETokenizer({i: bytes([i]) for i in range(256)}, [], special_tokens=[""])


def test_merge_outside_the_vocab_is_refused():
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="merge 0"):
        BPETokenizer(vocab, [(b"a", b"b")])


def test_decode_replaces_invalid_utf8_and_rejects_unknown_ids(tiny):
    assert tiny.decode([0xFF, ord("a")]) == "\ufffda"
    assert tiny.decode(tiny.encode("é")[:1]) == "\ufffd"
    with pytest.raises(ValueError, match="unknown token id 999"):
        tiny.decode([1, 999])


# ------------------------------------------------------------------------------ identity with tiktoken


@pytest.mark.parametrize("name", CORPORA)
def test_matches_tiktoken_on_corpus(name, data_dir, gpt2, gpt2_small_blocks, reference):
    path = data_dir / name
    text = path.read_text(encoding="utf-8")
    ids = gpt2.encode(text)
    assert ids == reference.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text
    with open(path, encoding="utf-8") as lines:
        assert list(gpt2.encode_iterable(lines)) == ids
    with open(path, encoding="utf-8") as lines:
        assert list(gpt2_small_blocks.encode_iterable(lines)) == ids


def test_special_token_fixtures_keep_newlines_around_the_special(data_dir, gpt2):
    trailing = (data_dir / "special_token_trailing_newlines.txt").read_text(encoding="utf-8")
    assert [gpt2.decode([i]) for i in gpt2.encode(trailing)] == [EOT, "\n\n"]
    double = (data_dir / "special_token_double_newlines_non_whitespace.txt").read_text(encoding="utf-8")
    assert [gpt2.decode([i]) for i in gpt2.encode(double)] == [EOT, "\n", "\n", "testing", "!"]


# Strings built from pieces that stress GPT-2's pre-tokenizer: whitespace runs of every kind,
# contractions, digits, letters from several scripts, emoji, and the special token.
_pieces = st.sampled_from([
    " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "\u2028", "'s", "'ll", "'", "don't",
    "0", "123", "٣", "²", "Hello", " world", "héllo", "Straße", "日本語", "😀", "👍🏽", "<|", "|>", EOT,
    "<|endoftext", ".", "...", "(", ")", "=", "_", "é", "ß",
])
_texts = st.lists(st.one_of(_pieces, st.text(max_size=6)), max_size=30).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_texts)
def test_matches_tiktoken_on_generated_text(text, gpt2, reference):
    ids = gpt2.encode(text)
    assert ids == reference.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_texts, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_encode_iterable_equals_encode_for_any_split(text, cuts, gpt2, gpt2_small_blocks):
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    parts = [text[a:b] for a, b in pairwise(bounds)]
    assert list(gpt2_small_blocks.encode_iterable(parts)) == gpt2.encode(text)


# ------------------------------------------------------------------------------ special tokens


def test_overlapping_special_tokens_prefer_the_longest(gpt2_files):
    double = EOT + EOT
    tok = SmallBlocks.from_files(*gpt2_files, special_tokens=[EOT, double])
    double_id = tok.encode(double)
    assert len(double_id) == 1 and double_id[0] > 50256
    text = f"Hi{double}there{EOT} bye{double}{EOT}"
    ids = tok.encode(text)
    assert ids.count(double_id[0]) == 2 and ids.count(50256) == 2
    assert tok.decode(ids) == text
    # A special token split across the pieces of a stream is still found, longest first.
    parts = ["Hi<|endof", "text|><|end", "oftext|>the", "re<", "|endoftext|> bye"]
    assert list(tok.encode_iterable(parts)) == tok.encode("".join(parts))


_ODD_SPECIALS = [EOT, EOT + EOT, "<|end of text|>", " <s>", "\n\n<sep>"]  # overlapping, with whitespace
_odd_texts = st.lists(st.one_of(_pieces, st.sampled_from(_ODD_SPECIALS + ["<s>", " <", "<sep", "\n\n"])),
                      max_size=25).map("".join)


@pytest.fixture(scope="module")
def odd_specials(gpt2_files) -> BPETokenizer:
    return SmallBlocks.from_files(*gpt2_files, special_tokens=_ODD_SPECIALS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_odd_texts, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_special_tokens_with_whitespace_match_split_then_tiktoken(text, cuts, odd_specials, reference):
    expected = []
    for i, piece in enumerate(split_on_special_tokens(text, _ODD_SPECIALS)):
        expected += odd_specials.encode(piece) if i % 2 else reference.encode_ordinary(piece)
    assert odd_specials.encode(text) == expected
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    assert list(odd_specials.encode_iterable(text[a:b] for a, b in pairwise(bounds))) == expected
    assert odd_specials.decode(expected) == text


def test_text_that_merely_resembles_a_special_token_is_ordinary_text(gpt2, reference):
    for text in ["<|endoftext", "<|endoftext|", "endoftext|>", "<| endoftext|>"]:
        assert 50256 not in gpt2.encode(text)
        assert gpt2.encode(text) == reference.encode(text, allowed_special="all")


def test_without_special_tokens_the_marker_is_ordinary_text(gpt2_files, reference):
    plain = BPETokenizer.from_files(*gpt2_files)
    text = f"a{EOT}b"
    assert plain.encode(text) == reference.encode_ordinary(text)


def test_long_input_without_whitespace_streams(gpt2, gpt2_small_blocks):
    text = "x" * 300 + ".," * 50 + "😀" * 20
    assert list(gpt2_small_blocks.encode_iterable([text[i : i + 7] for i in range(0, len(text), 7)])) == \
        gpt2.encode(text)


class CountingCuts(BPETokenizer):
    """Counts the searches for a safe cut, the only part of streaming that rescans text."""

    BLOCK_CHARS = 1000
    cut_searches = 0

    def _last_safe_cut(self, text, start, end):
        self.cut_searches += 1
        return super()._last_safe_cut(text, start, end)


def test_streaming_a_long_run_without_a_cut_searches_a_logarithmic_number_of_times():
    vocab = {i: bytes([i]) for i in range(256)}
    tokenizer = CountingCuts(vocab, [], native=False)
    text = "x" * 200_000 + " end"
    assert list(tokenizer.encode_iterable(iter(text))) == tokenizer.encode(text)
    assert tokenizer.cut_searches < 40  # the pending text must double between searches: ~2 log2(200)


def test_caches_keep_no_long_keys():
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab"}
    tokenizer = BPETokenizer(vocab, [(b"a", b"b")], native=False)
    words = [f"{i:x}" + "ab" * 200 for i in range(50)]
    assert tokenizer.encode(" ".join(words)) == tokenizer.encode(" ".join(words))
    cached = [*tokenizer._chunk_ids, *tokenizer._pretoken_ids]
    assert cached and max(map(len, cached)) <= BPETokenizer.CACHED_CHARS


# ------------------------------------------------------------------------------ files


def test_save_and_from_files_round_trip(tmp_path, tiny):
    tiny.save(tmp_path / "vocab.json", tmp_path / "merges.txt")
    merges_lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges_lines[0].startswith("#version") and merges_lines[1:] == ["h e", "t h", "t he"]
    vocab_json = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert vocab_json["Ġ"] == 32 and vocab_json["the"] == 258 and vocab_json["<|eot|>"] == 259
    loaded = BPETokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt", ["<|eot|>"])
    assert loaded.vocab == tiny.vocab and loaded.merges == tiny.merges
    assert loaded.encode("the cat<|eot|>") == tiny.encode("the cat<|eot|>")


def test_gpt2_files_survive_save_and_a_version_line(tmp_path, gpt2, gpt2_files):
    gpt2.save(tmp_path / "v.json", tmp_path / "m.txt")
    again = BPETokenizer.from_files(tmp_path / "v.json", tmp_path / "m.txt", [EOT])
    assert again.vocab == gpt2.vocab and again.merges == gpt2.merges
    # GPT-2's merges with a `#version` header and a blank trailing line load the same.
    merges = "#version: 0.2\n" + gpt2_files[1].read_text(encoding="utf-8").rstrip("\n") + "\n\n"
    (tmp_path / "m2.txt").write_text(merges, encoding="utf-8")
    assert BPETokenizer.from_files(gpt2_files[0], tmp_path / "m2.txt").merges == gpt2.merges


def _write_base_files(tmp_path):
    """A valid byte-level vocab (one token per line, as `save` writes) and a two-line merges file."""
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab"}
    BPETokenizer(vocab, [(b"a", b"b")]).save(tmp_path / "vocab.json", tmp_path / "merges.txt")
    return (tmp_path / "vocab.json").read_text(encoding="utf-8")


def _replace(old: str, new: str):
    return lambda vocab_text: vocab_text.replace(old, new)


@pytest.mark.parametrize(
    ("edit_vocab", "merges", "message"),
    [
        (_replace('"ab": 256', '"ab": '), None, r"vocab\.json:\d+: invalid JSON"),
        (lambda v: "[1, 2]", None, r"vocab\.json: expected a JSON object"),
        (_replace('"ab": 256', '"a b": 256'), None, r"vocab\.json:258: token 'a b' has character ' '"),
        (_replace('"ab": 256', '"ab": "x"'), None, r"vocab\.json:258: id of token 'ab' must be"),
        (_replace('"ab": 256', '"ab": 255'), None, r"vocab\.json:258: id 255 is used by two tokens"),
        (_replace('"ab": 256', '"a": 256'), None, r"vocab\.json:\d+: token 'a' appears twice"),
        (None, "#version: 0.2\na b c\n", r"merges\.txt:2: expected two tokens"),
        (None, "a b\nab\n", r"merges\.txt:2: expected two tokens"),
        (None, "a  b\n", r"merges\.txt:1: expected two tokens"),
        (None, "a b\nab b\n", r"merges\.txt:2: token 'abb' is not in the vocab"),
        (None, "a b\nq\x00 b\n", r"merges\.txt:2: character '\\x00'"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path, edit_vocab, merges, message):
    vocab_text = _write_base_files(tmp_path)
    if edit_vocab is not None:
        (tmp_path / "vocab.json").write_text(edit_vocab(vocab_text), encoding="utf-8")
    if merges is not None:
        (tmp_path / "merges.txt").write_text(merges, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        BPETokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")


def test_missing_file_is_a_user_error(tmp_path):
    _write_base_files(tmp_path)
    with pytest.raises(UserError, match="nope.json: no such file"):
        BPETokenizer.from_files(tmp_path / "nope.json", tmp_path / "merges.txt")
