"""What the training loop costs: `minlm train`'s steady-state throughput vs a bare training loop.

The peer is the smallest loop that trains the same model the same way (nanoGPT-style): sample a batch,
forward with the fused loss, backward, clip, AdamW step. Ours adds the device-side divergence flag (read
with the loss at each log line, never per step), the learning-rate schedule, the progress bar and metrics,
and the shared-generator batch sampler. Both run eagerly in float32 (the trainer's --compile/--dtype auto
are pinned off here: this measures the loop, not the compiler). Both use
the same model, optimizer, batch and thread count; the first `--warmup` iterations are not timed, and the
two alternate `--repeats` times (best kept) so both see the same load from anything else on the machine
(the load average is recorded). Our rate is read from metrics.jsonl, the bare loop's from its own clock.

    python benchmarks/bench_train.py [--iters 40] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_info

from NLM.min_lm.training import TrainConfig, train
from NLM.min_lm.training.config import default_d_ff
from NLM.min_lm.transformer import (
    AdamW,
    ModelConfig,
    TransformerLM,
    get_batch,
    gradient_clipping,
    param_groups,
)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_train.json"
SHAPE = dict(vocab_size=10_000, context_length=128, batch_size=8, d_model=128, num_layers=4, num_heads=4)


def ours(tokens: Path, iters: int, warmup: int, run_dir: Path) -> float:
    """Tokens/s of `train()` between its log lines at `warmup` and at the end (log every `warmup` steps)."""
    config = TrainConfig(train_tokens=str(tokens), val_tokens=str(tokens), **SHAPE, max_iters=warmup + iters,
                         log_interval=warmup, eval_interval=10**9, eval_iters=1, checkpoint_interval=10**9,
                         device="cpu", quiet=True, checkpoint_path=str(run_dir / "model.pt"),
                         compile=False, dtype="float32")
    result = train(config)
    elapsed = {r["iter"]: r["elapsed"] for r in map(json.loads, result.metrics_path.read_text().splitlines())
               if "loss" in r}
    return iters * SHAPE["batch_size"] * SHAPE["context_length"] / (elapsed[warmup + iters] - elapsed[warmup])


def bare(tokens: np.ndarray, iters: int, warmup: int) -> float:
    torch.manual_seed(0)
    shape = {k: v for k, v in SHAPE.items() if k != "batch_size"}
    model = TransformerLM.from_config(ModelConfig(**shape, d_ff=default_d_ff(SHAPE["d_model"])))
    optimizer = AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(0)
    for it in range(warmup + iters):
        if it == warmup:
            start = time.perf_counter()
        x, y = get_batch(tokens, SHAPE["batch_size"], SHAPE["context_length"], "cpu", generator=rng)
        loss = model(x, targets=y)
        loss.backward()
        gradient_clipping(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return iters * SHAPE["batch_size"] * SHAPE["context_length"] / (time.perf_counter() - start)




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if args.iters % args.warmup:
        parser.error("--iters must be a multiple of --warmup (ours is timed between its log lines)")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.npy"
        np.save(path, np.random.default_rng(0).integers(0, SHAPE["vocab_size"], 1_000_000).astype(np.uint16))
        tokens = np.load(path, mmap_mode="r")
        rates: dict[str, list[float]] = {"bare loop": [], "minlm train": []}
        for repeat in range(args.repeats):
            rates["bare loop"].append(bare(tokens, args.iters, args.warmup))
            rates["minlm train"].append(ours(path, args.iters, args.warmup, Path(tmp) / f"run{repeat}"))

    best = {name: max(values) for name, values in rates.items()}
    print(f"{'loop':<12} {'tokens/s (best)':>16} {'all runs':>30}")
    for name, values in rates.items():
        print(f"{name:<12} {best[name]:>16,.0f} {', '.join(f'{v:,.0f}' for v in values):>30}")
    ratio = best["minlm train"] / best["bare loop"]
    print(f"minlm train / bare loop: {ratio:.3f}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "training loop throughput, steady state, CPU",
        "shape": SHAPE, "iters": args.iters, "warmup": args.warmup, "threads": args.threads,
        "tokens_per_s": rates, "best": best, "ratio_ours_over_bare": ratio,
        "machine": machine_info(),
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
