"""The byte-level BPE tokenizer: text -> ids -> text, plus GPT-2's vocab.json / merges.txt files.

Encoding text is three steps:

1. Cut the text at special tokens (`<|endoftext|>`), which map straight to their ids.
2. Split each stretch between them into pre-tokens with GPT-2's regex (see `pretokenize.py`).
3. Turn each pre-token into bytes and apply the learned merges, lowest rank first, until no
   adjacent pair of tokens has a merge.

Step 3 is slow in Python, but text repeats, so we cache. The unit we cache is a *chunk*: a word
with the one whitespace character in front of it (" self.assertEqual(x,"), or a whitespace run.
Why chunks and not pre-tokens? Finding chunks needs only a simple regex that Python's `re` engine
runs at ~40 MB/s, while GPT-2's pattern (with `\\p{L}`, `\\p{N}` classes) runs at ~12 MB/s; and a
chunk holds several pre-tokens, so there are fewer lookups. Chunking never changes the result,
because GPT-2's pre-tokens never cross a chunk boundary (see `_CHUNK_RE`). Only a chunk we have
not seen goes through the regex and the merge loop; after that it costs one dict lookup. The
caches (`_Cache`) compute what they lack themselves, so encoding known text is one C loop of
lookups, and they have a size limit so that streaming a huge file cannot grow memory without bound.

`encode_iterable` streams: it encodes the text it has up to the last point where the rest of the
stream cannot change the result (`_last_safe_cut`), and holds back only the tail after it.

The same steps run in C when the optional compiled core is built (`_encode_core.c`, see
`BPETokenizer._native_encoder`); this file stays the reference it is tested against.
"""

from __future__ import annotations

import json
import operator
import os
import re
import sys
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cache
from heapq import heapify, heappop, heappush
from itertools import chain, pairwise
from pathlib import Path

import regex

from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import atomic_paths
from NLM.min_lm.tokenization.native import native_module
from NLM.min_lm.tokenization.pretokenize import GPT2_ASCII_REGEX, GPT2_REGEX, special_token_regex

# --------------------------------------------------------------------------------------------------
# GPT-2's printable form of bytes
# --------------------------------------------------------------------------------------------------


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character, used to store tokens as text.

    Bytes that are already printable (`!`..`~`, `¡`..`¬`, `®`..`ÿ` in Latin-1) stand for
    themselves; the other 68 (controls, space, ...) are shifted to U+0100 onwards, in byte order.
    So the space byte is `Ġ` (U+0120) and a newline is `Ċ` (U+010A).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in mapping)
    for n, b in enumerate(shifted):
        mapping[b] = chr(256 + n)
    return dict(sorted(mapping.items()))


# str.translate tables: bytes (as Latin-1 characters) -> printable characters, and back.
_TO_PRINTABLE = bytes_to_unicode()
_FROM_PRINTABLE = {ord(char): b for b, char in bytes_to_unicode().items()}
_ALL_PRINTABLE = re.compile("[" + re.escape("".join(bytes_to_unicode().values())) + "]*")


def to_printable(token: bytes) -> str:
    """A token's bytes in GPT-2's printable form: `b" the"` -> `"Ġthe"`."""
    return token.decode("latin-1").translate(_TO_PRINTABLE)


def from_printable(text: str) -> bytes:
    """Undo `to_printable`; raises KeyError (with the character) on one outside the alphabet."""
    if not _ALL_PRINTABLE.fullmatch(text):
        raise KeyError(next(char for char in text if ord(char) not in _FROM_PRINTABLE))
    return text.translate(_FROM_PRINTABLE).encode("latin-1")


# --------------------------------------------------------------------------------------------------
# Chunks: the cached unit of encoding
# --------------------------------------------------------------------------------------------------


