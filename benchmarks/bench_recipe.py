"""The modern recipe against the baseline: `--recipe speedrun` vs `baseline` on the quickstart corpus.

Same data (the quickstart corpus: the Python standard library's source, its tokenizer and token ids), same
model (the quickstart's size), same token budget, several seeds; both recipes run side by side in one
invocation. Reported against the issue's targets:

- tokens the speedrun needs to reach the baseline's final validation loss, as a fraction of the budget
  (target <= 0.6), measured two ways: as the speedrun itself is scored (modded-nanogpt's records are runs
  of a fixed, shorter length that must reach the target loss), by speedrun runs given only
  `--short_fraction` of the budget, their schedules (warmup, stable stage, decay) fitted to it, whose
  final loss must be at or below the baseline's; and, stricter, where the full-budget speedrun's mean
  curve first crosses the baseline's final loss (linear between evaluations; its WSD decay, which brings
  most of the gain, only starts at 70% of the budget);
- the final validation loss difference, baseline - speedrun (target >= 0.1 nats);
- Muon's extra time per training step over AdamW's (target <= 10% at the quickstart size), at the
  runs' batch shape and at the quickstart's own (context 256), also at d_model 768, measured by
  alternating steps of the two optimizers in one process.

A PNG of both recipes' validation curves goes to benchmarks/results/bench_recipe.png, the numbers to
benchmarks/results/bench_recipe.json.

    python benchmarks/bench_recipe.py                      # 3 seeds, 2 runs at a time (one thread each)
    python benchmarks/bench_recipe.py --data_dir DIR       # reuse a quickstart --out_dir's train/valid.npy
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_info

from NLM.min_lm.quickstart.config import DEFAULT, QuickstartConfig
from NLM.min_lm.quickstart.pipeline import make_corpus, make_token_ids, make_tokenizer
from NLM.min_lm.training import TrainConfig, train
from NLM.min_lm.training.config import default_d_ff
from NLM.min_lm.transformer import AdamW, TransformerLM, cross_entropy, param_groups
from NLM.min_lm.transformer.optim import muon_with_adamw

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ("baseline", "speedrun")
LABELS = (*RECIPES, "speedrun_short")  # speedrun_short: the speedrun given --short_fraction of the budget


def prepare_data(out_dir: Path) -> None:
    """The quickstart's stages 1-3 with its defaults: train.npy, valid.npy and the tokenizer in out_dir."""
    config = QuickstartConfig(out_dir=str(out_dir), device="cpu", progress=False)
    corpus, _ = make_corpus(config, out_dir)
    tokenizer, _, _ = make_tokenizer(config, corpus, out_dir)
    make_token_ids(config, corpus, tokenizer, out_dir)


