"""What a run reports: metrics.jsonl, the loss.png curve, optional Weights & Biases, the final summary.

metrics.jsonl holds one JSON object per line, appended as training goes, so it can be tailed or read
with `pandas.read_json(path, lines=True)`. Training lines carry `iter, loss, lr, tokens_per_s, elapsed`;
validation lines carry `iter, val_loss, val_ppl, elapsed`. A resumed run first drops the lines logged
after its checkpoint, so the file always tells one consistent history.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import atomic_path, atomic_write_text, describe_os_error


class MetricsLog:
    """Appends records to metrics.jsonl (and to wandb when a run is given); keeps them for the plot."""

    def __init__(self, path: Path, *, resume_from: int | None = None, wandb_run: Any = None) -> None:
        """Start a fresh file, or with `resume_from` keep the records up to that iteration."""
        self.path = path
        self.wandb_run = wandb_run
        self.records: list[dict[str, Any]] = []
        if resume_from is not None and path.is_file():
            records = _read_records(path.read_text(encoding="utf-8"))
            self.records = [r for r in records if r["iter"] <= resume_from]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk, say: one line naming the file, not "[Errno 28]"
            raise UserError(describe_os_error(self.path, e)) from None
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "iter"}, step=record["iter"])


def _read_records(text: str) -> list[dict[str, Any]]:
    """Parse metrics.jsonl, skipping a last line cut short by a crash mid-write."""
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def start_wandb(project: str, config: dict[str, Any]) -> Any:
    """Open a Weights & Biases run; wandb is optional, so its absence is a user error, not a crash."""
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb_project needs the wandb package: pip install wandb") from None
    return wandb.init(project=project, config=config)


def plot_losses(records: list[dict[str, Any]], path: Path) -> None:
    """Draw training and validation loss against iteration into `path` (PNG, replaced atomically)."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and touches no global pyplot state

    train = [(r["iter"], r["loss"]) for r in records if "loss" in r]
    val = [(r["iter"], r["val_loss"]) for r in records if "val_loss" in r]
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", markersize=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.96)  # fixed margins: tight_layout is slow
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


@dataclass
class TrainResult:
    """What `train` returns: enough to find the outputs and judge the run without reading the logs."""

    iterations: int
    tokens_seen: int
    global_batch_tokens: int
    elapsed: float
    final_val_loss: float | None
    best_val_loss: float | None
    checkpoint_path: Path
    best_checkpoint_path: Path | None
    metrics_path: Path
    plot_path: Path
    interrupted: bool = False


def summary(result: TrainResult) -> str:
    """The lines printed when a run ends."""

    def loss_and_ppl(loss: float | None) -> str:
        return "n/a" if loss is None else f"{loss:.4f} (perplexity {math.exp(min(loss, 700)):.2f})"

    rate = result.tokens_seen / result.elapsed if result.elapsed > 0 else 0.0
    rows = [
        ("iterations", f"{result.iterations:,}"),
        ("tokens seen", f"{result.tokens_seen:,}"),
        ("global batch", f"{result.global_batch_tokens:,} tokens"),
        ("time", f"{result.elapsed:.1f} s ({rate:,.0f} tokens/s)"),
        ("final val loss", loss_and_ppl(result.final_val_loss)),
        ("best val loss", loss_and_ppl(result.best_val_loss)),
        ("checkpoint", str(result.checkpoint_path)),
        ("best checkpoint", str(result.best_checkpoint_path or "n/a")),
        ("metrics", str(result.metrics_path)),
        ("loss curve", str(result.plot_path)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
