"""Tiny token files and configs shared by the training tests (a model that trains in a second on a CPU)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np

VOCAB = 64
TINY = dict(vocab_size=VOCAB, context_length=16, batch_size=4, d_model=32, num_layers=2, num_heads=2,
            max_iters=20, warmup_iters=2, lr_max=3e-3, lr_min=3e-4, eval_interval=10, eval_iters=2,
            log_interval=1, checkpoint_interval=10, device="cpu", seed=0, quiet=True,
            compile=False, dtype="float32")  # explicit: the auto defaults would compile (slow in tests)


def write_tokens(tmp_path: Path, name: str = "train.npy", n: int = 4000, seed: int = 0,
                 dtype: type = np.uint16) -> Path:
    """Random ids below VOCAB: nothing to learn, but every code path runs."""
    path = tmp_path / name
    np.save(path, np.random.default_rng(seed).integers(0, VOCAB, size=n).astype(dtype))
    return path


def write_pattern(tmp_path: Path, name: str, period: int = 16, repeats: int = 300) -> Path:
    """A repeating sequence: each token determines the next, so a model can drive the loss toward 0."""
    path = tmp_path / name
    np.save(path, np.tile(np.arange(period, dtype=np.uint16) * 3 % VOCAB, repeats))
    return path


def tiny_flags(**overrides) -> dict:
    return {**TINY, **overrides}


def as_argv(flags: dict) -> list[str]:
    """Config values -> command-line flags (booleans become --name / --no-name)."""
    argv = []
    for name, value in flags.items():
        if isinstance(value, bool):
            argv.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, (list, tuple)):
            argv += [f"--{name}", *map(str, value)]
        else:
            argv += [f"--{name}", str(value)]
    return argv


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def train_losses(records: list[dict]) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in records if "loss" in r}


class StepClock:
    """Fake seconds: `seconds_per_iteration` pass with each optimizer step of `trainer`. With `interrupt_at`,
    the clock sends this process SIGINT (a Ctrl-C) once that iteration is reached."""

    def __init__(self, seconds_per_iteration: float, interrupt_at: int | None = None) -> None:
        self.seconds_per_iteration, self.interrupt_at = seconds_per_iteration, interrupt_at
        self.trainer = None  # set once the Trainer exists

    def __call__(self) -> float:
        iteration = self.trainer.iteration if self.trainer is not None else 0
        if iteration == self.interrupt_at:
            self.interrupt_at = None
            os.kill(os.getpid(), signal.SIGINT)
        return self.seconds_per_iteration * iteration
