"""The training loss without the logits: the output matmul and cross-entropy fused, chunk by chunk.

The plain path computes logits = h W^T for every token, (tokens x vocab) numbers, then the loss from
them; autograd keeps the logits (and, in bf16, a float32 copy) until the backward pass. At GPT-2's vocabulary
that is the largest tensor of the whole step. Here the tokens are cut into chunks, and for each chunk:

    logits  = h_c W^T                        (chunk, vocab), in the compute dtype
    lse     = logsumexp(logits)              in float32
    loss   += sum(lse - logits[target])
    dlogits = (softmax(logits) - onehot(target)) / num_tokens
    dh_c    = dlogits W                      the gradients, computed now while the logits are at hand
    dW     += dlogits^T h_c                  accumulated in float32

so only one chunk's logits exist at a time, and the backward pass just scales the stored gradients by the
incoming one (1 for a plain `loss.backward()`). The result equals `cross_entropy(h @ W.T, targets)` and its
gradients (tests compare them in float64). Without gradients (evaluation) only the loss is computed.

Under torch.compile the chunk *loop* stays out of the model's graph (`torch.compiler.disable`): compiling it
would unroll it, hundreds of copies at GPT-2 scale, for minutes of compilation. The chunk itself is compiled
instead, once (`_compiled_chunk`), and the loop calls it: its matmuls and the softmax between them become a
few fused kernels, with fewer passes over each chunk's logits than the eager ops make.
A compiled model's forward uses the compiled chunk (it knows from `torch.compiler.is_compiling()`).

`padded_vocab`: the matmul runs against W padded with zero rows to that many (a multiple of 64 keeps GPU
matrix units on full tiles); the padded columns are set to -inf before the softmax, so they get probability 0
and the loss and gradients are those of the unpadded W. The caller's W keeps its shape.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

# About this many logits per chunk. CPU: 4M float32 = 16 MB, large enough for efficient matmuls, small
# enough that the chunk's temporaries are reused from the allocator instead of being mapped and unmapped
# each step. GPU: 64M = 256 MB, so that a GPT-2 batch (32 x 1024 tokens) takes ~25 chunks, not hundreds of
# small ones whose kernel launches would cost more than their arithmetic.
_LOGITS_PER_CHUNK = {"cpu": 2**22, "cuda": 2**26}


def default_chunk_size(vocab_size: int, device_type: str = "cpu") -> int:
    """Tokens per chunk for a vocabulary: about `_LOGITS_PER_CHUNK` logits, at least 16 tokens."""
    return max(16, _LOGITS_PER_CHUNK.get(device_type, 2**24) // vocab_size)


def padded_size(size: int, multiple: int) -> int:
    """`size` rounded up to a multiple of `multiple` (50257 -> 50304 for 64)."""
    return -(-size // multiple) * multiple


def _chunk(
    h: Tensor, weight: Tensor, targets: Tensor, grad_weight: Tensor | None, vocab_size: int, num_tokens: int
) -> tuple[Tensor, Tensor | None]:
    """One chunk's summed loss and, when `grad_weight` is given, its hidden states' gradient (the weight's
    is added to `grad_weight`). The softmax and sums run in float32 (float64 stays float64)."""
    sum_dtype = torch.promote_types(weight.dtype, torch.float32)
    logits = (h @ weight.T).to(sum_dtype)  # (chunk, V_padded)
    if logits.shape[1] > vocab_size:
        logits[:, vocab_size:] = float("-inf")  # padding rows: probability 0
    lse = torch.logsumexp(logits, dim=-1)
    loss = (lse - logits.gather(1, targets[:, None]).squeeze(1)).sum()
    if grad_weight is None:
        return loss, None
    # softmax - onehot, divided by N for the mean, in the logits' own memory
    dlogits = logits.sub_(lse[:, None]).exp_()
    dlogits.scatter_add_(1, targets[:, None], torch.full_like(lse[:, None], -1.0))
    dlogits = dlogits.div_(num_tokens).to(h.dtype)
    if dlogits.dtype == grad_weight.dtype:
        grad_weight.addmm_(dlogits.T, h)
    else:  # a bf16 product per chunk, summed over chunks in float32
        grad_weight += dlogits.T @ h
    return loss, dlogits @ weight


@functools.cache
def _compiled_chunk():
    """`_chunk` compiled, made on first use: one graph per chunk shape (the last chunk may be shorter)."""
    return torch.compile(_chunk, dynamic=False)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of h W^T against targets; gradients computed during the forward pass."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int, vocab_size: int,
                compiled: bool):
        # hidden (N, d) and weight (V_padded, d) in the compute dtype; targets (N,)
        num_tokens = hidden.shape[0]
        need_grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        sum_dtype = torch.promote_types(weight.dtype, torch.float32)  # float32, or float64 for float64
        loss_sum = torch.zeros((), dtype=sum_dtype, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_grads else None
        grad_weight = torch.zeros(weight.shape, dtype=sum_dtype, device=weight.device) if need_grads else None
        step = _compiled_chunk() if compiled else _chunk
        for start in range(0, num_tokens, chunk_size):
            end = start + chunk_size
            loss, grad_h = step(hidden[start:end], weight, targets[start:end], grad_weight, vocab_size,
                                num_tokens)
            loss_sum += loss
            if need_grads:
                grad_hidden[start:end] = grad_h
        if need_grads:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss_sum / num_tokens

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss.to(grad_hidden.dtype)
        return grad_hidden * scale, grad_weight * scale.to(grad_weight.dtype), None, None, None, None


@torch.compiler.disable
def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    chunk_size: int | None = None,
    padded_vocab: int | None = None,
    compiled: bool = False,
) -> Tensor:
    """Mean of cross_entropy(hidden @ weight.T, targets) over all tokens, without building the logits.

    hidden: (..., d) final hidden states; weight: (vocab, d), the output layer; targets: (...) ids.
    Under autocast the matmuls run in the autocast dtype (hidden and weight are cast once, differentiably,
    so float32 master weights get float32 gradients); the softmax and sums are float32 (float64 stays).
    chunk_size: tokens per chunk (default: see `_LOGITS_PER_CHUNK`); padded_vocab: see the module docstring;
    compiled: run each chunk through torch.compile (what a compiled model's forward asks for).
    """
    vocab_size = weight.shape[0]
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    else:
        weight = weight.to(hidden.dtype)
    if padded_vocab is not None and padded_vocab > vocab_size:
        weight = F.pad(weight, (0, 0, 0, padded_vocab - vocab_size))
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(
            hidden.flatten(0, -2), weight, targets.flatten(),
            chunk_size or default_chunk_size(vocab_size, hidden.device.type), vocab_size, compiled,
        )
