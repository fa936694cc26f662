"""Data-parallel training: torchrun's environment, device choice, DDP wrapping, and real 2-rank jobs.

The multi-process tests launch torchrun on the CPU (gloo backend) with 2 ranks, one thread each.
The NCCL/GPU path is the same code with another backend and is not exercised here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from NLM.min_lm.device import resolve_device
from NLM.min_lm.distributed import (
    DistContext,
    all_reduce_mean,
    context_from_env,
    setup_distributed,
    sync_context,
    teardown,
    wrap_model,
)
from NLM.min_lm.errors import UserError

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
TORCHRUN_ENV = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
TWO_RANKS = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "host", "MASTER_PORT": "29500"}


# --- single process: reading torchrun's environment -------------------------------------------------------


def test_no_torchrun_variables_means_one_process():
    ctx = context_from_env({"PATH": "/usr/bin"})
    assert ctx == DistContext(rank=0, local_rank=0, world_size=1)
    assert ctx.is_main and not ctx.enabled


def test_torchrun_variables_are_read():
    ctx = context_from_env(TWO_RANKS)
    assert (ctx.rank, ctx.local_rank, ctx.world_size) == (1, 1, 2)
    assert ctx.enabled and not ctx.is_main


def test_second_node_rank_has_its_own_local_rank():
    ctx = context_from_env({**TWO_RANKS, "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"})
    assert (ctx.rank, ctx.local_rank, ctx.world_size) == (5, 1, 8)


def test_torchrun_with_one_process_is_not_distributed():
    ctx = context_from_env({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    assert ctx == DistContext() and not ctx.enabled


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "0"}, "but not LOCAL_RANK, WORLD_SIZE"),
        ({"RANK": "0", "LOCAL_RANK": "0"}, "but not WORLD_SIZE"),
        ({"WORLD_SIZE": "2"}, "but not RANK, LOCAL_RANK"),
        ({**TWO_RANKS, "WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({**TWO_RANKS, "RANK": "2"}, "RANK=2 must lie in 0..1"),
        ({**TWO_RANKS, "RANK": "-1"}, "RANK=-1 must lie in 0..1"),
        ({**TWO_RANKS, "WORLD_SIZE": "0", "RANK": "0", "LOCAL_RANK": "0"}, "WORLD_SIZE=0 must be at least 1"),
        ({**TWO_RANKS, "LOCAL_RANK": "3"}, "LOCAL_RANK=3 must lie in 0..1"),
        ({k: v for k, v in TWO_RANKS.items() if k != "MASTER_ADDR"}, "MASTER_ADDR not set"),
        ({**TWO_RANKS, "MASTER_ADDR": "", "MASTER_PORT": ""}, "MASTER_ADDR and MASTER_PORT not set"),
    ],
)
def test_inconsistent_environment_is_a_one_line_user_error(env, message):
    with pytest.raises(UserError, match=message) as info:
        context_from_env(env)
    assert "\n" not in str(info.value)


# --- single process: choosing the device -------------------------------------------------------------------


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_auto_falls_back_to_cpu(no_accelerator):
    assert resolve_device("auto", DistContext()) == torch.device("cpu")


def test_auto_prefers_mps_over_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto", DistContext()) == torch.device("mps")


def test_auto_prefers_cuda_and_each_rank_takes_its_local_gpu(four_gpus):
    assert resolve_device("auto", DistContext()) == torch.device("cuda")
    assert resolve_device("auto", DistContext(rank=6, local_rank=2, world_size=8)) == torch.device("cuda", 2)
    assert resolve_device("cuda", DistContext(rank=3, local_rank=3, world_size=4)) == torch.device("cuda", 3)
    assert resolve_device("cuda:1", DistContext()) == torch.device("cuda", 1)


@pytest.mark.parametrize(
    ("device", "ctx", "message"),
    [
        ("cuda:1", DistContext(rank=0, local_rank=0, world_size=2), "each rank uses cuda:LOCAL_RANK"),
        ("cuda", DistContext(rank=4, local_rank=4, world_size=8), "has 4 GPU.*more processes per node"),
        ("cuda:7", DistContext(), "has 4 GPU"),
    ],
)
def test_bad_gpu_choice_is_a_user_error(four_gpus, device, ctx, message):
    with pytest.raises(UserError, match=message):
        resolve_device(device, ctx)


@pytest.mark.parametrize(
    ("device", "message"),
    [("cuda", "CUDA is not available"), ("mps", "MPS is not available"), ("gpu0", "not a device")],
)
def test_missing_or_unknown_device_is_a_user_error(no_accelerator, device, message):
    with pytest.raises(UserError, match=message):
        resolve_device(device, DistContext())


def test_mps_cannot_run_several_ranks(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(UserError, match="several ranks needs --device cuda or cpu"):
        resolve_device("mps", DistContext(rank=0, local_rank=0, world_size=2))


# --- single process: setup and the no-op helpers -----------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def test_setup_without_torchrun_joins_no_group(clean_env):
    ctx, device = setup_distributed("cpu")
    assert ctx == DistContext() and device == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    teardown(ctx)
    teardown(ctx)  # safe twice


def test_teardown_frees_models_left_in_reference_cycles_before_leaving_the_group(monkeypatch):
    """A DDP model freed after its group is destroyed can hang the exiting process, so a finished trainer
    that only a reference cycle keeps alive must be gone by the time the group is destroyed."""
    model = nn.Linear(2, 2)
    model.cycle = [model]  # garbage once dropped, but only the cycle collector frees it
    alive = weakref.ref(model)
    del model
    seen_alive = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)

    def destroy() -> None:
        seen_alive.append(alive() is not None)

    monkeypatch.setattr(torch.distributed, "destroy_process_group", destroy)
    teardown(DistContext(rank=0, local_rank=0, world_size=2))
    assert seen_alive == [False]


def test_setup_rejects_a_half_set_environment(clean_env, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="RANK but not LOCAL_RANK, WORLD_SIZE"):
        setup_distributed("cpu")


def test_single_process_helpers_change_nothing():
    ctx, device = DistContext(), torch.device("cpu")
    model = nn.Linear(3, 2)
    assert wrap_model(model, ctx, device) is model
    for sync in (False, True):  # nn.Linear has no no_sync(): calling it would fail
        with sync_context(model, ctx, sync=sync):
            model(torch.ones(1, 3)).sum().backward()
    mean = all_reduce_mean(torch.tensor(2.5).item(), ctx, device)
    assert mean == 2.5 and type(mean) is float


# --- two real ranks under torchrun (CPU, gloo) -------------------------------------------------------------


def torchrun_command(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def torchrun_env() -> dict[str, str]:
    """Our environment minus torchrun's variables (pytest may run under torchrun); one thread per rank."""
    return {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV} | {"OMP_NUM_THREADS": "1"}


