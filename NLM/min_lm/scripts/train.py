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
from NLM.min_lm.training.interrupt import stop_requests


def run(config: TrainConfig):
    """Train as `config` says and return the TrainResult (torch is imported here, so --help stays fast)."""
    from NLM.min_lm.training.trainer import train

    return train(config)


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.train") -> int:
    def run_to_the_end(config: TrainConfig):
        # SIGINT/SIGTERM ask training to stop and save; once one has, later ones are ignored until the
        # process exits: a signal during the final save or the exit cannot lose the checkpoint.
        with stop_requests(then_ignore=True):
            return run(config)

    return run_command(TrainConfig, run_to_the_end, argv, prog, __doc__)


if __name__ == "__main__":
    sys.exit(main())
