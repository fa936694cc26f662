"""Training a TransformerLM on token files: `train(TrainConfig(...)) -> TrainResult`.

config.py   the settings (also the `minlm train` command line)
data.py     token files (memory-mapped, checked) and batch sampling
trainer.py  the loop: accumulation, clipping, schedule, validation, checkpoints, resumption
metrics.py  metrics.jsonl, loss.png, the summary
interrupt.py  Ctrl-C / SIGTERM -> save and stop

`TrainConfig` imports no torch, so `minlm train --help` and flag errors answer at once; the names that
need torch are imported on first use (PEP 562 module `__getattr__`), not when this package is.
"""

from __future__ import annotations

import importlib
from typing import Any

from NLM.min_lm.training.config import TrainConfig

# name -> the module that defines it, imported on first access
_LAZY = {"TrainResult": "metrics", "TrainingDiverged": "trainer", "train": "trainer"}

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
