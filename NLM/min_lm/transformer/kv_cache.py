"""A key/value cache for incremental decoding.

Generating token t+1 only needs the new token's query against the keys and values of all earlier
tokens, and those never change (attention is causal). Keeping them in preallocated buffers turns
each decoding step from O(T) full forward passes into one forward pass over a single token.

The buffers are allocated once at `max_len` and filled left to right, so decoding never
reallocates memory. The cache does not roll: when it is full the caller re-prefills a shorter
window (see `generate`).
"""

from __future__ import annotations

import torch
from torch import Tensor


class LayerKVCache:
    """The keys and values of one attention layer, shape (batch, heads, max_len, head_dim) each."""

    def __init__(self, batch_size: int, num_heads: int, max_len: int, head_dim: int, device=None, dtype=None):
        shape = (batch_size, num_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def append(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store new keys/values (batch, heads, T_new, head_dim); return all of them so far."""
        start, end = self.length, self.length + keys.shape[-2]
        if end > self.keys.shape[-2]:
            raise ValueError(
                f"KV cache overflow: {end} positions requested, the cache holds {self.keys.shape[-2]}"
            )
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Per-layer key/value buffers of a whole model; `length` tokens are cached so far.

    Create it with `TransformerLM.new_kv_cache(batch_size)` and pass it to `model(ids, kv_cache)`:
    each forward appends its tokens (at positions length .. length + T - 1) and advances `length`.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        max_len: int,
        device=None,
        dtype=None,
    ):
        if num_layers < 1 or max_len < 1:
            raise ValueError(
                f"a KV cache needs num_layers >= 1 and max_len >= 1, got {num_layers}, {max_len}"
            )
        self.max_len = max_len
        self.batch_size = batch_size
        self.layers = [
            LayerKVCache(batch_size, num_heads, max_len, head_dim, device=device, dtype=dtype)
            for _ in range(num_layers)
        ]

    @property
    def length(self) -> int:
        """How many positions are cached (the position the next token will take)."""
        return self.layers[0].length

    def reset(self) -> None:
        """Forget everything cached; the buffers are kept for reuse."""
        for layer in self.layers:
            layer.length = 0
