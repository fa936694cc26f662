"""The training library: learning, exact resumption, divergence, data checks, batch sampling."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest
import torch
from train_helpers import VOCAB, read_metrics, tiny_flags, train_losses, write_pattern

from NLM.min_lm.errors import UserError
from NLM.min_lm.training import TrainConfig, TrainingDiverged, train
from NLM.min_lm.training import trainer as trainer_module
from NLM.min_lm.training.data import BatchSampler, open_tokens, validation_starts
from NLM.min_lm.transformer import cross_entropy
from NLM.min_lm.transformer.loss import _chunk, _compiled_chunk
from NLM.min_lm.transformer.model import TransformerLM

pytestmark = pytest.mark.usefixtures("one_thread")


def config(tmp_path, tokens, **overrides) -> TrainConfig:
    train_path, val_path = tokens
    flags = tiny_flags(train_tokens=str(train_path), val_tokens=str(val_path),
                       checkpoint_path=str(tmp_path / "run" / "model.pt"))
    return TrainConfig(**{**flags, **overrides})


def test_learns_a_repeating_sequence(tmp_path):
    train_path = write_pattern(tmp_path, "train.npy")
    val_path = write_pattern(tmp_path, "val.npy", repeats=20)
    result = train(config(tmp_path, (train_path, val_path), max_iters=30, lr_max=1e-2, lr_min=1e-3,
                          eval_interval=15))
    assert result.iterations == 30 and not result.interrupted
    assert result.tokens_seen == 30 * 4 * 16 == 30 * result.global_batch_tokens
    assert result.final_val_loss < 0.1 * math.log(VOCAB)  # a uniform guess scores log(VOCAB)
    assert result.best_val_loss == result.final_val_loss
    assert result.checkpoint_path.is_file() and result.best_checkpoint_path.is_file()
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_exactly(tmp_path, tokens):
    """20 iterations straight == 10 iterations, stop (as Ctrl-C does), resume for 10 more: same losses."""
    straight = train(config(tmp_path / "a", tokens))
    straight_losses = train_losses(read_metrics(straight.metrics_path))
    assert sorted(straight_losses) == list(range(1, 21))

    def interrupt_at_10(record):
        if record["iter"] == 10 and "loss" in record:
            signal.raise_signal(signal.SIGINT)  # lands in the trainer's handler, as a real Ctrl-C would

    before = signal.getsignal(signal.SIGINT)  # not always the default: a job started in the background
    first = train(config(tmp_path / "b", tokens), on_record=interrupt_at_10)  # begins with SIGINT ignored
    assert first.interrupted and first.iterations == 10
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored

    second = train(config(tmp_path / "b", tokens, resume=True))
    assert second.iterations == 20 and not second.interrupted
    resumed_records = read_metrics(second.metrics_path)
    assert train_losses(resumed_records) == straight_losses  # bitwise equal floats
    assert [r["iter"] for r in resumed_records] == [r["iter"] for r in read_metrics(straight.metrics_path)]
    assert second.final_val_loss == straight.final_val_loss
    a = torch.load(straight.checkpoint_path, weights_only=False)
    b = torch.load(second.checkpoint_path, weights_only=False)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["sampler_state"] == b["sampler_state"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tokens):
    """Batch 8 in one step == batch 4 accumulated twice: the same windows, the same mean gradient."""
    big = train(config(tmp_path / "big", tokens, batch_size=8, max_iters=5, checkpoint_interval=5))
    accumulated = train(config(tmp_path / "acc", tokens, batch_size=4, grad_accum_steps=2, max_iters=5,
                               checkpoint_interval=5))
    assert big.global_batch_tokens == accumulated.global_batch_tokens == 8 * 16
    big_losses = train_losses(read_metrics(big.metrics_path))
    acc_losses = train_losses(read_metrics(accumulated.metrics_path))
    for it in big_losses:
        assert acc_losses[it] == pytest.approx(big_losses[it], abs=1e-5)


def test_nan_loss_stops_and_leaves_the_last_checkpoint_untouched(tmp_path, tokens):
    cfg = config(tmp_path, tokens, checkpoint_interval=5, eval_interval=100, max_iters=100)
    calls = {"train": 0}
    on_disk = {}

    def poisoned(logits, targets):
        loss = cross_entropy(logits, targets)
        if torch.is_grad_enabled():
            calls["train"] += 1
            if calls["train"] >= 8:  # iteration 8: after the checkpoint of iteration 5
                on_disk.setdefault("bytes", open(cfg.checkpoint_path, "rb").read())
                return loss * float("nan")
        return loss

    expected = r"loss is nan at iteration 8 .*model\.pt still holds iteration 5"
    with pytest.raises(TrainingDiverged, match=expected):
        train(cfg, loss_fn=poisoned)
    assert open(cfg.checkpoint_path, "rb").read() == on_disk["bytes"]
    saved = torch.load(cfg.checkpoint_path, weights_only=False)
    assert saved["iteration"] == 5
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_ids_outside_the_vocabulary_are_refused_before_training(tmp_path, tokens):
    bad = tmp_path / "bad.npy"
    ids = np.zeros(3000, dtype=np.int32)
    ids[2345] = VOCAB
    np.save(bad, ids)
    expected = rf"--val_tokens {bad}: token id {VOCAB} at position 2345 .*--vocab_size"
    with pytest.raises(UserError, match=expected):
        train(config(tmp_path, (tokens[0], bad)))
    assert not (tmp_path / "run").exists()


def test_id_check_scans_in_chunks(tmp_path):
    ids = np.arange(1000, dtype=np.int64) % 50
    ids[777] = -3
    np.save(tmp_path / "t.npy", ids)
    with pytest.raises(UserError, match="token id -3 at position 777"):
        open_tokens(tmp_path / "t.npy", "--train_tokens", 50, 8, chunk=100)
    ids[777] = 0
    np.save(tmp_path / "t.npy", ids)
    tokens = open_tokens(tmp_path / "t.npy", "--train_tokens", 50, 8, chunk=100)
    assert isinstance(tokens, np.memmap)  # mapped, not read into memory


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"hello, not numpy", "not a .npy token array"),
    (np.zeros(5, dtype=np.uint16), "5 tokens is too short for --context_length 16"),
    (np.zeros(100, dtype=np.float32), "expected a 1-D integer array"),
    (np.zeros((10, 10), dtype=np.int32), "expected a 1-D integer array"),
])
def test_bad_token_files_name_the_file_and_flag(tmp_path, content, message):
    path = tmp_path / "tokens.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    with pytest.raises(UserError, match=rf"^--train_tokens {path}: {message}"):
        open_tokens(path, "--train_tokens", VOCAB, 16)


def test_ranks_split_one_global_batch():
    """Two processes with batch B see exactly the windows one process with batch 2B sees, none twice."""
    tokens = np.arange(10_000)
    single = BatchSampler(tokens, 8, 16, seed=3)
    ranks = [BatchSampler(tokens, 4, 16, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        whole = single.next_starts()
        parts = [s.next_starts() for s in ranks]
        assert np.array_equal(np.concatenate(parts), whole)
    val_parts = [validation_starts(tokens, 3, 4, 16, 3, r, 2) for r in range(2)]
    assert np.array_equal(np.concatenate(val_parts, axis=1), validation_starts(tokens, 3, 8, 16, 3))


def test_sampler_state_round_trips_and_windows_shift_by_one():
    tokens = np.arange(1000)
    sampler = BatchSampler(tokens, 4, 16, seed=0)
    sampler.next_starts()
    state = sampler.state()
    expected = sampler.next_starts()
    sampler.next_starts()
    sampler.load_state(state)
    assert np.array_equal(sampler.next_starts(), expected)
    x, y = sampler.next_batch(torch.device("cpu"))
    assert x.dtype == torch.int64 and x.shape == (4, 16)
    assert torch.equal(y, x + 1)  # tokens are 0..999, so the target is the next integer
    assert x.max() + 1 < len(tokens)


def test_config_validation_names_the_flag(tmp_path, tokens):
    with pytest.raises(UserError, match=r"--d_model \(30\) must be divisible by --num_heads \(4\)"):
        config(tmp_path, tokens, d_model=30, num_heads=4)
    with pytest.raises(UserError, match="--max_iters must be a positive integer"):
        config(tmp_path, tokens, max_iters=0)
    assert config(tmp_path, tokens, d_model=32).d_ff == 128  # 8/3 * 32 = 85.3, rounded up to a multiple of 64
    assert config(tmp_path, tokens, d_model=768).d_ff == 2048


def test_resume_refuses_a_checkpoint_of_another_shape(tmp_path, tokens):
    train(config(tmp_path, tokens, max_iters=2))
    with pytest.raises(UserError, match="--resume: .*model.pt has d_model 32, d_ff 128, "
                                        "but the flags give --d_model 64, --d_ff 192$"):
        train(config(tmp_path, tokens, max_iters=4, d_model=64, resume=True))
    with pytest.raises(UserError, match="already at iteration 2; raise --max_iters"):
        train(config(tmp_path, tokens, max_iters=2, resume=True))


def test_resume_refuses_another_rope_theta(tmp_path, tokens):
    """RoPE's base is not in the state dict: only the stored ModelConfig can tell that it changed."""
    train(config(tmp_path, tokens, max_iters=2))
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert saved["model_config"]["rope_theta"] == 10_000.0
    with pytest.raises(UserError, match=r"--resume: .*model.pt has rope_theta 10000.0, "
                                        r"but the flags give --rope_theta 5.0$"):
        train(config(tmp_path, tokens, max_iters=4, rope_theta=5.0, resume=True))
    with pytest.raises(UserError, match=r"has num_layers 2, rope_theta 10000.0, norm_eps 1e-05, but the "
                                        r"flags give --num_layers 3, --rope_theta 5.0, --norm_eps 1e-06$"):
        train(config(tmp_path, tokens, max_iters=4, num_layers=3, rope_theta=5.0, norm_eps=1e-6, resume=True))
    after = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert after["model_config"]["rope_theta"] == 10_000.0 and after["iteration"] == 2