def torchrun(*args: str, nproc: int = 2, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run `torchrun --standalone --nproc_per_node nproc ARGS` from the repository root.

    `timeout` only guards against a hang; a healthy job finishes in a few seconds.
    """
    return subprocess.run(torchrun_command(*args, nproc=nproc), cwd=REPO_ROOT, env=torchrun_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_ddp_keeps_ranks_identical_and_equal_to_one_process_on_the_whole_batch(tmp_path):
    result = torchrun(str(TESTS_DIR / "distributed_worker.py"), "train", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    reference = torch.load(tmp_path / "reference.pt")
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name  # bit-identical copies
        torch.testing.assert_close(value, reference[name], rtol=0, atol=1e-6)
    assert [float((tmp_path / f"mean{r}.txt").read_text()) for r in (0, 1)] == [1.5, 1.5]


def test_a_failing_rank_ends_the_whole_job(tmp_path):
    result = torchrun(str(TESTS_DIR / "distributed_worker.py"), "fail", str(tmp_path), timeout=60)
    assert result.returncode != 0
    assert "rank 1 failed on purpose" in result.stdout + result.stderr


# --- the trainer under two ranks ----------------------------------------------------------------------------

# A tiny model and a constant learning rate (warmup 0, lr_min = lr_max), so a run of 10 iterations resumed to
# 20 follows the same schedule as a run of 20; log_interval 1 records every iteration's loss; 2 micro-steps
# per iteration, so DDP's no_sync path is part of every run.
TINY_RUN = dict(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2, grad_accum_steps=2,
                eval_interval=10, eval_iters=2, log_interval=1, checkpoint_interval=10, warmup_iters=0,
                lr_max=1e-2, lr_min=1e-2, seed=7, device="cpu", quiet=True,
                compile=False, dtype="float32")  # explicit: auto would compile, minutes per rank on 2 cores
PER_RANK_BATCH = 2


@pytest.fixture(scope="module")
def token_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    for split, length in (("train", 4000), ("val", 1000)):  # a walk of +1/+2 steps: learnable in a few steps
        walk = np.cumsum(rng.integers(1, 3, length)) % TINY_RUN["vocab_size"]
        np.save(folder / f"{split}.npy", walk.astype(np.uint16))
    return {"train_tokens": str(folder / "train.npy"), "val_tokens": str(folder / "val.npy")}


def train_flags(token_files: dict[str, str], run_dir: Path, **overrides) -> list[str]:
    """The command line of a tiny run writing into `run_dir`."""
    options = {**TINY_RUN, **token_files, "batch_size": PER_RANK_BATCH, "max_iters": 20,
               "checkpoint_path": str(run_dir / "model.pt"), **overrides}
    flags = []
    for name, value in options.items():
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:
            flags += [f"--{name}", str(value)]
    return flags


def torchrun_train(flags: list[str]) -> None:
    result = torchrun("-m", "NLM.min_lm.scripts.train", *flags)
    assert result.returncode == 0, result.stderr[-3000:]


def metrics(run_dir: Path) -> tuple[list[float], list[float]]:
    """Training losses (one per iteration) and validation losses from metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in records if "loss" in r]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    return train, val


