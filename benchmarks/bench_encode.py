"""Encoding speed: min_lm's BPETokenizer vs tiktoken, both with GPT-2's vocab and merges.

The text is a 5 MB slice of the Python standard library's own `.py` sources (files in sorted
order, site-packages excluded, `<|endoftext|>` between files). tiktoken's encoding is built from
the same vocab.json / merges.txt (offline), and the two id lists are compared for identity.

Single-process rows use CPU time (`time.process_time`), the best of `--repeats`, because the
machine may be shared; each row's MB/s is UTF-8 bytes of input per second.
- tiktoken: `Encoding.encode(text, allowed_special="all")` (Rust).
- ours, cold: a freshly loaded tokenizer's first `encode` (its caches start empty).
- ours, warm: a second `encode` of the same text on that tokenizer (caches filled): the speed a
  long file settles at once its common words are cached.
- GPT-2 regex alone: `regex.findall` of GPT-2's pre-tokenization pattern, the floor of any
  Python encoder that runs it over the whole text.
- one pass over all of the stdlib (~30 MB, `--long_mb`): a fresh tokenizer and tiktoken each encode
  it once, CPU time, best of `--long_repeats` (interleaved): how the caches fare on a large and
  diverse corpus.
The `tokenize` command rows are wall time of `encode_files` (what `minlm tokenize` runs) on the same
text written to a file (reading, encoding in `--workers` processes, writing the .npy; loading the
tokenizer excluded), so they depend on how busy the machine is: the load average is printed and
saved. Its "CPU" rows divide the bytes by the CPU seconds of the command and its worker processes
(tokenizer load included).

    python benchmarks/bench_encode.py [--mb 5] [--repeats 3] [--workers 2] [--long_repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import regex
import tiktoken
from machine import machine_info

from NLM.min_lm.corpus import stdlib_sources
from NLM.min_lm.tokenization.encode_files import encode_files
from NLM.min_lm.tokenization.pretokenize import GPT2_SPLIT_PATTERN
from NLM.min_lm.tokenization.tokenizer import END_OF_TEXT, BPETokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "bench_encode.json"
DATA = Path(os.environ.get("MINLM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
EOT = END_OF_TEXT


def stdlib_text(num_bytes: int) -> tuple[str, int]:
    """The first `num_bytes` of the stdlib's .py files joined by <|endoftext|>; and the file count."""
    parts, size = [], 0
    for path in stdlib_sources(include_tests=True, seed=None):
        text = path.read_bytes().decode("utf-8", errors="replace")
        parts.append(text)
        size += len(text.encode("utf-8")) + len(EOT)
        if size >= num_bytes:
            break
    data = EOT.join(parts).encode("utf-8")[:num_bytes]
    return data.decode("utf-8", errors="ignore"), len(parts)


