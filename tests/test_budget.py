"""Time-budgeted training: the schedule follows progress = max(iteration/max_iters, elapsed/budget).

The trainer's clock is injected (`train(config, clock=...)`), so these tests run on fake seconds that pass
at a fixed rate per iteration and never sleep.
"""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import StepClock, read_metrics, tiny_flags, write_tokens

from NLM.min_lm.distributed import DistContext
from NLM.min_lm.errors import UserError
from NLM.min_lm.training import TrainConfig
from NLM.min_lm.training.budget import budget_spent, effective_iteration
from NLM.min_lm.training.trainer import Trainer
from NLM.min_lm.transformer import get_lr_cosine_schedule

# warmup 10, decay to iteration 100, from 1.0 to 0.1
LR = dict(max_learning_rate=1.0, min_learning_rate=0.1, warmup_iters=10, cosine_cycle_iters=100)


def lr_at(iteration: int, elapsed: float = 0.0, budget: float | None = None) -> float:
    return get_lr_cosine_schedule(effective_iteration(iteration, 100, elapsed, budget), **LR)


@pytest.mark.parametrize("iteration, elapsed, budget, expected", [
    # iterations only: iteration 55 is half-way through the decay, cos(pi/2) = 0 -> 0.1 + 0.9/2
    (55, 1e9, None, 0.55),
    (70, 0.0, None, 0.1 + 0.9 * (1 + math.cos(2 * math.pi / 3)) / 2),  # 2/3 of the decay: 0.325
    # time only: 33 s of 60 is 55% of the run, whatever the iteration
    (5, 33.0, 60.0, 0.55),
    (1, 3.0, 60.0, 0.5),  # 5% of the run: half-way through a warmup of 10% -> 1.0 * 5/10
    (2, 90.0, 60.0, 0.1),  # past the budget: the end of the decay
    # both: the larger progress wins
    (70, 30.0, 60.0, 0.325),  # iteration 70/100 beats 30/60 s
    (20, 33.0, 60.0, 0.55),  # 33/60 s beats iteration 20/100
])
def test_schedule_follows_the_larger_progress(iteration, elapsed, budget, expected):
    assert lr_at(iteration, elapsed, budget) == pytest.approx(expected, abs=1e-12)


def test_budget_spent_by_iterations_or_time():
    assert budget_spent(100, 100) and not budget_spent(99, 100)
    assert not budget_spent(99, 100, 59.9, 60.0)
    assert budget_spent(3, 100, 60.0, 60.0)
    assert not budget_spent(3, 100, 1e9, None)


def run(config: TrainConfig, clock: StepClock):
    trainer = Trainer(config, DistContext(), torch.device("cpu"), clock=clock)
    clock.trainer = trainer
    return trainer.run()


# 1000 iterations or 1 minute at 6 fake seconds per iteration: time runs out after 10 iterations, and
# iteration i is at 100 * i of the schedule's 1000 (warmup 100, decay from 1e-2 to 1e-3 until 1000).
BUDGETED = dict(max_iters=1000, max_minutes=1.0, warmup_iters=100, lr_max=1e-2, lr_min=1e-3,
                eval_interval=100, checkpoint_interval=100)


@pytest.fixture
def budgeted(tmp_path, one_thread):
    train, val = write_tokens(tmp_path), write_tokens(tmp_path, "val.npy", n=500, seed=1)

    def config(name: str, **overrides) -> TrainConfig:
        return TrainConfig(**tiny_flags(train_tokens=str(train), val_tokens=str(val),
                                        checkpoint_path=str(tmp_path / name / "model.pt"),
                                        **{**BUDGETED, **overrides}))
    return config


def test_time_budget_ends_the_run_and_its_decay(budgeted, capsys):
    config = budgeted("a", quiet=False)
    result = run(config, StepClock(6.0))
    records = read_metrics(config.run_path / "metrics.jsonl")
    lrs = {r["iter"]: r["lr"] for r in records if "lr" in r}
    assert result.iterations == 10 and len(lrs) == 10
    # step i runs at 100 * i: warmup ends at step 1; the decay is 1/3 done at step 4, 2/3 at step 7
    assert lrs[1] == 0.0 and lrs[2] == pytest.approx(1e-2)
    assert lrs[5] == pytest.approx(1e-3 + 0.75 * 9e-3) and lrs[8] == pytest.approx(1e-3 + 0.25 * 9e-3)
    assert lrs[10] == pytest.approx(1e-3 + 9e-3 * (1 + math.cos(math.pi * 8 / 9)) / 2)
    # then the final validation and checkpoint, as at the end of any run
    assert [r["iter"] for r in records if "val_loss" in r] == [10]
    saved = torch.load(config.checkpoint_path, weights_only=True)
    assert saved["iteration"] == 10 and saved["elapsed"] == 60.0
    tokens = 10 * config.batch_size * config.context_length
    assert result.tokens_seen == tokens and not result.interrupted
    assert f"time budget of 1 min used up at iteration 10: {tokens:,} tokens seen" in capsys.readouterr().out


def test_a_stopped_and_resumed_run_continues_the_schedule(budgeted):
    straight = budgeted("straight")
    run(straight, StepClock(6.0))
    stopped = budgeted("stopped")
    first = run(stopped, StepClock(6.0, interrupt_at=4))  # Ctrl-C after iteration 4: saved with 24 s
    assert first.interrupted and first.iterations == 4
    assert torch.load(stopped.checkpoint_path, weights_only=True)["elapsed"] == 24.0
    resumed = run(budgeted("stopped", resume=True), StepClock(6.0))
    assert resumed.iterations == 10
    expected = read_metrics(straight.run_path / "metrics.jsonl")
    got = read_metrics(stopped.run_path / "metrics.jsonl")
    assert [r["iter"] for r in got] == [r["iter"] for r in expected]
    for mine, theirs in zip(got, expected, strict=True):
        for key in ("lr", "loss", "val_loss", "elapsed"):
            assert mine.get(key) == theirs.get(key), (mine, theirs)


def test_resuming_a_run_whose_time_is_spent_is_a_user_error(budgeted):
    run(budgeted("a"), StepClock(6.0))
    with pytest.raises(UserError, match=r"already trained 1\.0 minutes; raise --max_minutes \(now 1\.0\)"):
        run(budgeted("a", resume=True, max_iters=2000), StepClock(6.0))


def test_max_minutes_must_be_positive(budgeted):
    with pytest.raises(UserError, match="--max_minutes must be positive"):
        budgeted("a", max_minutes=0)
