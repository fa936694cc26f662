"""`minlm train` from the command line: outputs, --config files, flag errors, signals."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_helpers import as_argv, read_metrics, tiny_flags, write_tokens

from NLM.min_lm.scripts.train import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def flags(tmp_path):
    return tiny_flags(train_tokens=str(write_tokens(tmp_path, "train.npy")),
                      val_tokens=str(write_tokens(tmp_path, "val.npy", n=1000, seed=1)),
                      checkpoint_path=str(tmp_path / "ckpt" / "model.pt"))


def test_cli_writes_checkpoints_metrics_and_plot(tmp_path, flags, capsys):
    flags.update(quiet=False, log_interval=5, run_dir=str(tmp_path / "logs"))
    assert main(as_argv(flags)) == 0
    out = capsys.readouterr().out
    assert "global batch" in out and "64 tokens" in out and "best val loss" in out

    saved = torch.load(tmp_path / "ckpt" / "model.pt", weights_only=False)
    assert saved["iteration"] == 20
    assert saved["train_config"]["d_model"] == 32 and saved["train_config"]["betas"] == [0.9, 0.95]
    best = torch.load(tmp_path / "ckpt" / "model_best.pt", weights_only=False)
    assert best["iteration"] in (10, 20) and best["best_val_loss"] == saved["best_val_loss"]

    records = read_metrics(tmp_path / "logs" / "metrics.jsonl")
    train_lines = [r for r in records if "loss" in r]
    val_lines = [r for r in records if "val_loss" in r]
    assert [r["iter"] for r in train_lines] == [5, 10, 15, 20]
    assert [r["iter"] for r in val_lines] == [10, 20]
    assert set(train_lines[0]) == {"iter", "loss", "lr", "tokens_per_s", "elapsed"}
    assert set(val_lines[0]) == {"iter", "val_loss", "val_ppl", "elapsed"}
    assert all(r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in val_lines)
    assert min(r["val_loss"] for r in val_lines) == saved["best_val_loss"]
    assert (tmp_path / "logs" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".")]  # no temp files left


def test_config_file_with_flag_override(tmp_path, flags):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({**flags, "max_iters": 7, "lr_max": 0.01}))
    assert main(["--config", str(config_file), "--max_iters", "4"]) == 0
    saved = torch.load(flags["checkpoint_path"], weights_only=False)
    assert saved["iteration"] == 4 and saved["train_config"]["lr_max"] == 0.01


@pytest.mark.parametrize("change, message", [
    ({"d_model": 30, "num_heads": 4}, "--d_model (30) must be divisible by --num_heads (4)"),
    ({"batch_size": 0}, "--batch_size must be a positive integer"),
    ({"lr_min": 1.0}, "--lr_min (1.0) must not exceed --lr_max"),
    ({"dtype": "float16"}, "--dtype"),
    ({"device": "tpu"}, "--device must be auto, cpu, cuda, cuda:N or mps"),
    ({"train_tokens": "missing.npy"}, "--train_tokens missing.npy: no such file"),
    ({"vocab_size": 10}, "outside the vocabulary (--vocab_size 10)"),
    ({"resume": True}, "--resume: no checkpoint at"),
])
def test_bad_flags_are_one_line_exit_2_and_write_nothing(tmp_path, flags, capsys, change, message):
    assert exit_code(as_argv({**flags, **change})) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "ckpt").exists()


def exit_code(argv: list[str]) -> int:
    """main's status, whether returned (errors while running) or raised by argparse (errors in flags)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_missing_wandb_is_a_clear_error(flags, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail even where it is installed
    assert main(as_argv({**flags, "wandb_project": "demo"})) == 2
    assert capsys.readouterr().err == "error: --wandb_project needs the wandb package: pip install wandb\n"


def test_sigterm_saves_a_checkpoint_and_exits_0(tmp_path, flags):
    """A real process, stopped mid-run as a job scheduler would: it saves, says so, exits 0.
    (Ctrl-C, SIGINT, takes the same path; test_train.py sends it in-process.)"""
    flags.update(max_iters=1_000_000, checkpoint_interval=1_000_000, eval_interval=1_000_000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "NLM.min_lm.scripts.train", *as_argv(flags)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "ckpt" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    started = lambda: metrics.is_file() and metrics.read_text()  # a record is written: the loop is running
    while not started() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, out
    saved = torch.load(flags["checkpoint_path"], weights_only=False)
    assert f"SIGTERM: stopped after iteration {saved['iteration']}; checkpoint saved" in out
    assert saved["iteration"] >= max(r["iter"] for r in read_metrics(metrics))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device_is_one_line(flags, capsys):
    assert main(as_argv({**flags, "device": "cuda"})) == 2
    assert "CUDA is not available" in capsys.readouterr().err
