"""Train a byte-level BPE tokenizer on a UTF-8 text file and save it in GPT-2's file format.

Writes <output_dir>/<stem>_vocab.json and <output_dir>/<stem>_merges.txt, where <stem> is the input
file's name without its extension (data/train.txt -> tokenizers/train_vocab.json).
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from NLM.min_lm.args import arg, run_command
from NLM.min_lm.errors import UserError
from NLM.min_lm.tokenization import END_OF_TEXT, BPETokenizer, train_bpe


@dataclass
class TrainTokenizerConfig:
    input: str = field(metadata=arg("UTF-8 text file to train on", positional=True))
    vocab_size: int = field(default=10_000, metadata=arg("tokens in the vocabulary, special tokens included"))
    output_dir: str = field(default="tokenizers", metadata=arg("folder for the vocab and merges files"))
    special_tokens: list[str] = field(
        default_factory=lambda: [END_OF_TEXT],
        metadata=arg("special tokens, never split or merged (give the flag alone for none)"),
    )
    num_workers: int | None = field(
        default=None, metadata=arg("processes counting pre-tokens (default: all CPUs)")
    )
    progress: bool = field(default=True, metadata=arg("show progress bars"))


def run(config: TrainTokenizerConfig) -> tuple[Path, Path]:
    """Train, save, print a summary; returns the paths of the vocab and merges files."""
    if config.num_workers is not None and config.num_workers < 1:
        raise UserError(f"--num_workers must be at least 1, got {config.num_workers}")
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {output_dir} exists and is not a directory")
    stem = Path(config.input).stem
    vocab_path, merges_path = output_dir / f"{stem}_vocab.json", output_dir / f"{stem}_merges.txt"

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnicodeWarning)
        vocab, merges = train_bpe(
            config.input,
            config.vocab_size,
            config.special_tokens,
            num_workers=config.num_workers,
            verbose=config.progress,
        )
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    seconds = time.perf_counter() - start

    BPETokenizer(vocab, merges, config.special_tokens).save(vocab_path, merges_path)
    specials = {token.encode("utf-8") for token in config.special_tokens}
    longest = max((token for token in vocab.values() if token not in specials), key=len)
    print(f"trained in {seconds:.1f} s: {len(vocab)} tokens ({len(merges)} merges)")
    print(f"longest token: {longest.decode('utf-8', errors='replace')!r} ({len(longest)} bytes)")
    print(f"wrote {vocab_path} and {merges_path}")
    return vocab_path, merges_path


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.train_tokenizer") -> int:
    return run_command(TrainTokenizerConfig, run, argv, prog, __doc__)


if __name__ == "__main__":
    sys.exit(main())
