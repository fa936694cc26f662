"""GPT-2 pre-tokenization: split text into the pieces that BPE merges never cross.

Two rules, applied in this order:
1. Special tokens (e.g. `<|endoftext|>`) cut the text first; they are never part of a pre-token.
   When special tokens overlap (`<|a|>` and `<|a|><|a|>`), the longest one wins.
2. Each stretch between special tokens is split by GPT-2's regex: contractions, optional-space +
   letters, optional-space + digits, optional-space + other symbols, and whitespace runs (a run
   before a non-space keeps its last space for the next word, hence `\\s+(?!\\S)`).

For training on large files the second half of this module counts pre-tokens in parallel: the file
is cut into byte ranges at places where cutting cannot change the pre-tokenization, and each worker
process reads and counts its own range, so memory holds one range per worker plus the counts. Records
(JSON lines, Parquet rows) are documents that pre-tokens never cross, so they are counted in groups sent
to the workers as they are read.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import pairwise
from pathlib import Path

import regex
from tqdm.auto import tqdm

from NLM.min_lm.tokenization.parallel import imap_bounded

GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_REGEX = regex.compile(GPT2_SPLIT_PATTERN)


def special_token_regex(special_tokens: Iterable[str]) -> regex.Pattern | None:
    """A regex matching any special token, longest first (so overlapping specials prefer the longest).

    The pattern is wrapped in a capture group so `pattern.split(text)` keeps the specials: even
    indices of the result are ordinary text, odd indices are special tokens.
    """
    specials = sorted(set(special_tokens), key=len, reverse=True)
    if not specials:
        return None
    return regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")


def split_on_special_tokens(text: str, special_tokens: Iterable[str]) -> list[str]:
    """Split `text` into alternating [text, special, text, special, ..., text] pieces."""
    pattern = special_token_regex(special_tokens)
    return [text] if pattern is None else pattern.split(text)


# ---------------------------------------------------------------------------------------------
# Counting pre-tokens of a large file in parallel
# ---------------------------------------------------------------------------------------------

# A file is cut either where a special token starts (pre-tokens never cross one) or right after a
# newline that sits between two printable ASCII characters ("x\ny"). The GPT-2 regex always makes
# such a lone "\n" a pre-token of its own (no pattern absorbs it into a neighbour, and the whitespace
# lookahead only looks inside whitespace runs), so the text on either side is split the same way
# whether or not the file is cut there. Being ASCII, a cut never falls inside a multi-byte UTF-8
# sequence. Newline cuts keep chunks small even in files with few or no special tokens.
_NEWLINE_CUT = rb"(?<=[\x21-\x7e]\n)(?=[\x21-\x7e])"
_SCAN_BYTES = 1 << 16


def _cut_pattern(special_tokens: list[str]) -> tuple[re.Pattern, int]:
    """A bytes regex whose matches start at safe cut positions, and the longest match it can have."""
    encoded = sorted({s.encode("utf-8") for s in special_tokens}, key=len, reverse=True)
    alternatives = [re.escape(s) for s in encoded]
    if not any(b"\n" in s for s in encoded):  # a newline inside a special token could be cut through
        alternatives.append(_NEWLINE_CUT)
    return re.compile(b"|".join(alternatives)), max([3, *map(len, encoded)])


def _next_cut(f, start: int, file_size: int, cut: re.Pattern, overlap: int) -> int:
    """The first safe cut position at or after `start` (the file size when there is none).

    The file is read in windows that overlap by `overlap` bytes (the longest match of `cut`), so a
    match straddling two windows is still found.
    """
    pos = start
    while pos < file_size:
        f.seek(pos)
        match = cut.search(f.read(_SCAN_BYTES + overlap))
        if match is not None:
            return pos + match.start()
        pos += _SCAN_BYTES
    return file_size


def chunk_boundaries(path: str | os.PathLike, num_chunks: int, special_tokens: list[str]) -> list[int]:
    """Byte offsets [0, ..., file_size] cutting the file into about `num_chunks` ranges.

    Each inner cut sits at the start of a special token or just after a newline between two
    printable ASCII characters, so the counts of pre-tokens are the same as for the uncut file.
    Ranges merge where the file has few such places, so fewer than `num_chunks` can come back.
    (Special tokens are assumed not to overlap one another in the text, e.g. "ab" and "bc" in
    "abc"; real ones like `<|endoftext|>` never do.)
    """
    file_size = os.path.getsize(path)
    cut, longest = _cut_pattern(special_tokens)
    boundaries = [0]
    with open(path, "rb") as f:
        for i in range(1, num_chunks):
            guess = file_size * i // num_chunks
            cut_at = _next_cut(f, max(guess, boundaries[-1] + 1), file_size, cut, longest)
            if cut_at >= file_size:  # no cut after this guess, so none after later ones either
                break
            boundaries.append(cut_at)
    boundaries.append(file_size)
    return boundaries


# GPT-2's pattern for ASCII-only text, where \p{L} is [A-Za-z], \p{N} is [0-9] and \s is the six
# characters below (`regex`'s \s, unlike `re`'s, leaves out U+001C..U+001F). The standard `re`
# module runs it about twice as fast as `regex` runs the full pattern, and most text is ASCII.
_ASCII_SPACE = "\t\n\x0b\x0c\r "
GPT2_ASCII_REGEX = re.compile(
    f"'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{_ASCII_SPACE}A-Za-z0-9]+"
    f"|[{_ASCII_SPACE}]+(?![^{_ASCII_SPACE}])|[{_ASCII_SPACE}]+"
)
# The newline cut of `_NEWLINE_CUT` on text: splits mixed text into lines that are mostly ASCII.
_TEXT_NEWLINE_CUT = re.compile(r"(?<=[\x21-\x7e]\n)(?=[\x21-\x7e])")


def pretokenize(text: str) -> list[str]:
    """GPT-2's pre-tokens of `text` (no special tokens in it): the ASCII pattern wherever it applies."""
    if text.isascii():  # O(1) in CPython: strings know whether they are ASCII
        return GPT2_ASCII_REGEX.findall(text)
    pretokens: list[str] = []
    for block in _TEXT_NEWLINE_CUT.split(text):
        pretokens += (GPT2_ASCII_REGEX if block.isascii() else GPT2_REGEX).findall(block)
    return pretokens


