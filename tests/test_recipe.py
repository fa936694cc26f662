"""The modern recipe's model options and schedule: qk_norm attention against a float64 reference,
zero-initialised projections, the warmup-stable-decay schedule at hand-worked iterations, --recipe presets,
and the trainer with them (gradient accumulation, exact resume, flag errors)."""

from __future__ import annotations

import math
import signal

import pytest
import torch
from train_helpers import as_argv, read_metrics, tiny_flags, train_losses

from NLM.min_lm.errors import UserError
from NLM.min_lm.scripts.train import main as train_main
from NLM.min_lm.training import TrainConfig, train
from NLM.min_lm.training import metrics as metrics_module
from NLM.min_lm.training.config import RECIPES
from NLM.min_lm.training.trainer import make_optimizer
from NLM.min_lm.transformer import (
    ModelConfig,
    MultiHeadSelfAttention,
    TransformerLM,
    load_model,
    save_checkpoint,
)
from NLM.min_lm.transformer.optim import own_rates, param_groups, set_lr, with_own_rates
from NLM.min_lm.transformer.utils import get_lr_cosine_schedule, get_lr_wsd_schedule, lr_at

# --- qk_norm ------------------------------------------------------------------------------------------------


def reference_qk_norm_attention(x, wq, wk, wv, wo, q_gain, k_gain, num_heads, theta, eps):
    """Causal attention with per-head RMSNorm of q and k before RoPE, in float64 with explicit loops."""
    x, wq, wk, wv, wo, q_gain, k_gain = (t.double() for t in (x, wq, wk, wv, wo, q_gain, k_gain))
    T, d = x.shape
    hd = d // num_heads
    out = torch.zeros(T, d, dtype=torch.float64)
    for h in range(num_heads):
        rows = slice(h * hd, (h + 1) * hd)
        q, k, v = x @ wq[rows].T, x @ wk[rows].T, x @ wv[rows].T  # (T, hd)
        q = q / torch.sqrt((q**2).mean(-1, keepdim=True) + eps) * q_gain
        k = k / torch.sqrt((k**2).mean(-1, keepdim=True) + eps) * k_gain
        for vec in (q, k):  # RoPE: rotate each adjacent pair (2i, 2i+1) by pos * theta^(-2i/hd)
            for pos in range(T):
                for i in range(hd // 2):
                    angle = pos * theta ** (-2 * i / hd)
                    a, b = vec[pos, 2 * i].clone(), vec[pos, 2 * i + 1].clone()
                    vec[pos, 2 * i] = a * math.cos(angle) - b * math.sin(angle)
                    vec[pos, 2 * i + 1] = a * math.sin(angle) + b * math.cos(angle)
        scores = q @ k.T / math.sqrt(hd)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        out[:, rows] = torch.softmax(scores, dim=-1) @ v
    return out @ wo.T


@pytest.mark.parametrize("attn_impl", ["reference", "sdpa"])
def test_qk_norm_attention_matches_a_float64_reference(attn_impl):
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(32, 4, max_seq_len=16, theta=10000.0, attn_impl=attn_impl, qk_norm=True,
                                  norm_eps=1e-5)
    with torch.no_grad():  # gains other than 1, so a forgotten gain would show
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(12, 32)
    expected = reference_qk_norm_attention(x, attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight,
                                           attn.output_proj.weight, attn.q_norm.weight, attn.k_norm.weight,
                                           num_heads=4, theta=10000.0, eps=1e-5)
    torch.testing.assert_close(attn(x).double(), expected, atol=2e-5, rtol=1e-5)


def test_qk_norm_adds_two_gains_per_layer_and_decodes_with_the_cache_as_without():
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                          qk_norm=True).eval()
    plain = TransformerLM(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64)
    added = set(model.state_dict()) - set(plain.state_dict())
    assert added == {f"layers.{i}.attn.{n}_norm.weight" for i in range(2) for n in "qk"}
    assert model.layers[0].attn.q_norm.weight.shape == (8,)  # head_dim, shared by the heads
    assert model.config.qk_norm and not plain.config.qk_norm

    ids = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(2)
        steps = [model(ids[:, :6], kv_cache=cache)] + [model(ids[:, t : t + 1], kv_cache=cache)
                                                        for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


# --- zero_init_proj -----------------------------------------------------------------------------------------


def test_zero_init_proj_makes_every_block_start_as_the_identity():
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=50, context_length=16, d_model=32, num_layers=3, num_heads=4, d_ff=64,
                          zero_init_proj=True)
    for layer in model.layers:
        assert not layer.attn.output_proj.weight.any() and not layer.ffn.w2.weight.any()
        assert layer.attn.q_proj.weight.any() and layer.ffn.w1.weight.any()  # the rest is random as usual
    ids = torch.randint(0, 50, (2, 8))
    # blocks add nothing yet, so logits are the head applied to the normalised embeddings
    expected = model.lm_head(model.ln_final(model.token_embeddings(ids)))
    torch.testing.assert_close(model(ids), expected)
    # ...and the zero matrices still get a gradient (their input is not zero), so they learn
    model(ids).sum().backward()
    assert model.layers[0].attn.output_proj.weight.grad.abs().sum() > 0
    assert model.layers[0].ffn.w2.weight.grad.abs().sum() > 0


