"""The compiled encoder (`_encode_core.c`) against the Python reference, and the merge's complexity.

Every comparison is exact: the C core and the Python path must give the same ids on every corpus,
on generated text (surrogates, special tokens, long runs) and on hostile inputs, and both must equal
tiktoken / HF tokenizers where those can encode the text. The merge of a long pre-token is checked
for O(n log n) work by counting its steps (never by timing), and against references written here.

The core is optional; these tests skip where it was not built, unless MINLM_REQUIRE_NATIVE=1 (CI).
"""

from __future__ import annotations

import os
import pickle
import random
import threading
from itertools import pairwise, product

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from NLM.min_lm import cli
from NLM.min_lm.tokenization.native import native_module
from NLM.min_lm.tokenization.pretokenize import GPT2_REGEX, GPT2_SPLIT_PATTERN
from NLM.min_lm.tokenization.tokenizer import (
    _CHUNK_RE,
    BPETokenizer,
    merge_by_rank,
    read_merges_file,
    read_vocab_file,
)

EOT = "<|endoftext|>"
SPECIALS = [EOT, "<|a|>", "<|a|><|a|>", " <|sp|>\n"]  # overlapping, and one with whitespace inside
CORPORA = ["address.txt", "german.txt", "tinystories_sample.txt", "corpus.en", "owt_valid_sample.txt",
           "special_token_double_newlines_non_whitespace.txt", "special_token_trailing_newlines.txt",
           "sherlock_holmes.txt", "war_and_peace.txt"]

if native_module("_encode_core") is None and os.environ.get("MINLM_PURE_PYTHON", "") in ("", "0"):
    if os.environ.get("MINLM_REQUIRE_NATIVE") == "1":
        raise ImportError("MINLM_REQUIRE_NATIVE=1 but the compiled core _encode_core was not built")
    pytest.skip("the compiled core _encode_core is not built (pip install -e . with a C compiler)",
                allow_module_level=True)
if native_module("_encode_core") is None:
    pytest.skip("MINLM_PURE_PYTHON=1: the compiled core is switched off", allow_module_level=True)


class TinyCaches(BPETokenizer):
    """Caches of 4 entries and keys of 3 characters: every encode turns the generations over."""

    CACHE_SIZE = 4
    CACHED_CHARS = 3


@pytest.fixture(scope="module")
def gpt2_tables(data_dir):
    vocab = read_vocab_file(data_dir / "gpt2_vocab.json")
    return vocab, read_merges_file(data_dir / "gpt2_merges.txt")


@pytest.fixture(scope="module")
def python_gpt2(gpt2_tables) -> BPETokenizer:
    return BPETokenizer(*gpt2_tables, special_tokens=SPECIALS, native=False)


@pytest.fixture(scope="module")
def c_gpt2(gpt2_tables) -> BPETokenizer:
    return BPETokenizer(*gpt2_tables, special_tokens=SPECIALS, native=True)


@pytest.fixture(scope="module")
def c_tiny_caches(gpt2_tables) -> BPETokenizer:
    return TinyCaches(*gpt2_tables, special_tokens=SPECIALS, native=True)


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_tables) -> tiktoken.Encoding:
    vocab, _ = gpt2_tables
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT_PATTERN, special_tokens={EOT: 50256},
                             mergeable_ranks={token: i for i, token in vocab.items()})


@pytest.fixture(scope="module")
def hf_gpt2(data_dir):
    """HF tokenizers' GPT-2 BPE: Rust, and O(n log n) on long words, so a reference at 200 kB."""
    tokenizers = pytest.importorskip("tokenizers")
    files = (str(data_dir / "gpt2_vocab.json"), str(data_dir / "gpt2_merges.txt"))
    model = tokenizers.models.BPE.from_file(*files)
    hf = tokenizers.Tokenizer(model)
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    return hf


def test_the_switch_picks_the_core(monkeypatch):
    tables = powers_of_two_spaces()
    assert BPETokenizer(*tables, native=True).core == "C"
    assert BPETokenizer(*tables, native=False).core == "Python"
    monkeypatch.setenv("MINLM_PURE_PYTHON", "1")
    assert BPETokenizer(*tables).core == "Python"
    with pytest.raises(ImportError):
        native_module("_encode_core_that_was_never_built", native=True)
    monkeypatch.setenv("MINLM_PURE_PYTHON", "0")
    assert BPETokenizer(*tables).core == "C"


def test_version_says_which_encoder_runs(capsys, monkeypatch):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip().endswith("tokenizer encoder: C core")
    monkeypatch.setenv("MINLM_PURE_PYTHON", "1")
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip().endswith("tokenizer encoder: Python")


