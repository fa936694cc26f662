"""The textbook BPE trainer, written as directly as possible: the reference the fast trainers must equal.

Pre-tokenize with GPT-2's regex, then for every merge recount all pairs of all words and take the most
frequent (ties: the greater pair of byte strings). Slow (a full recount per merge), obviously right.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def reference_train_bpe(text: str, vocab_size: int, special_tokens: list[str]):
    """Slow BPE: recount every pair after every merge."""
    pieces = [text]
    if special_tokens:
        alternatives = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
        pieces = regex.split(alternatives, text)
    words: Counter[tuple[bytes, ...]] = Counter()
    for piece in pieces:
        for pretoken in regex.findall(GPT2_PATTERN, piece):
            words[tuple(bytes([b]) for b in pretoken.encode("utf-8"))] += 1

    vocab = {i: s.encode("utf-8") for i, s in enumerate(special_tokens)}
    for b in range(256):
        vocab[len(vocab)] = bytes([b])
    merges = []
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        vocab[len(vocab)] = best[0] + best[1]
        merged_words: Counter[tuple[bytes, ...]] = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words[tuple(out)] += count
        words = merged_words
    return vocab, merges
