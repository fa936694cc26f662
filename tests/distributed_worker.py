"""A tiny program that tests/test_distributed.py launches under torchrun (2 ranks, CPU, gloo).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py MODE OUT

MODE "train": each rank starts from different random weights and trains a small MLP on its own data with
gradient accumulation (no_sync on the first micro-step); every rank writes its final parameters to
OUT/rank{r}.pt and rank 0 also writes the parameters a single process reaches on the concatenated data.
It also records all_reduce_mean of (rank + 1) in OUT/mean{r}.txt.
MODE "fail": rank 1 raises while rank 0 blocks in an all_reduce, to show the job fails fast.
MODE "budget": trains with the TrainConfig in OUT/config.json (a time budget) on fake clocks that run at a
different speed on each rank, and writes the iterations each rank trained to OUT/iterations{r}.txt.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn
from train_helpers import StepClock

from NLM.min_lm.distributed import (
    DistContext,
    all_reduce_mean,
    setup_distributed,
    sync_context,
    teardown,
    wrap_model,
)
from NLM.min_lm.training import TrainConfig
from NLM.min_lm.training.trainer import Trainer

STEPS, MICRO_STEPS, BATCH, WIDTH = 3, 2, 4, 8


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(WIDTH, 16), nn.Tanh(), nn.Linear(16, 1))


def batch(step: int, micro: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Data that differs per rank, reproducible by any process from (step, micro, rank)."""
    g = torch.Generator().manual_seed(1000 * step + 10 * micro + rank)
    return torch.randn(BATCH, WIDTH, generator=g), torch.randn(BATCH, 1, generator=g)


def train(model: nn.Module, ctx, ranks: list[int]) -> None:
    """SGD whose gradient is the mean over `ranks`' data: DDP does the averaging when wrapped."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        for micro in range(MICRO_STEPS):
            with sync_context(model, ctx, sync=micro == MICRO_STEPS - 1):
                for rank in ranks:
                    x, y = batch(step, micro, rank)
                    loss = nn.functional.mse_loss(model(x), y) / (MICRO_STEPS * len(ranks))
                    loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main(mode: str, out: Path) -> None:
    """Run MODE between joining and leaving the group: its DDP model is gone by the time teardown runs."""
    ctx, device = setup_distributed("cpu")
    try:
        run(mode, out, ctx, device)
    finally:
        teardown(ctx)


def run(mode: str, out: Path, ctx: DistContext, device: torch.device) -> None:
    if mode == "train":
        model = make_model(seed=ctx.rank)  # different start per rank: DDP must broadcast rank 0's
        if ctx.is_main:
            reference = copy.deepcopy(model)
            train(reference, ctx=type(ctx)(), ranks=list(range(ctx.world_size)))
            torch.save(reference.state_dict(), out / "reference.pt")
        wrapped = wrap_model(model, ctx, device)
        train(wrapped, ctx, ranks=[ctx.rank])
        torch.save(wrapped.module.state_dict(), out / f"rank{ctx.rank}.pt")
        (out / f"mean{ctx.rank}.txt").write_text(repr(all_reduce_mean(ctx.rank + 1.0, ctx, device)))
    elif mode == "budget":  # rank 0's clock: 6 s per iteration; rank 1's: 60 s
        clock = StepClock(seconds_per_iteration=6.0 * (1 + 9 * ctx.rank))
        config = TrainConfig(**json.loads((out / "config.json").read_text()))
        clock.trainer = Trainer(config, ctx, device, clock=clock)
        result = clock.trainer.run()
        (out / f"iterations{ctx.rank}.txt").write_text(str(result.iterations))
    elif mode == "fail":
        if ctx.rank == 1:
            raise RuntimeError("rank 1 failed on purpose")
        all_reduce_mean(1.0, ctx, device)  # blocks: rank 1 never joins


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
