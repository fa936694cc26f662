"""The whole pipeline in one command, offline: corpus -> tokenizer -> token ids -> model -> samples.

    minlm quickstart                  # the default run: 5 minutes of training, under 6 in all, any machine
    minlm quickstart --minutes 2      # a shorter (or longer) training, the same model
    minlm quickstart --tiny           # ~10 seconds: a tiny corpus and model, every stage once
    minlm quickstart --data a.txt     # your own UTF-8 text instead of the built-in corpus

The built-in corpus is the Python standard library's own source code, read from this Python's
installation (nothing is downloaded). Each stage calls the library function behind one of the other
commands, so --out_dir ends up holding exactly what running them by hand would make:

    train.txt, valid.txt                 the corpus, documents joined by <|endoftext|>, ~5% held out
    train_vocab.json, train_merges.txt   the tokenizer        (minlm train-tokenizer)
    train.npy, valid.npy                 the token ids        (minlm tokenize)
    model.pt, model_best.pt              the checkpoints      (minlm train)
    metrics.jsonl, loss.png              the training curves
    samples.txt                          text sampled from the best checkpoint (minlm generate)
    summary.json                         the numbers printed at the end

--tiny picks smaller defaults for every size flag; a size flag given explicitly still wins.
"""

from __future__ import annotations

import sys

from NLM.min_lm.args import run_command
from NLM.min_lm.quickstart.config import QuickstartConfig


def run(config: QuickstartConfig) -> dict:
    """Run the five stages; print the samples and a summary; return the summary (also in summary.json)."""
    from NLM.min_lm.quickstart.pipeline import run_quickstart  # torch: imported only when the command runs

    return run_quickstart(config)


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.quickstart") -> int:
    return run_command(QuickstartConfig, run, argv, prog, __doc__)


if __name__ == "__main__":
    sys.exit(main())
