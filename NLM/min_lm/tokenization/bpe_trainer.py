"""Training byte-level BPE: count pre-tokens, then merge the most frequent adjacent pair, repeatedly.

The textbook algorithm recounts every pair of every word after each merge. We get the same merges
far faster with three ideas:

1. Count each distinct pre-token once. The corpus becomes a table word -> frequency (counted in
   parallel processes, see `pretokenize.count_pretokens_in_file`); a pair's count is the sum over
   the words it occurs in, weighted by their frequency.
2. Update counts incrementally. Merging (a, b) only changes the words that contain it, so we keep
   an index pair -> words containing it, and in those words only the pairs next to each
   occurrence change: (x, a) and (b, y) become (x, ab) and (ab, y).
3. Find the best pair with a heap instead of a scan. Counts only ever fall, except for pairs with
   the newly made token, so an entry in the heap is checked when popped: if its count is out of
   date it is pushed back with the current count ("lazy deletion").

Rewriting a word at each merge that touches it costs time in proportion to its length, which is
quadratic for one huge word (a megabyte of base64 or DNA with no space in it). Words longer than
`LONG_WORD` bytes are therefore kept as linked lists with an index pair -> positions
(`_LongWord`), so that a merge costs time in proportion to the pair's occurrences only.

The merge loop has a compiled twin, `_train_core.c`, which keeps every word that way and gives the
same merges far faster; `native` (or MINLM_PURE_PYTHON=1) picks one, see `native.py`.

Ties between equally frequent pairs go to the lexicographically greater pair of byte strings. The
heap is a min-heap, so each entry's key is (-count, rev(a), rev(b)) where `rev` turns byte strings
into strings whose order is the reverse of the bytes' order (see `_descending_key`).
"""

from __future__ import annotations

import heapq
import os
import warnings
from array import array
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

from tqdm.auto import tqdm

from NLM.min_lm.errors import UserError
from NLM.min_lm.tokenization.documents import BadRecords, file_format, read_records
from NLM.min_lm.tokenization.native import native_module
from NLM.min_lm.tokenization.pretokenize import count_pretokens_in_documents, count_pretokens_in_file

# Words longer than this (in bytes) are merged through an index of positions (`_LongWord`); shorter
# ones are rewritten whole at each merge, which is faster while a word is short.
LONG_WORD = 2048

# Maps byte value i (as a latin-1 character) to code point 255 - i; see `_descending_key`.
_INVERT_BYTES = {i: 255 - i for i in range(256)}
_END_OF_KEY = "\u0100"  # sorts after every inverted byte


def _descending_key(token: bytes) -> str:
    """A string whose order is the reverse of the byte strings' order: x < y  <=>  key(x) > key(y).

    Each byte b becomes the character 255 - b, and a terminator greater than all of them is
    appended, so that a prefix (smaller as bytes) gets the greater key: key(b"ab") < key(b"a").
    """
    return token.decode("latin-1").translate(_INVERT_BYTES) + _END_OF_KEY


