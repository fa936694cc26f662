"""BPE training speed and memory: min_lm's `train_bpe` vs Hugging Face `tokenizers`' BpeTrainer.

Both learn a 10 000-token byte-level vocabulary (special token `<|endoftext|>`, all 256 bytes in the
initial alphabet, GPT-2 pre-tokenization) from slices of the Python standard library's own `.py`
sources: the files in sorted order, joined with `<|endoftext|>`, cut at 5 MB and 20 MB.

The peer is set up to pre-tokenize exactly as we do: HF's `Split` on the same GPT-2 regex, then
`ByteLevel(add_prefix_space=False, use_regex=False)`, fed one document (the text between special
tokens) at a time with `train_from_iterator`. (HF's `train(files)` would cut the text at every
newline, which changes the pre-tokens, and it rejects the invalid UTF-8 that a few stdlib files
hold; we replace it by U+FFFD, as `train_bpe` does.)

Each run is a fresh Python process, so peak memory is the trainer's own: we report the largest
single process's peak RSS (from `os.wait4`) and the peak sum of PSS over the process and its
children (sampled every 100 ms; PSS splits pages shared after fork fairly, so worker processes are
not double-counted). Time is the training call alone, the best of `--repeats` runs; the two
trainers alternate, so both see the same load from anything else running on the machine (the
load average is recorded in the JSON). CPU time (user + system of the process and its workers,
start-up included) is less sensitive than wall time to such other jobs.

    python benchmarks/bench_bpe_train.py [--sizes_mb 5 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from importlib.metadata import version
from pathlib import Path

from machine import machine_info

from NLM.min_lm.corpus import stdlib_sources
from NLM.min_lm.tokenization import END_OF_TEXT

RESULTS = Path(__file__).resolve().parent / "results" / "bench_bpe_train.json"
SPECIAL = END_OF_TEXT
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
COMPARED_MERGES = 1000


# ---------------------------------------------------------------------------------------------
# The two trainers, each run in its own process (`--child ours|hf`)
# ---------------------------------------------------------------------------------------------


def train_ours(path: str, vocab_size: int) -> list[tuple[bytes, bytes]]:
    from NLM.min_lm.tokenization import train_bpe

    _, merges = train_bpe(path, vocab_size, [SPECIAL])
    return merges


def train_hf(path: str, vocab_size: int) -> list[tuple[bytes, bytes]]:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from NLM.min_lm.tokenization.tokenizer import from_printable

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    tokenizer.train_from_iterator(text.split(SPECIAL), trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    return [(from_printable(a), from_printable(b)) for a, b in pairs]


def child(which: str, path: str, vocab_size: int, merges_out: str) -> None:
    """Train once, then write the training time and the first merges as JSON."""
    train = train_ours if which == "ours" else train_hf
    warnings.simplefilter("ignore", UnicodeWarning)  # a few stdlib test files are not UTF-8: both replace
    start = time.perf_counter()
    merges = train(path, vocab_size)
    seconds = time.perf_counter() - start
    first = [[a.hex(), b.hex()] for a, b in merges[:COMPARED_MERGES]]
    Path(merges_out).write_text(json.dumps({"seconds": seconds, "num_merges": len(merges), "merges": first}))


# ---------------------------------------------------------------------------------------------
# Measuring a child process
# ---------------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """pid and every process below it, from the parent ids in /proc/*/stat."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def run_child(which: str, path: Path, vocab_size: int, workdir: Path) -> dict:
    """Run one training in a fresh process; returns time, merges and memory figures."""
    merges_out = workdir / f"{which}_merges.json"
    command = [sys.executable, __file__, "--child", which, str(path), str(vocab_size), str(merges_out)]
    process = subprocess.Popen(command)
    peak_pss = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_pss
        while not done.is_set():
            peak_pss = max(peak_pss, sum(_pss_kib(p) for p in _descendants(process.pid)))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{which} trainer failed with exit status {process.returncode}")
    result = json.loads(merges_out.read_text())
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # the process tree, start-up included
    result["peak_tree_pss_mib"] = peak_pss / 1024
    return result


# ---------------------------------------------------------------------------------------------
# Corpus, comparison, report
# ---------------------------------------------------------------------------------------------


def stdlib_corpus() -> bytes:
    """The standard library's .py files (no site-packages), sorted by path, joined by the special token."""
    return SPECIAL.encode().join(p.read_bytes() for p in stdlib_sources(include_tests=True, seed=None))


def agreement(ours: list, theirs: list) -> dict:
    """How far the two merge lists agree: common prefix, and overlap of the first n as sets."""
    n = min(len(ours), len(theirs))
    prefix = next((i for i in range(n) if ours[i] != theirs[i]), n)
    overlap = {}
    for n in (100, 300, 1000):
        if n <= min(len(ours), len(theirs)):
            overlap[n] = len({tuple(m) for m in ours[:n]} & {tuple(m) for m in theirs[:n]}) / n
    return {"common_prefix": prefix, "set_overlap_first_n": overlap}




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes_mb", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--vocab_size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    corpus = stdlib_corpus()
    load_before = os.getloadavg()  # other work on the machine slows both trainers: record it
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for size_mb in args.sizes_mb:
            path = workdir / f"stdlib_{size_mb}mb.txt"
            path.write_bytes(corpus[: size_mb * 1_000_000])
            runs = {"ours": [], "hf": []}
            for _ in range(args.repeats):
                for which in runs:
                    runs[which].append(run_child(which, path, args.vocab_size, workdir))
            best = {which: min(results, key=lambda r: r["seconds"]) for which, results in runs.items()}
            rows.append(
                {
                    "size_mb": size_mb,
                    "ours_seconds": best["ours"]["seconds"],
                    "hf_seconds": best["hf"]["seconds"],
                    "time_ratio": best["ours"]["seconds"] / best["hf"]["seconds"],
                    "ours_seconds_all": [r["seconds"] for r in runs["ours"]],
                    "hf_seconds_all": [r["seconds"] for r in runs["hf"]],
                    "ours_cpu_seconds": min(r["cpu_seconds"] for r in runs["ours"]),
                    "hf_cpu_seconds": min(r["cpu_seconds"] for r in runs["hf"]),
                    "ours_peak_rss_mib": max(r["peak_rss_mib"] for r in runs["ours"]),
                    "hf_peak_rss_mib": max(r["peak_rss_mib"] for r in runs["hf"]),
                    "ours_peak_tree_pss_mib": max(r["peak_tree_pss_mib"] for r in runs["ours"]),
                    "hf_peak_tree_pss_mib": max(r["peak_tree_pss_mib"] for r in runs["hf"]),
                    "num_merges": {w: best[w]["num_merges"] for w in best},
                    "merge_agreement": agreement(best["ours"]["merges"], best["hf"]["merges"]),
                }
            )

    for row in rows:
        row["rss_ratio"] = row["ours_peak_rss_mib"] / row["hf_peak_rss_mib"]
        row["tree_pss_ratio"] = row["ours_peak_tree_pss_mib"] / row["hf_peak_tree_pss_mib"]
    columns = [
        "corpus",
        "ours s",
        "HF s",
        "ratio",
        "ours CPU s",
        "HF CPU s",
        "ours RSS",
        "HF RSS",
        "ratio",
        "ours PSS",
        "HF PSS",
        "ratio",
        "same prefix",
        "top-300 overlap",
    ]
    table = [columns]
    for r in rows:
        overlap = r["merge_agreement"]["set_overlap_first_n"].get(300, float("nan"))
        table.append(
            [
                f"{r['size_mb']} MB",
                f"{r['ours_seconds']:.2f}",
                f"{r['hf_seconds']:.2f}",
                f"{r['time_ratio']:.2f}",
                f"{r['ours_cpu_seconds']:.2f}",
                f"{r['hf_cpu_seconds']:.2f}",
                f"{r['ours_peak_rss_mib']:.0f} MiB",
                f"{r['hf_peak_rss_mib']:.0f} MiB",
                f"{r['rss_ratio']:.2f}",
                f"{r['ours_peak_tree_pss_mib']:.0f} MiB",
                f"{r['hf_peak_tree_pss_mib']:.0f} MiB",
                f"{r['tree_pss_ratio']:.2f}",
                str(r["merge_agreement"]["common_prefix"]),
                f"{overlap:.1%}",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for i, row in enumerate(table):
        print(" | ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * width for width in widths))
    report = {
        "benchmark": "bpe_train",
        "description": "train_bpe vs tokenizers.BpeTrainer, byte-level BPE, GPT-2 regex, stdlib .py slices",
        "vocab_size": args.vocab_size,
        "special_tokens": [SPECIAL],
        "repeats": args.repeats,
        "machine": machine_info(tokenizers=version("tokenizers")),
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
