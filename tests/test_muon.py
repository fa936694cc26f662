"""Muon: the Newton-Schulz iteration against an SVD, the optimizer against a float64 re-implementation,
the Muon/AdamW split of a model, and a combined optimizer whose state round-trips exactly."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from NLM.min_lm.transformer import TransformerLM, cross_entropy
from NLM.min_lm.transformer.optim import (
    NS_COEFFICIENTS,
    AdamW,
    CombinedOptimizer,
    Muon,
    hidden_matrices,
    muon_with_adamw,
    newton_schulz,
    set_lr,
)


def matrix_with_singular_values(rows: int, cols: int, singular_values: np.ndarray, seed: int) -> np.ndarray:
    """P diag(s) Q^T with random orthonormal P, Q: a test matrix whose spectrum we choose."""
    rng = np.random.default_rng(seed)
    P, _ = np.linalg.qr(rng.standard_normal((rows, len(singular_values))))
    Q, _ = np.linalg.qr(rng.standard_normal((cols, len(singular_values))))
    return P @ np.diag(singular_values) @ Q.T


def iterated_quintic(x: np.ndarray, steps: int = 5) -> np.ndarray:
    """What the iteration does to one singular value x (already divided by the Frobenius norm)."""
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        x = a * x + b * x**3 + c * x**5
    return x


@pytest.mark.parametrize("rows, cols", [(48, 32), (32, 48), (40, 40)])
def test_newton_schulz_is_the_polar_factor_with_singular_values_in_the_promised_band(rows, cols):
    k = min(rows, cols)
    s = np.geomspace(1.0, 0.02, k)  # a condition number of 50
    G = matrix_with_singular_values(rows, cols, s, seed=rows * cols)
    P, sigma, Qt = np.linalg.svd(G, full_matrices=False)
    polar = P @ Qt

    # In float64 the result is exactly P p^5(S / |G|_F) Q^T: the iteration only reshapes the singular values.
    out64 = newton_schulz(torch.from_numpy(G)).numpy()
    expected = P @ np.diag(iterated_quintic(sigma / (np.linalg.norm(G) + 1e-7))) @ Qt  # (+ the eps)
    np.testing.assert_allclose(out64, expected, atol=1e-10)

    # The band: p^5 over every value a normalised singular value in this range can take.
    grid = np.linspace(sigma.min(), sigma.max(), 20001) / np.linalg.norm(G)
    low, high = iterated_quintic(grid).min(), iterated_quintic(grid).max()
    assert 0.6 < low and high < 1.25  # the "roughly orthogonal" the method promises, for this spectrum
    out32 = newton_schulz(torch.from_numpy(G).float())
    assert out32.dtype == torch.float32
    singular = np.linalg.svd(out32.double().numpy(), compute_uv=False)
    assert low - 1e-4 <= singular.min() and singular.max() <= high + 1e-4
    # ...so it is within the band's width of the polar factor U V^T in the spectral norm.
    deviation = np.linalg.norm(out32.double().numpy() - polar, ord=2)
    assert deviation <= max(1 - low, high - 1) + 1e-4


def test_newton_schulz_keeps_a_bfloat16_input_dtype_and_handles_zero():
    G = torch.randn(16, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    assert newton_schulz(G).dtype == torch.bfloat16
    assert torch.equal(newton_schulz(torch.zeros(4, 6)), torch.zeros(4, 6))  # no NaN from 0 / 0


# --- the optimizer against a float64 re-implementation ----------------------------------------------------


def reference_muon(W0, grads_of, steps, lr, momentum, weight_decay, nesterov=True):
    """Muon written out in numpy float64, one matrix at a time, from the formulas in optim.py."""
    a, b, c = NS_COEFFICIENTS
    W = [w.copy() for w in W0]
    B = [np.zeros_like(w) for w in W0]
    for _ in range(steps):
        G = grads_of(W)
        for i, (w, g) in enumerate(zip(W, G, strict=True)):
            B[i] = momentum * B[i] + g
            U = g + momentum * B[i] if nesterov else B[i]
            X = U.T if U.shape[0] > U.shape[1] else U
            X = X / (np.sqrt((X**2).sum()) + 1e-7)
            for _ in range(5):
                A = X @ X.T
                X = a * X + (b * A + c * A @ A) @ X
            orthogonalised = X.T if U.shape[0] > U.shape[1] else X
            scale = max(1.0, w.shape[0] / w.shape[1]) ** 0.5
            W[i] = w * (1 - lr * weight_decay) - lr * scale * orthogonalised
    return W


def regression_problem(seed=0):
    """Two matrices (one tall, one wide) and the gradient of a fixed least-squares loss through both."""
    rng = np.random.default_rng(seed)
    W0 = [rng.standard_normal((24, 12)) * 0.3, rng.standard_normal((8, 24)) * 0.3]
    X, Y = rng.standard_normal((12, 32)), rng.standard_normal((8, 32))

    def grads_of(W):
        H = W[0] @ X
        R = W[1] @ H - Y  # loss = |W1 W0 X - Y|^2 / 2
        return [W[1].T @ R @ X.T, R @ H.T]

    return W0, grads_of


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_over_20_steps_matches_a_float64_reimplementation(dtype, atol, nesterov):
    W0, grads_of = regression_problem()
    settings = dict(lr=0.02, momentum=0.9, weight_decay=0.1)
    expected = reference_muon(W0, grads_of, 20, nesterov=nesterov, **settings)

    params = [torch.nn.Parameter(torch.tensor(w, dtype=dtype)) for w in W0]
    optimizer = Muon(params, nesterov=nesterov, **settings)
    for _ in range(20):
        grads = grads_of([p.detach().double().numpy() for p in params])
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.tensor(g, dtype=dtype)
        optimizer.step()
    for p, w in zip(params, expected, strict=True):
        np.testing.assert_allclose(p.detach().double().numpy(), w, atol=atol, rtol=0)


def test_muon_refuses_vectors_and_bad_hyperparameters():
    with pytest.raises(ValueError, match="matrices only"):
        Muon([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="momentum"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], momentum=1.0)
    with pytest.raises(ValueError, match="lr"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], lr=-1.0)


# --- Muon for the hidden matrices, AdamW for the rest ------------------------------------------------------


def small_lm(seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(vocab_size=40, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=48,
                         qk_norm=True)


def test_the_split_gives_muon_exactly_the_hidden_matrices():
    model = small_lm()
    names = {id(p): name for name, p in model.named_parameters()}
    optimizer = muon_with_adamw(model, muon_lr=0.05, lr=1e-3, weight_decay=0.1)
    muon, adamw = optimizer.optimizers
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    adamw_names = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    expected = {f"layers.{i}.{m}.weight" for i in range(2)
                for m in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.output_proj",
                          "ffn.w1", "ffn.w2", "ffn.w3")}
    assert muon_names == expected == {names[id(p)] for p in hidden_matrices(model)}
    assert adamw_names == set(names.values()) - expected  # embeddings, lm_head, all norms incl. q/k norms
    assert "lm_head.weight" in adamw_names and "layers.0.attn.q_norm.weight" in adamw_names
    decayed = {names[id(p)] for g in adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {"lm_head.weight"}

    set_lr(optimizer, 5e-4)  # the schedule's value for AdamW; Muon keeps its ratio 0.05 / 1e-3
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.025, 5e-4, 5e-4])


def run_steps(model, optimizer, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, 40, (4, 17), generator=gen)
        loss = cross_entropy(model(ids[:, :-1]), ids[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_combined_state_dict_round_trips_so_resuming_is_bit_exact():
    straight = small_lm()
    optimizer = muon_with_adamw(straight, muon_lr=0.05, lr=3e-3, weight_decay=0.1)
    expected = run_steps(straight, optimizer, 5, seed=1) + run_steps(straight, optimizer, 5, seed=2)

    first = small_lm()
    first_optimizer = muon_with_adamw(first, muon_lr=0.05, lr=3e-3, weight_decay=0.1)
    losses = run_steps(first, first_optimizer, 5, seed=1)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": first_optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # what a checkpoint read does

    resumed = small_lm(seed=123)  # other initial weights: everything must come from the file
    resumed_optimizer = muon_with_adamw(resumed, muon_lr=0.05, lr=3e-3, weight_decay=0.1)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    losses += run_steps(resumed, resumed_optimizer, 5, seed=2)
    assert losses == expected
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_combined_refuses_the_state_of_a_single_optimizer():
    model = small_lm()
    combined = muon_with_adamw(model, muon_lr=0.05, lr=1e-3)
    with pytest.raises(ValueError, match="another --optimizer"):
        combined.load_state_dict(AdamW(model.parameters()).state_dict())
    assert isinstance(combined, CombinedOptimizer)