def test_model_options_live_in_the_config_and_old_checkpoints_load_unchanged(tmp_path):
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                          qk_norm=True, zero_init_proj=True)
    save_checkpoint(model, None, 0, tmp_path / "new.pt")
    loaded, _ = load_model(tmp_path / "new.pt")
    assert loaded.config == model.config and loaded.config.qk_norm
    assert TransformerLM.from_config(model.config).config == model.config

    plain = TransformerLM(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64)
    save_checkpoint(plain, None, 0, tmp_path / "old.pt")
    checkpoint = torch.load(tmp_path / "old.pt", weights_only=True)
    for name in ("qk_norm", "zero_init_proj"):  # a checkpoint written before these options existed
        del checkpoint["model_config"][name]
    torch.save(checkpoint, tmp_path / "old.pt")
    old, _ = load_model(tmp_path / "old.pt")
    assert old.config == ModelConfig(50, 16, 32, 2, 4, 64)
    ids = torch.randint(0, 50, (1, 8))
    torch.testing.assert_close(old(ids), plain.eval()(ids))


# --- the warmup-stable-decay schedule ----------------------------------------------------------------------


@pytest.mark.parametrize("it, expected", [
    (0, 0.0), (5, 0.5), (10, 1.0),   # warmup 10: linear from 0
    (50, 1.0), (79.9, 1.0), (80, 1.0),  # stable until 100 * (1 - 0.2) = 80
    (85.5, 1 - 0.9 * 5.5 / 20),  # a fractional iteration, 5.5 of 20 decay steps from 1 towards 0.1
    (90, 0.55), (99, 1 - 0.9 * 19 / 20), (100, 0.1), (150, 0.1),
])
def test_wsd_at_hand_worked_iterations(it, expected):
    assert get_lr_wsd_schedule(it, 1.0, 0.1, warmup_iters=10, total_iters=100, decay_frac=0.2) == \
        pytest.approx(expected, abs=1e-12)


def test_wsd_edge_cases():
    # no decay: constant until the end, then min; all decay: it starts right after warmup
    assert get_lr_wsd_schedule(99, 1.0, 0.1, 10, 100, decay_frac=0.0) == 1.0
    assert get_lr_wsd_schedule(100, 1.0, 0.1, 10, 100, decay_frac=0.0) == 0.1
    assert get_lr_wsd_schedule(10, 1.0, 0.1, 10, 100, decay_frac=1.0) == 1.0
    assert get_lr_wsd_schedule(55, 1.0, 0.1, 10, 100, decay_frac=1.0) == pytest.approx(0.55)
    assert get_lr_wsd_schedule(0, 1.0, 0.1, 0, 100, decay_frac=0.2) == 1.0  # no warmup


def test_lr_at_selects_the_schedule():
    assert lr_at("cosine", 37.5, 100, 1.0, 0.1, 10) == get_lr_cosine_schedule(37.5, 1.0, 0.1, 10, 100)
    assert lr_at("wsd", 90, 100, 1.0, 0.1, 10, decay_frac=0.2) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'"):
        lr_at("linear", 1, 100, 1.0, 0.1, 10)


# --- --recipe -----------------------------------------------------------------------------------------------


