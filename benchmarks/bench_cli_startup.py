"""How fast `minlm <command> --help` and a flag error answer: the command line must not wait for torch.

Each row runs `python -m NLM.min_lm.cli <command> --help` (and `<command> --no_such_flag`) in a fresh
process and keeps the best wall time of `--repeats` runs; it also records whether torch was imported
(from `python -X importtime`). The target is under 0.5 s with no torch. With `--baseline REV` the same
commands run from a checkout of that git revision too, side by side in the same run, and the table
shows the ratio; `python -c "import torch"` is timed as the reference cost of importing torch.

    python benchmarks/bench_cli_startup.py [--repeats 5] [--baseline df5c359]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info

from NLM.min_lm.cli import ALIASES, COMMANDS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bench_cli_startup.json"
TARGET_SECONDS = 0.5


def best_time(argv: list[str], root: Path, repeats: int) -> tuple[float, bool]:
    """Best wall time of `python argv` run in `root` (its package first on the path); whether torch loaded."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *argv], cwd=root, env=env, capture_output=True)
        times.append(time.perf_counter() - start)
    imports = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=root, env=env,
                             capture_output=True, text=True).stderr
    # importtime lines end "| <indent>module"; torch imported anywhere (nested too) counts
    return min(times), any(line.rsplit("|", 1)[-1].strip() == "torch" for line in imports.splitlines())


def measure(root: Path, commands: list[str], repeats: int) -> dict[str, dict]:
    rows = {}
    for command in commands:
        for case, flag in (("help", "--help"), ("bad flag", "--no_such_flag")):
            seconds, torch_loaded = best_time(["-m", "NLM.min_lm.cli", command, flag], root, repeats)
            rows[f"{command} {flag}"] = {"seconds": seconds, "imports_torch": torch_loaded, "case": case}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per row; the best counts")
    parser.add_argument("--baseline", help="also time this git revision (e.g. the one before a change)")
    args = parser.parse_args()
    commands = list(COMMANDS)
    torch_seconds, _ = best_time(["-c", "import torch"], REPO, args.repeats)
    now = measure(REPO, commands, args.repeats)
    before = None
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            checkout = Path(tmp) / "baseline"
            git = ["git", "-C", str(REPO), "worktree"]
            subprocess.run([*git, "add", "--detach", str(checkout), args.baseline], check=True,
                           capture_output=True)
            try:
                # the baseline may predate a rename: call it by its old name (an alias now)
                old_names = {new: old for old, new in ALIASES.items()}
                baseline_commands = [old_names.get(c, c) for c in commands]
                rows = measure(checkout, baseline_commands, args.repeats).values()
                before = dict(zip(now, rows, strict=True))
            finally:
                subprocess.run([*git, "remove", "--force", str(checkout)], check=True, capture_output=True)

    print(f"import torch alone: {torch_seconds:.2f} s; target: under {TARGET_SECONDS} s without torch")
    header = f"{'command':<34}{'now':>8}{'torch?':>8}"
    if before:
        header += f"{args.baseline + ' (before)':>20}{'torch?':>8}{'before/now':>12}"
    print(header)
    for name, row in now.items():
        line = f"{name:<34}{row['seconds']:>7.2f}s{'yes' if row['imports_torch'] else 'no':>8}"
        if before:
            old = before[name]
            line += (f"{old['seconds']:>19.2f}s{'yes' if old['imports_torch'] else 'no':>8}"
                     f"{old['seconds'] / row['seconds']:>11.1f}x")
        print(line)
    slowest = max(row["seconds"] for row in now.values())
    result = {
        "benchmark": "minlm <command> --help / bad flag, best wall time of a fresh process",
        "target_seconds": TARGET_SECONDS,
        "slowest_seconds": slowest,
        "meets_target": slowest < TARGET_SECONDS and not any(r["imports_torch"] for r in now.values()),
        "import_torch_seconds": torch_seconds,
        "repeats": args.repeats,
        "now": now,
        "baseline_revision": args.baseline,
        "baseline": before,
        "machine": machine_info(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"slowest: {slowest:.2f} s; wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
