"""The GPT-style language model: token embeddings -> pre-norm Transformer blocks -> final norm -> logits.

    x = Embedding(ids)
    for each block:  x = x + Attention(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))
    logits = lm_head(RMSNorm(x))

The model code is free of training concerns. Two options change the architecture and are stored in the
`ModelConfig`: `qk_norm` (RMSNorm of each head's queries and keys, adding weights `layers.{i}.attn.q_norm`
and `k_norm`) and `zero_init_proj` (attention's output projection and SwiGLU's w2 start at zero, so each
block starts as the identity and the residual stream carries the embeddings unchanged at first). Two
do not: how attention is computed (`attn_impl`) and whether activations are recomputed in the backward
pass to save memory (`gradient_checkpointing`).

Training asks for the loss instead of the logits, `model(ids, targets=targets)`: the output layer and the
cross-entropy then run fused, chunk by chunk (`loss.py`), so the (tokens x vocab) logits are never stored.
On a GPU that matmul runs against the output matrix padded to a multiple of 64 rows (50257 -> 50304 for
GPT-2), which keeps the matrix units on full tiles; the padding exists only inside the loss, so the weights,
checkpoints, exported files and the logits `generate` sees keep the true vocabulary size.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from NLM.min_lm.transformer.attention import MultiHeadSelfAttention
from NLM.min_lm.transformer.kv_cache import KVCache, LayerKVCache
from NLM.min_lm.transformer.loss import linear_cross_entropy, padded_size
from NLM.min_lm.transformer.modules import Embedding, Linear, RMSNorm, SwiGLU

# Pad the output matmul's vocabulary to a multiple of this on CUDA (on the CPU it does not pay).
CUDA_VOCAB_MULTIPLE = 64


@dataclass
class ModelConfig:
    """Everything needed to rebuild a `TransformerLM`; stored in every checkpoint as a plain dict."""

    vocab_size: int
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    zero_init_proj: bool = False

    def __post_init__(self) -> None:
        """Refuse a config no model can have (it may come from a file: a checkpoint, a config.json)."""
        for name in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError(f"num_heads ({self.num_heads}) must divide d_model ({self.d_model}) into "
                             "heads of even size (RoPE rotates pairs)")


class TransformerBlock(nn.Module):
    """One pre-norm residual block: x + attn(ln1(x)), then + ffn(ln2(x)).

    Normalising the *input* of each sub-layer (not its output) leaves a clean residual path from
    the embeddings to the output, which is what makes deep stacks train stably.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        max_seq_len: int,
        theta: float,
        device=None,
        dtype=None,
        *,
        norm_eps: float = 1e-5,
        attn_impl: str = "sdpa",
        qk_norm: bool = False,
    ):
        super().__init__()
        self.ln1 = RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype)
        self.attn = MultiHeadSelfAttention(
            d_model, num_heads, max_seq_len, theta, device=device, dtype=dtype, attn_impl=attn_impl,
            qk_norm=qk_norm, norm_eps=norm_eps,
        )
        self.ln2 = RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype)
        self.ffn = SwiGLU(d_model, d_ff, device=device, dtype=dtype)

    def forward(
        self, x: Tensor, token_positions: Tensor | None = None, kv_cache: LayerKVCache | None = None
    ) -> Tensor:
        x = x + self.attn(self.ln1(x), token_positions, kv_cache)
        return x + self.ffn(self.ln2(x))


