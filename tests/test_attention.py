"""RoPE, scaled dot-product attention and multi-head self-attention against independent references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from NLM.min_lm.transformer import (
    MultiHeadSelfAttention,
    RotaryPositionalEmbedding,
    scaled_dot_product_attention,
)


def rope_complex(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as complex multiplication: pair (2i, 2i+1) is the number x_2i + j x_2i+1, times e^{j pos w_i}."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rotation = torch.polar(
        torch.ones(len(positions), d // 2, dtype=torch.float64), positions.double()[:, None] * freqs
    )
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * rotation).flatten(-2)


def test_rope_matches_complex_rotation():
    torch.manual_seed(0)
    rope = RotaryPositionalEmbedding(10000.0, 16, max_seq_len=64)
    x = torch.randn(2, 3, 10, 16)
    positions = torch.tensor([0, 1, 2, 5, 9, 17, 30, 31, 62, 63])
    torch.testing.assert_close(
        rope(x, positions).double(), rope_complex(x, positions, 10000.0), rtol=1e-5, atol=1e-5
    )
    rope64 = RotaryPositionalEmbedding(500.0, 8, max_seq_len=64, dtype=torch.float64)
    x64 = torch.randn(4, 10, 8, dtype=torch.float64)
    torch.testing.assert_close(
        rope64(x64, positions), rope_complex(x64, positions, 500.0), rtol=1e-12, atol=1e-12
    )


def test_rope_buffers_are_not_in_state_dict_and_follow_batch_positions():
    rope = RotaryPositionalEmbedding(10000.0, 8, max_seq_len=16)
    assert rope.state_dict() == {}
    x = torch.randn(2, 5, 8)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    out = rope(x, positions)
    torch.testing.assert_close(out[1], rope(x[1], positions[1]))


def test_rope_preserves_relative_position_dot_products():
    torch.manual_seed(0)
    rope = RotaryPositionalEmbedding(10000.0, 32, max_seq_len=128, dtype=torch.float64)
    q, k = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    dot = lambda i, j: rope(q[None], torch.tensor([i])) @ rope(k[None], torch.tensor([j])).T
    torch.testing.assert_close(dot(3, 10), dot(50, 57))


@pytest.mark.parametrize("mask_kind", [None, "causal", "random"])
def test_sdpa_matches_torch(mask_kind):
    torch.manual_seed(0)
    Q, K, V = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 5)
    mask = None
    if mask_kind == "causal":
        mask = torch.ones(6, 9, dtype=torch.bool).tril(diagonal=3)
    elif mask_kind == "random":
        mask = torch.rand(2, 1, 6, 9) > 0.4
        mask[..., 0] = True  # every query sees at least one key
    torch.testing.assert_close(
        scaled_dot_product_attention(Q, K, V, mask),
        F.scaled_dot_product_attention(Q, K, V, attn_mask=mask),
        rtol=1e-5,
        atol=1e-5,
    )


def mha_float64(x, weights, num_heads, theta):
    """Causal multi-head attention with explicit loops over heads and query positions."""
    T, d = x.shape[-2], x.shape[-1]
    hd = d // num_heads
    q, k, v = (x @ weights[name].double().T for name in ("q_proj.weight", "k_proj.weight", "v_proj.weight"))
    positions = torch.arange(T)
    heads = []
    for h in range(num_heads):
        qh, kh, vh = (t[..., h * hd : (h + 1) * hd] for t in (q, k, v))
        if theta is not None:
            qh, kh = rope_complex(qh, positions, theta), rope_complex(kh, positions, theta)
        rows = []
        for i in range(T):
            scores = qh[..., i : i + 1, :] @ kh[..., : i + 1, :].transpose(-1, -2) / math.sqrt(hd)
            rows.append(torch.softmax(scores, dim=-1) @ vh[..., : i + 1, :])
        heads.append(torch.cat(rows, dim=-2))
    return torch.cat(heads, dim=-1) @ weights["output_proj.weight"].double().T


@pytest.mark.parametrize("attn_impl", ["reference", "sdpa"])
@pytest.mark.parametrize("theta", [None, 10000.0])
def test_mha_matches_float64_loops(attn_impl, theta):
    torch.manual_seed(0)
    mha = MultiHeadSelfAttention(32, 4, max_seq_len=16, theta=theta, attn_impl=attn_impl)
    assert sorted(mha.state_dict()) == [f"{n}.weight" for n in ("k_proj", "output_proj", "q_proj", "v_proj")]
    x = torch.randn(2, 11, 32)
    expected = mha_float64(x.double(), mha.state_dict(), 4, theta)
    torch.testing.assert_close(mha(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_reference_and_sdpa_paths_agree_including_gradients():
    torch.manual_seed(0)
    ref = MultiHeadSelfAttention(32, 4, 32, 10000.0, dtype=torch.float64, attn_impl="reference")
    fast = MultiHeadSelfAttention(32, 4, 32, 10000.0, dtype=torch.float64, attn_impl="sdpa")
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 20, 32, dtype=torch.float64)
    out_ref, out_fast = ref(x), fast(x)
    torch.testing.assert_close(out_ref, out_fast, rtol=1e-12, atol=1e-12)
    out_ref.square().sum().backward()
    out_fast.square().sum().backward()
    for p_ref, p_fast in zip(ref.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p_ref.grad, p_fast.grad, rtol=1e-10, atol=1e-10)


def test_mha_gradcheck():
    torch.manual_seed(0)
    mha = MultiHeadSelfAttention(4, 2, 8, 10000.0, dtype=torch.float64, attn_impl="reference")
    names = [n for n, _ in mha.named_parameters()]
    x = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda x, *w: torch.func.functional_call(mha, dict(zip(names, w, strict=True)), (x,))
    assert torch.autograd.gradcheck(fn, (x, *mha.parameters()))


def test_mha_rejects_bad_options():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(10, 3)
    with pytest.raises(ValueError, match="attn_impl"):
        MultiHeadSelfAttention(8, 2, attn_impl="flash")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_fast_rope_equals_the_reference(dtype, tol):
    """Complex multiplication (fast) against cos/sin written out (reference): values, gradients, layouts."""
    torch.manual_seed(0)
    fast = RotaryPositionalEmbedding(10000.0, 16, max_seq_len=32, dtype=dtype)
    ref = RotaryPositionalEmbedding(10000.0, 16, max_seq_len=32, dtype=dtype, impl="reference")
    # (batch, T, heads, d_k) transposed to (batch, heads, T, d_k): the strided view attention passes in
    x = torch.randn(2, 7, 3, 16, dtype=dtype).transpose(1, 2).requires_grad_()
    positions = torch.tensor([0, 3, 4, 9, 20, 30, 31])
    torch.testing.assert_close(fast(x, positions), ref(x, positions), rtol=tol, atol=tol)
    q, k = fast.rotate_qk(x, x.flip(-1), positions)
    torch.testing.assert_close(k, ref(x.flip(-1), positions), rtol=tol, atol=tol)
    upstream = torch.randn_like(q)
    (g_fast,) = torch.autograd.grad(q, x, upstream)
    (g_ref,) = torch.autograd.grad(ref(x, positions), x, upstream)
    torch.testing.assert_close(g_fast, g_ref, rtol=tol, atol=tol)
    odd_view = torch.randn(5, 17, dtype=dtype)[:, 1:]  # storage offset 1: cannot be viewed as complex
    odd_positions = positions[:5]
    torch.testing.assert_close(fast(odd_view, odd_positions), ref(odd_view, odd_positions),
                               rtol=tol, atol=tol)
