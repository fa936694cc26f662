"""Saving and restoring training state so that a resumed run continues exactly where it stopped.

A checkpoint is a `torch.save`d dict of tensors and plain Python values only:

    model          the model's state dict (keys as in docs/api.md, no "_orig_mod." / "module." prefixes)
    optimizer      the optimizer's state dict
    iteration      the step to resume from
    model_config   the ModelConfig as a plain dict (so `load_model` can rebuild the model)
    rng            torch / numpy / python (/ cuda) random-number-generator states
    ...            any extra JSON-able fields passed to `save_checkpoint` (e.g. train_config)

Plain values let it be read with `torch.load(weights_only=True)`, which cannot execute code
from a malicious file. The file is written under a temporary name and renamed into place, so
an interrupted save never destroys the previous checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from NLM.min_lm.errors import UserError
from NLM.min_lm.fileio import atomic_path
from NLM.min_lm.transformer.model import ModelConfig, TransformerLM

RESERVED_KEYS = ("model", "optimizer", "iteration", "model_config", "rng")
WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DistributedDataParallel


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile / DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def clean_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the key prefixes that compile / DDP wrappers add, so checkpoints load into any model."""
    cleaned = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def _rng_states() -> dict[str, Any]:
    """All global RNG states, as tensors and plain lists (loadable with weights_only=True)."""
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [bit_generator, keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian)],
        "python": [version, list(python_state), gauss_next],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    bit_generator, keys, pos, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((bit_generator, np.array(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    version, python_state, gauss_next = states["python"]
    random.setstate((version, tuple(python_state), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    iteration: int,
    out: str | os.PathLike,
    **extra: Any,
) -> None:
    """Write model, optimizer, iteration, model config, RNG states and `extra` fields to `out` atomically."""
    clash = set(extra) & set(RESERVED_KEYS)
    if clash:
        raise ValueError(f"extra checkpoint fields {sorted(clash)} clash with reserved keys {RESERVED_KEYS}")
    plain_model = unwrap_model(model)
    config = getattr(plain_model, "config", None)
    checkpoint = {
        "model": clean_state_dict(plain_model.state_dict()),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "iteration": int(iteration),
        "model_config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None,
        "rng": _rng_states(),
        **extra,
    }
    with atomic_path(out) as tmp:
        torch.save(checkpoint, tmp)


def read_checkpoint(src: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU; a missing, truncated or foreign file raises UserError naming it."""
    if not os.path.isfile(src):
        raise UserError(f"checkpoint {src} does not exist")
    try:
        checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # not a zip of tensors, or one that would need to run code
        raise UserError(f"checkpoint {src} is not a PyTorch checkpoint of plain tensors") from e
    except Exception as e:  # torch raises RuntimeError, EOFError, ... for truncated or foreign files
        raise UserError(
            # torch's own message can run to many lines; its first says what went wrong
            f"checkpoint {src} is truncated or not a min_lm checkpoint "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "iteration" not in checkpoint:
        raise UserError(f"checkpoint {src} is not a min_lm checkpoint (no 'model' / 'iteration' entries)")
    return checkpoint


def load_model_state(model: nn.Module, state_dict: dict[str, torch.Tensor], src) -> None:
    """Put a checkpoint's weights into `model` (compiled or DDP-wrapped too); a mismatch names `src`."""
    try:
        unwrap_model(model).load_state_dict(clean_state_dict(state_dict))
    except RuntimeError as e:
        # torch lists every mismatch on its own line under a header; the first one tells the story
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 else lines[0]
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise UserError(f"checkpoint {src} does not match the model: {first}{more}") from e


def load_checkpoint(src: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Restore model weights, optimizer state and RNG states from `src`; return the saved iteration."""
    return restore_checkpoint(read_checkpoint(src), model, optimizer, src)


def restore_checkpoint(
    checkpoint: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer | None, src
) -> int:
    """`load_checkpoint` for a checkpoint already read (by `read_checkpoint`), so a caller that also
    needs its extra fields reads the file once."""
    load_model_state(model, checkpoint["model"], src)
    if optimizer is not None:
        if checkpoint.get("optimizer") is None:
            raise UserError(f"checkpoint {src} holds no optimizer state")
        optimizer.load_state_dict(checkpoint["optimizer"])
    if "rng" in checkpoint:
        _set_rng_states(checkpoint["rng"])
    return int(checkpoint["iteration"])


def read_model_checkpoint(
    path: str | os.PathLike,
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's ModelConfig and weights (wrapper prefixes stripped), and the whole checkpoint dict."""
    checkpoint = read_checkpoint(path)
    if not checkpoint.get("model_config"):
        raise UserError(f"checkpoint {path} has no model_config; it was not saved from a TransformerLM")
    return ModelConfig(**checkpoint["model_config"]), clean_state_dict(checkpoint["model"]), checkpoint


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **options: Any,
) -> tuple[TransformerLM, dict[str, Any]]:
    """Rebuild a `TransformerLM` from the config stored in checkpoint `path` and load its weights.

    dtype defaults to that of the stored weights. `options` go to the model (e.g. attn_impl).
    Returns the model (in eval mode) and the whole checkpoint dict (e.g. for its train_config).
    """
    config, state, checkpoint = read_model_checkpoint(path)
    stored = state.get("token_embeddings.weight")
    dtype = dtype or (stored.dtype if stored is not None else torch.float32)
    model = TransformerLM.from_config(config, device=device, dtype=dtype, **options)
    load_model_state(model, state, path)
    return model.eval(), checkpoint