def test_bfloat16_autocast_keeps_float32_weights(tmp_path, tokens):
    result = train(config(tmp_path, tokens, dtype="bfloat16", max_iters=3, eval_interval=3))
    assert math.isfinite(result.final_val_loss)
    saved = torch.load(result.checkpoint_path, weights_only=False)
    assert all(t.dtype == torch.float32 for t in saved["model"].values())


def test_model_options_do_not_change_the_numbers(tmp_path, tokens):
    """Reference attention and activation recomputation are speed/memory switches, not different models."""
    runs = {}
    for name, options in {"sdpa": {}, "reference": {"attn_impl": "reference"},
                          "checkpointed": {"gradient_checkpointing": True}}.items():
        result = train(config(tmp_path / name, tokens, max_iters=3, eval_interval=3, **options))
        runs[name] = train_losses(read_metrics(result.metrics_path))
    for name in ("reference", "checkpointed"):
        assert runs[name] == pytest.approx(runs["sdpa"], abs=1e-5), name


def test_resume_ignores_metrics_logged_after_the_checkpoint(tmp_path, tokens):
    """A crash after iteration 12 leaves lines 11-12 (one cut short) past the checkpoint of iteration 10."""
    first = train(config(tmp_path, tokens, max_iters=10))
    with open(first.metrics_path, "a") as f:
        f.write('{"iter": 11, "loss": 1.0, "lr": 0.1, "tokens_per_s": 1, "elapsed": 1}\n{"iter": 12, "lo')
    second = train(config(tmp_path, tokens, resume=True))
    iters = [r["iter"] for r in read_metrics(second.metrics_path) if "loss" in r]
    assert iters == list(range(1, 21))


