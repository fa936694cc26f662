"""Signals during training: however often Ctrl-C or SIGTERM is sent, the run ends with a complete
checkpoint, exit status 0 and no traceback (issue 13, lost data 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fault_helpers import no_temp_files
from train_helpers import as_argv, read_metrics, tiny_flags, write_tokens

from NLM.min_lm.transformer.checkpoint import read_checkpoint


def _start_training(tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    """A model big enough that its checkpoint takes a noticeable time to write, running until stopped."""
    flags = tiny_flags(train_tokens=str(write_tokens(tmp_path, "train.npy")),
                       val_tokens=str(write_tokens(tmp_path, "val.npy", n=1000, seed=1)),
                       checkpoint_path=str(tmp_path / "run" / "model.pt"), d_model=384, num_heads=4,
                       max_iters=1_000_000, checkpoint_interval=1_000_000, eval_interval=1_000_000)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "NLM.min_lm.scripts.train", *as_argv(flags)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text()) and proc.poll() is None:
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)
    return proc, flags


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_mashing_signals_during_the_final_save_loses_nothing(tmp_path, signum):
    proc, flags = _start_training(tmp_path)
    deadline = time.monotonic() + 120
    while proc.poll() is None:  # every 20 ms until the process is gone: many land during the save
        assert time.monotonic() < deadline, "the run did not stop"
        proc.send_signal(signum)
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Traceback" not in out, err
    saved = read_checkpoint(flags["checkpoint_path"])
    assert saved["iteration"] >= max(r["iter"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl"))
    assert f"{signal.Signals(signum).name}: stopped after iteration {saved['iteration']}" in out
    assert no_temp_files(tmp_path / "run")


def test_a_second_signal_when_the_temp_file_appears(tmp_path):
    """The issue's reproduction: SIGINT, then another as soon as the checkpoint's temporary file exists."""
    proc, flags = _start_training(tmp_path)
    proc.send_signal(signal.SIGINT)
    run_dir = tmp_path / "run"
    deadline = time.monotonic() + 120
    while proc.poll() is None and not any(p.name.endswith(".tmp") for p in run_dir.iterdir()):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    for _ in range(3):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert torch.load(flags["checkpoint_path"], weights_only=True)["iteration"] >= 1


def test_a_command_run_in_process_gives_the_handlers_back(tmp_path):
    """Ignoring late signals is for a process that is ending because it was asked to stop; a program that
    calls `main()` and goes on keeps its handlers (a forked worker that ignored SIGTERM could not be
    stopped by its pool)."""
    from NLM.min_lm.scripts import train

    flags = tiny_flags(train_tokens=str(write_tokens(tmp_path, "train.npy")),
                       val_tokens=str(write_tokens(tmp_path, "val.npy", n=1000, seed=1)),
                       checkpoint_path=str(tmp_path / "run" / "model.pt"), max_iters=2)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert train.main(as_argv(flags)) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
