"""The building blocks of the Transformer, written from plain tensor operations.

Each module owns its weights as `nn.Parameter`s (no biases anywhere) and takes `device` / `dtype`
so a model can be built directly on the GPU or in bfloat16 without a copy.

Initialisation (why these numbers): a linear map y = W x keeps the activation scale roughly
constant when Var(W) = 2 / (fan_in + fan_out) (Glorot), so `Linear` draws W ~ N(0, that) and
`Embedding` draws N(0, 1): token vectors then start at unit scale, which is what RMSNorm expects.
Both are truncated at 3 standard deviations so no single weight starts as an outlier.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# How a module computes: "fast" uses torch's fused kernels, "reference" the from-primitives formulas
# written out below. Both give the same results (the tests compare them); the default is fast.
IMPLS = ("fast", "reference")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def _truncated_normal(shape: tuple[int, ...], std: float, device, dtype) -> nn.Parameter:
    """A parameter drawn from N(0, std^2) truncated to [-3 std, 3 std].

    Drawn in float32 and then cast: the truncation routine is not implemented for every
    low-precision dtype on every device.
    """
    weight = torch.empty(shape, device=device, dtype=torch.float32)
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
    return nn.Parameter(weight.to(dtype or torch.get_default_dtype()))


class Linear(nn.Module):
    """y = x W^T with W of shape (out_features, in_features) and no bias."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        std = math.sqrt(2.0 / (in_features + out_features))
        self.weight = _truncated_normal((out_features, in_features), std, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        # A matmul against the transposed view: one GEMM over all leading dims, no copy of W.
        return x @ self.weight.T

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Embedding(nn.Module):
    """A lookup table: row i of `weight` (num_embeddings, embedding_dim) is the vector of token i."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = _truncated_normal((num_embeddings, embedding_dim), 1.0, device, dtype)

    def forward(self, token_ids: Tensor) -> Tensor:
        return self.weight[token_ids]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, over the last dimension.

    The mean of squares is computed in at least float32 (bfloat16 inputs are upcast, float64 stays
    float64): squaring and summing hundreds of bf16 values loses most of their precision. The
    result is returned in the input dtype. `impl="fast"` computes the same with torch's `F.rms_norm`
    (one fused kernel where the backend has one, instead of five elementwise passes and their backward).
    """

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None, *, impl: str = "fast"):
        super().__init__()
        self.eps = eps
        self.impl = check_impl(impl)
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        in_dtype = x.dtype
        x = x.to(torch.promote_types(in_dtype, torch.float32))
        weight = self.weight.to(x.dtype)
        if self.impl == "fast":
            return F.rms_norm(x, weight.shape, weight, self.eps).to(in_dtype)
        inv_rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x * inv_rms * weight).to(in_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, impl={self.impl}"


def silu(x: Tensor) -> Tensor:
    """SiLU (a.k.a. swish): x * sigmoid(x)."""
    return x * torch.sigmoid(x)


def softmax(x: Tensor, dim: int) -> Tensor:
    """exp(x) / sum(exp(x)) along `dim`, shifted by the maximum so exp never overflows.

    Subtracting a constant from every entry leaves the softmax unchanged; after subtracting the
    maximum the largest exponent is exp(0) = 1. A row that is entirely -inf (nothing to attend to)
    gives NaN, as the mathematical definition does.
    """
    shifted = x - x.amax(dim=dim, keepdim=True)
    exp = torch.exp(shifted)
    return exp / exp.sum(dim=dim, keepdim=True)


class SwiGLU(nn.Module):
    """The gated feed-forward layer: w2(silu(w1 x) * w3 x).

    The gate silu(w1 x) decides, per hidden unit, how much of the linear feature w3 x passes.
    d_ff is usually about 8/3 * d_model so that the three matrices cost what two 4*d_model ones would.
    `impl="fast"` takes torch's one-kernel `F.silu` instead of `silu` above (two passes forward, three back).
    """

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None, *, impl: str = "fast"):
        super().__init__()
        self.impl = check_impl(impl)
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        gate = F.silu(self.w1(x)) if self.impl == "fast" else silu(self.w1(x))
        return self.w2(gate * self.w3(x))
