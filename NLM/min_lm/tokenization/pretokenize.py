"""GPT-2 pre-tokenization: split text into the pieces that BPE merges never cross.

Two rules, applied in this order:
1. Special tokens (e.g. `<|endoftext|>`) cut the text first; they are never part of a pre-token.
   When special tokens overlap (`<|a|>` and `<|a|><|a|>`), the longest one wins.
2. Each stretch between special tokens is split by GPT-2's regex: contractions, optional-space +
   letters, optional-space + digits, optional-space + other symbols, and whitespace runs (a run
   before a non-space keeps its last space for the next word, hence `\\s+(?!\\S)`).
"""

from __future__ import annotations

from collections.abc import Iterable

import regex

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