class TransformerLM(nn.Module):
    """A decoder-only Transformer language model; `forward(ids)` returns unnormalised logits."""

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        rope_theta: float = 10000.0,
        device=None,
        dtype=None,
        *,
        norm_eps: float = 1e-5,
        qk_norm: bool = False,
        zero_init_proj: bool = False,
        attn_impl: str = "sdpa",
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.config = ModelConfig(
            vocab_size, context_length, d_model, num_layers, num_heads, d_ff, float(rope_theta), norm_eps,
            qk_norm, zero_init_proj,
        )
        self.gradient_checkpointing = gradient_checkpointing
        self.token_embeddings = Embedding(vocab_size, d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            TransformerBlock(
                d_model,
                num_heads,
                d_ff,
                context_length,
                rope_theta,
                device=device,
                dtype=dtype,
                norm_eps=norm_eps,
                attn_impl=attn_impl,
                qk_norm=qk_norm,
            )
            for _ in range(num_layers)
        )
        if zero_init_proj:
            for layer in self.layers:
                layer.attn.output_proj.weight.data.zero_()
                layer.ffn.w2.weight.data.zero_()
        self.ln_final = RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype)
        self.lm_head = Linear(d_model, vocab_size, device=device, dtype=dtype)

    @classmethod
    def from_config(cls, config: ModelConfig, device=None, dtype=None, **options) -> TransformerLM:
        """Build a model from a `ModelConfig`; `options` are the keyword options (attn_impl, ...)."""
        fields = dataclasses.asdict(config)
        keyword_only = {name: fields.pop(name) for name in ("norm_eps", "qk_norm", "zero_init_proj")}
        return cls(**fields, device=device, dtype=dtype, **keyword_only, **options)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of weights; `exclude_embeddings` leaves out the input embedding table (a lookup)."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.token_embeddings.weight.numel() if exclude_embeddings else total

    def new_kv_cache(
        self, batch_size: int, max_len: int | None = None, device=None, dtype=None, *,
        fixed_size: bool = False,
    ) -> KVCache:
        """Empty key/value buffers for `batch_size` sequences of up to `max_len` tokens.

        max_len defaults to the context length; device/dtype default to those of the model's weights.
        fixed_size: the compilable variant (see kv_cache.py).
        """
        max_len = self.config.context_length if max_len is None else max_len
        if max_len > self.config.context_length:
            raise ValueError(
                f"KV cache max_len={max_len} exceeds the context length {self.config.context_length}"
            )
        weight = self.lm_head.weight
        return KVCache(
            self.config.num_layers,
            batch_size,
            self.config.num_heads,
            self.config.d_model // self.config.num_heads,
            max_len,
            device=device or weight.device,
            dtype=dtype or weight.dtype,
            fixed_size=fixed_size,
        )

    def forward(
        self, in_indices: Tensor, kv_cache: KVCache | None = None, *, targets: Tensor | None = None
    ) -> Tensor:
        """in_indices: (batch, T) token ids -> logits (batch, T, vocab_size).

        Without a cache the tokens sit at positions 0..T-1. With one they continue after the
        `kv_cache.length` cached tokens, and the cache grows by T.
        With `targets` (batch, T) the result is instead the mean cross-entropy of the logits against them,
        computed by the fused loss without storing the logits (the module docstring says why).
        """
        hidden = self.ln_final(self._residual_stream(in_indices, kv_cache))
        if targets is None:
            return self.lm_head(hidden)
        padded = padded_size(self.config.vocab_size, CUDA_VOCAB_MULTIPLE) if hidden.is_cuda else None
        # Traced by torch.compile, is_compiling() is True: the loss then runs its chunks compiled too.
        return linear_cross_entropy(hidden, self.lm_head.weight, targets, padded_vocab=padded,
                                    compiled=torch.compiler.is_compiling())

    def _residual_stream(self, in_indices: Tensor, kv_cache: KVCache | None) -> Tensor:
        """Embeddings through every block: (batch, T) ids -> (batch, T, d_model), before the final norm."""
        num_tokens = in_indices.shape[-1]
        if kv_cache is not None and kv_cache.fixed_size:
            # positions from the device-side counter: no host sync, and the same graph every step (the
            # caller keeps within max_len; index_copy_ rejects a position past it)
            positions = kv_cache.position + torch.arange(num_tokens, device=in_indices.device)
            kv_cache.position += num_tokens
        else:
            start = 0 if kv_cache is None else kv_cache.length
            limit = self.config.context_length if kv_cache is None else kv_cache.max_len
            if start + num_tokens > limit:
                what = "context length" if kv_cache is None else "KV cache length"
                raise ValueError(f"{start + num_tokens} positions exceed the {what} of {limit}")
            positions = torch.arange(start, start + num_tokens, device=in_indices.device)
        x = self.token_embeddings(in_indices)
        for i, layer in enumerate(self.layers):
            layer_cache = None if kv_cache is None else kv_cache.layers[i]
            if (
                self.gradient_checkpointing
                and self.training
                and layer_cache is None
                and torch.is_grad_enabled()
            ):
                # Keep only the block's input; recompute its activations during backward.
                x = checkpoint(layer, x, positions, use_reentrant=False)
            else:
                x = layer(x, positions, layer_cache)
        return x