def test_init_from_starts_a_new_run_from_given_weights(tmp_path, tokens):
    """Fine-tuning: weights come from the checkpoint; iteration count, optimizer and schedule start over."""
    source = train(config(tmp_path / "src", tokens, max_iters=5))
    weights = torch.load(source.checkpoint_path, weights_only=True)["model"]
    zero_steps = config(tmp_path / "ft", tokens, init_from=str(source.checkpoint_path), max_iters=1,
                        lr_max=0.0, lr_min=0.0, weight_decay=0.0)
    result = train(zero_steps)  # a learning rate of 0 leaves the loaded weights as they are
    assert result.iterations == 1
    tuned = torch.load(result.checkpoint_path, weights_only=True)
    assert tuned["iteration"] == 1
    assert all(torch.equal(tuned["model"][k], v) for k, v in weights.items())
    with pytest.raises(UserError, match="--init_from: .*model.pt has d_model 32, d_ff 128, "
                                        "but the flags give --d_model 64, --d_ff 192$"):
        train(config(tmp_path / "bad", tokens, init_from=str(source.checkpoint_path), d_model=64))
    with pytest.raises(UserError, match="exclude each other"):
        config(tmp_path, tokens, init_from=str(source.checkpoint_path), resume=True)


def test_nan_gradients_with_a_finite_loss_never_reach_a_checkpoint(tmp_path, tokens):
    """The loss stays finite but the update is NaN from iteration 8 on; nothing is read until the
    checkpoint at 10 (log_interval 100): that checkpoint is refused, and the error names the last good one."""
    cfg = config(tmp_path, tokens, checkpoint_interval=5, eval_interval=100, log_interval=100, max_iters=20)
    calls = {"train": 0}

    def nan_gradient(logits, targets):
        loss = cross_entropy(logits, targets)
        if torch.is_grad_enabled():
            calls["train"] += 1
            if calls["train"] >= 8:  # value + sqrt(0): unchanged; gradient 0 * 1/(2 sqrt(0)) = NaN
                return loss + torch.sqrt(logits.sum() * 0.0)
        return loss

    expected = r"gradient norm is nan \(loss [0-9.]+\) at iteration 8 .*model\.pt still holds iteration 5"
    with pytest.raises(TrainingDiverged, match=expected):
        train(cfg, loss_fn=nan_gradient)
    saved = torch.load(cfg.checkpoint_path, weights_only=False)
    assert saved["iteration"] == 5 and calls["train"] == 10
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    assert all(torch.isfinite(t).all() for s in saved["optimizer"]["state"].values() for t in s.values()
               if isinstance(t, torch.Tensor))