def count_pretokens(text: str, special_tokens: list[str], counts: Counter[str] | None = None) -> Counter[str]:
    """How often each pre-token occurs in `text` (special tokens cut the text and are not counted), added
    to `counts` when given."""
    counts = Counter() if counts is None else counts
    for i, piece in enumerate(split_on_special_tokens(text, special_tokens)):
        if i % 2 == 0 and piece:
            counts.update(pretokenize(piece))
    return counts


def _count_range(task: tuple[str, int, int, list[str]]) -> tuple[Counter[str], int]:
    """Worker: read bytes [start, end) of the file, decode, count pre-tokens.

    Returns the counts and the number of invalid UTF-8 sequences that were replaced by U+FFFD
    (U+FFFD characters already present in the file are not counted).
    """
    path, start, end, special_tokens = task
    with open(path, "rb") as f:
        f.seek(start)
        raw = f.read(end - start)
    text = raw.decode("utf-8", errors="replace")
    num_replaced = text.count("\ufffd") - raw.count("\ufffd".encode())
    return count_pretokens(text, special_tokens), num_replaced


def count_pretokens_in_file(
    path: str | os.PathLike,
    special_tokens: list[str],
    num_workers: int = 1,
    chunk_size: int = 4 << 20,
    verbose: bool = False,
) -> tuple[Counter[str], int]:
    """Count the pre-tokens of a UTF-8 file, reading it in ranges of about `chunk_size` bytes.

    With `num_workers > 1` the ranges are counted by a pool of processes and their counts summed
    here as they arrive; `verbose` shows a progress bar over the ranges. Returns (counts, number of
    invalid UTF-8 sequences replaced by U+FFFD).
    """
    path = str(Path(path))
    file_size = os.path.getsize(path)
    # No more workers than chunks (a small file is counted right here), and a multiple of the
    # worker count as the number of chunks, so that the workers finish at about the same time.
    chunk_size = max(1, chunk_size)
    num_workers = max(1, min(num_workers, -(-file_size // chunk_size)))
    num_chunks = num_workers * max(1, -(-file_size // (chunk_size * num_workers)))
    bounds = chunk_boundaries(path, num_chunks, special_tokens)
    tasks = [(path, start, end, special_tokens) for start, end in pairwise(bounds)]
    counts: Counter[str] = Counter()
    num_replaced = 0
    results = _map_tasks(tasks, num_workers)
    show = verbose and len(tasks) > 1
    progress = tqdm(results, total=len(tasks), desc="pre-tokenizing", unit="chunk", disable=not show)
    for chunk_counts, chunk_replaced in progress:
        if counts:
            counts.update(chunk_counts)
        else:
            counts = chunk_counts
        num_replaced += chunk_replaced
    return counts, num_replaced


def count_pretokens_in_documents(
    documents: Iterable[str],
    special_tokens: list[str],
    num_workers: int = 1,
    chunk_chars: int = 4 << 20,
    verbose: bool = False,
) -> Counter[str]:
    """Count the pre-tokens of a stream of documents, each on its own (pre-tokens never cross from one
    document to the next, as if an end-of-text special token stood between them). Documents are grouped
    into tasks of about `chunk_chars` characters; with `num_workers > 1` a pool counts them, a few tasks
    ahead of the reading at most, so memory stays bounded whatever the number of documents."""
    tasks = ((group, special_tokens) for group in _groups(documents, chunk_chars))
    counts: Counter[str] = Counter()
    pool = multiprocessing.Pool(num_workers) if num_workers > 1 else None
    try:
        results = imap_bounded(pool, _count_documents, tasks, 2 * num_workers)
        for group_counts in tqdm(results, desc="pre-tokenizing", unit="chunk", disable=not verbose):
            counts.update(group_counts)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return counts


def _groups(documents: Iterable[str], chunk_chars: int) -> Iterator[list[str]]:
    group: list[str] = []
    size = 0
    for document in documents:
        group.append(document)
        size += len(document)
        if size >= chunk_chars:
            yield group
            group, size = [], 0
    if group:
        yield group


def _count_documents(task: tuple[list[str], list[str]]) -> Counter[str]:
    """Worker: the pre-token counts of a group of documents."""
    documents, special_tokens = task
    counts: Counter[str] = Counter()
    for document in documents:
        count_pretokens(document, special_tokens, counts)
    return counts


def _map_tasks(tasks: list, num_workers: int) -> Iterator[tuple[Counter[str], int]]:
    """Run `_count_range` over the tasks, in this process or in a pool, yielding results as they come."""
    if num_workers <= 1 or len(tasks) <= 1:
        yield from map(_count_range, tasks)
        return
    with multiprocessing.Pool(min(num_workers, len(tasks))) as pool:
        yield from pool.imap_unordered(_count_range, tasks)
