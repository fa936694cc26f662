"""The fused, chunked linear + cross-entropy against the plain logits path, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from NLM.min_lm.transformer import TransformerLM, cross_entropy
from NLM.min_lm.transformer.loss import _compiled_chunk, default_chunk_size, linear_cross_entropy, padded_size


def float64_inputs(tokens=(3, 7), d=8, vocab=13, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*tokens, d, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(vocab, d, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.randint(0, vocab, tokens, generator=gen)
    return hidden, weight, targets


def reference(hidden, weight, targets, upstream):
    """torch's own cross-entropy on fully materialised logits, and its gradients."""
    loss = F.cross_entropy((hidden @ weight.T).flatten(0, -2), targets.flatten())
    return (loss, *torch.autograd.grad(loss * upstream, (hidden, weight)))


# 21 tokens, vocabulary 13: chunks of 1, 4 (uneven last chunk), 13, 21 and larger than the input
@pytest.mark.parametrize("chunk_size", [1, 4, 13, 21, 64])
@pytest.mark.parametrize("padded_vocab", [None, 16, 64])
def test_loss_and_gradients_equal_the_plain_path(chunk_size, padded_vocab):
    hidden, weight, targets = float64_inputs()
    upstream = 2.5  # the backward must scale by the incoming gradient, not assume 1
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size, padded_vocab=padded_vocab)
    grads = torch.autograd.grad(loss * upstream, (hidden, weight))
    ref_loss, *ref_grads = reference(hidden, weight, targets, upstream)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_large_logits_stay_finite_and_exact():
    hidden, weight, targets = float64_inputs()
    with torch.no_grad():
        hidden.mul_(1e3)
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=5)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, reference(hidden, weight, targets, 1.0)[0], rtol=1e-12, atol=1e-9)


def test_without_gradients_only_the_loss_is_computed():
    hidden, weight, targets = float64_inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, chunk_size=4)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference(hidden, weight, targets, 1.0)[0], rtol=1e-12, atol=1e-12)


def test_bf16_autocast_is_close_and_float32_weights_get_float32_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(64, 32, requires_grad=True)
    weight = (torch.randn(100, 32) / 4).requires_grad_()
    targets = torch.randint(0, 100, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets, chunk_size=24)
    loss.backward()
    assert loss.dtype == torch.float32 and weight.grad.dtype == hidden.grad.dtype == torch.float32
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref_loss, ref_h, ref_w = reference(h64, w64, targets, 1.0)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(hidden.grad.double(), ref_h, rtol=5e-2, atol=2e-3)
    torch.testing.assert_close(weight.grad.double(), ref_w, rtol=5e-2, atol=2e-3)


def test_chunk_and_padding_sizes():
    assert padded_size(50257, 64) == 50304 and padded_size(50304, 64) == 50304 and padded_size(13, 1) == 13
    assert default_chunk_size(10_000) * 10_000 <= 2**22 and default_chunk_size(10**7) == 16
    assert default_chunk_size(50_304, "cuda") == 1334  # a GPT-2 batch of 32 x 1024 tokens: 25 chunks


def test_model_loss_path_equals_cross_entropy_of_its_logits():
    """model(ids, targets=...) is the fused path; the logits path and the state dict are untouched by it."""
    torch.manual_seed(0)
    model = TransformerLM(50, 16, 32, 2, 4, 48, dtype=torch.float64)
    ids = torch.randint(0, 50, (3, 13), generator=torch.Generator().manual_seed(1))
    x, y = ids[:, :-1], ids[:, 1:]
    fused = model(x, targets=y)
    fused_grads = torch.autograd.grad(fused, list(model.parameters()))
    plain = cross_entropy(model(x), y)
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for g, r in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
    assert model.lm_head.weight.shape == (50, 32) and model(x).shape == (3, 12, 50)


def test_model_loss_path_compiles_with_the_loss_chunks_compiled():
    """The model is compiled up to the final norm, and the fused loss runs its chunks compiled (loss.py):
    loss and gradients equal the eager model's."""
    torch._dynamo.reset()
    _compiled_chunk.cache_clear()
    torch.manual_seed(0)
    model = TransformerLM(50, 16, 32, 2, 4, 48)
    compiled = torch.compile(model, backend="aot_eager")  # see test_model's compile test
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(5))
    x, y = ids[:, :-1], ids[:, 1:]
    loss = compiled(x, targets=y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert _compiled_chunk.cache_info().currsize == 1  # the compiled model asked for compiled chunks
    eager = model(x, targets=y)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    assert _compiled_chunk.cache_info().hits == 0  # ... and the eager one did not
    torch.testing.assert_close(loss, eager)
    for g, r in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padded_vocab", [None, 64])
def test_compiled_chunks_equal_the_plain_path(padded_vocab):
    """The compiled chunk step (inductor) against torch's cross-entropy, with an uneven last chunk."""
    hidden, weight, targets = (t.float() if t.is_floating_point() else t for t in float64_inputs())
    hidden, weight = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=8, padded_vocab=padded_vocab,
                                compiled=True)
    grads = torch.autograd.grad(loss * 2.5, (hidden, weight))
    ref_loss, *ref_grads = reference(hidden, weight, targets, 2.5)
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)