def test_recipes_fill_unset_flags_and_explicit_flags_win():
    base = TrainConfig(train_tokens="t.npy", val_tokens="v.npy")
    assert (base.optimizer, base.qk_norm, base.zero_init_proj, base.lr_schedule) == ("adamw", False, False,
                                                                                     "cosine")
    fast = TrainConfig(train_tokens="t.npy", val_tokens="v.npy", recipe="speedrun")
    assert (fast.optimizer, fast.qk_norm, fast.zero_init_proj, fast.lr_schedule) == ("muon", True, True,
                                                                                     "wsd")
    mixed = TrainConfig(train_tokens="t.npy", val_tokens="v.npy", recipe="speedrun", optimizer="adamw",
                        qk_norm=False, decay_frac=0.5)
    assert (mixed.optimizer, mixed.qk_norm, mixed.zero_init_proj, mixed.decay_frac) == ("adamw", False, True,
                                                                                         0.5)
    assert mixed.to_dict()["optimizer"] == "adamw"  # checkpoints record the values the run used


@pytest.mark.parametrize("change, message", [
    ({"recipe": "fast"}, "--recipe must be one of baseline, speedrun, got 'fast'"),
    ({"optimizer": "sgd"}, "--optimizer must be one of adamw, muon, got 'sgd'"),
    ({"lr_schedule": "linear"}, "--lr_schedule must be one of cosine, wsd, got 'linear'"),
    ({"decay_frac": 1.5}, "--decay_frac must lie in [0, 1], got 1.5"),
    ({"decay_frac": -0.1}, "--decay_frac must lie in [0, 1], got -0.1"),
    ({"muon_lr": -0.02}, "--muon_lr must not be negative, got -0.02"),
    ({"optimizer": "muon", "lr_max": 0.0, "lr_min": 0.0}, "--optimizer muon needs --lr_max > 0"),
    ({"embed_lr": -0.2}, "--embed_lr must not be negative, got -0.2"),
    ({"head_lr": -1.0}, "--head_lr must not be negative, got -1.0"),
    ({"head_lr": 0.01, "lr_max": 0.0, "lr_min": 0.0}, "--head_lr needs --lr_max > 0"),
])
def test_bad_recipe_values_name_the_flag(change, message):
    with pytest.raises(UserError) as info:
        TrainConfig(train_tokens="t.npy", val_tokens="v.npy", **change)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_embedding_and_head_rates_of_their_own():
    """--embed_lr / --head_lr put those two weights in AdamW groups of their own, at their rate times the
    schedule's fraction; without them (baseline) the groups are exactly the seed's, so old states load."""
    torch.manual_seed(0)
    model = TransformerLM(64, 16, 32, 2, 4, 48)
    base = TrainConfig(train_tokens="t.npy", val_tokens="v.npy", lr_max=1e-3)
    assert (base.embed_lr, base.head_lr) == (None, None)
    groups = make_optimizer(model, base).param_groups
    assert [len(g["params"]) for g in groups] == [len(g["params"]) for g in param_groups(model, 0.1)]
    for recipe in ("baseline", "speedrun"):
        c = TrainConfig(train_tokens="t.npy", val_tokens="v.npy", lr_max=1e-3, recipe=recipe, embed_lr=0.2,
                        head_lr=0.01)
        optimizer = make_optimizer(model, c)
        set_lr(optimizer, 0.5e-3)  # half-way down a schedule: every group at half its peak
        rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
        assert rate[id(model.token_embeddings.weight)] == pytest.approx(0.1)
        assert rate[id(model.lm_head.weight)] == pytest.approx(0.005)
        assert rate[id(model.ln_final.weight)] == pytest.approx(0.5e-3)
        assert decay[id(model.token_embeddings.weight)] == 0 and decay[id(model.lm_head.weight)] == 0.1
        assert len(rate) == len(list(model.parameters()))  # every weight in exactly one group
    speedrun = TrainConfig(train_tokens="t.npy", val_tokens="v.npy", recipe="speedrun")
    preset = RECIPES["speedrun"]
    assert (speedrun.embed_lr, speedrun.head_lr) == (preset.embed_lr, preset.head_lr) != (None, None)
    with pytest.raises(ValueError, match="lr, which must then be positive"):
        with_own_rates(param_groups(model, 0.1), 0.0, own_rates(model, 0.2, None))


# --- the trainer with the recipe: accumulation, exact resume, flags -----------------------------------------


def config(tmp_path, tokens, **overrides) -> TrainConfig:
    train_path, val_path = tokens
    flags = tiny_flags(train_tokens=str(train_path), val_tokens=str(val_path),
                       checkpoint_path=str(tmp_path / "run" / "model.pt"), recipe="speedrun", muon_lr=0.05)
    return TrainConfig(**{**flags, **overrides})


