"""Linear, Embedding, RMSNorm, SwiGLU, silu, softmax against torch's own implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from NLM.min_lm.transformer import Embedding, Linear, RMSNorm, SwiGLU, silu, softmax


def test_linear_matches_f_linear_and_has_no_bias():
    torch.manual_seed(0)
    layer = Linear(7, 5)
    x = torch.randn(3, 4, 7)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    assert layer.weight.shape == (5, 7)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-6, atol=1e-6)


def test_linear_init_is_truncated_normal_with_glorot_std():
    torch.manual_seed(0)
    layer = Linear(300, 500)
    std = math.sqrt(2 / 800)
    w = layer.weight.detach()
    assert w.abs().max() <= 3 * std + 1e-7
    # A normal truncated at 3 sigma has std 0.9866 sigma.
    assert abs(w.std().item() / std - 0.9866) < 0.01


def test_embedding_is_row_lookup_with_unit_truncated_init():
    torch.manual_seed(0)
    emb = Embedding(1000, 64)
    ids = torch.tensor([[0, 5, 999], [5, 5, 1]])
    torch.testing.assert_close(emb(ids), emb.weight[ids])
    torch.testing.assert_close(emb(ids), F.embedding(ids, emb.weight))
    assert emb.weight.abs().max() <= 3.0
    assert abs(emb.weight.std().item() - 0.9866) < 0.01


def test_modules_honour_device_and_dtype():
    for module in (
        Linear(4, 3, dtype=torch.float64),
        Embedding(5, 4, dtype=torch.bfloat16),
        RMSNorm(4, dtype=torch.float64),
        SwiGLU(4, 8, device="cpu", dtype=torch.bfloat16),
    ):
        dtypes = {p.dtype for p in module.parameters()}
        assert len(dtypes) == 1 and dtypes != {torch.float32}
        assert all(p.device.type == "cpu" for p in module.parameters())


def test_rmsnorm_matches_torch_rmsnorm():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    ref = torch.nn.RMSNorm(16, eps=1e-5)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(2, 3, 16) * 5
    torch.testing.assert_close(norm(x), ref(x), rtol=1e-6, atol=1e-6)


def test_rmsnorm_upcasts_bf16_and_keeps_float64():
    torch.manual_seed(0)
    x64 = torch.randn(4, 256, dtype=torch.float64) * 3
    weight = torch.randn(256, dtype=torch.float64)
    expected = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * weight

    norm64 = RMSNorm(256, dtype=torch.float64)
    norm64.weight.data.copy_(weight)
    out64 = norm64(x64)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, expected, rtol=1e-12, atol=1e-12)

    norm_bf16 = RMSNorm(256, dtype=torch.bfloat16)
    norm_bf16.weight.data.copy_(weight)
    x_bf16 = x64.to(torch.bfloat16)
    out_bf16 = norm_bf16(x_bf16)
    assert out_bf16.dtype == torch.bfloat16
    # Computed in float32 from the bf16 inputs, rounded once at the end: exactly that value.
    x32, w32 = x_bf16.float(), norm_bf16.weight.float()
    once_rounded = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5) * w32).to(torch.bfloat16)
    torch.testing.assert_close(out_bf16, once_rounded, rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.floats(0.1, 100.0), st.integers(-3, 1))
def test_softmax_matches_torch(rows, cols, scale, dim):
    torch.manual_seed(rows * 100 + cols)
    x = torch.randn(rows, 2, cols, dtype=torch.float64) * scale
    torch.testing.assert_close(softmax(x, dim=dim), torch.softmax(x, dim=dim))


def test_softmax_is_stable_for_huge_logits():
    x = torch.tensor([[1e4, 1e4 + 1.0, -1e4], [1000.0, 0.0, 0.0]])
    out = softmax(x, dim=-1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.softmax(x, dim=-1))


def test_silu_matches_torch():
    x = torch.linspace(-20, 20, 401, dtype=torch.float64)
    torch.testing.assert_close(silu(x), F.silu(x))


def test_swiglu_formula():
    torch.manual_seed(0)
    ffn = SwiGLU(8, 24, dtype=torch.float64)
    assert (
        ffn.w1.weight.shape == (24, 8) and ffn.w2.weight.shape == (8, 24) and ffn.w3.weight.shape == (24, 8)
    )
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    w1, w2, w3 = ffn.w1.weight, ffn.w2.weight, ffn.w3.weight
    expected = F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    torch.testing.assert_close(ffn(x), expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Linear(4, 3, dtype=torch.float64),
        lambda: RMSNorm(4, dtype=torch.float64),
        lambda: SwiGLU(4, 6, dtype=torch.float64),
    ],
)
def test_gradcheck_modules(make):
    torch.manual_seed(0)
    module = make()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(module.parameters())

    def fn(x, *weights):
        return torch.func.functional_call(
            module, dict(zip([n for n, _ in module.named_parameters()], weights, strict=True)), (x,)
        )

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_gradcheck_softmax_and_silu():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: softmax(t, dim=-1), (x,))
    assert torch.autograd.gradcheck(silu, (x,))


# bf16: the paths round at different points (F.silu rounds once, x * sigmoid(x) twice): a few ulps apart
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6), (torch.bfloat16, 8e-2)])
def test_fast_rmsnorm_and_swiglu_equal_the_reference(dtype, tol):
    """The fused-kernel paths (F.rms_norm, F.silu) against the from-primitives ones: outputs and gradients."""
    torch.manual_seed(0)
    makers = (lambda impl: RMSNorm(16, dtype=dtype, impl=impl),
              lambda impl: SwiGLU(16, 24, dtype=dtype, impl=impl))
    for make in makers:
        fast, ref = make("fast"), make("reference")
        ref.load_state_dict(fast.state_dict())
        with torch.no_grad():
            for p, q in zip(fast.parameters(), ref.parameters(), strict=True):
                p.mul_(1.5), q.copy_(p)  # a norm gain other than 1
        x = (torch.randn(2, 5, 16, dtype=torch.float64) * 3).to(dtype).requires_grad_()
        out_fast, out_ref = fast(x), ref(x)
        assert out_fast.dtype == dtype
        torch.testing.assert_close(out_fast, out_ref, rtol=tol, atol=tol)
        upstream = torch.randn_like(out_ref)
        grads_fast = torch.autograd.grad(out_fast, [x, *fast.parameters()], upstream)
        grads_ref = torch.autograd.grad(out_ref, [x, *ref.parameters()], upstream)
        for g, r in zip(grads_fast, grads_ref, strict=True):
            torch.testing.assert_close(g, r, rtol=tol, atol=tol * 10)
    with pytest.raises(ValueError):
        RMSNorm(4, impl="quick")
