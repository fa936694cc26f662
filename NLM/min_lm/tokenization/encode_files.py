"""Encode text files into .npy arrays of token ids, with flat memory whatever the file size.

The file is read in blocks, cut where the encoding can be split (see `BPETokenizer.split_for_encoding`),
encoded by a pool of processes with a bounded number of blocks in flight, and the ids are appended to a
temporary file in order. Only when the input is done is the .npy written (header + ids) and renamed into
place, so a failed or interrupted run leaves no partial output. The arrays are uint16 when every id fits,
else uint32, ready for `np.load(path, mmap_mode="r")` in training.
"""

from __future__ import annotations

import codecs
import multiprocessing
import multiprocessing.pool
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm.auto import tqdm

from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import atomic_path
from NLM.min_lm.tokenization.tokenizer import BPETokenizer

READ_BYTES = 1 << 20  # bytes read from the input at a time
BLOCK_CHARS = 1 << 20  # characters encoded per task


@dataclass
class EncodedFile:
    input_path: Path
    output_path: Path
    num_tokens: int
    num_bytes: int
    seconds: float


def token_dtype(tokenizer: BPETokenizer) -> np.dtype:
    """The narrowest unsigned type that holds every id: uint16 for vocabularies up to 65,536 tokens."""
    return np.dtype(np.uint16 if max(tokenizer.vocab) < 2**16 else np.uint32)


def encode_files(tokenizer: BPETokenizer, inputs: list[Path], outputs: list[Path], workers: int = 1,
                 progress: bool = False) -> list[EncodedFile]:
    """Encode each input file to its output .npy; `workers` > 1 encodes blocks in a process pool."""
    dtype = token_dtype(tokenizer)
    results = []
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context().Pool(workers, _init_worker, (tokenizer, dtype))
    try:
        for input_path, output_path in zip(inputs, outputs, strict=True):
            results.append(encode_file(tokenizer, dtype, pool, input_path, output_path, workers, progress))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return results


def encode_file(tokenizer: BPETokenizer, dtype: np.dtype, pool: multiprocessing.pool.Pool | None,
                input_path: Path, output_path: Path, workers: int = 1, progress: bool = False) -> EncodedFile:
    """Encode one file, appending ids to a temporary raw file, then write the .npy atomically."""
    start = time.perf_counter()
    num_bytes = input_path.stat().st_size
    blocks = tokenizer.split_for_encoding(read_text(input_path), BLOCK_CHARS)
    bar = tqdm(total=num_bytes, unit="B", unit_scale=True, desc=input_path.name, disable=not progress)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=output_path.parent) as raw, bar:
        num_tokens = 0
        for ids, block_bytes in _encode_in_order(tokenizer, dtype, pool, blocks, workers):
            raw.write(ids.tobytes())
            num_tokens += len(ids)
            bar.update(block_bytes)
        raw.seek(0)
        write_npy(raw, dtype, num_tokens, output_path)
    return EncodedFile(input_path, output_path, num_tokens, num_bytes, time.perf_counter() - start)


def write_npy(raw: BinaryIO, dtype: np.dtype, length: int, path: Path) -> None:
    """Write the 1-D array of `length` items of `dtype` whose bytes `raw` holds as the .npy file `path`,
    atomically: the header first, then the bytes copied in large pieces (never all in memory)."""
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as out:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
        np.lib.format.write_array_header_1_0(out, header)
        shutil.copyfileobj(raw, out, 1 << 24)


def _encode_in_order(
    tokenizer: BPETokenizer,
    dtype: np.dtype,
    pool: multiprocessing.pool.Pool | None,
    blocks: Iterator[str],
    workers: int,
) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (ids, UTF-8 length) for each block, in input order.

    With a pool, at most two blocks per worker are in flight, so reading never runs ahead of
    encoding by more than that (Pool.imap would read the whole file into its task queue).
    """
    if pool is None:
        for block in blocks:
            yield _encode_block_with(tokenizer, dtype, block)
        return
    in_flight: deque = deque()
    for block in blocks:
        in_flight.append(pool.apply_async(_encode_block, (block,)))
        if len(in_flight) >= 2 * workers:
            yield in_flight.popleft().get()
    while in_flight:
        yield in_flight.popleft().get()


def _encode_block_with(tokenizer: BPETokenizer, dtype: np.dtype, block: str) -> tuple[np.ndarray, int]:
    return np.array(tokenizer.encode(block), dtype=dtype), len(block.encode("utf-8", errors="surrogatepass"))


# Each pool process holds its own tokenizer (with its own caches, which warm up over the blocks it
# encodes); it is set once by the pool initializer.
_worker_state: dict[str, object] = {}


def _init_worker(tokenizer: BPETokenizer, dtype: np.dtype) -> None:
    _worker_state["tokenizer"] = tokenizer
    _worker_state["dtype"] = dtype


def _encode_block(block: str) -> tuple[np.ndarray, int]:
    return _encode_block_with(_worker_state["tokenizer"], _worker_state["dtype"], block)


def read_text(path: Path) -> Iterator[str]:
    """Yield the file's text in pieces, decoding UTF-8 across read boundaries (newlines kept as is)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(READ_BYTES)
            held_back = len(decoder.getstate()[0])  # bytes of a character split by the last read
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                position = offset - held_back + e.start
                raise UserError(f"{path}: not UTF-8 text (invalid byte at offset {position})") from None
            if text:
                yield text
            if not data:
                return
            offset += len(data)


def format_summary(results: list[EncodedFile]) -> str:
    """One line per file (tokens, bytes per token, speed), plus a total line for several files."""
    lines = [f"{r.input_path} -> {r.output_path}: {r.num_tokens:,} tokens, "
             f"{r.num_bytes / max(r.num_tokens, 1):.2f} bytes/token, {r.num_bytes / 1e6 / r.seconds:.2f} MB/s"
             for r in results]
    if len(results) > 1:
        tokens = sum(r.num_tokens for r in results)
        num_bytes = sum(r.num_bytes for r in results)
        seconds = sum(r.seconds for r in results)
        lines.append(f"total: {tokens:,} tokens, {num_bytes / max(tokens, 1):.2f} bytes/token, "
                     f"{num_bytes / 1e6 / seconds:.2f} MB/s")
    return "\n".join(lines)
