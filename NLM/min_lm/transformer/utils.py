"""Training utilities: the loss, the learning-rate schedules, gradient clipping and batch sampling.

Checkpointing lives in `checkpoint.py`; its functions are re-exported here so that
`from NLM.min_lm.transformer.utils import save_checkpoint` keeps working.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from NLM.min_lm.options import LR_SCHEDULES
from NLM.min_lm.transformer.checkpoint import load_checkpoint, load_model, save_checkpoint

__all__ = [
    "cross_entropy",
    "get_lr_cosine_schedule",
    "get_lr_wsd_schedule",
    "lr_at",
    "gradient_clipping",
    "get_batch",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
]


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean of -log softmax(logits)[target] over all leading dimensions.

    logits: (..., vocab); targets: (...) integer class ids. Computed as logsumexp(x) - x[target]
    with the row maximum subtracted first, so logits of 1e4 do not overflow exp; low-precision
    logits are upcast to float32 so the sum over a large vocabulary keeps its precision.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    # The loss does not depend on the shift, so no gradient needs to flow through the maximum.
    row_max = logits.amax(dim=-1, keepdim=True).detach()
    log_sum_exp = (logits - row_max).exp().sum(dim=-1).log() + row_max.squeeze(-1)
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (log_sum_exp - target_logit).mean()


def get_lr_cosine_schedule(
    it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int, cosine_cycle_iters: int
) -> float:
    """Linear warmup to max, cosine decay to min at `cosine_cycle_iters`, then constant min.

    it < warmup:                 max * it / warmup
    warmup <= it <= cycle:       min + (1 + cos(pi * (it - warmup) / (cycle - warmup))) / 2 * (max - min)
    it > cycle:                  min
    """
    if it < warmup_iters:
        return max_learning_rate * it / warmup_iters
    if it > cosine_cycle_iters or cosine_cycle_iters == warmup_iters:
        return min_learning_rate
    progress = (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)
    return min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (
        max_learning_rate - min_learning_rate
    )


def get_lr_wsd_schedule(
    it: float,
    max_learning_rate: float,
    min_learning_rate: float,
    warmup_iters: int,
    total_iters: int,
    decay_frac: float,
) -> float:
    """Warmup-stable-decay: linear warmup to max, constant max, then a linear decay to min over the last
    `decay_frac` of the `total_iters`; constant min afterwards.

    Why: most of a run at the peak rate makes fast progress, and the short final decay gets the loss that
    a cosine schedule reaches only at its very end. The stable stage does not depend on the run's length,
    so a run can be extended (or its checkpoints decayed) without starting over.

    it < warmup:                  max * it / warmup
    warmup <= it < start:         max                                   start = max(warmup, (1 - frac) total)
    start <= it < total:          max + (min - max) * (it - start) / (total - start)
    it >= total:                  min
    `it` may be fractional (a schedule driven by elapsed time passes an effective iteration).
    """
    if it < warmup_iters:
        return max_learning_rate * it / warmup_iters
    if it >= total_iters:
        return min_learning_rate
    decay_start = max(warmup_iters, total_iters * (1.0 - decay_frac))
    if it < decay_start:
        return max_learning_rate
    progress = (it - decay_start) / (total_iters - decay_start)
    return max_learning_rate + (min_learning_rate - max_learning_rate) * progress


def lr_at(
    schedule: str,
    it: float,
    total_iters: int,
    max_learning_rate: float,
    min_learning_rate: float,
    warmup_iters: int,
    decay_frac: float = 0.2,
) -> float:
    """The learning rate of schedule `schedule` ("cosine" or "wsd") at iteration `it` of `total_iters`.

    The one place a training loop asks for its learning rate; `decay_frac` matters to "wsd" only.
    """
    if schedule == "cosine":
        return get_lr_cosine_schedule(it, max_learning_rate, min_learning_rate, warmup_iters, total_iters)
    if schedule == "wsd":
        return get_lr_wsd_schedule(it, max_learning_rate, min_learning_rate, warmup_iters, total_iters,
                                   decay_frac)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {LR_SCHEDULES}")


@torch.no_grad()
def global_grad_norm(parameters: Iterable[torch.nn.Parameter], *, foreach: bool = True) -> Tensor:
    """The L2 norm of all gradients together (as if concatenated into one vector), in float32.

    `foreach` computes the per-tensor norms with torch's multi-tensor kernel (a few launches in all);
    `foreach=False` is the reference, one norm per tensor. A 0-dim tensor: nothing waits for the device.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    if foreach:
        norms = torch._foreach_norm(grads, 2.0, dtype=torch.float32)
    else:
        norms = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms))


@torch.no_grad()
def gradient_clipping(
    parameters: Iterable[torch.nn.Parameter], max_l2_norm: float, eps: float = 1e-6, *, foreach: bool = True
) -> Tensor:
    """Scale all gradients in place so that their global L2 norm is at most `max_l2_norm`.

    The norm is taken over all gradients together (as if concatenated into one vector); if it
    exceeds the limit every gradient is multiplied by max_l2_norm / (norm + eps). Returns the norm
    before clipping (a 0-dim tensor: reading it forces no GPU synchronisation unless you print it).
    `foreach` computes the norms and the scaling with torch's multi-tensor kernels; `foreach=False` is
    the reference, one norm and one multiply per tensor.
    """
    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = global_grad_norm(parameters, foreach=foreach)
    # min(1, ...) instead of an `if`: no host-device synchronisation on the norm's value.
    scale = (max_l2_norm / (norm + eps)).clamp(max=1.0)
    if foreach and len({(g.dtype, g.device) for g in grads}) == 1:
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))
    else:
        for g in grads:
            g.mul_(scale.to(g.dtype))
    return norm


def get_batch(
    dataset: np.ndarray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    generator: np.random.Generator | torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample `batch_size` random windows of `context_length + 1` tokens: inputs and next-token targets.

    Works on a `np.memmap` without reading the whole file: only the sampled windows are touched.
    `generator` (a numpy Generator or a torch Generator; default torch's global RNG) makes the
    sampling reproducible, e.g. one seeded generator per data-parallel rank.
    Returns two LongTensors (batch_size, context_length) on `device`; y[:, i] is the token after x[:, i].
    """
    num_starts = len(dataset) - context_length
    if num_starts < 1:
        raise ValueError(f"dataset of {len(dataset)} tokens is too short for context_length={context_length}")
    if isinstance(generator, np.random.Generator):
        starts = generator.integers(0, num_starts, size=batch_size)
    else:
        starts = torch.randint(0, num_starts, (batch_size,), generator=generator).numpy()
    return batch_windows(dataset, starts, context_length, device)


def batch_windows(tokens: np.ndarray, starts: np.ndarray, context_length: int,
                  device: str | torch.device) -> tuple[Tensor, Tensor]:
    """Inputs and next-token targets for the windows of `context_length + 1` tokens starting at `starts`.

    Only those windows are read (so a memory-mapped file stays on disk) and moved to `device` in one
    copy; on CUDA from pinned memory, asynchronously, overlapping the previous step's compute.
    """
    batch = torch.from_numpy(tokens[starts[:, None] + np.arange(context_length + 1)].astype(np.int64))
    device = torch.device(device)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    return batch[:, :-1], batch[:, 1:]
