"""tokenize and train-tokenizer on every corpus format: the same documents give the same ids and merges."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from NLM.min_lm.scripts import tokenize, train_tokenizer
from NLM.min_lm.tokenization import END_OF_TEXT, BPETokenizer, documents, encode_files, train_bpe

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def docs(data_dir) -> list[str]:
    stories = (data_dir / "tinystories_sample.txt").read_text(encoding="utf-8").split(END_OF_TEXT)
    return [*stories, (data_dir / "german.txt").read_text(encoding="utf-8"), "", "Grüße\r\n 世界 😀\n\n"]


def write_jsonl(path: Path, docs: list[str], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": i, "text": doc}) + "\n" for i, doc in enumerate(docs))
    return path


def write_parquet(path: Path, docs: list[str]) -> Path:
    pq.write_table(pa.table({"text": docs}), path, row_group_size=2)
    return path


@pytest.fixture(scope="module")
def corpora(docs, tmp_path_factory) -> dict[str, str]:
    """The same documents in every shape an input can take."""
    root = tmp_path_factory.mktemp("corpora")
    (root / "plain.txt").write_text(END_OF_TEXT.join(docs), encoding="utf-8")
    write_jsonl(root / "lines.jsonl", docs)
    write_jsonl(root / "zipped.jsonl.gz", docs, gzip.open)
    (root / "listed.json").write_text(json.dumps([{"text": doc} for doc in docs], indent=1), encoding="utf-8")
    write_parquet(root / "table.parquet", docs)
    folder = root / "folder"  # mixed formats, read in sorted order: a, b, c
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", docs[:2])
    write_parquet(folder / "b.parquet", docs[2:-1])
    (folder / "c.txt").write_text(docs[-1], encoding="utf-8")
    (folder / "README.md").write_text("not a corpus file: left out")
    shards = root / "shards"
    shards.mkdir()
    for i, part in enumerate([docs[:1], docs[1:3], docs[3:]]):
        write_jsonl(shards / f"part-{i}.jsonl", part)
    return {"plain": str(root / "plain.txt"), "jsonl": str(root / "lines.jsonl"),
            "jsonl.gz": str(root / "zipped.jsonl.gz"), "json": str(root / "listed.json"),
            "parquet": str(root / "table.parquet"), "folder": str(folder),
            "glob": str(shards / "part-*.jsonl")}


def gpt2_flags(data_dir) -> list[str]:
    return ["--vocab_path", str(data_dir / "gpt2_vocab.json"),
            "--merges_path", str(data_dir / "gpt2_merges.txt")]


@pytest.fixture
def small_blocks(monkeypatch):
    """Small reads and blocks, so documents and characters are cut across them."""
    monkeypatch.setattr(documents, "READ_BYTES", 64)
    monkeypatch.setattr(encode_files, "BLOCK_CHARS", 100)


@pytest.mark.parametrize("workers", [1, 2])
def test_every_format_gives_the_ids_of_the_joined_text(corpora, docs, data_dir, tmp_path, small_blocks,
                                                       workers):
    out = tmp_path / "out"
    argv = ["--inputs", *corpora.values(), *gpt2_flags(data_dir), "--output_dir", str(out),
            "--workers", str(workers), "--no-progress"]
    assert tokenize.main(argv) == 0
    gpt2 = BPETokenizer.from_files(data_dir / "gpt2_vocab.json", data_dir / "gpt2_merges.txt", [END_OF_TEXT])
    expected = gpt2.encode(END_OF_TEXT.join(docs))
    names = ["plain", "lines", "zipped", "listed", "table", "folder", "part"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.npy" for name in names)
    for name in names:
        assert np.load(out / f"{name}.npy").tolist() == expected, name


def test_every_format_trains_the_same_tokenizer(corpora, tmp_path):
    reference = train_bpe(corpora["plain"], 320, [END_OF_TEXT], num_workers=1)
    for kind in ("jsonl", "parquet", "folder", "glob"):
        out = tmp_path / kind
        argv = [corpora[kind], "--vocab_size", "320", "--output_dir", str(out), "--num_workers", "2",
                "--no-progress"]
        assert train_tokenizer.main(argv) == 0
        vocab_file = next(out.glob("*_vocab.json"))
        merges_file = next(out.glob("*_merges.txt"))
        loaded = BPETokenizer.from_files(vocab_file, merges_file, [END_OF_TEXT])
        assert (loaded.vocab, loaded.merges) == reference, kind
    assert (tmp_path / "parquet" / "table_vocab.json").is_file()
    assert (tmp_path / "glob" / "part_vocab.json").is_file()


@pytest.fixture
def with_bad_record(docs, tmp_path) -> Path:
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": doc}) for doc in docs[:3]]
    lines.insert(2, '{"title": "no text here"}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_tokenize_bad_record_is_one_line_naming_file_and_line(with_bad_record, data_dir, tmp_path, capsys):
    argv = ["--inputs", str(with_bad_record), *gpt2_flags(data_dir), "--output_dir", str(tmp_path / "out"),
            "--no-progress"]
    assert tokenize.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith(f"error: {with_bad_record}:3: no field 'text'")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_tokenize_skip_bad_records_counts_them(with_bad_record, docs, data_dir, tmp_path, capsys):
    argv = ["--inputs", str(with_bad_record), *gpt2_flags(data_dir), "--output_dir", str(tmp_path),
            "--skip_bad_records", "--no-progress"]
    assert tokenize.main(argv) == 0
    err = capsys.readouterr().err
    assert f"warning: {with_bad_record}: skipped 1 bad record(s); the first: {with_bad_record}:3:" in err
    gpt2 = BPETokenizer.from_files(data_dir / "gpt2_vocab.json", data_dir / "gpt2_merges.txt", [END_OF_TEXT])
    assert np.load(tmp_path / "bad.npy").tolist() == gpt2.encode(END_OF_TEXT.join(docs[:3]))


def test_train_tokenizer_bad_records(with_bad_record, tmp_path, capsys):
    argv = [str(with_bad_record), "--vocab_size", "270", "--output_dir", str(tmp_path), "--no-progress"]
    assert train_tokenizer.main(argv) == 2
    assert f"error: {with_bad_record}:3: no field 'text'" in capsys.readouterr().err
    assert train_tokenizer.main([*argv, "--skip_bad_records"]) == 0
    assert "skipped 1 bad record(s)" in capsys.readouterr().err


def test_documents_need_the_end_of_text_token(corpora, data_dir, tmp_path, capsys):
    argv = ["--inputs", corpora["jsonl"], *gpt2_flags(data_dir), "--output_dir", str(tmp_path),
            "--special_tokens", "--no-progress"]
    assert tokenize.main(argv) == 2
    assert "documents are joined by <|endoftext|>, which the tokenizer must have as a special token" in (
        capsys.readouterr().err)


def test_text_field_picks_the_column(docs, data_dir, tmp_path):
    write_jsonl(tmp_path / "x.jsonl", docs[:2])
    path = tmp_path / "x.jsonl"
    path.write_text(path.read_text().replace('"text"', '"body"'), encoding="utf-8")
    argv = ["--inputs", str(path), *gpt2_flags(data_dir), "--output_dir", str(tmp_path),
            "--text_field", "body", "--no-progress"]
    assert tokenize.main(argv) == 0
    gpt2 = BPETokenizer.from_files(data_dir / "gpt2_vocab.json", data_dir / "gpt2_merges.txt", [END_OF_TEXT])
    assert np.load(tmp_path / "x.npy").tolist() == gpt2.encode(END_OF_TEXT.join(docs[:2]))
