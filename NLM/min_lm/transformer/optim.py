"""AdamW: Adam with decoupled weight decay, and the usual split into decay / no-decay groups.

For every parameter p with gradient g, step t (from 1), learning rate lr:

    m = b1 m + (1 - b1) g                 first moment (running mean of g)
    v = b2 v + (1 - b2) g^2               second moment (running mean of g^2)
    p = p - lr * wd * p                   weight decay, applied to p directly ("decoupled")
    p = p - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)

The (1 - b^t) factors undo the bias of m and v towards their zero initialisation in early steps.
Decoupling the decay from the gradient means it shrinks every weight by the same factor,
rather than being rescaled per weight by Adam's 1/sqrt(v) as L2 regularisation would be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from NLM.min_lm.transformer.modules import Embedding, RMSNorm

ADAMW_IMPLS = ("fused", "foreach", "reference")


class AdamW(torch.optim.Optimizer):
    """AdamW with bias correction; `params` may be an iterable of tensors or of parameter-group dicts.

    `impl` picks how the update is applied, with identical arithmetic:
    - "reference": one parameter at a time, the formulas above line by line (~8 passes per parameter);
    - "foreach": each line for all parameters of a group at once with torch's `_foreach_*` kernels
      (a handful of launches per step, but still one pass over memory per line);
    - "fused": torch's fused AdamW kernel, which reads g, m, v, p once and writes m, v, p once.
    The default is "fused" where torch has that kernel (CPU, CUDA, MPS), else "foreach".
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        *,
        impl: str | None = None,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"AdamW needs lr, eps, weight_decay >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW betas must lie in [0, 1), got {betas}")
        if impl is not None and impl not in ADAMW_IMPLS:
            raise ValueError(f"AdamW impl must be one of {ADAMW_IMPLS}, got {impl!r}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.impl = impl

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
            update = _UPDATES[self.impl or _default_impl(params[0].device)]
            update(params, [self.state[p] for p in params], group)
        return loss


def _default_impl(device: torch.device) -> str:
    return "fused" if device.type in ("cpu", "cuda", "mps") else "foreach"


def _update_one_by_one(params: list[torch.Tensor], states: list[dict], group: dict) -> None:
    lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    for p, state in zip(params, states, strict=True):
        t, m, v, g = state["step"], state["exp_avg"], state["exp_avg_sq"], p.grad
        m.lerp_(g, 1 - beta1)  # m = b1 m + (1 - b1) g
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.mul_(1 - lr * weight_decay)
        denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))


def _update_foreach(params: list[torch.Tensor], states: list[dict], group: dict) -> None:
    """The same update as `_update_one_by_one`, each line applied to the whole list of tensors."""
    lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    grads = [p.grad for p in params]
    m = [state["exp_avg"] for state in states]
    v = [state["exp_avg_sq"] for state in states]
    steps = [state["step"] for state in states]
    torch._foreach_lerp_(m, grads, 1 - beta1)
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
    torch._foreach_mul_(params, 1 - lr * weight_decay)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in steps])
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, m, denom, [-lr / (1 - beta1**t) for t in steps])


def _update_fused(params: list[torch.Tensor], states: list[dict], group: dict) -> None:
    """The same update in torch's fused kernel; it reads the step counts as tensors on the device."""
    lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    device = params[0].device
    step_tensors: dict[int, torch.Tensor] = {}  # one small tensor per distinct step count, not per parameter
    for step in {state["step"] for state in states}:
        step_tensors[step] = torch.tensor(float(step), device=device)
    steps = [step_tensors[state["step"]] for state in states]
    torch._fused_adamw_(
        params, [p.grad for p in params], [state["exp_avg"] for state in states],
        [state["exp_avg_sq"] for state in states], [], steps,
        lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False,
    )


_UPDATES = {"reference": _update_one_by_one, "foreach": _update_foreach, "fused": _update_fused}


def param_groups(
    model: nn.Module, weight_decay: float, decay_embeddings_and_norms: bool = False
) -> list[dict]:
    """Split `model`'s parameters into a decayed group and a group with weight_decay 0.

    By default the matrices of linear maps are decayed and the embedding table and the norm
    gains are not: a norm gain of 1 and an embedding row are not "complexity" to be shrunk (a
    rarely seen token's row would just fade towards zero). Pass the result to `AdamW`.
    """
    no_decay_ids: set[int] = set()
    if not decay_embeddings_and_norms:
        for module in model.modules():
            if isinstance(module, (Embedding, RMSNorm)):
                no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in no_decay_ids], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay_ids], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]