@pytest.fixture(scope="module")
def two_rank_run(token_files, tmp_path_factory) -> Path:
    """20 iterations on 2 ranks of batch 2: the run the other trainer tests compare against."""
    run_dir = tmp_path_factory.mktemp("two_ranks")
    torchrun_train(train_flags(token_files, run_dir))
    return run_dir


def train_in_this_process(token_files: dict[str, str], run_dir: Path, **overrides) -> None:
    """A one-process run with the 2-rank runs' global batch."""
    from NLM.min_lm.training.config import TrainConfig
    from NLM.min_lm.training.trainer import train

    train(TrainConfig(**{**TINY_RUN, **token_files, "batch_size": 2 * PER_RANK_BATCH, "max_iters": 20,
                         "checkpoint_path": str(run_dir / "model.pt"), **overrides}))


def test_two_ranks_train_like_one_process_with_the_global_batch(token_files, two_rank_run, tmp_path):
    train_in_this_process(token_files, tmp_path)
    one_train, one_val = metrics(tmp_path)
    two_train, two_val = metrics(two_rank_run)
    assert len(two_train) == 20 and len(two_val) == 2
    np.testing.assert_allclose(two_train, one_train, rtol=0, atol=1e-5)
    np.testing.assert_allclose(two_val, one_val, rtol=0, atol=1e-5)
    assert one_val[-1] < one_val[0] < one_train[0]  # it learns: the curves compared are not flat


@pytest.fixture(scope="module")
def first_half(token_files, tmp_path_factory) -> Path:
    """The first 10 of those 20 iterations, on 2 ranks; tests resume copies of it."""
    run_dir = tmp_path_factory.mktemp("first_half")
    torchrun_train(train_flags(token_files, run_dir, max_iters=10))
    return run_dir


def test_resume_under_two_ranks_continues_the_same_run(token_files, two_rank_run, first_half, tmp_path):
    shutil.copytree(first_half, tmp_path, dirs_exist_ok=True)
    torchrun_train(train_flags(token_files, tmp_path, max_iters=20, resume=True))
    resumed_train, resumed_val = metrics(tmp_path)
    straight_train, straight_val = metrics(two_rank_run)
    np.testing.assert_allclose(resumed_train, straight_train, rtol=0, atol=1e-5)
    np.testing.assert_allclose(resumed_val, straight_val, rtol=0, atol=1e-5)


