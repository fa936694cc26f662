"""Data-parallel training across GPUs and machines, wrapped around an unchanged model and trainer.

The same `train` command runs alone or under `torchrun`:

    torchrun --standalone --nproc_per_node 8 -m NLM.min_lm.scripts.train ...

torchrun starts one process ("rank") per device and tells each one who it is through environment
variables: RANK (0..WORLD_SIZE-1 over all machines), LOCAL_RANK (its index on this machine, which picks
its GPU) and WORLD_SIZE, plus MASTER_ADDR / MASTER_PORT where the ranks meet. Without those variables
the program is a single process and every function here is a no-op, so the trainer has one code path.

Data parallelism in one paragraph: every rank holds a full copy of the model and runs forward and
backward on its own slice of the global batch. DistributedDataParallel (DDP) averages the gradients
over all ranks during backward, so after `optimizer.step()` the copies stay identical, exactly as if
one process had trained on the whole global batch. With gradient accumulation the averaging is only
needed on the last micro-step; `sync_context` skips it on the others.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from NLM.min_lm.device import resolve_device
from NLM.min_lm.errors import UserError

# The variables torchrun sets for every rank; all three or none.
_RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
# Where the ranks meet (torchrun sets them too); needed only when there is more than one rank.
_RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT")
# DDP option that stops re-broadcasting buffers before every forward; recent PyTorch renamed it.
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the job. The default is a single process: rank 0 of 1."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes metrics and saves checkpoints, so files are written once."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when there are other ranks to talk to."""
        return self.world_size > 1


def context_from_env(env: Mapping[str, str]) -> DistContext:
    """Read RANK, LOCAL_RANK and WORLD_SIZE (as torchrun sets them); none of them means one process."""
    present = [name for name in _RANK_VARS if name in env]
    if not present:
        return DistContext()
    missing = [name for name in _RANK_VARS if name not in env]
    if missing:
        raise UserError(
            f"environment sets {', '.join(present)} but not {', '.join(missing)}: "
            "launch with torchrun, or set RANK, LOCAL_RANK and WORLD_SIZE together"
        )
    values = {}
    for name in _RANK_VARS:
        try:
            values[name] = int(env[name])
        except ValueError:
            raise UserError(f"environment variable {name}={env[name]!r} is not an integer") from None
    rank, local_rank, world_size = values["RANK"], values["LOCAL_RANK"], values["WORLD_SIZE"]
    if world_size < 1:
        raise UserError(f"environment variable WORLD_SIZE={world_size} must be at least 1")
    if not 0 <= rank < world_size:
        raise UserError(f"environment variable RANK={rank} must lie in 0..{world_size - 1} (WORLD_SIZE)")
    if not 0 <= local_rank <= rank:
        raise UserError(f"environment variable LOCAL_RANK={local_rank} must lie in 0..{rank} (RANK)")
    if world_size > 1:
        unset = [name for name in _RENDEZVOUS_VARS if not env.get(name)]
        if unset:
            raise UserError(
                f"WORLD_SIZE={world_size} but {' and '.join(unset)} not set: "
                "launch with torchrun, which sets where the ranks meet"
            )
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size)


def setup_distributed(device: str) -> tuple[DistContext, torch.device]:
    """Read torchrun's environment, pick this rank's device and join the process group.

    NCCL moves gradients between GPUs; gloo does it between CPU processes. With a single rank nothing
    is initialised, so the same trainer runs unchanged outside torchrun.
    """
    ctx = context_from_env(os.environ)
    resolved = resolve_device(device, ctx)
    if resolved.type == "cuda" and resolved.index is not None:
        torch.cuda.set_device(resolved)
    if ctx.enabled and not dist.is_available():
        raise UserError(f"WORLD_SIZE={ctx.world_size} but this PyTorch build has no torch.distributed")
    if ctx.enabled and not dist.is_initialized():
        if resolved.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=resolved)
        else:
            dist.init_process_group(backend="gloo")
    return ctx, resolved


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """Wrap the model in DDP when there are several ranks, so backward averages gradients across them.

    DDP also copies rank 0's initial weights to every rank, so all copies start equal. Buffers are not
    re-broadcast on every forward: the LM's only buffers (RoPE tables) are computed identically everywhere.
    """
    if not ctx.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    # gradient_as_bucket_view: the gradients are views into DDP's communication buckets, so they are not
    # copied into the buckets and back on every step (and not stored twice)
    return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True,
                                   **_NO_FORWARD_BUFFER_SYNC)


@contextlib.contextmanager
def sync_context(model: nn.Module, ctx: DistContext, sync: bool) -> Iterator[None]:
    """Skip DDP's gradient averaging on micro-steps that only accumulate (`sync=False`).

    Gradients then pile up locally and are averaged once, on the micro-step with `sync=True`, which gives
    the same result with one round of communication per optimizer step instead of one per micro-step.
    """
    if ctx.enabled and not sync:
        with model.no_sync():
            yield
    else:
        yield


def all_reduce_mean(value: float, ctx: DistContext, device: torch.device) -> float:
    """The mean of `value` over all ranks (e.g. each rank's loss), identical on every rank.

    The tensor lives on `device` because NCCL only reduces GPU tensors; float64 keeps the sum exact enough
    that the logged loss does not depend on the number of ranks.
    """
    if not ctx.enabled:
        return float(value)
    total = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.item() / ctx.world_size


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The element-wise sum of `values` (a tensor on this rank's device) over all ranks; itself alone.

    Several numbers that must be agreed on (a loss, a flag, a stop request) travel in one tensor, so one
    collective and one device-to-host read serve them all.
    """
    if ctx.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def teardown(ctx: DistContext) -> None:
    """Leave the process group (call it in a `finally`); safe to call twice or when none was joined.

    Drop the DDP model before calling it. A DDP module freed after its process group is gone can hang the
    process as it exits (seen with gloo on a loaded 2-core machine, in about one launch in three): the last
    references to a finished trainer often sit in reference cycles, so those are collected first.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