def train_bpe(
    input_path: str | os.PathLike | list[Path],
    vocab_size: int,
    special_tokens: list[str],
    *,
    num_workers: int | None = None,
    chunk_size: int = 4 << 20,
    verbose: bool = False,
    text_field: str = "text",
    bad_records: BadRecords | None = None,
    native: bool | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Learn a byte-level BPE vocabulary of `vocab_size` tokens from the UTF-8 text file `input_path`
    (or from a list of files in any format `documents` reads: one corpus, its documents counted apart).

    Returns (vocab, merges): vocab maps ids to token bytes (special tokens 0..k-1, then the 256
    single bytes, then one token per merge in order); merges lists the merged pairs in the order
    they were learned. Fewer merges come back when the text runs out of pairs.

    Options: `num_workers` processes count pre-tokens (default: the CPUs this process may use),
    reading the file in ranges of about `chunk_size` bytes; `verbose` shows progress bars; `text_field`
    and `bad_records` are for files of records (see `documents`); `native` picks the merge loop: the
    compiled core `_train_core` (True), this module's Python (False), or the core where it was built
    unless MINLM_PURE_PYTHON=1 (None). Both give the same merges.
    Invalid UTF-8 is replaced by U+FFFD, with one warning giving how many sequences were bad.
    """
    paths = [Path(p) for p in input_path] if isinstance(input_path, list) else [Path(input_path)]
    if isinstance(special_tokens, str):
        raise UserError(f"special_tokens must be a list of strings, got the string {special_tokens!r}")
    special_tokens = list(special_tokens)
    _check_arguments(paths, vocab_size, special_tokens)
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if num_workers < 1:
        raise UserError(f"num_workers must be at least 1, got {num_workers}")

    word_counts: Counter[str] = Counter()
    for path in paths:
        if file_format(path) in (None, "text"):
            counts, num_replaced = count_pretokens_in_file(
                path, special_tokens, num_workers=num_workers, chunk_size=chunk_size, verbose=verbose
            )
            if num_replaced:
                warnings.warn(
                    f"{path}: {num_replaced} invalid UTF-8 sequence(s) replaced by U+FFFD",
                    UnicodeWarning,
                    stacklevel=2,
                )
        else:
            counts = count_pretokens_in_documents(read_records(path, text_field, bad_records), special_tokens,
                                                  num_workers, chunk_size, verbose)
        if word_counts:
            word_counts.update(counts)
        else:  # one file: no copy of its (large) table
            word_counts = counts

    num_merges = vocab_size - len(special_tokens) - 256
    merge_ids, tokens = learn_merges(word_counts, num_merges, verbose=verbose, native=native)

    vocab = {i: s.encode("utf-8") for i, s in enumerate(special_tokens)}
    vocab.update({len(special_tokens) + i: token for i, token in enumerate(tokens)})
    merges = [(tokens[a], tokens[b]) for a, b in merge_ids]
    return vocab, merges


def _check_arguments(paths: list[Path], vocab_size: int, special_tokens: list[str]) -> None:
    """Reject input that cannot give a meaningful vocabulary, naming the file or value at fault."""
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such file")
        if not path.is_file():
            raise UserError(f"{path}: not a regular file")
    if all(path.stat().st_size == 0 for path in paths):
        what = "the file is" if len(paths) == 1 else "the files are"
        raise UserError(f"{paths[0]}: {what} empty, there is nothing to train on")
    for token in special_tokens:
        if not isinstance(token, str) or not token:
            raise UserError(f"special tokens must be non-empty strings, got {token!r}")
    duplicates = sorted({t for t in special_tokens if special_tokens.count(t) > 1})
    if duplicates:
        raise UserError(f"duplicate special token(s): {', '.join(duplicates)}")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise UserError(f"vocab_size must be an integer, got {vocab_size!r}")
    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise UserError(
            f"vocab_size {vocab_size} is too small: it must hold the 256 single bytes"
            f" and {len(special_tokens)} special token(s), at least {minimum}"
        )


def merge_loop_in_use(native: bool | None = None) -> str:
    """Which merge loop `train_bpe(..., native=native)` runs, in words for summaries."""
    return "compiled (_train_core)" if native_module("_train_core", native) else "pure Python"


def learn_merges(
    word_counts: dict[str, int], num_merges: int, verbose: bool = False, native: bool | None = None
) -> tuple[list[tuple[int, int]], list[bytes]]:
    """Run up to `num_merges` BPE merges on pre-token counts.

    Token ids here are 0..255 for the single bytes and 256, 257, ... for merged tokens. Returns the
    merged pairs as ids and the bytes of every token (index = id). `native` as in `train_bpe`.
    """
    core = native_module("_train_core", native)
    progress = tqdm(total=num_merges, desc="merges", unit="merge", disable=not verbose)
    if core is not None:
        merges = core.learn_merges(word_counts, num_merges, progress.update if verbose else None)
        tokens = [bytes([i]) for i in range(256)]
        for a, b in merges:
            tokens.append(tokens[a] + tokens[b])
    else:
        merges, tokens = _learn_merges_python(word_counts, num_merges, progress)
    progress.close()
    return merges, tokens


def _learn_merges_python(
    word_counts: dict[str, int], num_merges: int, progress: tqdm
) -> tuple[list[tuple[int, int]], list[bytes]]:
    """The merge loop in Python: the reference that `_train_core.learn_merges` mirrors."""
    # Words of one byte have no pairs and never change: only longer words take part.
    words: list[list[int]] = []
    freqs: list[int] = []
    for word, freq in word_counts.items():
        encoded = word.encode("utf-8")
        if len(encoded) > 1:
            words.append(list(encoded))
            freqs.append(freq)

    tokens = [bytes([i]) for i in range(256)]
    keys = [_descending_key(t) for t in tokens]
    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    words_with: defaultdict[tuple[int, int], set[int]] = defaultdict(set)  # may hold stale word ids
    for w, (word, freq) in enumerate(zip(words, freqs, strict=True)):
        for pair in pairwise(word):
            pair_counts[pair] += freq
            words_with[pair].add(w)
    long_words = {w: _LongWord(word) for w, word in enumerate(words) if len(word) > LONG_WORD}
    for w in long_words:
        words[w] = []  # the _LongWord holds it now
    heap = [(-count, keys[a], keys[b], a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    while len(merges) < num_merges and heap:
        neg_count, _, _, a, b = heapq.heappop(heap)
        count = pair_counts[a, b]
        if count != -neg_count:  # out of date: counts only fall, so re-file it with its true count
            if count > 0:
                heapq.heappush(heap, (-count, keys[a], keys[b], a, b))
            continue

        new = len(tokens)
        tokens.append(tokens[a] + tokens[b])
        keys.append(_descending_key(tokens[new]))
        merges.append((a, b))
        candidates = words_with.pop((a, b))
        new_pairs = _merge_in_words(a, b, new, words, freqs, candidates, pair_counts, words_with, long_words)
        for pair in new_pairs:
            count = pair_counts[pair]
            if count:  # 0 where, in a long word, the next occurrence undid the pair just made
                heapq.heappush(heap, (-count, keys[pair[0]], keys[pair[1]], pair[0], pair[1]))
        progress.update()
    return merges, tokens


def _merge_in_words(
    a: int,
    b: int,
    new: int,
    words: list[list[int]],
    freqs: list[int],
    candidates: set[int],
    pair_counts: defaultdict[tuple[int, int], int],
    words_with: defaultdict[tuple[int, int], set[int]],
    long_words: dict[int, _LongWord],
) -> set[tuple[int, int]]:
    """Replace each (a, b) by `new` in the candidate words, updating the pair counts and index.

    Only the neighbours of each occurrence change: in `x a b y`, the pairs (x, a) and (b, y) give way
    to (x, new) and (new, y). Two occurrences side by side (`a b a b`) share the pair between them,
    which becomes (new, new) once. The pair (a, b) itself disappears from every word, so its count
    is simply dropped. Returns the pairs that contain `new`.
    """
    new_pairs: set[tuple[int, int]] = set()
    for w in candidates:
        if long_words and w in long_words:
            made = long_words[w].merge(a, b, new, freqs[w], pair_counts)
            for pair in made:
                words_with[pair].add(w)
            new_pairs |= made
            continue
        word = words[w]
        last = len(word) - 1
        merged: list[int] = []
        start = 0  # word[start:] is not yet copied into `merged`
        search = 0
        unseen = word.count(a)  # counting first spares a ValueError at the end of each word
        while unseen:
            i = word.index(a, search)
            unseen -= 1
            if i == last:
                break
            if word[i + 1] != b:
                search = i + 1
                continue
            if a == b:  # the `b` just merged was an `a` too
                unseen -= 1
            freq = freqs[w]
            merged += word[start:i]
            if merged:  # left neighbour
                left = merged[-1]
                if left == new:  # the previous occurrence ended right here
                    pair = (new, new)
                else:
                    pair_counts[left, a] -= freq
                    pair = (left, new)
                pair_counts[pair] += freq
                words_with[pair].add(w)
                new_pairs.add(pair)
            merged.append(new)
            start = search = i + 2
            if start <= last:  # right neighbour
                right = word[start]
                pair_counts[b, right] -= freq
                if not (right == a and start < last and word[start + 1] == b):  # not another occurrence
                    pair = (new, right)
                    pair_counts[pair] += freq
                    words_with[pair].add(w)
                    new_pairs.add(pair)
        if start:  # stale index entries (the pair is no longer in the word) leave start at 0
            merged += word[start:]
            words[w] = merged
    pair_counts.pop((a, b), None)
    return new_pairs


class _LongWord:
    """A long word as a linked list of tokens with an index pair -> positions.

    A token keeps the position of the first byte it covers; `next` and `prev` link the positions
    still in use (-1 at the ends), and a position whose token was merged into its left neighbour
    holds _GONE. `positions` maps each pair in the word to the positions of its left token, so a
    merge visits only the pair's occurrences. This costs more per occurrence than rewriting a short
    word, and far less than rewriting a long word that holds a few occurrences.
    """

    _GONE = -1

    def __init__(self, word: list[int]):
        n = len(word)
        self.tokens = array("q", word)
        self.next = array("q", range(1, n + 1))
        self.next[-1] = -1
        self.prev = array("q", range(-1, n - 1))
        self.positions: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        for i, pair in enumerate(pairwise(word)):
            self.positions[pair].add(i)

    def merge(
        self, a: int, b: int, new: int, freq: int, pair_counts: defaultdict[tuple[int, int], int]
    ) -> set[tuple[int, int]]:
        """Replace each (a, b) by `new`, left to right; update `pair_counts` (weighted by the word's
        frequency `freq`) and return the pairs made with `new`, as `_merge_in_words` does."""
        tokens, next_, prev = self.tokens, self.next, self.prev
        found = self.positions.pop((a, b), set())
        made: set[tuple[int, int]] = set()
        # Occurrences overlap only when a == b ("a a a" gives "new a"): then go left to right.
        for i in sorted(found) if a == b else found:
            j = next_[i]
            if tokens[i] != a or j < 0 or tokens[j] != b:  # taken by the occurrence just merged
                continue
            left, k = prev[i], next_[j]
            if left >= 0:  # (x, a) at `left` becomes (x, new)
                x = tokens[left]
                self._move((x, a), left, (x, new), left, freq, pair_counts, made)
            if k >= 0:  # (b, y) at j becomes (new, y) at i
                y = tokens[k]
                self._move((b, y), j, (new, y), i, freq, pair_counts, made)
                prev[k] = i
            tokens[i], tokens[j] = new, self._GONE
            next_[i] = k
        return made

    def _move(
        self,
        old: tuple[int, int],
        i: int,
        pair: tuple[int, int],
        j: int,
        freq: int,
        pair_counts: defaultdict[tuple[int, int], int],
        made: set[tuple[int, int]],
    ) -> None:
        """The occurrence of pair `old` at position i becomes one of `pair` at position j."""
        pair_counts[old] -= freq
        where = self.positions.get(old)
        if where is not None:  # None for (a, a) itself while it is being merged
            where.discard(i)
            if not where:
                del self.positions[old]
        pair_counts[pair] += freq
        self.positions[pair].add(j)
        made.add(pair)
