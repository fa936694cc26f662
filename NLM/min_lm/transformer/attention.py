"""Causal multi-head self-attention with rotary position embeddings (RoPE).

Two implementations of the attention core sit side by side, one switch apart:
- `attn_impl="reference"`: `scaled_dot_product_attention` below, softmax(Q K^T / sqrt(d)) V written
  out explicitly; easy to read and to check, but it materialises the (T, T) score matrix.
- `attn_impl="sdpa"`: torch's fused `F.scaled_dot_product_attention`, which dispatches to
  FlashAttention / memory-efficient kernels on GPU and never stores the full score matrix.
The tests check that both give the same outputs and gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from NLM.min_lm.options import ATTN_IMPLS
from NLM.min_lm.transformer.kv_cache import LayerKVCache
from NLM.min_lm.transformer.modules import Linear, RMSNorm, check_impl, softmax


class RotaryPositionalEmbedding(nn.Module):
    """Rotate each adjacent pair of dimensions (2i, 2i+1) of a query/key by angle pos * theta^(-2i/d_k).

    The dot product of two rotated vectors then depends only on their relative position, which is
    how attention learns about order. The cos/sin tables for every position up to `max_seq_len` are
    computed once (in float64, stored in float32 or float64) and kept as non-persistent buffers: they
    move with `.to(device)` but are not part of the state dict, whose keys stay those of the weights.

    Two implementations, one switch apart (`impl`): "reference" writes the rotation out with cos and sin,
    (x_even cos - x_odd sin, x_even sin + x_odd cos); "fast" reads each pair as the complex number
    x_even + i x_odd and multiplies it by e^(i angle), which is the same rotation in one kernel (and one in
    the backward pass). `rotate_qk` rotates queries and keys with the table looked up once. Inside
    torch.compile the fast path takes the cos/sin form too: the compiler fuses it into one kernel, while it
    cannot generate code for complex numbers (and would fall back to slower eager kernels).
    """

    def __init__(
        self, theta: float, d_k: int, max_seq_len: int, device=None, dtype=None, *, impl: str = "fast"
    ):
        super().__init__()
        if d_k % 2:
            raise ValueError(f"RoPE needs an even head dimension, got d_k={d_k}")
        self.theta, self.d_k, self.max_seq_len = theta, d_k, max_seq_len
        self.impl = check_impl(impl)
        inv_freq = theta ** (-torch.arange(0, d_k, 2, dtype=torch.float64) / d_k)  # (d_k/2,)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (max_seq_len, d_k/2)
        table_dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        self.register_buffer("cos", angles.cos().to(device=device, dtype=table_dtype), persistent=False)
        self.register_buffer("sin", angles.sin().to(device=device, dtype=table_dtype), persistent=False)
        complex_dtype = torch.complex128 if table_dtype == torch.float64 else torch.complex64
        rotations = torch.polar(torch.ones_like(angles), angles).to(device=device, dtype=complex_dtype)
        self.register_buffer("rotations", rotations, persistent=False)  # e^(i angle), (max_seq_len, d_k/2)

    def _complex(self) -> bool:
        return self.impl == "fast" and not torch.compiler.is_compiling()

    def forward(self, x: Tensor, token_positions: Tensor) -> Tensor:
        """x: (..., T, d_k); token_positions: (..., T) integer positions, broadcastable to x."""
        if self._complex():
            return _rotate_complex(x, self.rotations[token_positions])
        cos = self.cos[token_positions]  # (..., T, d_k/2)
        sin = self.sin[token_positions]
        compute_dtype = torch.promote_types(x.dtype, cos.dtype)
        pairs = x.to(compute_dtype).unflatten(-1, (-1, 2))  # (..., T, d_k/2, 2)
        x_even, x_odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
        return rotated.flatten(-2).to(x.dtype)

    def rotate_qk(self, q: Tensor, k: Tensor, token_positions: Tensor) -> tuple[Tensor, Tensor]:
        """`forward` applied to queries and keys at the same positions."""
        if self._complex():
            rotations = self.rotations[token_positions]
            return _rotate_complex(q, rotations), _rotate_complex(k, rotations)
        return self(q, token_positions), self(k, token_positions)

    def extra_repr(self) -> str:
        return f"theta={self.theta}, d_k={self.d_k}, max_seq_len={self.max_seq_len}, impl={self.impl}"


def _rotate_complex(x: Tensor, rotations: Tensor) -> Tensor:
    """x (..., d_k) as d_k/2 complex numbers times `rotations` (..., d_k/2); complex needs float32 or more."""
    pairs = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))
    if pairs.stride(-1) != 1 or any(stride % 2 for stride in pairs.stride()[:-1]):
        pairs = pairs.contiguous()  # viewing as complex needs (real, imag) side by side in memory
    return torch.view_as_real(torch.view_as_complex(pairs) * rotations).flatten(-2).to(x.dtype)


def scaled_dot_product_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(Q K^T / sqrt(d_k)) V for Q (..., T_q, d_k), K (..., T_k, d_k), V (..., T_k, d_v).

    `mask` (broadcastable to (..., T_q, T_k), bool): True where query i may attend to key j;
    the other scores become -inf before the softmax, i.e. weight exactly 0.
    """
    scores = Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, dim=-1) @ V


