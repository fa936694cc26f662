"""Encode corpora into .npy arrays of token ids, with flat memory whatever their size.

An input is one file or several (a folder's, a glob's), in any format `documents` reads, and becomes one
stream of text: the documents joined by the end-of-text token. The text is read in blocks, cut where the
encoding can be split (see `BPETokenizer.split_for_encoding`), encoded by a pool of processes with a bounded
number of blocks in flight, and the ids are appended to a temporary file in order. Only when the input is
done is the .npy written (header + ids) and renamed into place, so a failed or interrupted run leaves no
partial output. The arrays are uint16 when every id fits, else uint32, ready for `np.load(path,
mmap_mode="r")` in training.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm.auto import tqdm

from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import atomic_path
from NLM.min_lm.tokenization.documents import BadRecords, file_format, iter_texts
from NLM.min_lm.tokenization.parallel import imap_bounded
from NLM.min_lm.tokenization.tokenizer import END_OF_TEXT, BPETokenizer

BLOCK_CHARS = 1 << 20  # characters encoded per task


@dataclass
class EncodedFile:
    input_path: Path  # the file read, or the folder holding the files read
    output_path: Path
    num_tokens: int
    num_bytes: int  # UTF-8 bytes of the text encoded
    seconds: float
    files: list[Path] = field(default_factory=list)  # the files read, in order, as one corpus
    bad_records: BadRecords = field(default_factory=BadRecords)  # the records skipped, if any

    @property
    def source(self) -> str:
        """What was read, for messages: the file, or "N files in <folder>"."""
        if len(self.files) <= 1:
            return str(self.input_path)
        return f"{len(self.files)} files in {self.input_path}"


def token_dtype(tokenizer: BPETokenizer) -> np.dtype:
    """The narrowest unsigned type that holds every id: uint16 for vocabularies up to 65,536 tokens."""
    return np.dtype(np.uint16 if max(tokenizer.vocab) < 2**16 else np.uint32)


def encode_files(tokenizer: BPETokenizer, inputs: list[Path | list[Path]], outputs: list[Path],
                 workers: int = 1, progress: bool = False, text_field: str = "text",
                 skip_bad_records: bool = False) -> list[EncodedFile]:
    """Encode each input (a file, or a list of files read as one corpus) to its output .npy; `workers` > 1
    encodes blocks in a process pool. `text_field` and `skip_bad_records`: see `documents`."""
    dtype = token_dtype(tokenizer)
    results = []
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context().Pool(workers, _init_worker, (tokenizer, dtype))
    try:
        for files, output_path in zip(inputs, outputs, strict=True):
            files = files if isinstance(files, list) else [files]
            results.append(encode_file(tokenizer, pool, files, output_path, workers, progress, text_field,
                                       BadRecords(skip=skip_bad_records)))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return results


def encode_file(tokenizer: BPETokenizer, pool: multiprocessing.pool.Pool | None, files: list[Path],
                output_path: Path, workers: int = 1, progress: bool = False, text_field: str = "text",
                bad_records: BadRecords | None = None) -> EncodedFile:
    """Encode one corpus, appending ids to a temporary raw file, then write the .npy atomically. A pool
    must have been started with `_init_worker`; without one, this process encodes the blocks."""
    bad_records = bad_records if bad_records is not None else BadRecords()
    several_documents = len(files) > 1 or file_format(files[0]) not in (None, "text")
    if several_documents and END_OF_TEXT not in tokenizer.special_tokens:
        raise UserError(f"{files[0]}: documents are joined by {END_OF_TEXT}, which the tokenizer must have "
                        f"as a special token (--special_tokens)")
    start = time.perf_counter()
    dtype = token_dtype(tokenizer)
    if pool is None:
        _init_worker(tokenizer, dtype)
    bar = tqdm(total=sum(p.stat().st_size for p in files), unit="B", unit_scale=True, desc=output_path.stem,
               disable=not progress)  # input bytes read, compressed or not
    blocks = tokenizer.split_for_encoding(iter_texts(files, text_field, bad_records, bar.update), BLOCK_CHARS)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=output_path.parent) as raw, bar:
        num_tokens = num_bytes = 0
        for ids, block_bytes in imap_bounded(pool, _encode_block, blocks, 2 * workers):
            raw.write(ids.tobytes())
            num_tokens += len(ids)
            num_bytes += block_bytes
        raw.seek(0)
        write_npy(raw, dtype, num_tokens, output_path)
    input_path = files[0] if len(files) == 1 else Path(os.path.commonpath(files))
    return EncodedFile(input_path, output_path, num_tokens, num_bytes, time.perf_counter() - start, files,
                       bad_records)


def write_npy(raw: BinaryIO, dtype: np.dtype, length: int, path: Path) -> None:
    """Write the 1-D array of `length` items of `dtype` whose bytes `raw` holds as the .npy file `path`,
    atomically: the header first, then the bytes copied in large pieces (never all in memory)."""
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as out:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
        np.lib.format.write_array_header_1_0(out, header)
        shutil.copyfileobj(raw, out, 1 << 24)


# Each pool process holds its own tokenizer (with its own caches, which warm up over the blocks it
# encodes); it is set once by the pool initializer (or in this process, when there is no pool).
_worker_state: dict[str, object] = {}


def _init_worker(tokenizer: BPETokenizer, dtype: np.dtype) -> None:
    _worker_state["tokenizer"] = tokenizer
    _worker_state["dtype"] = dtype


def _encode_block(block: str) -> tuple[np.ndarray, int]:
    """The block's ids, and its size in UTF-8 bytes (with at most two blocks per worker in flight, reading
    never runs ahead of encoding by more than that)."""
    ids = _worker_state["tokenizer"].encode(block)
    return np.array(ids, dtype=_worker_state["dtype"]), len(block.encode("utf-8", errors="surrogatepass"))


def format_summary(results: list[EncodedFile]) -> str:
    """One line per file (tokens, bytes per token, speed), plus a total line for several files."""
    lines = [f"{r.source} -> {r.output_path}: {r.num_tokens:,} tokens, "
             f"{r.num_bytes / max(r.num_tokens, 1):.2f} bytes/token, {r.num_bytes / 1e6 / r.seconds:.2f} MB/s"
             for r in results]
    if len(results) > 1:
        tokens = sum(r.num_tokens for r in results)
        num_bytes = sum(r.num_bytes for r in results)
        seconds = sum(r.seconds for r in results)
        lines.append(f"total: {tokens:,} tokens, {num_bytes / max(tokens, 1):.2f} bytes/token, "
                     f"{num_bytes / 1e6 / seconds:.2f} MB/s")
    return "\n".join(lines)
