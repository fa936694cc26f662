"""Encoding speed: min_lm's BPETokenizer (C core and pure Python) vs tiktoken and HF tokenizers, GPT-2 files.

Texts (each row encodes one whole text; `<|endoftext|>` is a special token everywhere):
- stdlib: a 5 MB slice of the Python standard library's `.py` sources (sorted, site-packages excluded,
  `<|endoftext|>` between files);
- prose: War and Peace plus the 2 MiB head of TinyStories (../shared/data), 5.3 MB of English.
Encoders, all built from the same vocab.json / merges.txt, ids compared for identity with tiktoken's:
- tiktoken: `Encoding.encode(text, allowed_special="all")` (Rust);
- HF tokenizers: a BPE model with GPT-2's byte-level pre-tokenizer, `Tokenizer.encode(text)` (Rust);
- ours, C core, cold: a fresh tokenizer's first `encode` (its caches empty, as when a corpus is
  tokenized once); warm: a second `encode` of the same text;
- ours, pure Python (MINLM_PURE_PYTHON=1), and before (with `--before_tree DIR`, a checkout of the code
  before the core and the O(n log n) merge, e.g. `git archive df5c359 | tar -x -C DIR`): the same cold
  and warm encodes, each in a fresh process.
Single-process rows use CPU time (`time.process_time`), the best of `--repeats`, interleaved, because
the machine is shared; MB/s is UTF-8 bytes of input per CPU second.
- One pass over all of the stdlib (`--long_mb`, ~32 MB): a fresh tokenizer and tiktoken each encode it
  once (best of `--long_repeats`). HF is left out there: its `Encoding` keeps offsets for every token.
- The `tokenize` command on the 5 MB stdlib file, in a subprocess per run: "wall" is the encode time the
  command itself reports (its summary's MB/s; tokenizer load excluded), "CPU" divides the bytes by the
  CPU seconds of the command and its workers (tokenizer load included). Rows for the C core, for pure
  Python (MINLM_PURE_PYTHON=1) and, with `--before_tree DIR`, for the code before.

    python benchmarks/bench_encode.py [--mb 5] [--repeats 3] [--long_mb 40] [--workers 2] [--before_tree DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # HF: one thread, like every other row

import numpy as np
import regex
import tiktoken
import tokenizers
from machine import machine_info, save_results

from NLM.min_lm.tokenization.pretokenize import GPT2_SPLIT_PATTERN
from NLM.min_lm.tokenization.tokenizer import BPETokenizer, read_merges_file, read_vocab_file

RESULTS = Path(__file__).resolve().parent / "results" / "bench_encode.json"
REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MINLM_TEST_DATA", REPO.parent / "shared" / "data"))
EOT = "<|endoftext|>"
PROSE_FILES = ["war_and_peace.txt", "tinystories_v1_train_head_2MiB.txt"]


def stdlib_text(num_bytes: int) -> tuple[str, int]:
    """The first `num_bytes` of the stdlib's .py files joined by <|endoftext|>; and the file count."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    parts, size = [], 0
    for path in files:
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


class Encoders:
    """The four encoders on GPT-2's files; ours are built fresh for every cold run."""

    def __init__(self) -> None:
        vocab_path, merges_path = DATA / "gpt2_vocab.json", DATA / "gpt2_merges.txt"
        self.vocab = read_vocab_file(vocab_path)
        self.merges = read_merges_file(merges_path)
        ranks = {token: i for i, token in self.vocab.items()}
        self.tiktoken = tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                                          special_tokens={EOT: 50256})
        self.hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(vocab_path), str(merges_path)))
        self.hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        self.hf.add_special_tokens([EOT])

    def ours(self, native: bool) -> BPETokenizer:
        return BPETokenizer(self.vocab, self.merges, [EOT], native=native)


# Encodes the text in file argv[3] with a fresh tokenizer twice (cold, warm), in the code on PYTHONPATH.
_ENCODE_RUN = """
import json, sys, time
from NLM.min_lm.tokenization.tokenizer import BPETokenizer
tokenizer = BPETokenizer.from_files(sys.argv[1], sys.argv[2], ["<|endoftext|>"])
text = open(sys.argv[3], encoding="utf-8", newline="").read()
seconds = []
for _ in range(2):
    start = time.process_time()
    ids = tokenizer.encode(text)
    seconds.append(time.process_time() - start)
print(json.dumps({"cold": seconds[0], "warm": seconds[1], "hash": hash(tuple(ids))}))
"""


