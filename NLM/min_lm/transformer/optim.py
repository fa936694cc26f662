"""AdamW (Adam with decoupled weight decay, and the usual decay / no-decay split), and Muon beside it.

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


def _closure_loss(closure: Callable[[], float] | None) -> float | None:
    """torch's optimizer protocol: `step(closure)` re-evaluates the loss (with gradients on) first."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


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
        loss = _closure_loss(closure)
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


# ---------------------------------------------------------------------------------------------
# Muon: momentum SGD whose update is orthogonalised, for the hidden weight matrices
# ---------------------------------------------------------------------------------------------
#
# For a weight matrix W (out x in) with gradient G, momentum mu, learning rate lr:
#
#     B = mu B + G                          momentum buffer
#     U = G + mu B                          Nesterov: look one momentum step ahead
#     O = NewtonSchulz(U) ~ polar(U)        U = P S Q^T  ->  O ~ P Q^T: every singular value set to ~1
#     W = W - lr * wd * W                   decoupled weight decay, as in AdamW
#     W = W - lr * sqrt(max(1, out / in)) * O
#
# Why orthogonalise: the gradient of a matrix is typically dominated by a few directions (a few large
# singular values). Replacing U by P Q^T keeps its directions but gives every one the same step, so the rare
# directions learn as fast as the common ones; the step's size is set by lr alone, whatever the scale of G.
# Why the shape factor: O's singular values are ~1, so O maps an input of RMS 1 to an output of RMS about
# sqrt(in / out); sqrt(max(1, out / in)) lifts that to ~1 for the tall matrices (SwiGLU's w1 and w3).
# Muon is defined for matrices only: embeddings (a lookup, not a linear map of a hidden state), the output
# head and the norm gains stay with AdamW (`muon_param_groups` makes that split).

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # (a, b, c) of the quintic a x + b x^3 + c x^5
NS_STEPS = 5


