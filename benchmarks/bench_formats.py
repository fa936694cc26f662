"""`minlm tokenize` speed on JSON lines and Parquet vs the same text as plain .txt.

The documents are the stories of TinyStories' first 2 MiB (`<|endoftext|>`-separated in the shared data),
repeated `--copies` times. They are written as plain text (joined by <|endoftext|>), as JSON lines
(`{"id": i, "text": ...}`), gzipped JSON lines and Parquet; each file is encoded by `encode_files` (what
`minlm tokenize` runs: reading, `--workers` encoding processes, the .npy written) with GPT-2's tokenizer,
and all four must give the same ids. MB/s counts the UTF-8 bytes of the text (the same for every format),
so the ratio to .txt is the cost of reading the format. The formats take turns, `--repeats` rounds, best
time of each: the machine is shared, so the load average is recorded, and the CPU-time rows (this process
and its workers) are less sensitive to it than the wall-clock ones.

    python benchmarks/bench_formats.py [--copies 4] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from machine import machine_info

from NLM.min_lm.tokenization.encode_files import encode_files
from NLM.min_lm.tokenization.tokenizer import END_OF_TEXT, BPETokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "bench_formats.json"
DATA = Path(os.environ.get("MINLM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SOURCE = "tinystories_v1_train_head_2MiB.txt"


def write_formats(docs: list[str], folder: Path) -> dict[str, Path]:
    """The documents as .txt, .jsonl, .jsonl.gz and .parquet files in `folder`."""
    paths = {fmt: folder / f"stories.{fmt}" for fmt in ("txt", "jsonl", "jsonl.gz", "parquet")}
    paths["txt"].write_text(END_OF_TEXT.join(docs), encoding="utf-8")
    lines = "".join(json.dumps({"id": i, "text": doc}) + "\n" for i, doc in enumerate(docs))
    paths["jsonl"].write_text(lines, encoding="utf-8")
    with gzip.open(paths["jsonl.gz"], "wt", encoding="utf-8") as f:
        f.write(lines)
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), paths["parquet"])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="times the 2 MiB of stories are repeated")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best time of each format counts")
    parser.add_argument("--workers", type=int, default=2, help="encoding processes")
    args = parser.parse_args()

    stories = (DATA / SOURCE).read_text(encoding="utf-8").split(END_OF_TEXT)
    docs = stories * args.copies
    num_bytes = len(END_OF_TEXT.join(docs).encode("utf-8"))
    load_before = os.getloadavg()
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_formats(docs, Path(tmp))
        file_sizes = {fmt: path.stat().st_size for fmt, path in paths.items()}
        reference = None
        for _ in range(args.repeats):
            for fmt, path in paths.items():
                tokenizer = BPETokenizer.from_files(DATA / "gpt2_vocab.json", DATA / "gpt2_merges.txt",
                                                    [END_OF_TEXT])  # fresh caches for every run
                before = os.times()
                result = encode_files(tokenizer, [path], [Path(tmp) / "out.npy"], args.workers)[0]
                after = os.times()  # the workers' CPU counts once the pool's processes have exited
                wall.setdefault(fmt, []).append(result.seconds)
                cpu.setdefault(fmt, []).append(sum(after[i] - before[i] for i in range(4)))
                assert result.num_bytes == num_bytes, (fmt, result.num_bytes, num_bytes)
                ids = np.load(Path(tmp) / "out.npy")
                reference = ids if reference is None else reference
                identical &= np.array_equal(ids, reference)
    load_after = os.getloadavg()

    mb_per_s = {fmt: num_bytes / 1e6 / min(ts) for fmt, ts in wall.items()}
    mb_per_cpu_s = {fmt: num_bytes / 1e6 / min(ts) for fmt, ts in cpu.items()}
    print(f"{len(docs):,} documents, {num_bytes / 1e6:.1f} MB of text, {len(reference):,} tokens; "
          f"ids identical across formats: {identical}; {args.workers} workers on {os.cpu_count()} cores; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{'format':10} {'file MB':>8} {'MB/s wall':>10} {'vs .txt':>8} {'MB/CPU-s':>9} {'vs .txt':>8}")
    for fmt in paths:
        wall_ratio, cpu_ratio = mb_per_s[fmt] / mb_per_s["txt"], mb_per_cpu_s[fmt] / mb_per_cpu_s["txt"]
        print(f"{fmt:10} {file_sizes[fmt] / 1e6:8.1f} {mb_per_s[fmt]:10.2f} {wall_ratio:7.2f}x "
              f"{mb_per_cpu_s[fmt]:9.2f} {cpu_ratio:7.2f}x")

    result = {
        "benchmark": "tokenize by corpus format",
        "machine": machine_info(pyarrow=pa.__version__),
        "text": {"source": f"{SOURCE} split at <|endoftext|>, x{args.copies}", "documents": len(docs),
                 "bytes": num_bytes, "tokens": int(len(reference))},
        "workers": args.workers,
        "repeats": args.repeats,
        "ids_identical_across_formats": bool(identical),
        "file_bytes": file_sizes,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "mb_per_s_wall": mb_per_s,
        "ratio_vs_txt_wall": {fmt: v / mb_per_s["txt"] for fmt, v in mb_per_s.items()},
        "mb_per_cpu_s": mb_per_cpu_s,
        "ratio_vs_txt_cpu": {fmt: v / mb_per_cpu_s["txt"] for fmt, v in mb_per_cpu_s.items()},
        "target": "JSON lines and Parquet within 10% of .txt (ratio >= 0.90)",
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