def run_one(job: dict) -> dict:
    """One training run in a worker process (one thread): its validation curve."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        iters = job["iters"]
        config = TrainConfig(
            train_tokens=job["train"], val_tokens=job["valid"], vocab_size=DEFAULT.vocab_size,
            context_length=job["context_length"], batch_size=DEFAULT.batch_size, d_model=DEFAULT.d_model,
            num_layers=DEFAULT.num_layers, num_heads=DEFAULT.num_heads, lr_max=DEFAULT.lr_max,
            lr_min=DEFAULT.lr_max / 10, warmup_iters=max(1, iters // 20), max_iters=iters,
            eval_interval=job["eval_interval"], eval_iters=job["eval_iters"], checkpoint_interval=iters,
            seed=job["seed"], recipe=job["recipe"], checkpoint_path=f"{tmp}/model.pt", device="cpu",
            quiet=True)
        result = train(config)
        records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    curve = [(r["iter"], r["val_loss"]) for r in records if "val_loss" in r]
    return {**job, "curve": curve, "elapsed": result.elapsed, "tokens_per_iter": result.global_batch_tokens}


def first_reach(iters: np.ndarray, losses: np.ndarray, target: float) -> float | None:
    """The (linearly interpolated) iteration at which a validation curve first reaches `target`."""
    for i in range(len(losses)):
        if losses[i] <= target:
            if i == 0:
                return float(iters[0])
            x0, x1, y0, y1 = iters[i - 1], iters[i], losses[i - 1], losses[i]
            return float(x0 + (x1 - x0) * (y0 - target) / (y0 - y1))
    return None


def step_time_ratio(d_model: int, num_layers: int, num_heads: int, context_length: int, batch_size: int,
                    steps: int) -> dict:
    """Seconds per training step (forward, backward, optimizer) with AdamW and with Muon + AdamW.

    The two run alternately, each with its own copy of the model, so machine noise hits both alike;
    the median step of each is compared.
    """
    torch.manual_seed(0)
    shape = dict(vocab_size=DEFAULT.vocab_size, context_length=context_length, d_model=d_model,
                 num_layers=num_layers, num_heads=num_heads, d_ff=default_d_ff(d_model))
    models = {"adamw": TransformerLM(**shape), "muon": TransformerLM(**shape)}
    models["muon"].load_state_dict(models["adamw"].state_dict())
    optimizers = {"adamw": AdamW(param_groups(models["adamw"], 0.1), lr=1e-3),
                  "muon": muon_with_adamw(models["muon"], muon_lr=0.02, lr=1e-3, weight_decay=0.1)}
    ids = torch.randint(0, DEFAULT.vocab_size, (batch_size, context_length + 1))
    times: dict[str, list[float]] = {"adamw": [], "muon": []}
    for step in range(steps + 1):
        for name in ("adamw", "muon") if step % 2 else ("muon", "adamw"):
            start = time.perf_counter()
            loss = cross_entropy(models[name](ids[:, :-1]), ids[:, 1:])
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            if step > 0:  # the first step allocates the optimizer state
                times[name].append(time.perf_counter() - start)
    adamw, muon = float(np.median(times["adamw"])), float(np.median(times["muon"]))
    return {"d_model": d_model, "num_layers": num_layers, "tokens_per_step": batch_size * context_length,
            "adamw_step_s": adamw, "muon_step_s": muon, "extra": muon / adamw - 1, "steps": steps}


def plot(curves: dict[str, list[dict]], tokens_per_iter: int, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, color in zip(LABELS, ("tab:blue", "tab:red", "tab:green"), strict=True):
        if not curves[label]:
            continue
        for run in curves[label]:
            iters, losses = zip(*run["curve"], strict=True)
            ax.plot(np.array(iters) * tokens_per_iter / 1e6, losses, color=color, alpha=0.25, lw=1)
        mean = np.mean([[loss for _, loss in run["curve"]] for run in curves[label]], axis=0)
        iters = [it for it, _ in curves[label][0]["curve"]]
        name = label if label != "speedrun_short" else f"speedrun, {curves[label][0]['iters']} steps"
        ax.plot(np.array(iters) * tokens_per_iter / 1e6, mean, color=color, lw=2,
                label=f"{name} (mean of {len(curves[label])} seeds)")
    ax.axhline(target, color="tab:blue", ls=":", lw=1, label="baseline's final loss")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("minlm train --recipe baseline vs speedrun, quickstart corpus and model")
    ax.set_ylim(top=min(ax.get_ylim()[1], target + 2.5))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", help="a quickstart --out_dir holding train.npy and valid.npy")
    parser.add_argument("--iters", type=int, default=300, help="optimizer steps per run (the token budget)")
    parser.add_argument("--context_length", type=int, default=DEFAULT.context_length)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evals", type=int, default=15, help="validation passes per run")
    parser.add_argument("--eval_iters", type=int, default=10, help="validation batches per pass")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--timing_steps", type=int, default=12, help="steps per optimizer when timing")
    parser.add_argument("--short_fraction", type=float, default=0.6,
                        help="budget of the shorter speedrun runs, as a fraction of --iters (0: none)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        if not args.data_dir:
            prepare_data(data_dir)
        short = round(args.iters * args.short_fraction)
        budgets = {"baseline": args.iters, "speedrun": args.iters, "speedrun_short": short}
        jobs = [dict(label=label, recipe=label.removesuffix("_short"), seed=seed, iters=iters,
                     context_length=args.context_length, eval_interval=max(1, iters // args.evals),
                     eval_iters=args.eval_iters, train=str(data_dir / "train.npy"),
                     valid=str(data_dir / "valid.npy"))
                for seed in range(args.seeds) for label, iters in budgets.items() if iters > 0]
        start = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            runs = pool.map(run_one, jobs, chunksize=1)
        training_wall = time.perf_counter() - start
    for run in runs:
        del run["train"], run["valid"]  # temporary paths: not part of the result

    curves = {label: [r for r in runs if r["label"] == label] for label in LABELS}
    tokens_per_iter = runs[0]["tokens_per_iter"]
    iters = np.array([it for it, _ in curves["baseline"][0]["curve"]], dtype=float)
    mean = {label: np.mean([[loss for _, loss in r["curve"]] for r in curves[label]], axis=0)
            for label in LABELS if curves[label]}
    target = float(mean["baseline"][-1])
    reach = first_reach(iters, mean["speedrun"], target)
    per_seed = []
    for base, fast in zip(curves["baseline"], curves["speedrun"], strict=True):
        fast_losses = np.array([loss for _, loss in fast["curve"]])
        seed_reach = first_reach(iters, fast_losses, base["curve"][-1][1])
        per_seed.append({"seed": base["seed"], "baseline_final": base["curve"][-1][1],
                         "speedrun_final": fast["curve"][-1][1],
                         "reach_fraction": None if seed_reach is None else seed_reach / args.iters})
    for entry, run in zip(per_seed, curves["speedrun_short"], strict=False):
        entry["speedrun_short_final"] = run["curve"][-1][1]
    torch.set_num_threads(1)  # as the training runs had
    batch = (args.context_length, DEFAULT.batch_size)
    quickstart_batch = (DEFAULT.context_length, DEFAULT.batch_size)  # the quickstart trains at this shape
    timing = [
        step_time_ratio(DEFAULT.d_model, DEFAULT.num_layers, DEFAULT.num_heads, *batch, args.timing_steps),
        step_time_ratio(DEFAULT.d_model, DEFAULT.num_layers, DEFAULT.num_heads, *quickstart_batch,
                        args.timing_steps),
        step_time_ratio(768, 2, 12, *batch, max(2, args.timing_steps // 4)),
    ]

    summary = {
        "baseline_final_val_loss": target,
        "speedrun_final_val_loss": float(mean["speedrun"][-1]),
        "final_val_loss_difference": target - float(mean["speedrun"][-1]),
        "speedrun_tokens_to_baseline_final_fraction": None if reach is None else reach / args.iters,
        "speedrun_short": None if not curves["speedrun_short"] else {
            "fraction": short / args.iters, "iters": short,
            "final_val_loss": float(mean["speedrun_short"][-1]),
            "reaches_baseline_final": bool(mean["speedrun_short"][-1] <= target),
            "margin_nats": target - float(mean["speedrun_short"][-1])},
        "per_seed": per_seed,
        "muon_extra_step_time": timing,
    }
    rows = [
        ("baseline final val loss (mean)", f"{target:.4f}"),
        ("speedrun final val loss (mean)", f"{summary['speedrun_final_val_loss']:.4f}"),
        ("difference (target >= 0.1 nats)", f"{summary['final_val_loss_difference']:.4f}"),
        *([] if summary["speedrun_short"] is None else [
            (f"speedrun with {short / args.iters:.2f}x the tokens: final val loss (mean)",
             f"{summary['speedrun_short']['final_val_loss']:.4f} ("
             f"{'at or below' if summary['speedrun_short']['reaches_baseline_final'] else 'above'} "
             f"the baseline's by {abs(summary['speedrun_short']['margin_nats']):.4f} nats)")]),
        *[(f"  seed {s['seed']}: baseline {s['baseline_final']:.4f}, speedrun with "
           f"{short / args.iters:.2f}x the tokens", f"{s['speedrun_short_final']:.4f}")
          for s in per_seed if "speedrun_short_final" in s],
        ("full-budget speedrun's curve crosses the baseline's final loss at",
         "not reached" if reach is None else f"{reach / args.iters:.2f}x"),
        *[(f"  seed {s['seed']}: final {s['baseline_final']:.4f} vs {s['speedrun_final']:.4f}, crosses at",
           "not reached" if s["reach_fraction"] is None else f"{s['reach_fraction']:.2f}x")
          for s in per_seed],
        *[(f"Muon extra step time, d_model {t['d_model']}, {t['tokens_per_step']} tokens/step "
           f"(target <= 10% at 128)",
           f"{100 * t['extra']:+.1f}% ({t['adamw_step_s']:.3f} s -> {t['muon_step_s']:.3f} s)")
          for t in timing],
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(curves, tokens_per_iter, target, RESULTS / "bench_recipe.png")
    setup = {"corpus": "quickstart default (Python standard library source)", "iters": args.iters,
             "tokens_per_run": args.iters * tokens_per_iter, "context_length": args.context_length,
             "batch_size": DEFAULT.batch_size, "d_model": DEFAULT.d_model, "num_layers": DEFAULT.num_layers,
             "seeds": args.seeds, "evals": args.evals, "eval_iters": args.eval_iters,
             "short_fraction": args.short_fraction,
             "workers": args.workers, "training_wall_seconds": training_wall}
    out = RESULTS / "bench_recipe.json"
    out.write_text(json.dumps({"benchmark": "minlm train --recipe baseline vs speedrun", "setup": setup,
                               "summary": summary, "runs": runs, "machine": machine_info()}, indent=2) + "\n")
    print(f"wrote {out} and {RESULTS / 'bench_recipe.png'}")


if __name__ == "__main__":
    main()