def encode_in_fresh_process(tree: Path, text: str, pure_python: bool = True) -> dict:
    """Cold and warm CPU seconds of the code in `tree` (in a fresh process), and its ids' hash.

    The Python rows run this way, ours as well as the code before, so that neither pays for what this
    process holds (other encoders, earlier results: the garbage collector walks them all)."""
    with tempfile.TemporaryDirectory() as tmp:
        text_path = Path(tmp) / "text.txt"
        text_path.write_text(text, encoding="utf-8", newline="")
        argv = [sys.executable, "-c", _ENCODE_RUN, str(DATA / "gpt2_vocab.json"),
                str(DATA / "gpt2_merges.txt"), str(text_path)]
        env = dict(os.environ, PYTHONPATH=str(tree), MINLM_PURE_PYTHON="1" if pure_python else "0")
        # cwd=tree: `python -c` puts the working directory first on sys.path
        run = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def time_text(encoders: Encoders, text: str, repeats: int, with_hf: bool = True,
              before_tree: Path | None = None) -> dict:
    """Best CPU seconds per encoder on `text`, and whether each gave tiktoken's ids."""
    times: dict[str, list[float]] = {}
    identical: dict[str, bool] = {}

    def record(name: str, seconds: float, ids: list[int] | int, reference: list[int] | int) -> None:
        times.setdefault(name, []).append(seconds)
        identical[name] = identical.get(name, True) and ids == reference

    for _ in range(repeats):  # interleaved, so that a busy moment hurts every row alike
        seconds, reference = cpu_seconds(lambda: encoders.tiktoken.encode(text, allowed_special="all"))
        record("tiktoken", seconds, reference, reference)
        if with_hf:
            seconds, ids = cpu_seconds(lambda: encoders.hf.encode(text, add_special_tokens=False).ids)
            record("hf_tokenizers", seconds, ids, reference)
        fresh = encoders.ours(native=True)
        seconds, ids = cpu_seconds(lambda tok=fresh: tok.encode(text))
        record("ours_c_cold", seconds, ids, reference)
        seconds, ids = cpu_seconds(lambda tok=fresh: tok.encode(text))
        record("ours_c_warm", seconds, ids, reference)
        del fresh, ids
        for name, tree in (("ours_python", REPO), ("before_python", before_tree)):
            if tree is not None:
                measured = encode_in_fresh_process(tree, text)
                record(f"{name}_cold", measured["cold"], measured["hash"], hash(tuple(reference)))
                record(f"{name}_warm", measured["warm"], measured["hash"], hash(tuple(reference)))
        del reference
    num_bytes = len(text.encode("utf-8"))
    mb_per_s = {name: num_bytes / 1e6 / min(ts) for name, ts in times.items()}
    return {"bytes": num_bytes, "cpu_seconds": times, "mb_per_s": mb_per_s,
            "ratio_vs_tiktoken": {name: v / mb_per_s["tiktoken"] for name, v in mb_per_s.items()},
            "ids_identical_to_tiktoken": identical}


# Runs `tokenize.run` in a fresh process (for the code before the core: its own tree on PYTHONPATH).
_TOKENIZE_RUN = """
import json, os, sys
from NLM.min_lm.scripts import tokenize
config = tokenize.TokenizeConfig(inputs=[sys.argv[1]], vocab_path=sys.argv[2], merges_path=sys.argv[3],
                                 output_dir=sys.argv[4], workers=int(sys.argv[5]), progress=False)
before = os.times()
result = tokenize.run(config)[0]
after = os.times()
print(json.dumps({"seconds": result.seconds, "cpu": sum(after[i] - before[i] for i in range(4))}))
"""


def time_tokenize_command(input_path: Path, out_dir: Path, tree: Path, workers: int, pure_python: bool,
                          reference: list[int]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), MINLM_PURE_PYTHON="1" if pure_python else "0")
    argv = [sys.executable, "-c", _TOKENIZE_RUN, str(input_path), str(DATA / "gpt2_vocab.json"),
            str(DATA / "gpt2_merges.txt"), str(out_dir), str(workers)]
    run = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True, check=True)  # -c: cwd first
    measured = json.loads(run.stdout)
    measured["identical"] = np.load(out_dir / f"{input_path.stem}.npy").tolist() == reference
    return measured


