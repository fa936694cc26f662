"""Train a byte-level BPE tokenizer on a corpus and save it in GPT-2's file format.

The corpus is a .txt, .jsonl, .jsonl.gz, .json or .parquet file (each JSON object or Parquet row is one
document, its text in --text_field), a folder or a quoted glob, as for `minlm tokenize`. Writes
<output_dir>/<name>_vocab.json and <output_dir>/<name>_merges.txt, where <name> is the input's name
without its extension (data/train.jsonl.gz -> tokenizers/train_vocab.json).
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
from NLM.min_lm.tokenization.documents import BadRecords, corpus_name, resolve_inputs


@dataclass
class TrainTokenizerConfig:
    input: str = field(metadata=arg("corpus to train on: a .txt, .jsonl, .jsonl.gz, .json or .parquet file, "
                                    "a folder or a quoted glob", positional=True))
    vocab_size: int = field(default=10_000, metadata=arg("tokens in the vocabulary, special tokens included"))
    output_dir: str = field(default="tokenizers", metadata=arg("folder for the vocab and merges files"))
    special_tokens: list[str] = field(
        default_factory=lambda: [END_OF_TEXT],
        metadata=arg("special tokens, never split or merged (give the flag alone for none)"),
    )
    num_workers: int | None = field(
        default=None, metadata=arg("processes counting pre-tokens (default: all CPUs)")
    )
    text_field: str = field(default="text", metadata=arg("the field (column) holding the text in JSON and "
                                                         "Parquet records"))
    skip_bad_records: bool = field(default=False, metadata=arg("skip and count records without usable text "
                                                               "instead of stopping at the first"))
    progress: bool = field(default=True, metadata=arg("show progress bars"))


def run(config: TrainTokenizerConfig) -> tuple[Path, Path]:
    """Train, save, print a summary; returns the paths of the vocab and merges files."""
    if config.num_workers is not None and config.num_workers < 1:
        raise UserError(f"--num_workers must be at least 1, got {config.num_workers}")
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {output_dir} exists and is not a directory")
    files = resolve_inputs(config.input, "input")
    name = corpus_name(config.input)
    vocab_path, merges_path = output_dir / f"{name}_vocab.json", output_dir / f"{name}_merges.txt"
    bad_records = BadRecords(skip=config.skip_bad_records)

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnicodeWarning)
        vocab, merges = train_bpe(
            files,
            config.vocab_size,
            config.special_tokens,
            num_workers=config.num_workers,
            verbose=config.progress,
            text_field=config.text_field,
            bad_records=bad_records,
        )
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if bad_records.count:
        print(f"warning: {config.input}: {bad_records.summary()}", file=sys.stderr)
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