@pytest.mark.usefixtures("one_thread")
def test_muon_with_gradient_accumulation_matches_one_big_batch(tmp_path, tokens):
    big = train(config(tmp_path / "big", tokens, batch_size=8, max_iters=5, checkpoint_interval=5))
    accumulated = train(config(tmp_path / "acc", tokens, batch_size=4, grad_accum_steps=2, max_iters=5,
                               checkpoint_interval=5))
    big_losses = train_losses(read_metrics(big.metrics_path))
    acc_losses = train_losses(read_metrics(accumulated.metrics_path))
    assert len(big_losses) == 5
    for it in big_losses:
        assert acc_losses[it] == pytest.approx(big_losses[it], abs=1e-5)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("overrides", [{}, {"optimizer": "adamw"}, {"lr_schedule": "cosine"}],
                         ids=["muon+wsd", "adamw+wsd", "muon+cosine"])
def test_resume_with_muon_and_wsd_continues_exactly(tmp_path, tokens, monkeypatch, overrides):
    """20 iterations straight == 10, stop (as Ctrl-C does), resume for 10 more: bitwise the same losses.
    The WSD decay (the last 30% of 20) falls in the resumed half."""
    straight = train(config(tmp_path / "a", tokens, **overrides))
    write = metrics_module.MetricsLog.write

    def write_then_interrupt(self, record):
        write(self, record)
        if record["iter"] == 10 and "loss" in record:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(metrics_module.MetricsLog, "write", write_then_interrupt)
    first = train(config(tmp_path / "b", tokens, **overrides))
    assert first.interrupted and first.iterations == 10
    monkeypatch.setattr(metrics_module.MetricsLog, "write", write)
    second = train(config(tmp_path / "b", tokens, resume=True, **overrides))
    straight_records, resumed_records = read_metrics(straight.metrics_path), read_metrics(second.metrics_path)
    assert train_losses(resumed_records) == train_losses(straight_records)  # bitwise equal floats
    lrs = {r["iter"]: r["lr"] for r in straight_records if "lr" in r}
    if "lr_schedule" not in overrides:  # wsd: stable, then decaying (record i holds step i's lr, at it = i-1)
        assert lrs[14] == lrs[15] == 3e-3 and lrs[20] < lrs[16] < 3e-3
    a = torch.load(straight.checkpoint_path, weights_only=True)
    b = torch.load(second.checkpoint_path, weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


@pytest.mark.usefixtures("one_thread")
def test_resume_refuses_another_optimizer_or_qk_norm_but_not_another_init(tmp_path, tokens):
    train(config(tmp_path, tokens, max_iters=2))
    with pytest.raises(UserError, match="trained with --optimizer muon, but --optimizer is adamw"):
        train(config(tmp_path, tokens, max_iters=4, optimizer="adamw", resume=True))
    with pytest.raises(UserError, match="has qk_norm True, but the flags give --qk_norm False"):
        train(config(tmp_path, tokens, max_iters=4, qk_norm=False, resume=True))
    # zero_init_proj only picks starting weights: fine-tuning from the checkpoint does not care
    tuned = train(config(tmp_path / "tuned", tokens, max_iters=2, zero_init_proj=False,
                         init_from=str(tmp_path / "run" / "model.pt")))
    assert tuned.iterations == 2


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "sgd"], "argument --optimizer: invalid choice: 'sgd'"),
    (["--lr_schedule", "linear"], "argument --lr_schedule: invalid choice: 'linear'"),
    (["--recipe", "fast"], "argument --recipe: invalid choice: 'fast'"),
    (["--muon_lr", "fast"], "argument --muon_lr: invalid float value: 'fast'"),
    (["--muon_lr", "-1"], "error: --muon_lr must not be negative, got -1.0"),
    (["--decay_frac", "2"], "error: --decay_frac must lie in [0, 1], got 2.0"),
    (["--embed_lr", "nan"], "error: --embed_lr"),
    (["--head_lr", "-0.5"], "error: --head_lr must not be negative, got -0.5"),
    (["--qk_norm", "yes"], "unrecognized arguments: yes"),
])
def test_bad_recipe_flags_are_one_line_exit_2(tmp_path, tokens, capsys, argv, message):
    flags = as_argv(tiny_flags(train_tokens=str(tokens[0]), val_tokens=str(tokens[1]),
                               checkpoint_path=str(tmp_path / "ckpt" / "model.pt")))
    try:
        status = train_main(flags + argv)
    except SystemExit as e:  # argparse's own errors exit from inside
        status = e.code
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "ckpt").exists()