def test_a_two_rank_checkpoint_resumes_in_one_process(token_files, two_rank_run, first_half, tmp_path):
    """Same global batch, another number of processes: the run goes on as if nothing had changed."""
    shutil.copytree(first_half, tmp_path, dirs_exist_ok=True)
    train_in_this_process(token_files, tmp_path, resume=True)
    np.testing.assert_allclose(metrics(tmp_path)[0], metrics(two_rank_run)[0], rtol=0, atol=1e-5)


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the processes torchrun started (read from /proc: their RANK variable)."""
    children = []
    for task in Path(f"/proc/{launcher_pid}/task").iterdir():
        children += (task / "children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        ranks.update({int(v[5:]): pid for v in env if v.startswith(b"RANK=")})
    return ranks


@contextlib.contextmanager
def endless_two_rank_run(token_files: dict[str, str], run_dir: Path) -> Iterator[subprocess.Popen]:
    """A 2-rank run with no end in sight, in its own session (like a job in a terminal), yielded once it
    has logged its first iteration; whatever is left of it is killed afterwards."""
    flags = train_flags(token_files, run_dir, max_iters=1_000_000, eval_interval=1_000_000,
                        checkpoint_interval=1_000_000)
    with subprocess.Popen(torchrun_command("-m", "NLM.min_lm.scripts.train", *flags), cwd=REPO_ROOT,
                          env=torchrun_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as launcher:
        try:
            metrics_file = run_dir / "metrics.jsonl"
            while not (metrics_file.is_file() and metrics_file.read_text()):
                assert launcher.poll() is None, launcher.stdout.read()
                time.sleep(0.1)
            yield launcher
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks' processes through /proc")
def test_a_rank_killed_mid_training_ends_the_job(token_files, tmp_path):
    """Like a rank taken by the out-of-memory killer: rank 0, waiting for it, must fail too, not hang."""
    with endless_two_rank_run(token_files, tmp_path) as launcher:
        os.kill(worker_pids(launcher.pid)[1], signal.SIGKILL)
        output, _ = launcher.communicate(timeout=60)
    assert launcher.returncode != 0
    assert "SIGKILL" in output, output[-3000:]


def test_ctrl_c_stops_every_rank_and_saves_once(token_files, tmp_path):
    with endless_two_rank_run(token_files, tmp_path) as launcher:
        os.killpg(launcher.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches torchrun and every rank
        output, _ = launcher.communicate(timeout=60)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["iteration"]
    assert f"stopped after iteration {saved}; checkpoint saved" in output, output[-3000:]
    assert len(metrics(tmp_path)[0]) == saved  # metrics.jsonl and the checkpoint tell the same history


def test_a_time_budget_stops_every_rank_after_rank_0s_iteration(token_files, tmp_path):
    """Rank 1's clock runs 10x faster than rank 0's: on its own it would stop after 4 iterations, rank 0
    after 12 (the clocks are compared every log_interval = 4 iterations: 48 s at 8, 72 s at 12, over the
    minute). Both follow rank 0, or the job would hang in mismatched collectives."""
    config = {**TINY_RUN, **token_files, "batch_size": PER_RANK_BATCH, "max_iters": 1000, "max_minutes": 1.0,
              "log_interval": 4, "checkpoint_path": str(tmp_path / "model.pt")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = torchrun(str(TESTS_DIR / "distributed_worker.py"), "budget", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(tmp_path / f"iterations{r}.txt").read_text() for r in (0, 1)] == ["12", "12"]
    assert torch.load(tmp_path / "model.pt", weights_only=True)["elapsed"] == 72.0


def test_a_user_mistake_under_torchrun_is_one_error_line_per_rank(token_files, tmp_path):
    missing = tmp_path / "missing.npy"
    flags = train_flags({**token_files, "val_tokens": str(missing)}, tmp_path, max_iters=2)
    result = torchrun("-m", "NLM.min_lm.scripts.train", *flags, timeout=60)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all(f"--val_tokens {missing}: no such file" in line for line in errors)
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr
    assert not (tmp_path / "model.pt").exists()


def test_two_ranks_with_muon_train_like_one_process_with_the_global_batch(token_files, tmp_path):
    """Muon orthogonalises the all-reduced gradient: every rank computes the same update, which is the one
    a single process computes from the whole batch. (The speedrun recipe: Muon, qk_norm, zero-init, WSD.)"""
    speedrun = {"recipe": "speedrun", "muon_lr": 0.05}
    torchrun_train(train_flags(token_files, tmp_path / "two", **speedrun))
    train_in_this_process(token_files, tmp_path / "one", **speedrun)
    one_train, one_val = metrics(tmp_path / "one")
    two_train, two_val = metrics(tmp_path / "two")
    assert len(two_train) == 20 and len(two_val) == 2
    np.testing.assert_allclose(two_train, one_train, rtol=0, atol=1e-5)
    np.testing.assert_allclose(two_val, one_val, rtol=0, atol=1e-5)
    assert one_val[-1] < one_val[0] < one_train[0]
    saved = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    assert saved["train_config"]["optimizer"] == "muon" and len(saved["optimizer"]["optimizers"]) == 2
