"""Honest speed figures: tokens/s of the training steps alone, and model FLOPs utilisation (MFU) on GPUs.

tokens/s counts only time spent in training steps: evaluation, checkpoints, plots and the first step of a
session (where torch.compile compiles) are timed separately and left out, and the device is synchronised
at the edges of those pauses, so queued GPU work is charged to the steps that queued it.

MFU = achieved model FLOP/s / the GPU's peak dense bf16 FLOP/s (the vendor's spec sheet, a table below,
or --peak_tflops). The model FLOPs per trained token are

    6 * N  +  6 * L * T * d_model

N = weights that take part in matmuls (all but the input embedding table, a lookup; the untied lm_head
counts). 6 = 2 FLOPs per multiply-add x (1 forward + 2 backward passes). The second term is attention: per
layer and token, Q K^T and (weights) V cost 2 * T * d_model FLOPs each in the forward pass, halved because
causal attention skips the masked half, x 3 for forward + backward. Recomputation (activation
checkpointing) is not counted: MFU measures useful work.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from NLM.min_lm.transformer import ModelConfig

# Dense bf16 tensor-core peaks from the vendors' spec sheets, in TFLOP/s; matched against the device name.
GPU_BF16_PEAK_TFLOPS = {
    "B200": 2250.0,
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10": 125.0,
}


def flops_per_token(config: ModelConfig) -> float:
    """6 N + 6 L T d_model (see the module docstring)."""
    c = config
    per_layer = 4 * c.d_model**2 + 3 * c.d_model * c.d_ff
    matmul_weights = c.num_layers * per_layer + c.vocab_size * c.d_model
    return 6 * matmul_weights + 6 * c.num_layers * c.context_length * c.d_model


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """The device's peak bf16 FLOP/s: the override, else the table entry for a CUDA GPU; None if unknown."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for model, tflops in GPU_BF16_PEAK_TFLOPS.items():  # the more specific names come first
        if model in name:
            return tflops * 1e12
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it means that work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Throughput:
    """Counts training tokens and training time between two `rate()` reads, minus the `paused()` spans."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = time.perf_counter()
        self.tokens = 0
        self.paused_seconds = 0.0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is not training time (evaluation, checkpoints, plots, compilation)."""
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.paused_seconds += time.perf_counter() - start

    def rate(self) -> float:
        """Tokens per training second since the last call (call it after the device has been waited for)."""
        now = time.perf_counter()
        seconds = now - self.start - self.paused_seconds
        rate = self.tokens / seconds if self.tokens and seconds > 0 else 0.0
        self.start, self.tokens, self.paused_seconds = now, 0, 0.0
        return rate
