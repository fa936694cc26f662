"""Time the main job, `minlm quickstart` with its defaults, and record what it reached.

The bar: the whole command takes at most 6 minutes on 2 CPU cores, whatever the CPU (its training is
time-budgeted: --minutes, 5 by default), and its validation loss ends well below the unigram entropy of
the corpus (the best loss a model that ignores context can reach). Reported: total wall time, tokens seen,
validation loss. The run goes to a temporary directory; its summary (without the run's file paths), the
wall time, the load average before and after (a machine busy with other work trains on fewer tokens in
the same minutes) and the machine go to benchmarks/results/bench_quickstart.json.

It also records where the CPU time went (resource.getrusage of this process and its workers): user vs
kernel ("system") seconds and minor page faults; a large kernel share means memory churn, big temporaries
mapped and unmapped every step (the target is under 5% of the CPU time in the kernel).

    python benchmarks/bench_quickstart.py            # the default run (under 6 minutes)
    python benchmarks/bench_quickstart.py --tiny     # the ~10-second run the tests use
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = run_quickstart(QuickstartConfig(out_dir=tmp, tiny=args.tiny, device="cpu", progress=False))
        wall = time.perf_counter() - start
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    user, system = sum(u.ru_utime for u in usage), sum(u.ru_stime for u in usage)
    cpu = dict(user_s=user, system_s=system, system_share=system / (user + system),
               minor_page_faults=sum(u.ru_minflt for u in usage))
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    loaded = max(load_before[0], load_after[0]) > cores
    rows = [("wall time, whole pipeline", f"{wall / 60:.2f} min ({wall:.0f} s)"),
            ("training time budget", f"{summary['time_budget_minutes'] or 'none'} min"),
            ("tokens seen", f"{summary['tokens_seen']:,} ({summary['iterations']:,} iterations)"),
            ("best validation loss", f"{summary['best_val_loss']:.3f} nats/token"),
            ("unigram entropy (validation)", f"{summary['valid_unigram_entropy']:.3f} nats/token"),
            ("training speed", f"{summary['train_tokens_per_s']:,.0f} tokens/s"),
            ("CPU time in the kernel", f"{cpu['system_share']:.1%} ({system:.0f} of {user + system:.0f} s)"),
            ("minor page faults", f"{cpu['minor_page_faults']:,}"),
            ("load average (1 min)", f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, on {cores} "
                                     f"cores{': LOADED by other work' if loaded else ''}")]
    for name, value in rows:
        print(f"{name:<32}{value}")
    out = RESULTS / f"bench_quickstart{'_tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "minlm quickstart" + (" --tiny" if args.tiny else ""),
                               "wall_seconds": wall, "target": "wall_seconds <= 360 on 2 cores",
                               "tokens_seen": summary["tokens_seen"],
                               "best_val_loss": summary["best_val_loss"], "cpu_time": cpu,
                               "load_average_1min": {"before": load_before[0], "after": load_after[0]},
                               "machine_loaded_by_other_work": loaded, "summary": portable(summary),
                               "machine": machine_info()}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