def test_the_training_step_never_waits_for_the_device(tmp_path, tokens, monkeypatch):
    """Every way of reading a tensor's value on the host is counted while train_step runs: none may happen.
    (torch.cuda.set_sync_debug_mode would do this on a GPU; on the CPU we count the Python seams.)"""
    reads = []
    stepping = {"now": False}
    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if stepping["now"]:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    step = trainer_module.Trainer.train_step

    def watched_step(self, lr):
        stepping["now"] = True
        try:
            return step(self, lr)
        finally:
            stepping["now"] = False

    monkeypatch.setattr(trainer_module.Trainer, "train_step", watched_step)
    result = train(config(tmp_path, tokens, max_iters=6, grad_accum_steps=2, log_interval=3))
    assert result.iterations == 6 and math.isfinite(result.final_val_loss)
    assert reads == []


def test_compiled_training_equals_eager(tmp_path, tokens, monkeypatch):
    """--compile runs the model and the loss's chunk step through torch.compile; the losses equal eager ones.
    aot_eager traces exactly what inductor would compile but skips its C++ build (minutes on 2 cores);
    benchmarks/bench_model.py compares inductor's numbers."""
    compile_ = torch.compile
    compiled_modules = []

    def compile_without_inductor(model, **options):
        compiled_modules.append(model)
        return compile_(model, backend="aot_eager", **options)

    monkeypatch.setattr(torch, "compile", compile_without_inductor)
    torch._dynamo.reset()
    _compiled_chunk.cache_clear()  # made anew here, with the patched compile (and cleared after)
    eager = train(config(tmp_path / "eager", tokens, max_iters=4, eval_interval=4))
    compiled = train(config(tmp_path / "compiled", tokens, max_iters=4, eval_interval=4, compile=True))
    _compiled_chunk.cache_clear()
    assert compiled_modules == [compiled_modules[0], _chunk]  # the model, then the loss's chunk step
    assert isinstance(compiled_modules[0], TransformerLM)
    eager_losses = train_losses(read_metrics(eager.metrics_path))
    assert train_losses(read_metrics(compiled.metrics_path)) == pytest.approx(eager_losses, abs=1e-5)
    assert compiled.final_val_loss == pytest.approx(eager.final_val_loss, abs=1e-5)
