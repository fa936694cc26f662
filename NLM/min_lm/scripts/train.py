"""Train a Transformer language model on .npy token arrays made by `minlm tokenize`.
Writes a checkpoint (plus <stem>_best.pt), metrics.jsonl and loss.png; Ctrl-C saves and stops,
--resume continues exactly. --max_minutes M ends training after M minutes (the LR schedule then spans
them, whatever the machine's speed). Several GPUs: torchrun --nproc_per_node N -m NLM.min_lm.scripts.train ...
(--batch_size is per process).
"""

from __future__ import annotations

import sys

from NLM.min_lm.args import run_command
from NLM.min_lm.training.config import TrainConfig


def run(config: TrainConfig):
    """Train as `config` says and return the TrainResult (torch is imported here, so --help stays fast)."""
    from NLM.min_lm.training.trainer import train

    return train(config)


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.train") -> int:
    return run_command(TrainConfig, run, argv, prog, __doc__)


if __name__ == "__main__":
    sys.exit(main())
