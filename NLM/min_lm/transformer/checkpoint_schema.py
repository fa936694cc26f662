"""What a checkpoint must look like, checked once when it is read, for every command that reads one.

`torch.load(weights_only=True)` guarantees only that a file holds plain data. A file that loads can
still be malformed (hand-edited, written by another program, damaged): a `model_config` with an extra
key or 0 heads, a vocabulary of 10^12 that would ask for terabytes, `model` that is not a dict, an
iteration that is a string, an RNG state of the wrong length. Each would otherwise surface much later
as a traceback (or a huge allocation). Here each becomes one line naming the file and the entry.

Every value is checked by the code that will consume it where that is possible (a fresh generator
takes the RNG state, a "meta" model with no memory gives the shapes the weights must have), so the
rules here cannot drift from what loading needs.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import numpy as np
import torch

from NLM.min_lm.errors import UserError
from NLM.min_lm.transformer.model import ModelConfig, TransformerLM

#: Entries `minlm train` adds, which `--resume` needs.
TRAINING_STATE_KEYS = ("sampler_state", "best_val_loss", "elapsed")


def _is_optimizer_state(state: object) -> bool:
    """A torch optimizer's state dict, or CombinedOptimizer's list of them (--optimizer muon)."""
    if isinstance(state, dict) and isinstance(state.get("optimizers"), list):
        return all(map(_is_optimizer_state, state["optimizers"]))
    return isinstance(state, dict) and isinstance(state.get("state"), dict) and isinstance(
        state.get("param_groups"), list)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_checkpoint(checkpoint: Any, src: object) -> None:
    """Raise UserError naming `src` and the first entry of `checkpoint` that is malformed."""

    def bad(what: str) -> UserError:
        return UserError(f"checkpoint {src} is malformed: {what}")

    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "iteration" not in checkpoint:
        raise UserError(f"checkpoint {src} is not a min_lm checkpoint (no 'model' / 'iteration' entries)")
    model = checkpoint["model"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        raise bad("'model' must map weight names to tensors")
    iteration = checkpoint["iteration"]
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise bad(f"'iteration' must be a non-negative integer, got {iteration!r}")
    optimizer = checkpoint.get("optimizer")
    if optimizer is not None and not _is_optimizer_state(optimizer):
        raise bad("'optimizer' must be an optimizer state dict (with 'state' and 'param_groups'), "
                  "a list of them under 'optimizers' (Muon with AdamW), or None")
    if checkpoint.get("model_config") is not None:
        _check_shapes(model_config_from_dict(checkpoint["model_config"], src), model, bad)
    if "rng" in checkpoint:
        _check_rng(checkpoint["rng"], bad)
    if "sampler_state" in checkpoint:
        try:
            np.random.default_rng().bit_generator.state = checkpoint["sampler_state"]
        except (TypeError, ValueError, KeyError) as e:
            raise bad(f"'sampler_state' is not a batch sampler's state ({e})") from None
    best = checkpoint.get("best_val_loss")
    if best is not None and not _real(best):
        raise bad(f"'best_val_loss' must be a finite number or None, got {best!r}")
    elapsed = checkpoint.get("elapsed", 0.0)
    if not _real(elapsed) or elapsed < 0:
        raise bad(f"'elapsed' must be a non-negative number of seconds, got {elapsed!r}")
    if "train_config" in checkpoint and not isinstance(checkpoint["train_config"], dict):
        raise bad(f"'train_config' must be a mapping, got {type(checkpoint['train_config']).__name__}")


def model_config_from_dict(data: Any, src: object) -> ModelConfig:
    """The stored `model_config` as a ModelConfig: exactly its fields, each of the right type and range."""
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    if not isinstance(data, dict):
        raise UserError(f"checkpoint {src} is malformed: 'model_config' must be a mapping")
    unknown = sorted(map(str, set(data) - set(fields)))
    missing = [name for name, f in fields.items() if f.default is dataclasses.MISSING and name not in data]
    if unknown or missing:
        raise UserError(f"checkpoint {src} is malformed: 'model_config' has unknown key(s) {unknown} and "
                        f"lacks {missing}")
    try:
        return ModelConfig(**data)
    except ValueError as e:
        raise UserError(f"checkpoint {src} is malformed: model_config: {e}") from None


def _check_shapes(config: ModelConfig, model: dict[str, torch.Tensor], bad) -> None:
    """The weights must have the shapes the config implies (a model on the "meta" device costs no memory)."""
    from NLM.min_lm.transformer.checkpoint import clean_state_dict  # here: checkpoint.py imports this module


    expected = TransformerLM.from_config(config, device="meta").state_dict()
    for name, tensor in clean_state_dict(model).items():
        if name in expected and tensor.shape != expected[name].shape:
            raise bad(f"weight {name} has shape {tuple(tensor.shape)}, but model_config "
                      f"{dataclasses.asdict(config)} implies {tuple(expected[name].shape)}")


def _check_rng(states: Any, bad) -> None:
    """Each random-number-generator state must be accepted by a fresh generator of its kind."""
    try:
        torch.Generator().set_state(states["torch"])
        bit_generator, keys, pos, has_gauss, cached = states["numpy"]
        np.random.RandomState().set_state((bit_generator, np.array(keys, dtype=np.uint32), pos, has_gauss,
                                           cached))
        version, python_state, gauss_next = states["python"]
        random.Random().setstate((version, tuple(python_state), gauss_next))
        if "cuda" in states and not all(isinstance(s, torch.Tensor) for s in states["cuda"]):
            raise TypeError("cuda states must be tensors")
    except Exception as e:  # whatever the consumer raises: the state is not one it accepts
        raise bad(f"'rng' does not hold valid random-number-generator states ({type(e).__name__}: "
                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
