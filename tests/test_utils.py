"""cross_entropy, LR schedule, gradient clipping, get_batch and checkpoints."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from NLM.min_lm.errors import UserError
from NLM.min_lm.transformer import (
    AdamW,
    TransformerLM,
    cross_entropy,
    get_batch,
    get_lr_cosine_schedule,
    gradient_clipping,
    load_checkpoint,
    load_model,
    save_checkpoint,
)


def test_cross_entropy_matches_torch_over_leading_dims():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 3, 11), torch.randint(0, 11, (2, 3))
    torch.testing.assert_close(
        cross_entropy(logits, targets), F.cross_entropy(logits.reshape(-1, 11), targets.ravel())
    )


def test_cross_entropy_is_stable_for_huge_logits():
    torch.manual_seed(0)
    logits, targets = torch.randn(8, 100) * 1e4, torch.randint(0, 100, (8,))
    ours = cross_entropy(logits, targets)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, F.cross_entropy(logits, targets))
    bf16 = torch.randn(4, 1000, dtype=torch.bfloat16) * 1e3
    t = torch.randint(0, 1000, (4,))
    torch.testing.assert_close(cross_entropy(bf16, t), F.cross_entropy(bf16.float(), t))


def test_cross_entropy_gradient_matches_torch():
    logits = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (5,))
    (g_ours,) = torch.autograd.grad(cross_entropy(logits, targets), logits)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(logits, targets), logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_cosine_schedule_hand_worked_values():
    lr = lambda it: get_lr_cosine_schedule(it, 1.0, 0.1, warmup_iters=10, cosine_cycle_iters=110)
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.5)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55)  # halfway: cos(pi/2) = 0 -> (max + min) / 2
    assert lr(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr(110) == pytest.approx(0.1)
    assert lr(1000) == 0.1
    assert get_lr_cosine_schedule(3, 1.0, 0.1, 0, 0) == 0.1


@pytest.mark.parametrize("foreach", [True, False])
def test_gradient_clipping_matches_torch(foreach):
    torch.manual_seed(0)
    for max_norm in (0.01, 1e3):  # clipped, and left alone
        ps = [torch.nn.Parameter(torch.randn(s)) for s in [(3, 4), (5,), (2, 2)]]
        qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        for p, q in zip(ps, qs, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        frozen = torch.nn.Parameter(torch.randn(3))  # no grad: ignored
        norm = gradient_clipping([*ps, frozen], max_norm, foreach=foreach)
        ref_norm = torch.nn.utils.clip_grad_norm_(qs, max_norm)
        torch.testing.assert_close(norm, ref_norm)
        for p, q in zip(ps, qs, strict=True):
            torch.testing.assert_close(p.grad, q.grad)


def test_get_batch_on_memmap(tmp_path):
    path = tmp_path / "tokens.bin"
    data = np.arange(1000, dtype=np.uint16)
    data.tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    x, y = get_batch(tokens, batch_size=16, context_length=32, device="cpu")
    assert x.shape == y.shape == (16, 32)
    assert x.dtype == y.dtype == torch.long and x.device.type == "cpu"
    torch.testing.assert_close(y, x + 1)  # consecutive ids: targets are the inputs shifted by one
    assert (x[:, 0] <= 1000 - 33).all()
    assert len(set(x[:, 0].tolist())) > 1

    a = get_batch(tokens, 4, 8, "cpu", generator=np.random.default_rng(7))
    b = get_batch(tokens, 4, 8, "cpu", generator=np.random.default_rng(7))
    c = get_batch(tokens, 4, 8, "cpu", generator=torch.Generator().manual_seed(7))
    d = get_batch(tokens, 4, 8, "cpu", generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(c[0], d[0])


def test_get_batch_covers_every_start_and_rejects_short_data():
    data = np.arange(10, dtype=np.int32)
    x, _ = get_batch(data, 500, 9, "cpu")
    assert set(x[:, 0].tolist()) == {0}
    x, _ = get_batch(data, 500, 5, "cpu", generator=np.random.default_rng(0))
    assert set(x[:, 0].tolist()) == {0, 1, 2, 3, 4}
    with pytest.raises(ValueError, match="too short"):
        get_batch(data, 2, 10, "cpu")


def tiny_lm(seed=0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(vocab_size=30, context_length=16, d_model=16, num_layers=2, num_heads=2, d_ff=32)


def train_steps(model, optimizer, data, k):
    """k steps whose batches come from the global torch RNG (so restoring RNG state matters)."""
    losses = []
    for _ in range(k):
        x, y = get_batch(data, 4, 16, "cpu")
        loss = cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_checkpoint_resume_is_bit_identical(tmp_path):
    data = np.random.default_rng(0).integers(0, 30, 500).astype(np.uint16)
    model = tiny_lm()
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    torch.manual_seed(1)
    train_steps(model, optimizer, data, 3)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, optimizer, 3, path, train_config={"lr": 0.01, "name": "x"})
    continued = train_steps(model, optimizer, data, 3)

    fresh = tiny_lm(seed=123)
    fresh_opt = AdamW(fresh.parameters(), lr=1e-2, weight_decay=0.1)
    torch.manual_seed(999)
    assert load_checkpoint(path, fresh, fresh_opt) == 3
    resumed = train_steps(fresh, fresh_opt, data, 3)
    assert resumed == continued
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)

    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["train_config"] == {"lr": 0.01, "name": "x"}
    assert checkpoint["model_config"]["d_model"] == 16


def test_checkpoint_restores_python_and_numpy_rng(tmp_path):
    model = tiny_lm()
    random.seed(5)
    np.random.seed(5)
    save_checkpoint(model, None, 0, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    load_checkpoint(tmp_path / "c.pt", tiny_lm(), None)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_checkpoint_from_compiled_model_has_plain_keys(tmp_path):
    model = tiny_lm()
    compiled = torch.compile(model, backend="eager")
    save_checkpoint(compiled, None, 7, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)["model"]
    assert list(state) == list(model.state_dict())
    other = torch.compile(tiny_lm(seed=1), backend="eager")
    assert load_checkpoint(tmp_path / "c.pt", other, None) == 7
    assert torch.equal(other._orig_mod.lm_head.weight, model.lm_head.weight)


def test_load_model_rebuilds_from_stored_config(tmp_path):
    model = tiny_lm()
    save_checkpoint(model, AdamW(model.parameters()), 11, tmp_path / "c.pt", note="hi")
    loaded, checkpoint = load_model(tmp_path / "c.pt", device="cpu")
    assert loaded.config == model.config and not loaded.training
    assert checkpoint["iteration"] == 11 and checkpoint["note"] == "hi"
    ids = torch.randint(0, 30, (2, 10))
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    loaded64, _ = load_model(tmp_path / "c.pt", device="cpu", dtype=torch.float64, attn_impl="reference")
    assert loaded64.lm_head.weight.dtype == torch.float64


def test_bad_checkpoints_raise_user_error_naming_the_file(tmp_path):
    model = tiny_lm()
    good = tmp_path / "good.pt"
    save_checkpoint(model, None, 1, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    json_file = tmp_path / "config.json"
    json_file.write_text('{"d_model": 64}\n')
    for path in (truncated, garbage, foreign, json_file, tmp_path / "missing.pt"):
        with pytest.raises(UserError, match=path.name) as error:
            load_checkpoint(path, model, None)
        assert "\n" not in str(error.value)  # one line for the command-line error
    with pytest.raises(UserError, match="good.pt does not match the model: ") as error:
        load_checkpoint(good, TransformerLM(30, 16, 8, 1, 2, 16), None)
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "foreign.pt",
        "garbage.pt",
        "good.pt",
        "truncated.pt",
    ]


def test_extra_fields_may_not_overwrite_reserved_keys(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tiny_lm(), None, 0, tmp_path / "c.pt", rng={"a": 1})
