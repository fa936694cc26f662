"""Which device a command runs on: `--device auto|cpu|cuda|cuda:N|mps` -> a checked `torch.device`.

Every command that runs a model takes the same `--device` flag; training under torchrun additionally maps
each rank to its own GPU, so the rank's `DistContext` (from `NLM.min_lm.distributed`) can be passed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from NLM.min_lm.errors import UserError

if TYPE_CHECKING:
    from NLM.min_lm.distributed import DistContext


def resolve_device(device: str, ctx: DistContext | None = None) -> torch.device:
    """Turn the `--device` string into this rank's device.

    "auto" picks CUDA, then Apple's MPS, then the CPU. Under several ranks each one takes the GPU
    `cuda:{LOCAL_RANK}`, so `--device cuda` (or auto) is all a user writes. Without `ctx` (a single
    process, as in `minlm generate`) the device is taken as given.
    """
    several = ctx is not None and ctx.enabled  # ranks under torchrun
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device (try auto, cpu, cuda, cuda:1 or mps)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} requested but CUDA is not available on this machine")
        if several:
            if resolved.index is not None:
                raise UserError(
                    f"--device {device}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda"
                )
            resolved = torch.device("cuda", ctx.local_rank)
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserError(
                f"device {resolved} requested but this machine has {torch.cuda.device_count()} GPU(s)"
                + (" (more processes per node than GPUs?)" if several else "")
            )
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"--device {device} requested but MPS is not available on this machine")
        if several:
            raise UserError("training on several ranks needs --device cuda or cpu (MPS has no backend)")
    elif resolved.type != "cpu":
        raise UserError(f"--device {device}: min_lm trains on cpu, cuda or mps")
    return resolved