def causal_mask(num_queries: int, num_keys: int, device=None) -> Tensor:
    """(num_queries, num_keys) bool mask for queries that are the last `num_queries` of `num_keys` tokens.

    Query i sits at position num_keys - num_queries + i and may see every key up to that position.
    """
    offset = num_keys - num_queries
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(diagonal=offset)


class MultiHeadSelfAttention(nn.Module):
    """Causal self-attention with `num_heads` heads of size d_model / num_heads, RoPE on Q and K.

    With `qk_norm`, each head's query and key vectors pass through an RMSNorm (gains `q_norm`, `k_norm` of
    size head_dim, shared by the heads) before RoPE. The scores q.k / sqrt(d) are then bounded by the
    gains, so no attention logit can grow without limit and saturate the softmax: the instability that
    otherwise caps the usable learning rate (as in Qwen3, OLMo 2 and the modded-nanogpt speedrun).

    With a `kv_cache` (one layer's `LayerKVCache`), the new keys/values are appended to it and the
    new queries attend to everything cached plus the new tokens (causally among the new ones).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        max_seq_len: int | None = None,
        theta: float | None = None,
        device=None,
        dtype=None,
        *,
        attn_impl: str = "sdpa",
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.attn_impl = attn_impl
        self.q_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=norm_eps, device=device, dtype=dtype)
            self.k_norm = RMSNorm(self.head_dim, eps=norm_eps, device=device, dtype=dtype)
        else:
            self.q_norm = self.k_norm = None
        if theta is not None:
            if max_seq_len is None:
                raise ValueError("RoPE (theta given) needs max_seq_len")
            self.rope = RotaryPositionalEmbedding(
                theta, self.head_dim, max_seq_len, device=device, dtype=dtype
            )
        else:
            self.rope = None

    def forward(
        self, x: Tensor, token_positions: Tensor | None = None, kv_cache: LayerKVCache | None = None
    ) -> Tensor:
        """x: (..., T, d_model) -> (..., T, d_model)."""
        num_new = x.shape[-2]
        # (..., T, d_model) -> (..., heads, T, head_dim)
        q, k, v = (
            proj(x).unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if token_positions is None:
            start = kv_cache.length if kv_cache is not None else 0
            token_positions = torch.arange(start, start + num_new, device=x.device)
        if self.rope is not None:
            positions = token_positions.unsqueeze(-2)  # the same positions for every head
            q, k = self.rope.rotate_qk(q, k, positions)
        mask = None
        if kv_cache is not None and kv_cache.fixed_size:
            k, v = kv_cache.write(k, v, token_positions)
            slots = torch.arange(k.shape[-2], device=x.device)
            mask = slots <= token_positions[:, None]  # (T_new, max_len): written slots up to each query
        elif kv_cache is not None:
            k, v = kv_cache.append(k, v)
        if kv_cache is not None:
            k, v = k.to(q.dtype), v.to(q.dtype)  # the cache may be kept in another dtype (autocast)
        out = self._attend(q, k, v, mask)
        return self.output_proj(out.transpose(-3, -2).flatten(-2))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Causal attention of the T_q queries, the last T_q of the T_k positions in k and v; or, with
        `mask` (T_q, T_k), of the queries to the keys it allows (the fixed-size cache)."""
        num_queries, num_keys = q.shape[-2], k.shape[-2]
        if mask is not None:
            if self.attn_impl == "reference":
                return scaled_dot_product_attention(q, k, v, mask)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if self.attn_impl == "reference":
            return scaled_dot_product_attention(q, k, v, causal_mask(num_queries, num_keys, device=q.device))
        if num_queries == num_keys:  # no cache, or a prefill from empty: plain causal
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if num_queries == 1:  # one new token sees everything before it
            return F.scaled_dot_product_attention(q, k, v)
        # Several new tokens after a cached prefix. (is_causal would align the mask top-left, wrongly.)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(num_queries, num_keys, q.device))
