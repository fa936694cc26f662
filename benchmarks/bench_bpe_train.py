"""BPE training speed and memory: min_lm's `train_bpe` (C core and pure Python) vs HF `tokenizers`.

All trainers learn a byte-level vocabulary (special token `<|endoftext|>`, all 256 bytes in the
initial alphabet, GPT-2 pre-tokenization), side by side in one run, on:
- `stdlib 5/20 MB`: the Python standard library's `.py` sources, sorted, joined with `<|endoftext|>`,
  cut at 5 and 20 MB (vocab 10 000);
- `english`: war_and_peace.txt + `<|endoftext|>` + tinystories_v1_train_head_2MiB.txt from the shared
  data folder, 5.3 MB (vocab 10 000);
- `large`: every `.py`, `.pyi`, `.rst`, `.md` and `.txt` file under this Python installation (stdlib
  and site-packages), sorted, joined, cut at `--large_mb` MB (vocab 32 000);
- `long word`: one 1 MB word without whitespace (War and Peace's ASCII letters run together), vocab
  10 000.
On `stdlib 5 MB`, `english` and `long word` the pure-Python trainer also runs as it was before the
long-word path existed (`python_before`: `bpe_trainer.LONG_WORD` set beyond any word's length, so
every word is rewritten at each merge, the old algorithm), to show before/after.

The peer is set up to pre-tokenize exactly as we do: HF's `Split` on the same GPT-2 regex, then
`ByteLevel(add_prefix_space=False, use_regex=False)`, fed one document (the text between special
tokens) at a time with `train_from_iterator`, read lazily from the file as we read it, so that
neither trainer holds the whole text. (HF's `train(files)` would cut the text at every newline,
which changes the pre-tokens, and it rejects the invalid UTF-8 that a few files hold; we replace it
by U+FFFD, as `train_bpe` does.)

Each run is a fresh Python process, so peak memory is the trainer's own: we report the largest
single process's peak RSS (from `os.wait4`) and the peak sum of PSS over the process and its
children (sampled every 100 ms; PSS splits pages shared after fork fairly). Time is the training
call alone, the best of `--repeats` runs (one run for the large corpus, and for the Python trainers on
the long word); the trainers alternate, so all see the same load from anything else running on the
machine (the load average is recorded). CPU time (user + system of the process tree, start-up
included) is less sensitive than wall time to other jobs.

    python setup.py build_ext --inplace   # the C core
    python benchmarks/bench_bpe_train.py [--repeats 3] [--large_mb 100] [--only english ...]
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

from NLM.min_lm.corpus import stdlib_root, stdlib_sources
from NLM.min_lm.tokenization import END_OF_TEXT

RESULTS = Path(__file__).resolve().parent / "results" / "bench_bpe_train.json"
DATA_DIR = Path(os.environ.get("MINLM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SPECIAL = END_OF_TEXT
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
COMPARED_MERGES = 1000


# ---------------------------------------------------------------------------------------------
# The trainers, each run in its own process (`--child NAME ...`)
# ---------------------------------------------------------------------------------------------


def train_ours(path: str, vocab_size: int, native: bool, long_words: bool = True) -> list:
    from NLM.min_lm.tokenization import bpe_trainer

    if not long_words:
        bpe_trainer.LONG_WORD = sys.maxsize
    _, merges = bpe_trainer.train_bpe(path, vocab_size, [SPECIAL], native=native)
    return merges


def documents(path: str, block: int = 1 << 20):
    """The text between special tokens, read from the file a block at a time."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        rest = ""
        while chunk := f.read(block):
            *whole, rest = (rest + chunk).split(SPECIAL)
            yield from whole
        yield rest


