"""The compiled merge loop (_train_core) against the Python one and the textbook reference.

Three implementations must give exactly the same merges and vocabulary: the C core, the Python
reference in bpe_trainer.py (both of its paths: short words rewritten, long words linked), and the
slow recount-everything trainer of bpe_reference.py. Long words must cost work in proportion to
their length, which is checked by counting the positions a merge visits, not by timing.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from bpe_reference import reference_train_bpe
from hypothesis import given, settings
from hypothesis import strategies as st

from NLM.min_lm.tokenization import bpe_trainer, train_bpe
from NLM.min_lm.tokenization.bpe_trainer import learn_merges
from NLM.min_lm.tokenization.native import PURE_PYTHON_ENV
from NLM.min_lm.tokenization.pretokenize import count_pretokens

core = pytest.importorskip(
    "NLM.min_lm.tokenization._train_core", reason="C core not built (python setup.py build_ext --inplace)"
)

SPECIAL = "<|endoftext|>"


def write(tmp_path: Path, text: str, name: str = "input.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def both(word_counts: dict[str, int], num_merges: int) -> tuple:
    """The merges and tokens of the C core, after checking that the Python path gives the same."""
    native = learn_merges(word_counts, num_merges, native=True)
    assert learn_merges(word_counts, num_merges, native=False) == native
    return native


@pytest.mark.parametrize(
    "name, vocab_size",
    [
        ("corpus.en", 500),
        ("tinystories_sample.txt", 400),
        ("german.txt", 330),
        ("address.txt", 400),
        ("special_token_double_newlines_non_whitespace.txt", 270),
        ("special_token_trailing_newlines.txt", 270),
    ],
)
def test_core_equals_python_and_reference_on_shared_corpora(data_dir, name, vocab_size):
    path = data_dir / name
    expected = reference_train_bpe(path.read_text(encoding="utf-8"), vocab_size, [SPECIAL])
    for workers in (1, 2):
        for native in (True, False):
            options = dict(num_workers=workers, chunk_size=20_000, native=native)
            assert train_bpe(path, vocab_size, [SPECIAL], **options) == expected, (name, options)


@pytest.mark.parametrize("name", ["owt_valid_sample.txt", "sherlock_holmes.txt"])
def test_core_equals_python_on_larger_corpora(data_dir, name):
    path = data_dir / name
    python = train_bpe(path, 3000, [SPECIAL], num_workers=1, native=False)
    assert train_bpe(path, 3000, [SPECIAL], num_workers=2, native=True) == python
    assert len(python[1]) == 3000 - 257


_TEXT = st.text(alphabet="ab c\n'é😀1." + "\u00a0", max_size=300)


@settings(max_examples=60, deadline=None)
@given(_TEXT, st.integers(256, 330), st.booleans())
def test_core_equals_reference_on_generated_text(tmp_path_factory, text, vocab_size, with_special):
    specials = [SPECIAL, "<|pad|>"] if with_special else []
    text = (text.replace("1", SPECIAL).replace(".", "<|pad|>") if with_special else text) + "x"
    vocab_size = max(vocab_size, 256 + len(specials))
    path = write(tmp_path_factory.mktemp("gen"), text)
    expected = reference_train_bpe(text, vocab_size, specials)
    assert train_bpe(path, vocab_size, specials, num_workers=1, native=True) == expected


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.text(alphabet="abcé", min_size=1, max_size=40), st.integers(1, 1 << 40), max_size=30),
    st.integers(-1, 200),
)
def test_core_equals_python_on_generated_word_counts(word_counts, num_merges):
    # A three-letter alphabet makes equal tokens from different merges ("ab"+"c", "a"+"bc"), long
    # runs ("aaaa", "abab") and huge frequencies: every tie and overlap case of the update.
    merges, tokens = both(word_counts, num_merges)
    assert len(tokens) == 256 + len(merges)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="aab", min_size=2, max_size=120), st.integers(1, 60))
def test_long_word_path_equals_reference(monkeypatch_module, text, num_merges):
    # Every word of more than 3 bytes takes the linked path of the Python trainer.
    monkeypatch_module.setattr(bpe_trainer, "LONG_WORD", 3)
    text = text.replace("b", "b\n", 2)  # a few words, some short, with overlapping runs
    _, expected = reference_train_bpe(text, 256 + num_merges, [])
    merges, tokens = both(dict(count_pretokens(text, [])), num_merges)
    assert [(tokens[a], tokens[b]) for a, b in merges] == expected


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_long_word_work_is_linear_in_its_length(monkeypatch):
    # Count the positions each merge of the long word visits: the pair's occurrences. Rewriting the
    # word at each merge (the old way) visits all of it: n * merges positions.
    visited = []
    merge = bpe_trainer._LongWord.merge

    def counting_merge(self, a, b, new, freq, pair_counts):
        visited.append(len(self.positions.get((a, b), ())))
        return merge(self, a, b, new, freq, pair_counts)

    monkeypatch.setattr(bpe_trainer._LongWord, "merge", counting_merge)
    rng = random.Random(0)
    n = 50_000
    word = "".join(rng.choice("acgt") for _ in range(n))  # DNA: no whitespace, a single pre-token
    merges, tokens = learn_merges({word: 1, "acgt": 7}, 1500, native=False)
    assert len(merges) == 1500 and len(visited) >= 1000
    # Each merge removes one position per occurrence, and a position can be visited again only
    # after a neighbour merged: at most the n initial pairs and two per occurrence merged.
    assert sum(visited) <= 3 * n
    assert learn_merges({word: 1, "acgt": 7}, 1500, native=True) == (merges, tokens)


def test_core_on_a_long_word_equals_python():
    rng = random.Random(1)
    word = "".join(rng.choice("ab") for _ in range(20_000)) + "a" * 5000 + " " * 3000
    both({word: 3, word[:300]: 2, "ba": 1}, 800)


def test_core_equals_reference_on_hostile_text(tmp_path):
    # Long runs of one byte, of spaces and of a two-byte pattern, invalid UTF-8, specials back to
    # back and at the ends: one file, three trainers, the same vocabulary and merges.
    raw = (
        b"<|endoftext|>" + b"a" * 3000 + b" " * 4000 + b"x<|endoftext|><|endoftext|>\xff\xfe"
        + b"ab" * 2500 + b"\n\n\n" + "é".encode() * 900 + b"\xe2\x82 " + b"\t" * 700 + b"<|endoftext|>"
    )
    path = tmp_path / "hostile.txt"
    path.write_bytes(raw)
    expected = reference_train_bpe(raw.decode("utf-8", errors="replace"), 330, [SPECIAL])
    with pytest.warns(UnicodeWarning):
        for native in (True, False):
            assert train_bpe(path, 330, [SPECIAL], num_workers=2, chunk_size=1000, native=native) == expected


@pytest.mark.parametrize(
    "word_counts, error",
    [
        ({"ab": 0}, ValueError),
        ({"ab": -3}, ValueError),
        ({"ab": 1 << 64}, OverflowError),
        ({"abc": 1 << 62, "abd": 1 << 62}, OverflowError),  # counts could overflow 64 bits
        ({b"ab": 1}, TypeError),
        ({"ab": 1.0}, TypeError),
        ({"a\ud800b": 1}, UnicodeEncodeError),  # a lone surrogate has no UTF-8
    ],
)
def test_core_refuses_bad_word_counts(word_counts, error):
    with pytest.raises(error):
        core.learn_merges(word_counts, 10, None)


def test_core_edge_cases():
    assert core.learn_merges({}, 10, None) == []
    assert core.learn_merges({"ab": 1}, -5, None) == []
    assert core.learn_merges({"a": 5, "é": 2}, 10, None) == [(0xC3, 0xA9)]  # é is two bytes
    with pytest.raises(TypeError):
        core.learn_merges(["ab"], 10, None)
    with pytest.raises(TypeError):
        core.learn_merges({"ab": 1}, 10, 5)


def test_progress_reports_every_merge_and_errors_propagate():
    calls = []
    merges = core.learn_merges({"abcdefghij" * 300: 1, "xyz": 2}, 3000, calls.append)
    assert merges and sum(calls) == len(merges)

    def fail(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        core.learn_merges({"abcdefghij" * 300: 1}, 3000, fail)


def test_switch_picks_the_path(monkeypatch, tmp_path):
    path = write(tmp_path, "low lower lowest " * 20)
    ran_python = []
    python = bpe_trainer._learn_merges_python
    monkeypatch.setattr(
        bpe_trainer, "_learn_merges_python", lambda *args: ran_python.append(1) or python(*args)
    )
    expected = reference_train_bpe("low lower lowest " * 20, 270, [])
    monkeypatch.delenv(PURE_PYTHON_ENV, raising=False)
    assert bpe_trainer.merge_loop_in_use() == "compiled (_train_core)"
    assert train_bpe(path, 270, [], num_workers=1) == expected and not ran_python
    monkeypatch.setenv(PURE_PYTHON_ENV, "1")
    assert bpe_trainer.merge_loop_in_use() == "pure Python"
    assert train_bpe(path, 270, [], num_workers=1) == expected and ran_python == [1]
    assert train_bpe(path, 270, [], num_workers=1, native=True) == expected and ran_python == [1]
    monkeypatch.delenv(PURE_PYTHON_ENV)
    assert train_bpe(path, 270, [], num_workers=1, native=False) == expected and ran_python == [1, 1]