def test_pickled_tokenizer_rebuilds_its_core(c_gpt2, python_gpt2):
    """Worker processes get the tokenizer by pickle: the core is rebuilt there, not copied."""
    text = "Pickled tokenizers encode alike. " * 10
    for tokenizer in (c_gpt2, python_gpt2):
        copy = pickle.loads(pickle.dumps(tokenizer))
        assert copy.core == tokenizer.core and copy.encode(text) == tokenizer.encode(text)


# ------------------------------------------------------------------------------ corpora


@pytest.mark.parametrize("name", CORPORA)
def test_c_equals_python_and_tiktoken_on_corpus(name, data_dir, python_gpt2, c_gpt2, c_tiny_caches,
                                                tiktoken_gpt2):
    text = (data_dir / name).read_text(encoding="utf-8")[:400_000]
    expected = tiktoken_gpt2.encode(text, allowed_special={EOT}, disallowed_special=())
    if not any(s in text for s in SPECIALS[1:]):
        assert python_gpt2.encode(text) == expected
    assert c_gpt2.encode(text) == python_gpt2.encode(text)
    assert c_gpt2.encode(text) == python_gpt2.encode(text)  # warm caches
    assert c_tiny_caches.encode(text[:20_000]) == python_gpt2.encode(text[:20_000])
    assert list(c_gpt2.encode_iterable(text.splitlines(keepends=True))) == python_gpt2.encode(text)


# ------------------------------------------------------------------------------ generated text

# Text that is hard for a hand-written scanner: GPT-2's own classes, contractions, every kind of
# whitespace, lone surrogates, the largest code point, and pieces of the special tokens.
_ALPHABET = st.one_of(
    st.sampled_from([*"aZ09'sdmtlvre \t\n\r\x0b\x0c\x85\xa0\u2028\u3000\u1680<|>!.,-_", "\0", "\U0010ffff"]),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.characters(),
)
_RUNS = st.builds(lambda c, n: c * n, st.sampled_from([" ", "a", "\n", "7", "é", "🙂", "=", "\udc80"]),
                  st.integers(1, 300))
_PIECES = st.one_of(st.text(_ALPHABET, max_size=12), _RUNS,
                    st.sampled_from([*SPECIALS, "'ll", "'ve", " 's", "  \n "]))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(pieces=st.lists(_PIECES, max_size=12))
def test_c_equals_python_on_generated_text(pieces, python_gpt2, c_gpt2, c_tiny_caches):
    text = "".join(pieces)
    expected = python_gpt2.encode(text)
    assert c_gpt2.encode(text) == expected
    assert c_tiny_caches.encode(text) == expected


@settings(max_examples=300, deadline=None, derandomize=True)
@given(text=st.text(_ALPHABET, max_size=60))
def test_c_splits_text_like_the_regexes(text, c_gpt2):
    assert c_gpt2._native.chunks(text) == _CHUNK_RE.findall(text)
    assert c_gpt2._native.pretokens(text) == GPT2_REGEX.findall(text)


def test_c_classifies_every_code_point_as_the_regex_module_does(c_gpt2):
    every_char = "".join(map(chr, range(0x110000)))
    for text in (every_char, " ".join(every_char[:0x3000]), "'" + "'s".join(every_char[0x2000:0x4000])):
        assert c_gpt2._native.pretokens(text) == GPT2_REGEX.findall(text)
        assert c_gpt2._native.chunks(text) == _CHUNK_RE.findall(text)


# ------------------------------------------------------------------------------ hostile inputs


def _hostile_inputs() -> dict[str, str]:
    rng = random.Random(0)
    return {
        "letters": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(20_000)),
        "dna": "".join(rng.choice("ACGT") for _ in range(20_000)),
        "base64": "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
                          for _ in range(20_000)) + "==",
        "minified": "function(a,b){return a+b};var x=[1,2,3].map(function(y){return y*2});" * 300,
        "spaces": " " * 20_000 + "x" + "\t \n" * 3_000,
        "emoji": "🙂👍🏽" * 3_000,
        "surrogates": "".join(chr(rng.randrange(0xD800, 0xE000)) for _ in range(5_000)) + "a\udc80b",
        "contractions": "'s'll've're'd'm't''" * 1_000 + "'",
        "specials": EOT * 500 + "<|a|>" * 501 + "<|a|" + "<|a|><|a|><|a|>" + " <|sp|>\n" * 100 + "<|",
        "nul_and_max": "\x00" * 5_000 + "\U0010ffff" * 5_000,
        "digits": "0123456789" * 3_000,
    }


@pytest.mark.parametrize("name", list(_hostile_inputs()))
def test_c_equals_python_on_hostile_input(name, python_gpt2, c_gpt2, c_tiny_caches):
    text = _hostile_inputs()[name]
    expected = python_gpt2.encode(text)
    assert c_gpt2.encode(text) == expected
    assert c_tiny_caches.encode(text) == expected
    assert list(c_gpt2.encode_iterable(text[i : i + 1000] for i in range(0, len(text), 1000))) == expected


