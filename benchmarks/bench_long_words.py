"""Long pre-tokens: encoding one huge "word" (no whitespace, or all whitespace), before and after the
O(n log n) merge, against HF tokenizers (issue 13's target: at most 2x HF's time).

Inputs (each one pre-token, or nearly):
- letters: the ASCII letters of War and Peace, everything else dropped (2 MB, GPT-2's files);
- dna: random A/C/G/T, seeded (2 MB, GPT-2's files);
- spaces: 5 MB of spaces, with a tokenizer that has merges for runs of spaces (GPT-2 has none): trained
  here by `train_bpe` on the first 3 MB of the stdlib's sources, vocab 2,048.
Encoders: ours with the C core and in pure Python (`native=True/False`), HF tokenizers (Rust, BPE model
with GPT-2's byte-level pre-tokenizer, same files), tiktoken at the small sizes (its merge is quadratic
too), and "before": the code at `--before_commit` run from `--before_tree` in a subprocess, at the small
sizes only (it is quadratic: minutes at 64 kB). Every row is CPU seconds (best of `--repeats`, one run
for "before"), and every encoder's ids are compared with the C core's.

    python benchmarks/bench_long_words.py [--before_tree DIR] [--sizes 16000 32000 64000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiktoken
import tokenizers
from bench_encode import EOT, stdlib_text
from machine import machine_info, save_results

from NLM.min_lm.tokenization.bpe_trainer import train_bpe
from NLM.min_lm.tokenization.pretokenize import GPT2_SPLIT_PATTERN
from NLM.min_lm.tokenization.tokenizer import (
    BPETokenizer,
    merges_txt_text,
    read_merges_file,
    read_vocab_file,
    vocab_json_text,
)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_long_words.json"
REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MINLM_TEST_DATA", REPO.parent / "shared" / "data"))

# Encodes the text of argv[3] with the tokenizer of files argv[1], argv[2]; prints CPU seconds and ids.
_BEFORE_RUN = """
import json, sys, time
from NLM.min_lm.tokenization.tokenizer import BPETokenizer
tokenizer = BPETokenizer.from_files(sys.argv[1], sys.argv[2])
text = open(sys.argv[3], encoding="utf-8", newline="").read()
start = time.process_time()
ids = tokenizer.encode(text)
print(json.dumps({"seconds": time.process_time() - start, "ids": ids}))
"""


def cpu_seconds(fn: Callable[[], list[int]], repeats: int) -> tuple[float, list[int]]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def spaces_tokenizer_files(tmp: Path) -> tuple[Path, Path]:
    """A vocab with merges for runs of spaces, trained on Python sources (indentation)."""
    corpus = tmp / "stdlib.txt"
    corpus.write_text(stdlib_text(3_000_000)[0].replace(EOT, ""), encoding="utf-8")
    vocab, merges = train_bpe(corpus, 2048, [])
    (tmp / "vocab.json").write_text(vocab_json_text(vocab), encoding="utf-8")
    (tmp / "merges.txt").write_text(merges_txt_text(merges), encoding="utf-8")
    return tmp / "vocab.json", tmp / "merges.txt"


def encoders_for(vocab_path: Path, merges_path: Path) -> dict[str, Callable[[str], list[int]]]:
    """text -> ids for each encoder, all built from the same two files."""
    vocab, merges = read_vocab_file(vocab_path), read_merges_file(merges_path)
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(vocab_path), str(merges_path)))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tik = tiktoken.Encoding(name="long_words", pat_str=GPT2_SPLIT_PATTERN, special_tokens={},
                            mergeable_ranks={token: i for i, token in vocab.items()})
    return {"c_core": BPETokenizer(vocab, merges, native=True).encode,
            "pure_python": BPETokenizer(vocab, merges, native=False).encode,
            "hf_tokenizers": lambda text: hf.encode(text, add_special_tokens=False).ids,
            "tiktoken": tik.encode_ordinary}


def encode_before(tree: Path, files: tuple[Path, Path], text: str, tmp: Path) -> tuple[float, list[int]]:
    """CPU seconds and ids of the code in `tree`, in a fresh process."""
    text_path = tmp / "text.txt"
    text_path.write_text(text, encoding="utf-8", newline="")
    run = subprocess.run([sys.executable, "-c", _BEFORE_RUN, *map(str, files), str(text_path)],
                         env=dict(os.environ, PYTHONPATH=str(tree.resolve())), cwd=tree,  # -c: cwd first
                         capture_output=True, text=True, check=True)
    measured = json.loads(run.stdout)
    return measured["seconds"], measured["ids"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16_000, 32_000, 64_000],
                        help="small sizes (characters) where 'before' and tiktoken run too")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before_tree", type=Path, default=None,
                        help="a checkout of the code before the change (git archive df5c359 | tar -x -C DIR)")
    parser.add_argument("--before_commit", default="df5c359")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    rng = random.Random(0)
    war_and_peace = (DATA / "war_and_peace.txt").read_text(encoding="utf-8")
    inputs = {"letters": "".join(c for c in war_and_peace if c.isascii() and c.isalpha())[:2_000_000],
              "dna": "".join(rng.choice("ACGT") for _ in range(2_000_000)),
              "spaces": " " * 5_000_000}
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        gpt2_files = (DATA / "gpt2_vocab.json", DATA / "gpt2_merges.txt")
        spaces_files = spaces_tokenizer_files(Path(tmp))
        for name, full_text in inputs.items():
            files = spaces_files if name == "spaces" else gpt2_files
            encoders = encoders_for(*files)
            for size in [*args.sizes, len(full_text)]:
                text, small = full_text[:size], size in args.sizes
                measured = {encoder: cpu_seconds(partial(encode, text), args.repeats if small else 1)
                            for encoder, encode in encoders.items() if small or encoder != "tiktoken"}
                if small and args.before_tree:
                    measured["before"] = encode_before(args.before_tree, files, text, Path(tmp))
                expected = measured["c_core"][1]
                seconds = {encoder: t for encoder, (t, _) in measured.items()}
                identical = {encoder: ids == expected for encoder, (_, ids) in measured.items()}
                rows[f"{name}_{size}"] = {
                    "input": name, "chars": size, "tokens": len(expected), "cpu_seconds": seconds,
                    "c_core_vs_hf_time": seconds["c_core"] / seconds["hf_tokenizers"],
                    "pure_python_vs_hf_time": seconds["pure_python"] / seconds["hf_tokenizers"],
                    "ids_identical_to_c_core": identical,
                }
                cells = "  ".join(f"{encoder} {t:8.3f}s" for encoder, t in seconds.items())
                print(f"{name:8} {size:>9,} chars  {cells}  identical: {all(identical.values())}", flush=True)

    load_average = os.getloadavg()
    print(f"load average: {load_average[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'input':22} {'before':>9} {'Python':>9} {'C core':>9} {'HF':>9} {'C/HF':>6} {'Py/HF':>6}")
    for key, r in rows.items():
        t = r["cpu_seconds"]
        before = f"{t['before']:9.3f}" if "before" in t else f"{'-':>9}"
        print(f"{key:22} {before} {t['pure_python']:9.3f} {t['c_core']:9.3f} {t['hf_tokenizers']:9.3f} "
              f"{r['c_core_vs_hf_time']:6.2f} {r['pure_python_vs_hf_time']:6.2f}")
    result = {
        "benchmark": "long_words",
        "machine": machine_info(tiktoken=tiktoken.__version__, tokenizers=tokenizers.__version__),
        "timing": "CPU seconds, best of repeats ('before': one run, in a subprocess)",
        "before_commit": args.before_commit if args.before_tree else None,
        "spaces_tokenizer": "train_bpe on the first 3 MB of the stdlib's .py files, vocab 2048",
        "rows": rows,
        "load_average_1min_at_end": load_average[0],
    }
    save_results(result, args.output)


if __name__ == "__main__":
    main()