class _Cache(dict):
    """A bounded text -> ids cache that fills itself: `cache[text]` computes a missing entry.

    Being a dict, a hit is a plain C-level lookup, so `map(cache.__getitem__, texts)` runs at dict
    speed and Python code runs only on a miss (`__missing__`). When `max_size` entries are held,
    they become the previous generation and the cache starts empty; an entry asked for again moves
    back from there at the cost of a lookup, the rest are dropped at the next turnover (roughly
    least-recently-used, with no bookkeeping on hits). So at most 2 * max_size entries are kept,
    and none longer than `max_key_chars`: a long text rarely repeats, and storing it would let a
    few huge inputs hold memory in proportion to their size.
    """

    def __init__(self, compute: Callable[[str], tuple[int, ...]], max_size: int, max_key_chars: int) -> None:
        super().__init__()
        self._compute = compute
        self._max_size = max_size
        self._max_key_chars = max_key_chars
        self._previous: dict[str, tuple[int, ...]] = {}

    def __missing__(self, text: str) -> tuple[int, ...]:
        if len(text) > self._max_key_chars:
            return self._compute(text)
        ids = self._previous.get(text)
        if ids is None:
            ids = self._compute(text)
        if len(self) >= self._max_size:
            self._turn_over()
        self[text] = ids
        return ids

    def _turn_over(self) -> None:
        """Start a new generation: the current entries become the previous ones."""
        self._previous = dict(self)
        self.clear()


# The characters the `regex` module (and tiktoken) count as `\s`: Unicode's White_Space. Python's
# `re` also counts U+001C..U+001F, so we spell the class out instead of writing `\s`.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

# A chunk is (a) one optional whitespace character then a run of non-whitespace, or (b) a run of
# whitespace, minus its last character when a word follows (that character belongs to the word).
# Why GPT-2's pre-tokens never cross these boundaries: every GPT-2 alternative other than the two
# whitespace ones contains whitespace only as its optional first character, so a pre-token always
# ends where non-whitespace meets whitespace; and a whitespace run followed by a word is always
# cut before its last character (by `\s+(?!\S)`). At each boundary a pre-token ends, and since the
# regex looks neither behind nor past the whitespace that follows, the text on each side splits
# the same way on its own.
_CHUNK_RE = re.compile(f"[{WHITESPACE}]?[^{WHITESPACE}]+|[{WHITESPACE}]+(?![^{WHITESPACE}])")

# GPT-2's document separator: the special token every min_lm command uses unless told otherwise.
END_OF_TEXT = "<|endoftext|>"


@cache
def char_classes() -> bytes:
    """The class of each code point in GPT-2's pattern: 1 letter (`\\p{L}`), 2 number (`\\p{N}`),
    3 whitespace (`\\s`), 0 anything else; as the `regex` module itself decides, for the compiled core.
    """
    code_points = array("I", range(0x110000)).tobytes()  # 4-byte ints in the machine's byte order
    every_char = code_points.decode(f"utf-32-{sys.byteorder[0]}e", "surrogatepass")
    table = bytearray(len(every_char))
    for code, pattern in ((1, r"\p{L}+"), (2, r"\p{N}+"), (3, r"\s+")):
        for match in regex.finditer(pattern, every_char):
            table[match.start() : match.end()] = bytes([code]) * (match.end() - match.start())
    return bytes(table)


# The last place where non-whitespace meets whitespace, a safe place to cut a stream: searching
# backwards from the end, `match.end()` is that place.
_LAST_WORD_END_RE = regex.compile(r"\S(?=\s)", flags=regex.REVERSE)