def newton_schulz(G: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> torch.Tensor:
    """An approximation of the orthogonal polar factor P Q^T of G = P S Q^T, by a matrix polynomial.

    X is scaled so its largest singular value is at most 1 (the Frobenius norm bounds it), then each step
    applies p(x) = a x + b x^3 + c x^5 to every singular value at once: X <- a X + (b A + c A^2) X with
    A = X X^T. The coefficients trade exactness for speed: p has a large slope at 0 (a = 3.4) so small
    singular values grow fast, and after 5 steps every singular value that started above ~1e-3 of the
    largest lies in roughly [0.7, 1.2] rather than at exactly 1, which is all Muon needs. The singular
    vectors are untouched: the result is P p^5(S / |G|_F) Q^T. Computed in float32 (float64 stays).
    """
    a, b, c = NS_COEFFICIENTS
    X = G.to(torch.promote_types(G.dtype, torch.float32))
    tall = X.shape[-2] > X.shape[-1]
    if tall:  # work with the wide orientation: A = X X^T is then the smaller square
        X = X.mT
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if tall else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum SGD (Nesterov) with the update orthogonalised by `newton_schulz`; for 2-D parameters only.

    Every process of a data-parallel run holds the same all-reduced gradient, so each computes the same
    update itself (no communication beyond DDP's). State: one momentum buffer per matrix.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        ns_steps: int = NS_STEPS,
    ):
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"Muon needs lr, weight_decay >= 0, got {lr}, {weight_decay}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon momentum must lie in [0, 1), got {momentum}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                        ns_steps=ns_steps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon updates matrices only, got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(p.grad)  # B = mu B + G
                update = p.grad.add(buf, alpha=mu) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_steps"])
                p.mul_(1 - lr * wd)
                out_features, in_features = p.shape
                p.add_(update, alpha=-lr * max(1.0, out_features / in_features) ** 0.5)
        return loss


class CombinedOptimizer:
    """Several optimizers over disjoint parameters that act as one: Muon for the matrices, AdamW for the rest.

    It offers what the training loop and checkpoints use: `param_groups` (all of them, in order), `step`,
    `zero_grad`, and a `state_dict` that holds each optimizer's own state dict, so resuming is exact.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for optimizer in self.optimizers for p, s in optimizer.state.items()}

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = _closure_loss(closure)
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError(f"the saved optimizer state is not that of {len(self.optimizers)} combined "
                             f"optimizers (was the run trained with another --optimizer?)")
        for optimizer, state in zip(self.optimizers, saved, strict=True):
            optimizer.load_state_dict(state)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights inside `model.layers`: attention q/k/v/output and SwiGLU w1/w2/w3.

    They map one hidden state to another, which is what Muon's geometry is for; the embedding table, the
    output head and the norm gains are not, and stay with AdamW.
    """
    return [p for p in model.layers.parameters() if p.ndim == 2 and p.requires_grad]


OwnRates = list[tuple[nn.Parameter, float | None]]


def with_own_rates(groups: list[dict], lr: float, rates: OwnRates) -> list[dict]:
    """`groups` with each parameter that has a peak rate of its own in `rates` (not None) moved into a group
    of its own: same weight decay, `lr_scale` = rate / lr (see `set_lr`). With no such rate the groups come
    back unchanged, so optimizer states saved with them still load.

    What this is for: the embedding table and the output head (`own_rates`). An embedding row is updated
    only in steps whose batch holds its token, and every block reads the residual stream through a norm,
    so a much higher rate is both needed (rare rows learn in a short run) and safe (a larger row does not
    blow up the blocks' inputs); the modded-nanogpt speedrun gives its embeddings a rate tens of times
    its head's.
    """
    own = {id(p): rate for p, rate in rates if rate is not None}
    if own and lr <= 0:
        raise ValueError("rates of their own are set relative to lr, which must then be positive")
    result = []
    for group in groups:
        shared = [p for p in group["params"] if id(p) not in own]
        if shared:
            result.append({**group, "params": shared})
        result += [{**group, "params": [p], "lr_scale": own[id(p)] / lr}
                   for p in group["params"] if id(p) in own]
    return result


def own_rates(model: nn.Module, embed_lr: float | None, head_lr: float | None) -> OwnRates:
    """The (parameter, rate) pairs for `with_own_rates`: the embedding table and the output head of a
    TransformerLM; None leaves a weight at the shared rate."""
    return [(model.token_embeddings.weight, embed_lr), (model.lm_head.weight, head_lr)]


def muon_with_adamw(
    model: nn.Module,
    muon_lr: float,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    weight_decay: float = 0.0,
    momentum: float = 0.95,
    *,
    embed_lr: float | None = None,
    head_lr: float | None = None,
) -> CombinedOptimizer:
    """Muon (lr `muon_lr`, no weight decay) for the hidden matrices; AdamW (lr `lr`) for everything else,
    but the embedding table at `embed_lr` and the output head at `head_lr` where given.

    Each group records `lr_scale`, its peak learning rate over `lr`: a schedule that computes one learning
    rate for the run sets each group's to lr * lr_scale (see `set_lr`), so all follow the same shape.
    """
    matrices = hidden_matrices(model)
    taken = {id(p) for p in matrices}
    adamw_groups = [{**group, "params": [p for p in group["params"] if id(p) not in taken], "lr_scale": 1.0}
                    for group in param_groups(model, weight_decay)]
    adamw_groups = with_own_rates([group for group in adamw_groups if group["params"]], lr,
                                  own_rates(model, embed_lr, head_lr))
    muon = Muon([{"params": matrices, "lr_scale": muon_lr / lr if lr > 0 else 0.0}], lr=muon_lr,
                momentum=momentum)
    adamw = AdamW(adamw_groups, lr=lr, betas=betas, weight_decay=weight_decay)
    return CombinedOptimizer(muon, adamw)


def set_lr(optimizer: torch.optim.Optimizer | CombinedOptimizer, lr: float) -> None:
    """Set every group's learning rate to `lr` times its `lr_scale` (1 where the group has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
