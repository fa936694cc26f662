"""A text corpus for the quickstart: the user's files, or one that every Python installation has.

The default corpus is the Python standard library's own `.py` source, found at run time through
`sysconfig` (never copied into this repository): tens of megabytes of real, varied, UTF-8 text on any
machine, with no download. Site-packages (whatever the user installed) is left out so the corpus
depends on the Python version only; the test suites are left out unless asked for.

`build_corpus` turns a list of files into the two files the rest of the pipeline reads: train.txt and
valid.txt, the documents joined by the end-of-text token, the last ~5% held out for validation.
"""

from __future__ import annotations

import codecs
import random
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import atomic_write_text
from NLM.min_lm.tokenization import END_OF_TEXT

TEST_DIRS = {"test", "tests", "idle_test"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(include_tests: bool = False, seed: int | None = 0) -> list[Path]:
    """The standard library's .py files, in a fixed pseudo-random order (sorted by path if `seed` is None).

    Sorting first makes the list independent of the file system's order; the seeded shuffle then
    spreads a size-capped prefix over the whole library instead of its alphabetically first packages.
    The benchmarks read the sorted list, so their corpus stays the same from run to run.
    """
    root = stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        if not path.is_file():
            continue
        parts = path.relative_to(root).parts
        if "site-packages" in parts or "dist-packages" in parts:
            continue
        if not include_tests and TEST_DIRS.intersection(parts[:-1]):
            continue
        files.append(path)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if seed is not None:
        random.Random(seed).shuffle(files)
    return files


@dataclass
class Corpus:
    train_path: Path
    valid_path: Path
    num_documents: int
    train_bytes: int
    valid_bytes: int


def read_documents(paths: Iterable[Path], max_bytes: int, *, skip_undecodable: bool,
                   progress: bool = False) -> Iterator[str]:
    """The files' texts, at most `max_bytes` UTF-8 bytes in all (the last one cut at a line break).

    A file that is not UTF-8 is skipped when `skip_undecodable` (the stdlib has a few deliberately
    mis-encoded ones), else it is an error naming the file.
    """
    budget = max_bytes
    bar = tqdm(total=max_bytes, unit="B", unit_scale=True, desc="corpus", disable=not progress)
    with bar:
        for path in paths:
            if budget <= 0:
                break
            try:
                with open(path, "rb") as f:
                    data = f.read(budget + 1)  # never more than the cap, even from a huge file
            except IsADirectoryError:
                raise UserError(f"--data: {path} is a directory, not a text file") from None
            if len(data) > budget:
                cut = data.rfind(b"\n", 0, budget)
                data = data[: cut + 1 if cut > 0 else budget]
            try:  # an incremental decoder drops a character cut in two by the cap instead of failing
                text = codecs.getincrementaldecoder("utf-8")().decode(data)
            except UnicodeDecodeError as e:
                if skip_undecodable:
                    continue
                raise UserError(f"--data: {path} is not UTF-8 text (invalid byte at offset {e.start})"
                                ) from None
            budget -= len(data)
            bar.update(len(data))
            yield text


def split_train_valid(documents: list[str], valid_fraction: float = 0.05) -> tuple[str, str]:
    """Join the documents with the end-of-text token and hold out the last `valid_fraction` of the text.

    The cut goes at the first document boundary after that point (the separator itself is dropped),
    else at the first line break after it, so that validation starts at the start of a document or
    line whenever the text allows.
    """
    text = END_OF_TEXT.join(documents)
    target = int(len(text) * (1 - valid_fraction))
    boundary = text.find(END_OF_TEXT, target)
    if boundary != -1 and text[boundary + len(END_OF_TEXT) :].strip():
        return text[:boundary], text[boundary + len(END_OF_TEXT) :]
    newline = text.find("\n", target)
    cut = newline + 1 if newline != -1 and text[newline + 1 :].strip() else target
    return text[:cut], text[cut:]


def build_corpus(paths: Iterable[Path], out_dir: Path, max_bytes: int, *, skip_undecodable: bool,
                 progress: bool = False) -> Corpus:
    """Write out_dir/train.txt and out_dir/valid.txt from the files (see `split_train_valid`)."""
    documents = [doc for doc in read_documents(paths, max_bytes, skip_undecodable=skip_undecodable,
                                               progress=progress) if doc.strip()]
    if not documents:
        raise UserError("the corpus is empty: no text found in the given files")
    train, valid = split_train_valid(documents)
    if not train.strip() or not valid.strip():
        raise UserError("the corpus is too small to hold out a validation part; give more text")
    train_path, valid_path = out_dir / "train.txt", out_dir / "valid.txt"
    atomic_write_text(train_path, train)
    atomic_write_text(valid_path, valid)
    return Corpus(train_path, valid_path, len(documents), len(train.encode()), len(valid.encode()))


def unigram_entropy(token_ids) -> float:
    """Entropy (nats) of the tokens' frequency distribution: the loss of the best model that ignores context.

    A language model's validation loss below this number is what it has learned from context.
    """
    counts = np.bincount(np.asarray(token_ids, dtype=np.int64))
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())
