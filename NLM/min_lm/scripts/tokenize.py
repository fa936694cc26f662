"""Encode text files into .npy arrays of token ids, one array per input file.

    python -m NLM.min_lm.scripts.tokenize --inputs train.txt valid.txt \\
        --vocab_path vocab.json --merges_path merges.txt --output_dir data/ --workers 4

writes data/train.npy and data/valid.npy (uint16 when every id fits, else uint32), ready for
`np.load(path, mmap_mode="r")` in training. Memory stays flat whatever the file size, and a failed or
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

if TYPE_CHECKING:
    from NLM.min_lm.tokenization.encode_files import EncodedFile


@dataclass
class TokenizeConfig:
    inputs: list[str] = field(metadata=arg("UTF-8 text files to encode"))
    vocab_path: str = field(metadata=arg("the tokenizer's vocab.json (GPT-2 format)"))
    merges_path: str = field(metadata=arg("the tokenizer's merges.txt (GPT-2 format)"))
    output_dir: str = field(default="tokenized_data",
                            metadata=arg("where to write <input name>.npy for each input"))
    special_tokens: list[str] = field(default_factory=lambda: [END_OF_TEXT],
                                      metadata=arg("strings encoded as single tokens"))
    workers: int = field(default=1, metadata=arg("number of encoding processes"))
    progress: bool = field(default=True, metadata=arg("show a progress bar and a summary"))

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")


def run(config: TokenizeConfig) -> list[EncodedFile]:
    """Encode each input file to `output_dir/<stem>.npy`; returns what was written."""
    # numpy: imported only when the command runs, so --help answers at once
    from NLM.min_lm.tokenization.encode_files import encode_files, format_summary

    inputs = [Path(p) for p in config.inputs]
    for path in inputs:
        if not path.is_file():
            raise UserError(f"--inputs: {path}: no such file")
    outputs = [Path(config.output_dir) / f"{path.stem}.npy" for path in inputs]
    if len(set(outputs)) < len(outputs):
        raise UserError("--inputs: two inputs have the same file name stem, so their outputs would collide")
    tokenizer = load_tokenizer(config.vocab_path, config.merges_path, config.special_tokens)
    results = encode_files(tokenizer, inputs, outputs, config.workers, config.progress)
    if config.progress:
        print(format_summary(results))
    return results


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.tokenize") -> int:
    return run_command(TokenizeConfig, run, argv, prog, __doc__)


if __name__ == "__main__":
    sys.exit(main())
