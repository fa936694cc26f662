"""Token files and the batches drawn from them.

A token file is a 1-D `.npy` array of ids, opened as a memory map: a 10 GB corpus costs no RAM until a
window of it is read. Every id is checked against the vocabulary before training starts (in chunks, so the
check does not read the whole file into memory either).

Batches are random windows of `context_length + 1` tokens: inputs are the first `context_length`, targets the
same window shifted by one. Under data parallelism all processes hold the *same* random generator and draw the
start offsets of the whole global batch (`world_size * batch_size` windows); process `r` keeps slice `r`.
So no two processes ever train on the same window, and one process with batch `2B` sees exactly the windows
that two processes with batch `B` see together: the runs are interchangeable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from NLM.min_lm.errors import UserError
from NLM.min_lm.transformer.utils import batch_windows

ID_CHECK_CHUNK = 1 << 24  # ids per chunk when scanning a token file for out-of-range ids (64 MB of int32)


def open_tokens(path: str | Path, flag: str, vocab_size: int, context_length: int, *,
                chunk: int = ID_CHECK_CHUNK) -> np.ndarray:
    """Memory-map a token file and check it can feed training; errors name the file and the flag.

    The ids are checked `chunk` at a time, so memory stays bounded whatever the file size."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{flag} {path}: not a .npy token array ({e})") from None
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        is_array = isinstance(tokens, np.ndarray)
        what = f"{tokens.dtype} of shape {tokens.shape}" if is_array else "an .npz archive"
        raise UserError(f"{flag} {path}: expected a 1-D integer array, got {what}")
    if len(tokens) < context_length + 1:
        raise UserError(f"{flag} {path}: {len(tokens)} tokens is too short for --context_length "
                        f"{context_length} (need at least {context_length + 1})")
    _check_ids(tokens, path, flag, vocab_size, chunk)
    return tokens


def _check_ids(tokens: np.ndarray, path: Path, flag: str, vocab_size: int, chunk_size: int) -> None:
    """Every id must index the embedding table; a dtype too narrow to hold a bad id needs no scan."""
    info = np.iinfo(tokens.dtype)
    if info.min >= 0 and info.max < vocab_size:
        return
    for start in range(0, len(tokens), chunk_size):
        chunk = tokens[start:start + chunk_size]
        low, high = int(chunk.min()), int(chunk.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            where = start + int(np.argmax(chunk == bad))
            raise UserError(f"{flag} {path}: token id {bad} at position {where} is outside the vocabulary "
                            f"(--vocab_size {vocab_size}); was it made with another tokenizer?")


class BatchSampler:
    """Random training windows; one generator shared by all processes, each taking its slice of the batch."""

    def __init__(self, tokens: np.ndarray, batch_size: int, context_length: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.tokens = tokens
        self.batch_size = batch_size
        self.context_length = context_length
        self.rank = rank
        self.world_size = world_size
        self.rng = np.random.default_rng(seed)

    def next_starts(self) -> np.ndarray:
        """Draw the global batch's start offsets and return this process's slice of them."""
        num_starts = len(self.tokens) - self.context_length
        starts = self.rng.integers(0, num_starts, size=self.world_size * self.batch_size)
        return starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def next_batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_windows(self.tokens, self.next_starts(), self.context_length, device)

    def state(self) -> dict[str, Any]:
        """The generator's position, saved in checkpoints so a resumed run draws the batches it would have."""
        return self.rng.bit_generator.state

    def load_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def validation_starts(tokens: np.ndarray, eval_iters: int, batch_size: int, context_length: int, seed: int,
                      rank: int = 0, world_size: int = 1) -> np.ndarray:
    """The fixed validation windows, shape (eval_iters, batch_size): the same every evaluation, so the
    validation curve moves only because the model does.  Drawn like training batches (global batch, then
    this process's slice) from their own generator, so they do not depend on how long training has run."""
    rng = np.random.default_rng([seed, 1])
    starts = rng.integers(0, len(tokens) - context_length, size=(eval_iters, world_size * batch_size))
    return starts[:, rank * batch_size:(rank + 1) * batch_size]
