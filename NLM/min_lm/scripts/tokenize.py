"""Encode text files into .npy arrays of token ids, one array per input file.

    python -m NLM.min_lm.scripts.tokenize --inputs train.txt valid.txt \\
        --vocab_path vocab.json --merges_path merges.txt --output_dir data/ --workers 4

writes data/train.npy and data/valid.npy (uint16 when every id fits, else uint32), ready for
`np.load(path, mmap_mode="r")` in training.

Memory stays flat whatever the file size: the file is read in blocks, cut where the encoding
can be split (see `BPETokenizer.split_for_encoding`), encoded by a pool of processes with a
bounded number of blocks in flight, and the ids are appended to a temporary file in order. Only
when the input is done is the .npy written (header + ids) and renamed into place, so a failed or
interrupted run leaves no partial output.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import atomic_path, check_output_file, read_utf8
from NLM.min_lm.scripts.args import arg, parse_config, run_cli
from NLM.min_lm.tokenization.tokenizer import BPETokenizer

READ_BYTES = 1 << 20  # bytes read from the input at a time
BLOCK_CHARS = 1 << 20  # characters encoded per task


@dataclass
class TokenizeConfig:
    inputs: list[str] = field(metadata=arg("UTF-8 text files to encode"))
    vocab_path: str = field(metadata=arg("the tokenizer's vocab.json (GPT-2 format)"))
    merges_path: str = field(metadata=arg("the tokenizer's merges.txt (GPT-2 format)"))
    output_dir: str = field(default="tokenized_data",
                            metadata=arg("where to write <input name>.npy for each input"))
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>"],
                                      metadata=arg("strings encoded as single tokens"))
    workers: int = field(default=1, metadata=arg("number of encoding processes"))
    progress: bool = field(default=True, metadata=arg("show a progress bar and a summary"))

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")


@dataclass
class TokenizeResult:
    input_path: Path
    output_path: Path
    num_tokens: int
    num_bytes: int
    seconds: float


def run(config: TokenizeConfig) -> list[TokenizeResult]:
    """Encode each input file to `output_dir/<stem>.npy`; returns what was written."""
    inputs = [Path(p) for p in config.inputs]
    for path in inputs:
        if not path.is_file():
            raise UserError(f"--inputs: {path}: no such file")
    outputs = [Path(config.output_dir) / f"{path.stem}.npy" for path in inputs]
    if len(set(outputs)) < len(outputs):
        raise UserError("--inputs: two inputs have the same file name stem, so their outputs would collide")
    for output in outputs:  # before any work: the outputs can be written
        check_output_file(output, "--output_dir")
    try:
        tokenizer = BPETokenizer.from_files(config.vocab_path, config.merges_path, config.special_tokens)
    except UserError:
        raise
    except ValueError as e:  # files that parse but do not form a byte-level BPE tokenizer
        raise UserError(f"{config.vocab_path}, {config.merges_path}: {e}") from None
    dtype = np.dtype(np.uint16 if max(tokenizer.vocab) < 2**16 else np.uint32)

    results = []
    pool = None
    if config.workers > 1:
        pool = multiprocessing.get_context().Pool(config.workers, _init_worker, (tokenizer, dtype))
    try:
        for input_path, output_path in zip(inputs, outputs, strict=True):
            results.append(_encode_file(tokenizer, dtype, pool, input_path, output_path, config))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    if config.progress:
        _print_summary(results)
    return results


def _encode_file(
    tokenizer: BPETokenizer,
    dtype: np.dtype,
    pool: multiprocessing.pool.Pool | None,
    input_path: Path,
    output_path: Path,
    config: TokenizeConfig,
) -> TokenizeResult:
    """Encode one file, appending ids to a temporary raw file, then write the .npy atomically."""
    start = time.perf_counter()
    num_bytes = input_path.stat().st_size
    blocks = tokenizer.split_for_encoding(read_utf8(input_path, READ_BYTES), BLOCK_CHARS)
    bar = tqdm(total=num_bytes, unit="B", unit_scale=True, desc=input_path.name, disable=not config.progress)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=output_path.parent) as raw, bar:
        num_tokens = 0
        for ids, block_bytes in _encode_in_order(tokenizer, dtype, pool, blocks, config.workers):
            raw.write(ids.tobytes())
            num_tokens += len(ids)
            bar.update(block_bytes)
        raw.seek(0)
        with atomic_path(output_path, suffix=".npy") as tmp, open(tmp, "wb") as out:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
            np.lib.format.write_array_header_1_0(out, header | {"shape": (num_tokens,)})
            shutil.copyfileobj(raw, out, 1 << 24)
    return TokenizeResult(input_path, output_path, num_tokens, num_bytes, time.perf_counter() - start)


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


def _print_summary(results: list[TokenizeResult]) -> None:
    for r in results:
        print(f"{r.input_path} -> {r.output_path}: {r.num_tokens:,} tokens, "
              f"{r.num_bytes / max(r.num_tokens, 1):.2f} bytes/token, "
              f"{r.num_bytes / 1e6 / r.seconds:.2f} MB/s")
    if len(results) > 1:
        tokens = sum(r.num_tokens for r in results)
        num_bytes = sum(r.num_bytes for r in results)
        seconds = sum(r.seconds for r in results)
        print(f"total: {tokens:,} tokens, {num_bytes / max(tokens, 1):.2f} bytes/token, "
              f"{num_bytes / 1e6 / seconds:.2f} MB/s")


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.tokenize") -> int:
    config = parse_config(TokenizeConfig, argv, prog, __doc__)

    def body() -> int:
        run(config)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