def train_hf(path: str, vocab_size: int) -> list:
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
    tokenizer.train_from_iterator(documents(path), trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    return [(from_printable(a), from_printable(b)) for a, b in pairs]


TRAINERS = {
    "c": lambda path, vocab_size: train_ours(path, vocab_size, native=True),
    "python": lambda path, vocab_size: train_ours(path, vocab_size, native=False),
    "python_before": lambda path, vocab_size: train_ours(path, vocab_size, native=False, long_words=False),
    "hf": train_hf,
}


def child(which: str, path: str, vocab_size: int, merges_out: str) -> None:
    """Train once, then write the training time and the first merges as JSON."""
    warnings.simplefilter("ignore", UnicodeWarning)  # a few stdlib test files are not UTF-8: all replace
    start = time.perf_counter()
    merges = TRAINERS[which](path, vocab_size)
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
# Corpora, comparison, report
# ---------------------------------------------------------------------------------------------


def joined(files: list[Path], limit: int) -> bytes:
    """The files' bytes joined by the special token, cut at `limit` bytes."""
    parts, size = [], 0
    for path in files:
        data = path.read_bytes()
        parts.append(data)
        size += len(data) + len(SPECIAL)
        if size >= limit:
            break
    return SPECIAL.encode().join(parts)[:limit]


def stdlib_slice(limit: int) -> bytes:
    """The standard library's .py files, sorted by path, joined, cut at `limit` bytes."""
    return joined(stdlib_sources(include_tests=True, seed=None), limit)


def installation_files() -> list[Path]:
    """Source and documentation files of this Python installation, stdlib and site-packages, sorted."""
    root = stdlib_root()
    suffixes = {".py", ".pyi", ".rst", ".md", ".txt"}
    return sorted(p for p in root.rglob("*") if p.suffix in suffixes and p.is_file() and not p.is_symlink())


def long_word(size: int) -> bytes:
    """`size` bytes of English letters without a space: War and Peace's ASCII letters run together."""
    text = (DATA_DIR / "war_and_peace.txt").read_text(encoding="utf-8-sig")
    letters = "".join(c for c in text if c.isascii() and c.isalpha())
    return (letters * (1 + size // len(letters)))[:size].encode()


def corpora(large_mb: int) -> list[dict]:
    """Each benchmark row: name, data (a function making the bytes), vocab size, trainers, repeats."""
    rows = [
        dict(
            name="stdlib 5 MB",
            data=lambda: stdlib_slice(5_000_000),
            vocab_size=10_000,
            trainers=["c", "python", "hf", "python_before"],
        ),
        dict(name="stdlib 20 MB", data=lambda: stdlib_slice(20_000_000), vocab_size=10_000),
        dict(
            name="english 5.3 MB",
            data=lambda: (DATA_DIR / "war_and_peace.txt").read_bytes()
            + SPECIAL.encode()
            + (DATA_DIR / "tinystories_v1_train_head_2MiB.txt").read_bytes(),
            vocab_size=10_000,
            trainers=["c", "python", "hf", "python_before"],
        ),
        dict(
            name=f"large {large_mb} MB",
            data=lambda: joined(installation_files(), large_mb * 1_000_000),
            vocab_size=32_000,
            repeats=1,
        ),
        dict(
            name="long word 1 MB",
            data=lambda: long_word(1_000_000),
            vocab_size=10_000,
            trainers=["c", "python", "python_before"],
            once=["python", "python_before"],  # minutes each
        ),
    ]
    for row in rows:
        row.setdefault("trainers", ["c", "python", "hf"])
        row.setdefault("repeats", None)  # None: --repeats
        row.setdefault("once", [])  # trainers run only once whatever the repeats
    return rows


def write_corpus(name: str, path: str, large_mb: int) -> None:
    """Child process: write the corpus of row `name`. Making it here keeps the parent process small,
    which matters because a child's peak RSS as Linux reports it includes its parent's peak at exec."""
    row = next(row for row in corpora(large_mb) if row["name"] == name)
    Path(path).write_bytes(row["data"]())


def agreement(ours: list, theirs: list) -> dict:
    """How far two merge lists agree: common prefix, and overlap of the first n as sets."""
    n = min(len(ours), len(theirs))
    prefix = next((i for i in range(n) if ours[i] != theirs[i]), n)
    overlap = {}
    for n in (100, 300, 1000):
        if n <= min(len(ours), len(theirs)):
            overlap[n] = len({tuple(m) for m in ours[:n]} & {tuple(m) for m in theirs[:n]}) / n
    return {"common_prefix": prefix, "set_overlap_first_n": overlap}


def measure(row: dict, repeats: int, large_mb: int, workdir: Path) -> dict:
    """Run every trainer of the row `repeats` times, alternating; keep the best time, the largest memory."""
    path = workdir / "corpus.txt"
    command = [sys.executable, __file__, "--write_corpus", row["name"], str(path), str(large_mb)]
    subprocess.run(command, check=True)
    size = path.stat().st_size
    runs: dict[str, list[dict]] = {which: [] for which in row["trainers"]}
    for repeat in range(row["repeats"] or repeats):
        for which in runs:
            if repeat and which in row["once"]:
                continue
            runs[which].append(run_child(which, path, row["vocab_size"], workdir))
            print(f"  {row['name']}: {which} {runs[which][-1]['seconds']:.2f} s", flush=True)
    result = {"corpus": row["name"], "bytes": size, "vocab_size": row["vocab_size"], "trainers": {}}
    for which, results in runs.items():
        best = min(results, key=lambda r: r["seconds"])
        result["trainers"][which] = {
            "seconds": best["seconds"],
            "seconds_all": [r["seconds"] for r in results],
            "seconds_per_mb": best["seconds"] / (size / 1e6),
            "cpu_seconds": min(r["cpu_seconds"] for r in results),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
            "peak_tree_pss_mib": max(r["peak_tree_pss_mib"] for r in results),
            "num_merges": best["num_merges"],
            "merges": best["merges"],
        }
    trainers = result["trainers"]
    if "python" in trainers and "c" in trainers:
        result["c_equals_python"] = trainers["c"]["merges"] == trainers["python"]["merges"] and (
            trainers["c"]["num_merges"] == trainers["python"]["num_merges"]
        )
    for which in ("c", "python"):
        if "hf" in trainers and which in trainers:
            ours, hf = trainers[which], trainers["hf"]
            result[f"{which}_vs_hf"] = {
                "time_ratio": ours["seconds"] / hf["seconds"],
                "rss_ratio": ours["peak_rss_mib"] / hf["peak_rss_mib"],
                "tree_pss_ratio": ours["peak_tree_pss_mib"] / hf["peak_tree_pss_mib"],
            }
    if "hf" in trainers:
        ours = trainers["c" if "c" in trainers else "python"]["merges"]
        result["merge_agreement_with_hf"] = agreement(ours, trainers["hf"]["merges"])
    for stats in trainers.values():
        del stats["merges"]
    return result


def print_table(results: list[dict]) -> None:
    columns = ["corpus", "vocab", "trainer", "s", "s/MB", "CPU s", "RSS MiB", "PSS MiB", "time/HF", "RSS/HF"]
    table = [columns]
    for r in results:
        for which, t in r["trainers"].items():
            ratios = r.get(f"{which}_vs_hf", {})
            table.append(
                [
                    r["corpus"],
                    str(r["vocab_size"]),
                    which,
                    f"{t['seconds']:.2f}",
                    f"{t['seconds_per_mb']:.3f}",
                    f"{t['cpu_seconds']:.2f}",
                    f"{t['peak_rss_mib']:.0f}",
                    f"{t['peak_tree_pss_mib']:.0f}",
                    f"{ratios['time_ratio']:.2f}" if ratios else "",
                    f"{ratios['rss_ratio']:.2f}" if ratios else "",
                ]
            )
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for i, row in enumerate(table):
        print(" | ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * width for width in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per trainer (large, slow ones: one)")
    parser.add_argument("--large_mb", type=int, default=100)
    parser.add_argument("--only", nargs="+", default=[], help="corpus name prefixes to run (default: all)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()  # other work on the machine slows every trainer: record it
    results = []
    rows = [r for r in corpora(args.large_mb) if not args.only or r["name"].startswith(tuple(args.only))]
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            results.append(measure(row, args.repeats, args.large_mb, Path(tmp)))
    print_table(results)
    # machine.py imports torch (200 MB): only now, since a child's reported peak RSS includes the
    # parent's peak at exec, and this file is also what the trainers' processes run.
    from machine import machine_info

    report = {
        "benchmark": "bpe_train",
        "description": "train_bpe (C core, pure Python) vs tokenizers.BpeTrainer, GPT-2 regex",
        "special_tokens": [SPECIAL],
        "repeats": args.repeats,
        "machine": machine_info(tokenizers=version("tokenizers")),
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) > 1 and sys.argv[1] == "--write_corpus":
        write_corpus(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