def test_threads_share_a_tokenizer_safely(c_gpt2, python_gpt2):
    """The core releases the GIL while merging a long pre-token; other threads may encode meanwhile."""
    rng = random.Random(1)
    texts = ["".join(rng.choice("abcdefgh") for _ in range(30_000)) + f" word{i} " * 200 for i in range(6)]
    expected = [python_gpt2.encode(text) for text in texts]
    results: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, c_gpt2.encode(texts[i])))
               for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(len(texts))] == expected


def test_misuse_of_the_core_raises_instead_of_crashing(c_gpt2):
    core = native_module("_encode_core")
    with pytest.raises(RuntimeError):
        core.Encoder.__new__(core.Encoder).encode_ordinary("x")
    with pytest.raises(TypeError):
        c_gpt2._native.encode_ordinary(b"bytes")
    good = dict(id_objects=(0, 1), byte_index=[0] * 256, merges=[(0, 1, 0, 1)], whole_tokens={"a": 1},
                char_classes=bytes(0x110000), cache_size=4, cached_chars=8, hash_key=bytes(16))
    core.Encoder(**good)
    for change, error in [({"byte_index": [0] * 255}, ValueError), ({"byte_index": [2] * 256}, ValueError),
                          ({"merges": [(0, 5, 0, 1)]}, ValueError), ({"merges": [(0, 1)]}, TypeError),
                          ({"merges": [(0, 1, -1, 1)]}, ValueError), ({"whole_tokens": {"a": 9}}, ValueError),
                          ({"whole_tokens": {b"a": 0}}, TypeError), ({"char_classes": bytes(10)}, ValueError),
                          ({"char_classes": b"\x07" * 0x110000}, ValueError), ({"cache_size": 0}, ValueError),
                          ({"hash_key": b"short"}, ValueError)]:
        with pytest.raises(error):
            core.Encoder(**(good | change))
    with pytest.raises(RuntimeError):
        core.Encoder(**good).__init__(**good)


# ------------------------------------------------------------------------------ the merge


def naive_merge(ids: list[int], rank_of: dict[tuple[int, int], int], merged_id: list[int]) -> list[int]:
    """The definition, written plainly: merge the leftmost lowest-ranked pair until none has a rank."""
    ids = list(ids)
    while True:
        candidates = [(rank_of[pair], i) for i, pair in enumerate(pairwise(ids)) if pair in rank_of]
        if not candidates:
            return ids
        rank, i = min(candidates)
        ids[i : i + 2] = [merged_id[rank]]


@st.composite
def random_bpe(draw) -> tuple[BPETokenizer, BPETokenizer]:
    """Random merges over a 4-letter alphabet (overlapping pairs, merges of merged tokens)."""
    vocab = {i: bytes([i]) for i in range(256)}
    tokens = [b"a", b"b", b"c", b" "]
    merges: list[tuple[bytes, bytes]] = []
    for _ in range(draw(st.integers(0, 25))):
        left, right = draw(st.sampled_from(tokens)), draw(st.sampled_from(tokens))
        if left + right not in tokens and len(left + right) <= 12:
            merges.append((left, right))
            tokens.append(left + right)
            vocab[len(vocab)] = left + right
    return (BPETokenizer(vocab, merges, native=False), BPETokenizer(vocab, merges, native=True))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(tokenizers=random_bpe(), token=st.binary(max_size=80) | st.text("abc ", max_size=200).map(str.encode))
def test_merges_equal_the_definition_on_random_vocabularies(tokenizers, token):
    python, c = tokenizers
    ids = [python._byte_ids[b] for b in token]
    expected = naive_merge(ids, python._merge_rank, python._merged_id)
    assert python._merge(token) == expected
    assert merge_by_rank(ids, python._merge_rank, python._merged_id) == expected
    assert c._native.merge(token) == expected
    text = token.decode("latin-1")
    assert c.encode(text) == python.encode(text)


@st.composite
def scrambled_bpe(draw) -> tuple[BPETokenizer, BPETokenizer]:
    """Merges that a trainer never writes but a merges file may hold: in any order (a merge may use a
    token that a later one makes) and making one token twice ("a"+"bb" and "ab"+"b"). Then a merge
    can make a pair of a lower rank than its own, which must go first."""
    words = [bytes(w) for n in (2, 3, 4) for w in product(b"ab", repeat=n)]
    vocab = {i: bytes([i]) for i in range(256)} | {256 + i: w for i, w in enumerate(words)}
    splits = [(w[:k], w[k:]) for w in words for k in range(1, len(w))]
    merges = draw(st.lists(st.sampled_from(splits), min_size=1, max_size=30, unique=True))
    return (BPETokenizer(vocab, merges, native=False), BPETokenizer(vocab, merges, native=True))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(tokenizers=scrambled_bpe(), token=st.binary(max_size=60).map(lambda b: bytes(b"ab"[x % 2] for x in b)))
