"""Corpus files as one stream of text: plain text, JSON lines, JSON and Parquet; files, folders and globs.

Users' corpora come in a few shapes: plain text, JSON lines (one object per line with a text field: most
scraped and exported data), a JSON list of such objects, and Parquet (most dataset-hub downloads). Each
record (one object, one row, or one whole .txt file) is one *document*, and the documents are joined by
the end-of-text token, so the model sees where one ends and the next begins:

    doc 1 <|endoftext|> doc 2 <|endoftext|> ... doc n

The same documents therefore give the same text (and the same token ids) whatever files hold them.
Memory stays bounded whatever the corpus size: text files are read in 1 MB pieces, JSON lines one line
at a time, a JSON list one element at a time, Parquet one batch of rows at a time.

A record without usable text (invalid JSON, no such field, a value that is not a string) is an error
naming the file and line (row, for Parquet), or, when asked, is counted and skipped: see `BadRecords`.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from NLM.min_lm.errors import UserError
from NLM.min_lm.tokenization.tokenizer import END_OF_TEXT

READ_BYTES = 1 << 20  # bytes read from a text or JSON file at a time
PARQUET_BATCH_ROWS = 4096
# file name suffix -> format; a file named or globbed explicitly with another suffix is read as plain text
FORMATS = {".txt": "text", ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".json": "json", ".parquet": "parquet"}
_WILDCARD = re.compile(r"[*?\[]")

OnBytes = Callable[[int], Any]  # told how many input bytes were just read (for a progress bar)


@dataclass
class BadRecords:
    """What happens to a record without usable text: an error naming it, or (`skip`) counted and skipped."""

    skip: bool = False
    count: int = 0
    first: str = ""  # the first skipped record, "file:line: problem", for the summary

    def found(self, where: str, problem: str) -> None:
        message = f"{where}: {problem}"
        if not self.skip:
            raise UserError(f"{message} (--skip_bad_records skips such records)")
        self.count += 1
        self.first = self.first or message

    def summary(self) -> str:
        return f"skipped {self.count:,} bad record(s); the first: {self.first}" if self.count else ""


# ---- which files ------------------------------------------------------------------------------------------


def file_format(path: Path) -> str | None:
    """The format its suffix names ("x.jsonl.gz" -> "jsonl"), or None for any other suffix."""
    name = path.name.lower()
    return next((fmt for suffix, fmt in FORMATS.items() if name.endswith(suffix)), None)


def resolve_inputs(spec: str, flag: str) -> list[Path]:
    """The files `spec` stands for: the file itself; a folder's files with a known suffix (recursively,
    hidden ones left out); or the files a glob matches. Folders and globs are sorted by path, so the
    order of the documents does not depend on the file system."""
    path = Path(spec)
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.is_file() and file_format(p)
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise UserError(f"{flag} {spec}: the folder holds no {', '.join(FORMATS)} files")
        return files
    if _WILDCARD.search(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"{flag} {spec}: the pattern matches no files")
        return files
    if not path.is_file():
        raise UserError(f"{flag} {spec}: no such file")
    return [path]


def corpus_name(spec: str) -> str:
    """A name for what `spec` holds, for the files made from it: data/train.jsonl.gz -> "train", a folder
    -> its name, a glob -> its file name up to the first wildcard (shards/train-*.jsonl -> "train"),
    or the name of the folder it searches when that leaves nothing (shards/*.parquet -> "shards")."""
    path = Path(spec)
    if _WILDCARD.search(spec):
        prefix = _WILDCARD.split(path.name)[0].rstrip("-_.")
        if prefix:
            return prefix
        folders = [p.name for p in path.parents if p.name and not _WILDCARD.search(p.name)]
        return folders[0] if folders else "corpus"
    if path.is_dir():
        return path.resolve().name or "corpus"
    suffix = next((s for s in FORMATS if path.name.lower().endswith(s)), path.suffix)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


# ---- the stream of text -----------------------------------------------------------------------------------


def iter_texts(files: list[Path], text_field: str = "text", bad_records: BadRecords | None = None,
               on_bytes: OnBytes | None = None) -> Iterator[str]:
    """The documents of `files`, in order, joined by END_OF_TEXT, as a stream of strings (a long .txt document
    comes in several pieces). Concatenated, the strings are the corpus text."""
    started = False
    for path in files:
        if file_format(path) in (None, "text"):
            if started:
                yield END_OF_TEXT
            yield from read_text_file(path, on_bytes)
            started = True
            continue
        for document in read_records(path, text_field, bad_records, on_bytes):
            if started:
                yield END_OF_TEXT
            yield document
            started = True


def read_text_file(path: Path, on_bytes: OnBytes | None = None) -> Iterator[str]:
    """A UTF-8 file's text in pieces, decoding across read boundaries (newlines kept as they are)."""
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
            if on_bytes is not None:
                on_bytes(len(data))
            if text:
                yield text
            if not data:
                return
            offset += len(data)


def read_records(path: Path, text_field: str = "text", bad_records: BadRecords | None = None,
                 on_bytes: OnBytes | None = None) -> Iterator[str]:
    """The text of each record of a .jsonl, .jsonl.gz, .json or .parquet file, in file order."""
    bad_records = bad_records if bad_records is not None else BadRecords()
    on_bytes = on_bytes or (lambda n: None)
    fmt = file_format(path)
    if fmt == "parquet":
        return _parquet_records(path, text_field, bad_records, on_bytes)
    if fmt == "json" and _starts_with(path, b"["):
        return _records_to_texts(_json_list(path, on_bytes), path, text_field, bad_records)
    if fmt in ("json", "jsonl"):
        return _records_to_texts(_json_lines(path, on_bytes), path, text_field, bad_records)
    raise ValueError(f"{path}: not a .jsonl, .jsonl.gz, .json or .parquet file")


def _text_of(record: Any, text_field: str, where: str, bad_records: BadRecords) -> str | None:
    """The record's text, or None after reporting why it has none."""
    if not isinstance(record, dict):
        bad_records.found(where, f"expected a JSON object, got {_json_kind(record)}")
        return None
    if text_field not in record:
        fields = ", ".join(list(record)[:8]) or "none"
        bad_records.found(where, f"no field {text_field!r} (fields: {fields}); choose one with --text_field")
        return None
    value = record[text_field]
    if not isinstance(value, str):
        bad_records.found(where, f"field {text_field!r} is {_json_kind(value)}, not a string")
        return None
    return value


def _json_kind(value: Any) -> str:
    kinds = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


def _parse_json(text: bytes | str, path: Path, line: int, bad_records: BadRecords) -> tuple[bool, Any]:
    """(True, value) for a record that is valid UTF-8 JSON, else (False, None) after reporting it."""
    try:
        return True, json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as e:
        bad_records.found(f"{path}:{line}", f"not UTF-8 text (invalid byte at character {e.start + 1})")
    except json.JSONDecodeError as e:
        bad_records.found(f"{path}:{line + e.lineno - 1}", f"invalid JSON: {e.msg} "
                                                            f"(at character {e.pos + 1} of the record)")
    return False, None


def _records_to_texts(records: Iterator[tuple[int, bytes | str]], path: Path, text_field: str,
                      bad_records: BadRecords) -> Iterator[str]:
    """Parse each (line, JSON text) and keep the texts; bad records are reported."""
    for line, raw in records:
        ok, record = _parse_json(raw, path, line, bad_records)
        text = _text_of(record, text_field, f"{path}:{line}", bad_records) if ok else None
        if text is not None:
            yield text


def _json_lines(path: Path, on_bytes: OnBytes) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of each non-blank line; a .gz file is decompressed as it is read."""
    with open(path, "rb") as raw:
        f = gzip.GzipFile(fileobj=raw) if path.name.lower().endswith(".gz") else raw
        position = pending = 0  # input bytes reported; bytes read since
        try:
            for number, line in enumerate(f, 1):
                pending += len(line)
                if pending >= READ_BYTES:  # report now and then: a callback per line would cost time
                    on_bytes(raw.tell() - position)
                    position, pending = raw.tell(), 0
                if line.strip():
                    yield number, line.rstrip(b"\r\n")  # so a record's JSON errors stay on its line
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path}: not a readable gzip file ({e})") from None
        on_bytes(raw.tell() - position)


# A JSON list is cut into elements by tracking bracket depth; strings are matched whole, so brackets and
# commas inside them do not count. A lone quote is a string that goes on past the text read so far.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]|"')


def _json_list(path: Path, on_bytes: OnBytes) -> Iterator[tuple[int, str]]:
    """(line, text) of each element of a JSON list `[{...}, {...}]`, without reading the whole file:
    the text is scanned for the commas between top-level elements, and each element is parsed alone."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    text, pos, start = "", 0, -1  # pos: where scanning resumes; start: where this element begins
    depth, line, counted = 0, 1, 0  # text[:counted] is on lines before `line`
    after_comma = False  # "[1,]": the empty element after a comma is an error, the one in "[]" is not
    with open(path, "rb") as f:
        while depth or start < 0:
            data = f.read(max(READ_BYTES, len(text) - pos))  # a long string doubles the read: no rescans
            on_bytes(len(data))
            try:
                text += decoder.decode(data, final=not data)
            except UnicodeDecodeError:
                raise UserError(f"{path}: not UTF-8 text") from None
            if start < 0:
                if not text.strip():
                    continue
                start = pos = text.index("[") + 1  # the caller saw that the file starts with "["
                depth = 1
            for match in _JSON_TOKEN.finditer(text, pos):
                token, pos = match.group(), match.end()
                if token == '"' and data:  # a string cut by the read: read on, then scan it again
                    pos = match.start()
                    break
                if token[0] == '"':
                    continue
                if token in "[{":
                    depth += 1
                    continue
                depth -= token != ","
                if depth == 1 and token == "," or depth == 0 and (after_comma
                                                                   or text[start:match.start()].strip()):
                    element = text[start:match.start()]
                    first = start + len(element) - len(element.lstrip())
                    line, counted = line + text.count("\n", counted, first), first
                    yield line, element.strip()
                    start, after_comma = match.end(), token == ","
                if depth == 0:
                    break
            else:
                pos = len(text)
            if depth and not data:
                raise UserError(f"{path}: the JSON list is not closed (the file ends inside it)")
            line += text.count("\n", counted, start)  # drop the text already handed out
            text, pos, start, counted = text[start:], pos - start, 0, 0
        if text[pos:].strip() or f.read(READ_BYTES).strip():
            raise UserError(f"{path}: text after the JSON list's closing ]")


def _starts_with(path: Path, prefix: bytes) -> bool:
    """Whether the file's first non-whitespace bytes are `prefix` (a JSON list rather than JSON lines)."""
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped.startswith(prefix)
    return False


def _parquet_records(path: Path, text_field: str, bad_records: BadRecords,
                     on_bytes: OnBytes) -> Iterator[str]:
    """The `text_field` column, one batch of rows at a time; a null (or a non-string) is a bad record."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow (pip install 'min-lm[parquet]')") from None
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a Parquet file ({e})") from None
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise UserError(f"{path}: no column {text_field!r} (columns: {', '.join(columns)}); "
                        f"choose one with --text_field")
    file_bytes, total_rows = path.stat().st_size, max(parquet.metadata.num_rows, 1)
    row = reported = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if isinstance(value, str):
                yield value
            else:
                bad_records.found(f"{path}: row {row}", f"column {text_field!r} is {_json_kind(value)}, "
                                                        f"not a string")
        progress = file_bytes * row // total_rows
        on_bytes(progress - reported)
        reported = progress
