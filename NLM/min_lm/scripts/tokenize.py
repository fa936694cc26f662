"""Encode corpora into .npy arrays of token ids, one array per input.

    python -m NLM.min_lm.scripts.tokenize --inputs train.jsonl.gz valid.txt \\
        --vocab_path vocab.json --merges_path merges.txt --output_dir data/ --workers 4

writes data/train.npy and data/valid.npy (uint16 when every id fits, else uint32), ready for
`np.load(path, mmap_mode="r")` in training. An input is a .txt, .jsonl, .jsonl.gz, .json or .parquet
file (each JSON object or Parquet row is one document, its text in --text_field), a folder (its files of
those kinds, sorted) or a quoted glob ('shards/train-*.parquet' -> train.npy); its documents are joined by
<|endoftext|>. Memory stays flat whatever the file size, and a failed or
interrupted run leaves no partial output (see `NLM.min_lm.tokenization.encode_files`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from NLM.min_lm.args import arg, run_command
from NLM.min_lm.errors import UserError
from NLM.min_lm.tokenization import END_OF_TEXT, load_tokenizer
from NLM.min_lm.tokenization.documents import corpus_name, resolve_inputs

if TYPE_CHECKING:
    from NLM.min_lm.tokenization.encode_files import EncodedFile


@dataclass
class TokenizeConfig:
    inputs: list[str] = field(metadata=arg("corpora to encode: .txt, .jsonl, .jsonl.gz, .json or .parquet "
                                           "files, folders or quoted globs"))
    vocab_path: str = field(metadata=arg("the tokenizer's vocab.json (GPT-2 format)"))
    merges_path: str = field(metadata=arg("the tokenizer's merges.txt (GPT-2 format)"))
    output_dir: str = field(default="tokenized_data",
                            metadata=arg("where to write <input name>.npy for each input"))
    text_field: str = field(default="text", metadata=arg("the field (column) holding the text in JSON and "
                                                         "Parquet records"))
    skip_bad_records: bool = field(default=False, metadata=arg("skip and count records without usable text "
                                                               "instead of stopping at the first"))
    special_tokens: list[str] = field(default_factory=lambda: [END_OF_TEXT],
                                      metadata=arg("strings encoded as single tokens"))
    workers: int = field(default=1, metadata=arg("number of encoding processes"))
    progress: bool = field(default=True, metadata=arg("show a progress bar and a summary"))

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")


def run(config: TokenizeConfig) -> list[EncodedFile]:
    """Encode each input to `output_dir/<name>.npy`; returns what was written."""
    # numpy: imported only when the command runs, so --help answers at once
    from NLM.min_lm.tokenization.encode_files import encode_files, format_summary

    inputs = [resolve_inputs(spec, "--inputs") for spec in config.inputs]  # all checked before any work
    outputs = [Path(config.output_dir) / f"{corpus_name(spec)}.npy" for spec in config.inputs]
    if len(set(outputs)) < len(outputs):
        raise UserError("--inputs: two inputs have the same name, so their outputs would collide")
    tokenizer = load_tokenizer(config.vocab_path, config.merges_path, config.special_tokens)
    results = encode_files(tokenizer, inputs, outputs, config.workers, config.progress, config.text_field,
                           config.skip_bad_records)
    for result in results:
        if result.bad_records.count:
            print(f"warning: {result.source}: {result.bad_records.summary()}", file=sys.stderr)
    if config.progress:
        print(format_summary(results))
    return results


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.tokenize") -> int:
    return run_command(TokenizeConfig, run, argv, prog, __doc__)


if __name__ == "__main__":
    sys.exit(main())
