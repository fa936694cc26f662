"""A key/value cache for incremental decoding.

Generating token t+1 only needs the new token's query against the keys and values of all earlier
tokens, and those never change (attention is causal). Keeping them in preallocated buffers turns
each decoding step from O(T) full forward passes into one forward pass over a single token.

The buffers are allocated once at `max_len` and filled left to right, so decoding never
reallocates memory. The cache does not roll: when it is full the caller re-prefills a shorter
window (see `generate`).

Two ways to read it back, one switch apart (`fixed_size`):
- growing (default): `length` is a Python int and attention sees keys[:, :, :length], exactly the
  tokens so far. Cheapest in eager mode, but every step has a new shape.
- fixed-size: the position is a tensor on the device, new keys are written at it with `index_copy_`,
  and attention always sees the whole buffer with the unwritten slots masked out. Every decoding step
  then has the same shapes and no Python-side state changes, so one compiled step (or one CUDA graph,
  `torch.compile(mode="reduce-overhead")`) serves the whole generation.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LayerKVCache:
    """The keys and values of one attention layer, shape (batch, heads, max_len, head_dim) each."""

    def __init__(self, batch_size: int, num_heads: int, max_len: int, head_dim: int, device=None, dtype=None,
                 *, fixed_size: bool = False):
        shape = (batch_size, num_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.fixed_size = fixed_size
        if fixed_size:  # buffers that stay put: a CUDA graph may write into them at fixed addresses
            torch._dynamo.mark_static_address(self.keys)
            torch._dynamo.mark_static_address(self.values)

    def write(self, keys: Tensor, values: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Fixed-size path: store new keys/values at `positions` (T_new,); return the whole buffers."""
        self.keys.index_copy_(2, positions, keys)
        self.values.index_copy_(2, positions, values)
        return self.keys, self.values

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
    With `fixed_size=True` the count lives in the 0-dim tensor `position` instead (see the module
    docstring); reading `length` then waits for the device.
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
        *,
        fixed_size: bool = False,
    ):
        if num_layers < 1 or max_len < 1:
            raise ValueError(
                f"a KV cache needs num_layers >= 1 and max_len >= 1, got {num_layers}, {max_len}"
            )
        self.max_len = max_len
        self.batch_size = batch_size
        self.fixed_size = fixed_size
        self.position = torch.zeros((), dtype=torch.long, device=device)
        if fixed_size:
            torch._dynamo.mark_static_address(self.position)
        self.layers = [
            LayerKVCache(batch_size, num_heads, max_len, head_dim, device=device, dtype=dtype,
                         fixed_size=fixed_size)
            for _ in range(num_layers)
        ]

    @property
    def length(self) -> int:
        """How many positions are cached (the position the next token will take)."""
        return int(self.position) if self.fixed_size else self.layers[0].length

    def reset(self) -> None:
        """Forget everything cached; the buffers are kept for reuse."""
        self.position.zero_()
        for layer in self.layers:
            layer.length = 0
