"""Shared fixtures. The corpora live outside the repo: $MINLM_TEST_DATA, default ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from train_helpers import write_tokens

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MINLM_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared test corpora; tests that need them skip (with the reason) where they are absent."""
    if not (DATA_DIR / "gpt2_vocab.json").is_file():
        pytest.skip(f"test corpora not found in {DATA_DIR} (set MINLM_TEST_DATA)")
    return DATA_DIR


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread, and parallel test runs then don't oversubscribe the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tokens(tmp_path):
    """A tiny training and validation token file pair (the trainer tests' data)."""
    return write_tokens(tmp_path, "train.npy"), write_tokens(tmp_path, "val.npy", n=1000, seed=1)