def test_merges_equal_the_definition_on_scrambled_merges(tokenizers, token):
    python, c = tokenizers
    ids = [python._byte_ids[b] for b in token]
    expected = naive_merge(ids, python._merge_rank, python._merged_id)
    assert merge_by_rank(ids, python._merge_rank, python._merged_id) == expected
    assert c._native.merge(token) == expected


class CountingRanks(dict):
    """A rank table that counts lookups: the merge's work, seen through its one data access."""

    lookups = 0

    def get(self, key, default=None):
        self.lookups += 1
        return super().get(key, default)


def powers_of_two_spaces() -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Merges that join runs of spaces: "  ", then "    ", ... up to 64 spaces."""
    vocab = {i: bytes([i]) for i in range(256)}
    merges = []
    for k in range(6):
        half = b" " * 2**k
        merges.append((half, half))
        vocab[256 + k] = half + half
    return vocab, merges


def spaces_by_hand(n: int) -> list[int]:
    """Leftmost pairs merge first at every level, so n spaces end as blocks of 64 and then the binary
    digits of the remainder, largest first (the odd one out at each level is on the right)."""
    ids = [256 + 5] * (n // 64)
    for k in range(5, -1, -1):
        if n % 64 & (1 << k):
            ids.append(256 + k - 1 if k else 32)
    return ids


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 127, 1000, 200_000])
def test_long_runs_of_spaces_match_the_hand_count(n):
    vocab, merges = powers_of_two_spaces()
    for native in (False, True):
        tokenizer = BPETokenizer(vocab, merges, native=native)
        assert tokenizer.encode(" " * n) == spaces_by_hand(n)


def test_python_merge_does_linear_lookups_on_200_kb(python_gpt2, c_gpt2):
    rng = random.Random(2)
    spaces = BPETokenizer(*powers_of_two_spaces(), native=False)
    letters = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(200_000))
    dna = bytes(rng.choice(b"ACGT") for _ in range(200_000))
    for tokenizer, token, expected in [(python_gpt2, letters, c_gpt2._native.merge(letters)),
                                       (python_gpt2, dna, c_gpt2._native.merge(dna)),
                                       (spaces, b" " * 200_000, spaces_by_hand(200_000))]:
        ranks = CountingRanks(tokenizer._merge_rank)
        ids = [tokenizer._byte_ids[b] for b in token]
        assert merge_by_rank(ids, ranks, tokenizer._merged_id) == expected
        # one lookup per initial pair, then two per merge (its two neighbours): O(n) lookups. Each
        # merge lists at most two positions, each sorted when its rank comes up: O(n log n) in all.
        assert ranks.lookups <= 3 * len(token), ranks.lookups


def test_c_merge_steps_grow_linearly_and_ids_match_hf_on_200_kb(c_gpt2, python_gpt2, hf_gpt2):
    rng = random.Random(3)
    for alphabet in ("abcdefghijklmnopqrstuvwxyz", "ACGT"):
        steps = []
        for n in (50_000, 100_000, 200_000):
            text = "".join(rng.choice(alphabet) for _ in range(n))
            before = c_gpt2._native.merge_steps
            ids = c_gpt2.encode(text)
            steps.append(c_gpt2._native.merge_steps - before)
            assert steps[-1] <= 3 * n  # each merge pushes at most two entries: fewer than 3n pops
            if n == 200_000:
                assert ids == hf_gpt2.encode(text, add_special_tokens=False).ids
                assert ids == python_gpt2.encode(text)
        assert steps[2] / steps[0] < 4.5  # linear (x4 for x4 the length), nowhere near x16


def test_long_merges_match_the_definition_at_2_kb(c_gpt2, python_gpt2):
    """The naive definition is quadratic, so it is the reference at 2 kB (HF's is at 200 kB, above)."""
    rng = random.Random(4)
    rank_of, merged_id = python_gpt2._merge_rank, python_gpt2._merged_id
    for alphabet in (b"abcdefghijklmnopqrstuvwxyz", b"ACGT", b"0123456789", "é🙂".encode()):
        token = bytes(rng.choice(alphabet) for _ in range(2_000))
        expected = naive_merge([python_gpt2._byte_ids[b] for b in token], rank_of, merged_id)
        assert c_gpt2._native.merge(token) == expected
        assert python_gpt2._merge(token) == expected
