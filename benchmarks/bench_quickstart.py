"""Time the main job, `minlm quickstart` with its defaults, and record its losses.

The bar: it finishes in at most 10 minutes on 2 CPU cores, and its validation loss ends well
below the unigram entropy of the corpus (the best loss a model that ignores context can reach). The run
goes to a temporary directory; its summary (without the run's file paths, which name that temporary
directory and this machine's Python installation), the wall time and the machine go to
benchmarks/results/bench_quickstart.json.

    python benchmarks/bench_quickstart.py            # the default run (~6 minutes on 2 cores)
    python benchmarks/bench_quickstart.py --tiny     # the ~10-second run the tests use
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from machine import machine_info

from NLM.min_lm.corpus import stdlib_root
from NLM.min_lm.quickstart.config import QuickstartConfig
from NLM.min_lm.quickstart.pipeline import run_quickstart

RESULTS = Path(__file__).resolve().parent / "results"


def portable(summary: dict) -> dict:
    """The summary without local paths: results are committed, and a path says nothing on another machine."""
    kept = {key: value for key, value in summary.items() if key != "files"}
    kept["corpus"] = kept["corpus"].replace(f" from {stdlib_root()}", "")
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny preset instead of the default run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = run_quickstart(QuickstartConfig(out_dir=tmp, tiny=args.tiny, device="cpu", progress=False))
        wall = time.perf_counter() - start
    rows = [("wall time, whole pipeline", f"{wall / 60:.1f} min"),
            ("best validation loss", f"{summary['best_val_loss']:.3f} nats/token"),
            ("unigram entropy (validation)", f"{summary['valid_unigram_entropy']:.3f} nats/token"),
            ("training speed", f"{summary['train_tokens_per_s']:,.0f} tokens/s")]
    for name, value in rows:
        print(f"{name:<32}{value}")
    out = RESULTS / f"bench_quickstart{'_tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "minlm quickstart" + (" --tiny" if args.tiny else ""),
                               "wall_seconds": wall, "summary": portable(summary), "machine": machine_info()},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
