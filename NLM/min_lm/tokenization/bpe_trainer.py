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

Ties between equally frequent pairs go to the lexicographically greater pair of byte strings. The
heap is a min-heap, so each entry's key is (-count, rev(a), rev(b)) where `rev` turns byte strings
into strings whose order is the reverse of the bytes' order (see `_descending_key`).
"""

from __future__ import annotations

import heapq
import os
import warnings
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

from tqdm.auto import tqdm

from NLM.min_lm.errors import UserError
from NLM.min_lm.tokenization.documents import BadRecords, file_format, read_records
from NLM.min_lm.tokenization.pretokenize import count_pretokens_in_documents, count_pretokens_in_file

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
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Learn a byte-level BPE vocabulary of `vocab_size` tokens from the UTF-8 text file `input_path`
    (or from a list of files in any format `documents` reads: one corpus, its documents counted apart).

    Returns (vocab, merges): vocab maps ids to token bytes (special tokens 0..k-1, then the 256
    single bytes, then one token per merge in order); merges lists the merged pairs in the order
    they were learned. Fewer merges come back when the text runs out of pairs.

    Options: `num_workers` processes count pre-tokens (default: the CPUs this process may use),
    reading the file in ranges of about `chunk_size` bytes; `verbose` shows progress bars; `text_field`
    and `bad_records` are for files of records (see `documents`).
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
    merge_ids, tokens = learn_merges(word_counts, num_merges, verbose=verbose)

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


def learn_merges(
    word_counts: dict[str, int], num_merges: int, verbose: bool = False
) -> tuple[list[tuple[int, int]], list[bytes]]:
    """Run up to `num_merges` BPE merges on pre-token counts.

    Token ids here are 0..255 for the single bytes and 256, 257, ... for merged tokens. Returns the
    merged pairs as ids and the bytes of every token (index = id).
    """
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
    heap = [(-count, keys[a], keys[b], a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    progress = tqdm(total=num_merges, desc="merges", unit="merge", disable=not verbose)
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
        new_pairs = _merge_in_words(a, b, new, words, freqs, words_with.pop((a, b)), pair_counts, words_with)
        for pair in new_pairs:
            heapq.heappush(heap, (-pair_counts[pair], keys[pair[0]], keys[pair[1]], pair[0], pair[1]))
        progress.update()
    progress.close()
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
) -> set[tuple[int, int]]:
    """Replace each (a, b) by `new` in the candidate words, updating the pair counts and index.

    Only the neighbours of each occurrence change: in `x a b y`, the pairs (x, a) and (b, y) give way
    to (x, new) and (new, y). Two occurrences side by side (`a b a b`) share the pair between them,
    which becomes (new, new) once. The pair (a, b) itself disappears from every word, so its count
    is simply dropped. Returns the pairs that contain `new`.
    """
    new_pairs: set[tuple[int, int]] = set()
    for w in candidates:
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
