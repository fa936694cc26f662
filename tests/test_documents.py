"""Corpus formats: every format yields the same documents, streamed; bad records name their file and line."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from NLM.min_lm.errors import UserError
from NLM.min_lm.tokenization import END_OF_TEXT as EOS
from NLM.min_lm.tokenization import documents
from NLM.min_lm.tokenization.documents import (
    BadRecords,
    corpus_name,
    iter_texts,
    read_records,
    resolve_inputs,
)

DOCS = ["Once upon a time, a [bracket] and a {brace}.", 'She said "hi,\\ there"\nand left.', "",
        "ünïcödé ✓ text\n\nwith blank lines", "last one"]


def write_jsonl(path: Path, records: list, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def write_parquet(path: Path, column: list, name: str = "text") -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({name: column, "id": list(range(len(column)))}), path, row_group_size=2)
    return path


@pytest.fixture
def small_reads(monkeypatch):
    """Reads of a few bytes: every string, element and character gets cut by a read somewhere."""
    monkeypatch.setattr(documents, "READ_BYTES", 5)


def test_every_format_yields_the_documents(tmp_path, small_reads):
    records = [{"text": doc, "id": i} for i, doc in enumerate(DOCS)]
    files = [
        write_jsonl(tmp_path / "a.jsonl", records),
        write_jsonl(tmp_path / "a.jsonl.gz", records, gzip.open),
        tmp_path / "list.json",
        write_jsonl(tmp_path / "lines.json", records),
        write_parquet(tmp_path / "a.parquet", DOCS),
    ]
    files[2].write_text(json.dumps(records, indent=2), encoding="utf-8")
    for path in files:
        assert list(read_records(path)) == DOCS, path.name


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.text(), st.dictionaries(st.text(max_size=3), st.text() | st.integers())),
                max_size=6),
       st.sampled_from([None, 0, 2]), st.integers(1, 9))
def test_json_list_elements_match_json_load(elements, indent, read_bytes):
    """The streaming list scanner cuts the same elements that json.load parses, for any reads."""
    path = Path(f"/tmp/minlm_hypothesis_{id(elements)}.json")
    path.write_text(json.dumps(elements, indent=indent, ensure_ascii=False), encoding="utf-8")
    old, documents.READ_BYTES = documents.READ_BYTES, read_bytes
    try:
        scanned = [json.loads(text) for _, text in documents._json_list(path, lambda n: None)]
    finally:
        documents.READ_BYTES = old
        path.unlink()
    assert scanned == json.loads(json.dumps(elements))


def test_iter_texts_joins_documents_with_eos(tmp_path):
    (tmp_path / "one.txt").write_text("first file\n", encoding="utf-8")
    write_jsonl(tmp_path / "two.jsonl", [{"text": "a"}, {"text": "b"}])
    text = "".join(iter_texts([tmp_path / "one.txt", tmp_path / "two.jsonl"]))
    assert text == f"first file\n{EOS}a{EOS}b"


def test_text_field_chooses_the_field(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"content": "c1", "text": "t1"}, {"content": "c2"}])
    assert list(read_records(path, "content")) == ["c1", "c2"]


@pytest.mark.parametrize("line, problem", [
    ('{"text": "ok"', "invalid JSON"),
    ('{"body": "no text"}', "no field 'text' (fields: body)"),
    ('{"text": 7}', "field 'text' is a number, not a string"),
    ('{"text": null}', "field 'text' is null, not a string"),
    ('["text"]', "expected a JSON object, got a list"),
])
def test_bad_record_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n' + line + '\n{"text": "after"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=rf"bad\.jsonl:3: {re.escape(problem)}.*--skip_bad_records"):
        list(read_records(path))
    bad = BadRecords(skip=True)
    assert list(read_records(path, bad_records=bad)) == ["fine", "after"]
    assert bad.count == 1 and bad.first.startswith(f"{path}:3: ")


def test_bad_records_are_counted_across_formats(tmp_path):
    bad = BadRecords(skip=True)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b'{"text": "a"}\nnot json\n{"text": "\xff"}\n{"x": 1}\n')
    listed = tmp_path / "b.json"
    listed.write_text('[\n  {"text": "b"},\n  {"text": 1},\n  {"oops"}\n]', encoding="utf-8")
    parquet = write_parquet(tmp_path / "c.parquet", ["c", None, "d"])
    texts = list(iter_texts([jsonl, listed, parquet], bad_records=bad))
    assert "".join(texts) == EOS.join(["a", "b", "c", "d"])
    assert bad.count == 6 and bad.first.startswith(f"{jsonl}:2: invalid JSON")
    with pytest.raises(UserError, match=r"b\.json:3: field 'text' is a number"):
        list(read_records(listed))
    listed.write_text('[\n  {"text": "b"},\n\n  {"oops"}\n]', encoding="utf-8")
    with pytest.raises(UserError, match=r"b\.json:4: invalid JSON"):
        list(read_records(listed))
    with pytest.raises(UserError, match=r"c\.parquet: row 2: column 'text' is null"):
        list(read_records(parquet))


@pytest.mark.parametrize("content, message", [
    ('[{"text": "x"}', "not closed"),
    ('[{"text": "x"}] trailing', "after the JSON list"),
])
def test_malformed_json_list(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        list(read_records(path))


def test_missing_parquet_column_names_the_columns(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", ["a"], name="content")
    with pytest.raises(UserError, match=r"x\.parquet: no column 'text' \(columns: content, id\)"):
        list(read_records(path))


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(UserError, match=r"pip install 'min-lm\[parquet\]'"):
        list(read_records(path))


def test_corrupt_gzip_and_invalid_utf8_text(tmp_path):
    gz = tmp_path / "x.jsonl.gz"
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match=r"x\.jsonl\.gz: not a readable gzip file"):
        list(read_records(gz))
    txt = tmp_path / "x.txt"
    txt.write_bytes(b"abc\xffdef")
    with pytest.raises(UserError, match=r"x\.txt: not UTF-8 text \(invalid byte at offset 3\)"):
        list(iter_texts([txt]))


def test_resolve_inputs_folders_and_globs(tmp_path):
    for name in ["b.jsonl", "a.txt", "sub/c.parquet", "notes.md", ".hidden.txt", "sub/.cache/d.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert resolve_inputs(str(tmp_path), "--inputs") == [tmp_path / "a.txt", tmp_path / "b.jsonl",
                                                         tmp_path / "sub/c.parquet"]
    assert resolve_inputs(str(tmp_path / "*.*"), "--inputs") == [tmp_path / "a.txt", tmp_path / "b.jsonl",
                                                                 tmp_path / "notes.md"]
    with pytest.raises(UserError, match=r"--inputs .*\*\.xml: the pattern matches no files"):
        resolve_inputs(str(tmp_path / "*.xml"), "--inputs")
    with pytest.raises(UserError, match="--inputs .*missing.txt: no such file"):
        resolve_inputs(str(tmp_path / "missing.txt"), "--inputs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="the folder holds no"):
        resolve_inputs(str(tmp_path / "empty"), "--inputs")


@pytest.mark.parametrize("spec, name", [
    ("data/train.jsonl.gz", "train"), ("data/train.txt", "train"), ("corpus.en", "corpus"),
    ("shards/train-*.jsonl", "train"), ("shards/*.parquet", "shards"), ("a/*/*.json", "a"),
])
def test_corpus_name(spec, name):
    assert corpus_name(spec) == name