def tokenize_rows(text: str, reference: list[int], args) -> dict:
    """MB/s (wall of the encode, and per CPU second) of the tokenize command per variant and workers."""
    variants = {"c_core": (REPO, False), "pure_python": (REPO, True)}
    if args.before_tree:
        variants["before"] = (args.before_tree.resolve(), True)
    num_bytes = len(text.encode("utf-8"))
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        input_path = Path(tmp) / "stdlib.txt"
        input_path.write_bytes(text.encode("utf-8"))
        for workers in sorted({1, args.workers}):
            runs: dict[str, list[dict]] = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, (tree, pure_python) in variants.items():
                    runs[name].append(time_tokenize_command(input_path, Path(tmp), tree, workers, pure_python,
                                                            reference))
            for name, measured in runs.items():
                rows[f"{name}_{workers}_workers"] = {
                    "wall_mb_per_s": num_bytes / 1e6 / min(m["seconds"] for m in measured),
                    "cpu_mb_per_s": num_bytes / 1e6 / min(m["cpu"] for m in measured),
                    "identical": all(m["identical"] for m in measured),
                }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--long_mb", type=float, default=40.0,
                        help="also time one pass over this much stdlib text (all of it: ~32 MB); 0 skips")
    parser.add_argument("--long_repeats", type=int, default=2)
    parser.add_argument("--before_tree", type=Path, default=None,
                        help="a checkout of the code before the C core, for the tokenize command's rows")
    parser.add_argument("--before_commit", default="df5c359",
                        help="the commit --before_tree holds (recorded)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    encoders = Encoders()
    stdlib, num_files = stdlib_text(int(args.mb * 1e6))
    prose = "".join((DATA / name).read_text(encoding="utf-8") for name in PROSE_FILES)
    before = args.before_tree.resolve() if args.before_tree else None
    texts = {"stdlib": time_text(encoders, stdlib, args.repeats, before_tree=before),
             "prose": time_text(encoders, prose, args.repeats, before_tree=before)}
    texts["stdlib"]["files"] = num_files
    if args.long_mb > 0:
        long_text, _ = stdlib_text(int(args.long_mb * 1e6))
        texts["stdlib_one_pass"] = time_text(encoders, long_text, args.long_repeats, with_hf=False)
        del long_text
    reference = encoders.tiktoken.encode(stdlib, allowed_special="all")
    command = tokenize_rows(stdlib, reference, args)

    load_average = os.getloadavg()
    print(f"load average during the run: {load_average[0]:.1f} on {os.cpu_count()} cores")
    names = {"stdlib": f"{texts['stdlib']['bytes'] / 1e6:.1f} MB stdlib", "prose": "5.3 MB prose",
             "stdlib_one_pass": "one pass, all stdlib"}
    print(f"{'encoder (CPU-time MB/s; x = vs tiktoken)':44}" + "".join(f"{names[t]:>24}" for t in texts))
    rows = ["tiktoken", "hf_tokenizers", "ours_c_cold", "ours_c_warm", "ours_python_cold", "ours_python_warm",
            "before_python_cold", "before_python_warm"]
    for row in rows:
        cells = []
        for result in texts.values():
            if row in result["mb_per_s"]:
                same = "" if result["ids_identical_to_tiktoken"][row] else " DIFF"
                ratio = result["ratio_vs_tiktoken"][row]
                cells.append(f"{result['mb_per_s'][row]:8.2f} ({ratio:4.2f}x){same}")
            else:
                cells.append("-")
        print(f"{row:44}" + "".join(f"{cell:>24}" for cell in cells))
    print(f"\ntokenize command on {names['stdlib']}: {'wall MB/s':>10} {'CPU MB/s':>10}  ids identical")
    for name, row in command.items():
        print(f"  {name:40} {row['wall_mb_per_s']:10.2f} {row['cpu_mb_per_s']:10.2f}  {row['identical']}")

    result = {
        "benchmark": "encode",
        "machine": machine_info(tiktoken=tiktoken.__version__, tokenizers=tokenizers.__version__,
                                regex=regex.__version__),
        "texts": {"stdlib": "python stdlib .py, sorted, <|endoftext|>-joined",
                  "prose": " + ".join(PROSE_FILES)},
        "timing": "single-process rows: best CPU time; tokenize command: best of its reported encode wall "
                  "time and best CPU time of command + workers",
        "repeats": args.repeats,
        "long_repeats": args.long_repeats,
        "results": texts,
        "tokenize_command": command,
        "tokenize_command_before_commit": args.before_commit if args.before_tree else None,
        "load_average_1min_at_end": load_average[0],
    }
    save_results(result, args.output)


if __name__ == "__main__":
    main()
