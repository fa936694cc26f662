"""The quickstart command: --tiny defaults, one-line errors, and `--tiny` end to end as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from NLM.min_lm.errors import UserError
from NLM.min_lm.quickstart.pipeline import train_config
from NLM.min_lm.scripts.quickstart import QuickstartConfig, main
from NLM.min_lm.tokenization import END_OF_TEXT

RUN_FILES = ["train.txt", "valid.txt", "train_vocab.json", "train_merges.txt", "train.npy", "valid.npy",
             "model.pt", "model_best.pt", "metrics.jsonl", "loss.png", "samples.txt", "summary.json"]


def test_tiny_sizes_are_defaults_that_flags_override():
    tiny = QuickstartConfig(tiny=True, d_model=96)
    assert (tiny.d_model, tiny.max_bytes, tiny.vocab_size) == (96, 300_000, 512)
    assert QuickstartConfig().vocab_size == 4096
    with pytest.raises(UserError, match="--max_iters"):
        QuickstartConfig(max_iters=0)
    with pytest.raises(UserError, match="--minutes must be at least 0"):
        QuickstartConfig(minutes=-1)


def test_the_default_run_is_time_budgeted_and_tiny_is_not(tmp_path):
    default = train_config(QuickstartConfig(), 4096, tmp_path)
    assert default.max_minutes == 5.0 and default.max_iters == 100_000  # the iterations only cap it
    assert default.warmup_iters == 5_000 and default.eval_interval == 100  # warmup: 5% of the run
    tiny = train_config(QuickstartConfig(tiny=True), 512, tmp_path)
    assert tiny.max_minutes is None and (tiny.max_iters, tiny.eval_interval) == (150, 15)
    assert train_config(QuickstartConfig(minutes=0), 4096, tmp_path).max_minutes is None


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--data", "does/not/exist.txt"], "does/not/exist.txt"),
        (["--vocab_size", "100"], "--vocab_size"),
        (["--top_p", "0"], "--top_p"),
        (["--d_model", "100", "--num_heads", "3"], "--d_model"),  # caught before any stage runs
    ],
)
def test_user_mistakes_are_one_line_exit_2(tmp_path, capsys, argv, expected):
    try:
        code = main([*argv, "--out_dir", str(tmp_path / "run"), "--no-progress"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err


def test_tiny_quickstart_end_to_end(tmp_path):
    out_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "NLM.min_lm.cli", "quickstart", "--tiny", "--out_dir", str(out_dir)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in RUN_FILES:
        assert (out_dir / name).is_file() and (out_dir / name).stat().st_size > 0, name
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["best_val_loss"] < summary["valid_unigram_entropy"] - 0.5
    samples = (out_dir / "samples.txt").read_text(encoding="utf-8")
    assert samples.count("--- sample") == 3 and len(samples) > 200
    assert "unigram entropy" in result.stdout and "val loss" in result.stdout
    assert all(f"[{i}/5]" in result.stdout for i in range(1, 6))


def test_quickstart_on_user_data(tmp_path, capsys):
    data = tmp_path / "story.txt"
    data.write_text(END_OF_TEXT.join(f"Story {i}: the cat sat on mat number {i}.\n" * 3 for i in range(200)))
    out_dir = tmp_path / "run"
    argv = ["--data", str(data), "--out_dir", str(out_dir), "--tiny", "--max_iters", "20", "--d_model", "32",
            "--num_samples", "1", "--sample_tokens", "10", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["corpus"] == "1 file(s) from --data" and summary["iterations"] == 20
    assert (out_dir / "valid.txt").read_text().startswith("Story ")
    assert Path(summary["files"]["checkpoint"]).is_file()


def test_quickstart_stops_when_its_minutes_are_up(tmp_path):
    data = tmp_path / "story.txt"
    data.write_text(END_OF_TEXT.join(f"Story {i}: the cat sat on mat number {i}.\n" * 3 for i in range(200)))
    out_dir = tmp_path / "run"
    argv = ["--data", str(data), "--out_dir", str(out_dir), "--tiny", "--minutes", "0.01", "--max_iters",
            "1000000", "--d_model", "32", "--num_samples", "1", "--sample_tokens", "5", "--no-progress",
            "--device", "cpu"]
    assert main(argv) == 0
    summary = json.loads((out_dir / "summary.json").read_text())
    assert 0 < summary["iterations"] < 1_000_000 and summary["time_budget_minutes"] == 0.01
    assert summary["train_seconds"] >= 0.6 and summary["final_val_loss"] is not None
    assert summary["tokens_seen"] == summary["iterations"] * 16 * 64