class BPETokenizer:
    """Encode text into token ids and decode ids back, given a byte-level BPE vocab and merges.

    vocab: id -> token bytes; it must contain all 256 single bytes.
    merges: (left, right) pairs of token bytes in the order they were learned; the merge at
        index r has rank r (lower merges first), and `left + right` must be in the vocab.
    special_tokens: strings encoded as one id each and never split; those not already in the
        vocab get new ids after the largest one.
    native: run the encoding loops in the compiled core (`_encode_core.c`) when it is built
        (None: unless MINLM_PURE_PYTHON=1), or in Python (False); True insists on the core.
        Both give the same ids; `core` says which one runs.

    Instances keep caches of encoded chunks, so share one tokenizer rather than rebuild it; they
    are not safe to use from several threads at once.
    """

    #: Maximum number of cached chunks, and of cached pre-tokens, per cache generation (two are
    #: kept, see `_Cache`): this bounds memory whatever the input.
    CACHE_SIZE = 1 << 17
    #: Longer chunks and pre-tokens are encoded every time, not cached (see `_Cache`).
    CACHED_CHARS = 256
    #: `encode_iterable` encodes in blocks of about this many characters.
    BLOCK_CHARS = 1 << 20

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: list[str] | None = None,
        native: bool | None = None,
    ) -> None:
        _check_vocab(vocab)
        self.vocab: dict[int, bytes] = dict(vocab)
        self.merges: list[tuple[bytes, bytes]] = list(merges)
        self.special_tokens: list[str] = list(dict.fromkeys(_check_special_tokens(special_tokens)))
        if "" in self.special_tokens:
            raise ValueError("a special token cannot be the empty string")

        self._token_to_id: dict[bytes, int] = {}
        for token_id, token in self.vocab.items():
            self._token_to_id.setdefault(token, token_id)
        self._special_to_id: dict[str, int] = {}
        for special in self.special_tokens:
            token = special.encode("utf-8")
            if token not in self._token_to_id:
                new_id = max(self.vocab, default=-1) + 1
                self.vocab[new_id] = token
                self._token_to_id[token] = new_id
            self._special_to_id[special] = self._token_to_id[token]
        self._special_re = special_token_regex(self.special_tokens)
        self._longest_special = max(map(len, self.special_tokens), default=0)

        missing = [b for b in range(256) if bytes([b]) not in self._token_to_id]
        if missing:
            raise ValueError(f"the vocab lacks {len(missing)} single bytes (e.g. {bytes([missing[0]])!r}); "
                             "a byte-level BPE vocab holds all 256")
        self._byte_ids = [self._token_to_id[bytes([b])] for b in range(256)]

        # Text -> id for the tokens that are a whole GPT-2 pre-token on their own: a pre-token
        # found here needs no merge loop (tiktoken does the same).
        self._whole_token_ids: dict[str, int] = {}
        for token, token_id in self._token_to_id.items():
            try:
                text = token.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if GPT2_REGEX.findall(text) == [text]:
                self._whole_token_ids[text] = token_id

        # The merge loop works on ints: (left id, right id) -> rank, and rank -> id of the merged token.
        self._merge_rank: dict[tuple[int, int], int] = {}
        self._merged_id: list[int] = []
        for rank, (left, right) in enumerate(self.merges):
            ids = [self._token_to_id.get(t) for t in (left, right, left + right)]
            if None in ids:
                raise ValueError(f"merge {rank} ({left!r}, {right!r}) uses or makes a token not in the vocab")
            self._merge_rank.setdefault((ids[0], ids[1]), rank)
            self._merged_id.append(ids[2])

        self._chunk_ids = _Cache(self._encode_chunk, self.CACHE_SIZE, self.CACHED_CHARS)
        self._pretoken_ids = _Cache(self._encode_pretoken, self.CACHE_SIZE, self.CACHED_CHARS)
        self._native = self._native_encoder(native)

    def _native_encoder(self, native: bool | None):
        """The compiled twin of this tokenizer's encoding tables, or None to encode in Python.

        The core numbers tokens by their position in `id_objects` (ids can be any ints), and takes
        the character classes of GPT-2's pattern as a table, so that it splits text exactly as
        the `regex` module does. It keeps its own caches of chunks and pre-tokens, bounded as `_Cache`
        is, hashed with a random key so that no text can be made to collide in them.
        """
        core = native_module("_encode_core", native)
        if core is None:
            return None
        id_objects = tuple(self.vocab)
        index = {token_id: i for i, token_id in enumerate(id_objects)}
        merges = [(index[left], index[right], rank, index[self._merged_id[rank]])
                  for (left, right), rank in self._merge_rank.items()]
        whole_tokens = {text: index[token_id] for text, token_id in self._whole_token_ids.items()}
        return core.Encoder(id_objects=id_objects, byte_index=[index[i] for i in self._byte_ids],
                            merges=merges, whole_tokens=whole_tokens, char_classes=char_classes(),
                            cache_size=self.CACHE_SIZE, cached_chars=self.CACHED_CHARS,
                            hash_key=os.urandom(16))

    def __getstate__(self) -> dict:
        """Pickle (e.g. for worker processes) without the compiled core, which is rebuilt on load."""
        return self.__dict__ | {"_native": self._native is not None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._native = self._native_encoder(None if state["_native"] else False)

    @property
    def core(self) -> str:
        """Which encoder runs: "C" (the compiled core) or "Python"."""
        return "Python" if self._native is None else "C"

    # ---------------------------------------------------------------------------------- files

    @classmethod
    def from_files(
        cls,
        vocab_path: str | os.PathLike,
        merges_path: str | os.PathLike,
        special_tokens: list[str] | None = None,
    ) -> BPETokenizer:
        """Load GPT-2-format files (as written by `save`, or GPT-2's own vocab.json / merges.txt).

        The two files must belong together (see `check_pair`); a vocab beside the merges of another
        training is refused, naming both files.
        """
        special_tokens = _check_special_tokens(special_tokens)
        vocab = read_vocab_file(vocab_path)
        merges = read_merges_file(merges_path)
        check_pair(vocab, merges, special_tokens, vocab_path, merges_path)
        return cls(vocab, merges, special_tokens)

    def save(self, vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> None:
        """Write vocab.json and merges.txt in GPT-2's format, as one unit: both are written in full
        under temporary names before either is renamed into place, so a failure leaves the old pair."""
        vocab_text, merges_text = vocab_json_text(self.vocab), merges_txt_text(self.merges)
        with atomic_paths(vocab_path, merges_path) as (vocab_tmp, merges_tmp):
            vocab_tmp.write_text(vocab_text, encoding="utf-8")
            merges_tmp.write_text(merges_text, encoding="utf-8")

    # ---------------------------------------------------------------------------------- encode

    def encode(self, text: str) -> list[int]:
        """The token ids of `text`.

        The Python path encodes it block by block, which bounds the strings `findall` makes at once;
        the compiled core makes none, so it takes the text whole (cutting blocks and joining their
        ids would cost it about a twentieth of its time).
        """
        if self._native is not None:
            return self._encode_text(text)
        return list(chain.from_iterable(map(self._encode_text, self.split_for_encoding([text]))))

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Yield the ids of the concatenated strings (e.g. the lines of a file) lazily.

        Gives exactly `encode("".join(iterable))`, with memory bounded by the block size and the
        caches rather than by the length of the input.
        """
        for piece in self.split_for_encoding(iterable):
            yield from self._encode_text(piece)

    def split_for_encoding(self, texts: Iterable[str], block_chars: int | None = None) -> Iterator[str]:
        """Regroup a stream of strings into blocks that can be encoded independently.

        Concatenating the blocks' ids gives the ids of the whole stream, so blocks can be encoded
        one at a time (bounded memory) or in parallel. Text accumulates until there are
        `block_chars` characters (default `BLOCK_CHARS`); the block is cut at its last safe point
        and the remainder waits for more text. A block with no safe point (no whitespace, say)
        grows until one appears or the input ends.
        """
        block = block_chars or self.BLOCK_CHARS
        pending: list[str] = []
        pending_chars = 0
        wait_for = block  # look for a cut once this many characters are pending
        for text in texts:
            pending.append(text)
            pending_chars += len(text)
            if pending_chars < wait_for:
                continue
            buffer = "".join(pending)
            start = 0
            wait_for = block
            while len(buffer) - start >= block:
                cut = self._last_safe_cut(buffer, start, start + block)
                if cut == start:
                    cut = self._last_safe_cut(buffer, start, len(buffer))
                    if cut == start:
                        # No cut yet: search again only once the text has doubled, so that a long
                        # stretch without one costs linear time, not a rescan per piece of input.
                        wait_for = 2 * (len(buffer) - start)
                        break
                yield buffer[start:cut]
                start = cut
            pending = [buffer[start:]]
            pending_chars = len(pending[0])
        if pending_chars:
            yield "".join(pending)

    def _last_safe_cut(self, text: str, start: int, end: int) -> int:
        """The last position in text[start:end] at which the encoding can be split.

        Splitting there gives the same ids whatever text follows `end`: the position is not
        inside a special token, and GPT-2's pre-tokens never cross it. Returns `start` if there
        is no such position.

        A special-token match that starts at s is settled once text[s : s + longest special] is
        known, so only matches starting before `settled` count; the end of the last of them is a
        safe cut, and so is any later word end (non-whitespace followed by whitespace) before
        `settled`.
        """
        cut = start
        settled = end
        if self._special_re is not None:
            settled = max(start, end - self._longest_special + 1)
            for match in self._special_re.finditer(text, start, end):
                if match.start() >= settled:
                    break
                cut = match.end()
        if cut < settled:
            word_end = _LAST_WORD_END_RE.search(text, cut, settled)
            if word_end is not None:
                return word_end.end()
        return cut

    def _encode_text(self, text: str) -> list[int]:
        """Encode `text` in one piece: split off special tokens, then encode the rest by chunks."""
        if self._special_re is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for i, piece in enumerate(self._special_re.split(text)):
            if i % 2:
                ids.append(self._special_to_id[piece])
            elif piece:
                ids += self._encode_ordinary(piece)
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        """Encode text that holds no special tokens: the ids of its chunks, each from the cache.

        Everything here runs in C loops (findall, map, chain); Python code runs only for a chunk
        the cache lacks. The compiled core does the same in one C loop, with a cache of its own.
        """
        if self._native is not None:
            return self._native.encode_ordinary(text)
        return list(chain.from_iterable(map(self._chunk_ids.__getitem__, _CHUNK_RE.findall(text))))

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Encode one chunk: split it into GPT-2 pre-tokens and look each one up in its cache."""
        pattern = GPT2_ASCII_REGEX if chunk.isascii() else GPT2_REGEX
        return tuple(chain.from_iterable(map(self._pretoken_ids.__getitem__, pattern.findall(chunk))))

    def _encode_pretoken(self, pretoken: str) -> tuple[int, ...]:
        """Encode one pre-token: a whole vocab entry directly, anything else with the merges."""
        token_id = self._whole_token_ids.get(pretoken)
        if token_id is not None:
            return (token_id,)
        return tuple(self._merge(pretoken.encode("utf-8", errors="surrogatepass")))

    def _merge(self, token: bytes) -> list[int]:
        """Apply the merges to one pre-token's bytes: merge the lowest-ranked adjacent pair (the
        leftmost one on ties) until no adjacent pair has a merge.

        `ranks[i]` is the rank of the pair (ids[i], ids[i + 1]); a merge changes only its two
        neighbours' ranks, so each step is a C-speed `min` and `index` plus two dict lookups. That
        is quadratic in the length, which only matters for long pre-tokens (a run of spaces, a DNA
        string, base64): those go to `merge_by_rank`, which is O(n log n) but slower when short.
        """
        ids = [self._byte_ids[b] for b in token]
        rank_of, merged_id = self._merge_rank, self._merged_id
        if len(ids) > SHORT_PRETOKEN_BYTES:
            return merge_by_rank(ids, rank_of, merged_id)
        never = len(merged_id)
        ranks = [rank_of.get(pair, never) for pair in pairwise(ids)]
        while ranks:
            best = min(ranks)
            if best == never:
                break
            i = ranks.index(best)
            ids[i : i + 2] = (merged_id[best],)
            del ranks[i]
            if i > 0:
                ranks[i - 1] = rank_of.get((ids[i - 1], ids[i]), never)
            if i < len(ranks):
                ranks[i] = rank_of.get((ids[i], ids[i + 1]), never)
        return ids

    # ---------------------------------------------------------------------------------- decode

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` (ints, or a 1-D tensor / array of them); invalid UTF-8 becomes U+FFFD."""
        if hasattr(ids, "tolist"):  # a tensor or array: its elements as Python ints (hashable by value)
            ids = ids.tolist()
            ids = [ids] if isinstance(ids, int) else ids
        try:
            data = b"".join(map(self.vocab.__getitem__, map(operator.index, ids)))
        except TypeError as e:
            raise TypeError(f"decode takes integer token ids: {e}") from None
        except KeyError as e:
            raise ValueError(f"cannot decode unknown token id {e.args[0]!r} "
                             f"(vocab size {len(self.vocab)})") from None
        return data.decode("utf-8", errors="replace")

    def __len__(self) -> int:
        """Number of ids in the vocab (special tokens included)."""
        return len(self.vocab)

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab={len(self.vocab)}, merges={len(self.merges)}, "
                f"special_tokens={self.special_tokens})")


def load_tokenizer(vocab_path: str | os.PathLike, merges_path: str | os.PathLike,
                   special_tokens: list[str] | None = None) -> BPETokenizer:
    """`BPETokenizer.from_files`, for commands: files that parse but do not form one byte-level BPE
    tokenizer (a vocab without all 256 bytes, a merge of unknown tokens) are a UserError naming both."""
    try:
        return BPETokenizer.from_files(vocab_path, merges_path, special_tokens)
    except UserError:
        raise
    except (ValueError, KeyError) as e:
        raise UserError(f"{vocab_path} / {merges_path}: not a matching vocab and merges pair ({e})") from None


# --------------------------------------------------------------------------------------------------
# The byte-pair merge of a long pre-token
# --------------------------------------------------------------------------------------------------

#: Pre-tokens of at most this many bytes merge by rescanning a list of ranks (`BPETokenizer._merge`),
#: longer ones rank by rank (`merge_by_rank`). Measured on GPT-2's merges, the two cost about the
#: same at 64 bytes: rescanning is faster below it on letters and digits, the ranks on DNA.
SHORT_PRETOKEN_BYTES = 64


def merge_by_rank(
    ids: list[int], rank_of: Mapping[tuple[int, int], int], merged_id: Sequence[int]
) -> list[int]:
    """Merge the lowest-ranked adjacent pair of `ids` (the leftmost on ties) until none has a rank.

    The same result as rescanning all pairs after each merge, in O(n log n) instead of O(n^2):
    - the parts live in a doubly linked list: `left[i]`, `right[i]` are the neighbours of the part
      that starts at byte i, `ids[i]` is None once that part has been merged into its left one, and
      `ranks[i]` is the rank of the pair that part i starts (-1: none);
    - `waiting[rank]` lists the positions where a pair of that rank was seen, and the heap `pending`
      holds the ranks that have such a list. The lowest rank's pairs merge in one pass, left to
      right: a merge makes pairs holding the token it made, which only later merges join, so nothing
      of a lower rank appears meanwhile. (Unless the merges make one token twice, or use a token
      before making it: then the pass stops there, and its rest waits behind the lower rank.)
    - a listed position is checked against `ranks` when its turn comes: the pair there may have
      been merged, or have changed, since.
    Each merge lists at most two positions, so the lists hold fewer than 3n in all; each list is
    sorted when its rank comes up. In Python this is 3x faster than a heap of (rank, position)
    entries, as it spends no heap step on each merge. `rank_of` maps a pair of ids to its merge's
    rank and `merged_id[rank]` is the merged id.
    """
    ids = list(ids)
    n = len(ids)
    left = list(range(-1, n - 1))
    right = list(range(1, n + 1))  # n: no right neighbour
    ranks = [rank_of.get(pair, -1) for pair in pairwise(ids)]
    ranks.append(-1)
    waiting: defaultdict[int, list[int]] = defaultdict(list)
    for i, rank in enumerate(ranks):
        if rank >= 0:
            waiting[rank].append(i)
    pending = list(waiting)
    heapify(pending)
    while pending:
        rank = heappop(pending)
        positions = sorted(waiting.pop(rank))
        merged = merged_id[rank]
        for index, i in enumerate(positions):
            if ranks[i] != rank:
                continue
            j = right[i]
            ids[i], ids[j], ranks[i], ranks[j] = merged, None, -1, -1
            k = right[i] = right[j]
            lower = False  # whether this merge makes a pair of a lower rank than its own
            if k < n:
                left[k] = i
                made = ranks[i] = rank_of.get((merged, ids[k]), -1)
                if made >= 0:
                    if not (queue := waiting[made]):
                        heappush(pending, made)
                    queue.append(i)
                    lower = made < rank
            h = left[i]
            if h >= 0:
                made = ranks[h] = rank_of.get((ids[h], merged), -1)
                if made >= 0:
                    if not (queue := waiting[made]):
                        heappush(pending, made)
                    queue.append(h)
                    lower = lower or made < rank
            if lower:  # the rest of this pass waits behind the lower rank
                # (alone: no merge makes a pair of its own rank, as its token is longer than either part)
                if rest := positions[index + 1 :]:
                    waiting[rank] = rest
                    heappush(pending, rank)
                break
    return [token_id for token_id in ids if token_id is not None]


# --------------------------------------------------------------------------------------------------
# GPT-2 file format
# --------------------------------------------------------------------------------------------------


def vocab_json_text(vocab: dict[int, bytes]) -> str:
    """vocab.json: a JSON object mapping each token's printable form to its id, in id order."""
    entries: dict[str, int] = {}
    for token_id, token in sorted(vocab.items()):
        key = to_printable(token)
        if key in entries:
            raise ValueError(f"tokens {entries[key]} and {token_id} have the same bytes {token!r}; "
                             "vocab.json cannot hold both")
        entries[key] = token_id
    return json.dumps(entries, ensure_ascii=False, indent=0) + "\n"


def merges_txt_text(merges: list[tuple[bytes, bytes]]) -> str:
    """merges.txt: a `#version` line, then one merge per line: the two tokens' printable forms."""
    lines = ["#version: 0.2"] + [f"{to_printable(left)} {to_printable(right)}" for left, right in merges]
    return "\n".join(lines) + "\n"


#: The largest token id: token files store ids as uint16 or uint32, and larger tables are absurd anyway.
MAX_TOKEN_ID = 2**32 - 1


def _check_vocab(vocab: dict[int, bytes]) -> None:
    """The constructor's `vocab` argument: a mapping of int ids (in range) to bytes."""
    if not isinstance(vocab, dict):
        raise TypeError(f"vocab must be a dict of id -> token bytes, got {type(vocab).__name__}")
    for token_id, token in vocab.items():
        if type(token_id) is not int or not 0 <= token_id <= MAX_TOKEN_ID:
            raise ValueError(f"vocab id {token_id!r} must be an int in [0, {MAX_TOKEN_ID}]")
        if not isinstance(token, bytes):
            raise TypeError(f"vocab[{token_id}] must be bytes, got {type(token).__name__}")


def _check_special_tokens(special_tokens: object) -> list[str]:
    """A list of strings; a bare string is refused (it would make each of its characters special)."""
    if special_tokens is None:
        return []
    if isinstance(special_tokens, (str, bytes)) or not all(isinstance(t, str) for t in special_tokens):
        raise TypeError(f"special_tokens must be a list of strings, e.g. [{special_tokens!r}], "
                        f"got {special_tokens!r}")
    return list(special_tokens)


def check_pair(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str],
               vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> None:
    """Refuse a vocab and merges that come from different trainings, naming both files.

    Each merge must join two vocab tokens into a third. And the converse: a multi-byte token that BPE
    could make (it lies within one GPT-2 pre-token, or is not whole UTF-8) exists only because some merge
    made it; if no merge does, the merges are from another training (say, an older one with a smaller
    vocab). Tokens that span several pre-tokens (`<|endoftext|>`) can only be special tokens: allowed.
    """
    pair = f"{vocab_path} and {merges_path} do not belong together"
    tokens = set(vocab.values())
    made = set()
    for rank, (left, right) in enumerate(merges):
        for token in (left, right, left + right):
            if token not in tokens:
                raise UserError(f"{merges_path}:{_merge_line(merges_path, rank)}: token "
                                f"{to_printable(token)!r} is not in the vocab {vocab_path} ({pair})")
        made.add(left + right)
    specials = {t.encode("utf-8") for t in special_tokens}
    unmade = [t for t in tokens if len(t) > 1 and t not in made and t not in specials and _bpe_shaped(t)]
    if unmade:
        example = to_printable(min(unmade, key=lambda t: (len(t), t)))
        raise UserError(f"{pair}: {len(unmade)} token(s) of the vocab (e.g. {example!r}) are made by no "
                        f"merge ({len(merges)} merges, {len(vocab)} tokens)")


def _bpe_shaped(token: bytes) -> bool:
    """Whether merges could have made `token`: it is not whole UTF-8, or it is one GPT-2 pre-token."""
    try:
        text = token.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return GPT2_REGEX.findall(text) == [text]


def _merge_line(merges_path: str | os.PathLike, rank: int) -> int:
    """The line of merge `rank` in merges.txt (after an optional #version line and blank lines)."""
    seen = -1
    for lineno, line in enumerate(_read_text(Path(merges_path)).split("\n"), start=1):
        line = line.rstrip("\r")
        if line and not (lineno == 1 and line.startswith("#version")):
            seen += 1
            if seen == rank:
                return lineno
    return 0


def _line_of(text: str, needle: str) -> str:
    """`:LINE` of the first occurrence of `needle` in `text`, or "" if absent (for error messages)."""
    index = text.find(needle)
    return f":{text.count(chr(10), 0, index) + 1}" if index >= 0 else ""


def read_vocab_file(path: str | os.PathLike) -> dict[int, bytes]:
    """Read vocab.json into id -> token bytes; mistakes raise UserError naming the file and line."""
    path = Path(path)
    text = _read_text(path)

    def where(key: str) -> str:
        """`path:line` of `key` in the file, for error messages."""
        line = _line_of(text, json.dumps(key, ensure_ascii=False)) or _line_of(text, json.dumps(key))
        return f"{path}{line}"

    def refuse_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        result: dict[str, object] = {}
        for key, value in pairs:
            if key in result:
                raise UserError(f"{where(key)}: token {key!r} appears twice")
            result[key] = value
        return result

    try:
        data = json.loads(text, object_pairs_hook=refuse_duplicates)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: expected a JSON object mapping tokens to ids")
    vocab: dict[int, bytes] = {}
    for key, token_id in data.items():
        if type(token_id) is not int or not 0 <= token_id <= MAX_TOKEN_ID:
            raise UserError(f"{where(key)}: id of token {key!r} must be an integer in [0, {MAX_TOKEN_ID}] "
                            f"(token files hold at most 32-bit ids), got {token_id!r}")
        if token_id in vocab:
            raise UserError(f"{where(key)}: id {token_id} is used by two tokens")
        try:
            vocab[token_id] = from_printable(key)
        except KeyError as e:
            char = e.args[0]
            raise UserError(f"{where(key)}: token {key!r} has character {char!r} (U+{ord(char):04X}), "
                            "which is not in GPT-2's byte-to-unicode alphabet") from None
    return vocab


def read_merges_file(path: str | os.PathLike) -> list[tuple[bytes, bytes]]:
    """Read merges.txt into (left, right) byte pairs; mistakes raise UserError naming file and line.

    A first line starting with `#version` and blank lines are skipped. An empty file is refused: `save`
    writes the `#version` line even when there are no merges, so an empty file is a truncated one.
    """
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise UserError(f"{path}: the merges file is empty (a tokenizer without merges still has its "
                        "'#version' line); was it cut short?")
    merges: list[tuple[bytes, bytes]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise UserError(f"{path}:{lineno}: expected two tokens separated by one space, got {line!r}")
        try:
            left, right = from_printable(parts[0]), from_printable(parts[1])
        except KeyError as e:
            raise UserError(f"{path}:{lineno}: character {e.args[0]!r} (U+{ord(e.args[0]):04X}) is not in "
                            "GPT-2's byte-to-unicode alphabet") from None
        merges.append((left, right))
    return merges


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