def cpu_seconds(fn) -> tuple[float, object]:
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--long_mb", type=float, default=40.0,
                        help="also time one pass over this much stdlib text (all of it: ~30 MB); 0 skips")
    parser.add_argument("--long_repeats", type=int, default=2,
                        help="repeats of the one-pass rows (each with a fresh tokenizer); best counts")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    vocab_path, merges_path = DATA / "gpt2_vocab.json", DATA / "gpt2_merges.txt"
    text, num_files = stdlib_text(int(args.mb * 1e6))
    num_bytes = len(text.encode("utf-8"))

    load_start = time.perf_counter()
    ours = BPETokenizer.from_files(vocab_path, merges_path, [EOT])
    load_seconds = time.perf_counter() - load_start
    ranks = {token: i for i, token in ours.vocab.items() if i != 50256}
    theirs = tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                               special_tokens={EOT: 50256})

    names = ["tiktoken", "ours_cold", "ours_warm", "gpt2_regex_findall"]
    times: dict[str, list[float]] = {name: [] for name in names}
    identical = True
    for _ in range(args.repeats):  # interleaved, so that a busy moment hurts every row alike
        seconds, reference = cpu_seconds(lambda: theirs.encode(text, allowed_special="all"))
        times["tiktoken"].append(seconds)
        fresh = BPETokenizer.from_files(vocab_path, merges_path, [EOT])
        seconds, ids = cpu_seconds(lambda tok=fresh: tok.encode(text))
        times["ours_cold"].append(seconds)
        identical &= ids == reference
        seconds, ids = cpu_seconds(lambda tok=fresh: tok.encode(text))
        times["ours_warm"].append(seconds)
        identical &= ids == reference
        pattern = regex.compile(GPT2_SPLIT_PATTERN)
        times["gpt2_regex_findall"].append(cpu_seconds(lambda p=pattern: p.findall(text))[0])

    long: dict[str, float] = {}
    long_times: dict[str, list[float]] = {"tiktoken_long": [], "ours_one_pass_long": []}
    if args.long_mb > 0:  # one pass, fresh tokenizer: the speed of encoding a large, diverse corpus
        long_text, _ = stdlib_text(int(args.long_mb * 1e6))
        long_bytes = len(long_text.encode("utf-8"))
        for _ in range(args.long_repeats):
            seconds, reference_long = cpu_seconds(lambda: theirs.encode(long_text, allowed_special="all"))
            long_times["tiktoken_long"].append(seconds)
            fresh = BPETokenizer.from_files(vocab_path, merges_path, [EOT])
            seconds, ids = cpu_seconds(lambda tok=fresh: tok.encode(long_text))
            long_times["ours_one_pass_long"].append(seconds)
            identical &= ids == reference_long
            del fresh, ids
        long = {name: long_bytes / 1e6 / min(ts) for name, ts in long_times.items()}
        long["long_text_mb"] = long_bytes / 1e6
        del long_text, reference_long

    cli: dict[str, float] = {}
    cli_cpu: dict[str, float] = {}  # bytes per CPU-second of all processes, tokenizer load included
    with tempfile.TemporaryDirectory() as tmp:
        input_path = Path(tmp) / "stdlib.txt"
        input_path.write_bytes(text.encode("utf-8"))
        for workers in sorted({1, args.workers}):
            wall, cpu = [], []
            for _ in range(args.repeats):
                before = os.times()
                tokenizer = BPETokenizer.from_files(vocab_path, merges_path, [EOT])
                output_path = Path(tmp) / "stdlib.npy"
                wall.append(encode_files(tokenizer, [input_path], [output_path], workers)[0].seconds)
                after = os.times()  # children's CPU counts once the pool's processes have exited
                cpu.append(sum(after[i] - before[i] for i in range(4)))
            cli[f"tokenize_cli_{workers}_workers"] = num_bytes / 1e6 / min(wall)
            cli_cpu[f"tokenize_cli_{workers}_workers"] = num_bytes / 1e6 / min(cpu)
            identical &= np.load(Path(tmp) / "stdlib.npy").tolist() == reference

    mb_per_s = {name: num_bytes / 1e6 / min(ts) for name, ts in times.items()}
    rows = [
        ("tiktoken (Rust)", mb_per_s["tiktoken"]),
        ("ours, cold caches", mb_per_s["ours_cold"]),
        ("ours, warm caches", mb_per_s["ours_warm"]),
        ("GPT-2 regex findall alone", mb_per_s["gpt2_regex_findall"]),
    ] + [(f"tokenize command, {name.split('_')[2]} worker(s), wall", v) for name, v in cli.items()]
    rows += [(f"tokenize command, {name.split('_')[2]} worker(s), CPU", v) for name, v in cli_cpu.items()]
    if long:
        rows += [(f"tiktoken, all {long['long_text_mb']:.0f} MB of stdlib", long["tiktoken_long"]),
                 (f"ours, one pass over all {long['long_text_mb']:.0f} MB", long["ours_one_pass_long"])]
    load_average = os.getloadavg()
    print(f"load average during the run: {load_average[0]:.1f} on {os.cpu_count()} cores "
          "(wall-clock rows slow down on a busy machine; CPU-time rows much less)")
    print(f"text: {num_bytes / 1e6:.1f} MB of stdlib .py ({num_files} files), {len(reference):,} tokens; "
          f"ids identical to tiktoken: {identical}; tokenizer load {load_seconds:.2f} s")
    print(f"{'':44} {'MB/s':>7} {'vs tiktoken':>12}")
    for name, value in rows:
        peer = long["tiktoken_long"] if "all" in name else mb_per_s["tiktoken"]
        print(f"{name:44} {value:7.2f} {value / peer:11.2f}x")

    result = {
        "benchmark": "encode",
        "machine": machine_info(tiktoken=tiktoken.__version__, regex=regex.__version__),
        "text": {"source": "python stdlib .py, sorted, <|endoftext|>-joined", "bytes": num_bytes,
                 "files": num_files, "tokens": len(reference)},
        "ids_identical_to_tiktoken": identical,
        "tokenizer_load_seconds": load_seconds,
        "repeats": args.repeats,
        "long_repeats": args.long_repeats,
        "cpu_seconds_per_repeat": times | long_times,
        "mb_per_s": mb_per_s | cli,
        "ratio_vs_tiktoken": {name: v / mb_per_s["tiktoken"] for name, v in (mb_per_s | cli).items()},
        "tokenize_cli_mb_per_cpu_s": cli_cpu,
        "one_pass_over_all_stdlib": long | ({"ratio": long["ours_one_pass_long"] / long["tiktoken_long"]}
                                            if long else {}),
        "timing": "single-process rows: best CPU time; tokenize command rows: best wall time",
        "load_average_1min_at_end": load_average[0],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
