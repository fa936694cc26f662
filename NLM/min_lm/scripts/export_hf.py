"""Export a min_lm checkpoint and its tokenizer as a Hugging Face directory (a Llama model + tokenizer.json).

The result loads offline with transformers:
    AutoModelForCausalLM.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR)
and gives the same logits and the same token ids as min_lm.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from NLM.min_lm.args import arg, run_command
from NLM.min_lm.options import DTYPES
from NLM.min_lm.tokenization import END_OF_TEXT


@dataclass
class ExportConfig:
    checkpoint: str = field(metadata=arg("checkpoint file written by minlm train"))
    vocab_path: str = field(metadata=arg("vocab.json of the tokenizer the model was trained with"))
    merges_path: str = field(metadata=arg("merges.txt of that tokenizer"))
    out: str = field(metadata=arg("directory to write (must be absent or empty unless --force)"))
    special_tokens: list[str] = field(
        default_factory=lambda: [END_OF_TEXT],
        metadata=arg("special tokens of the tokenizer; the first is BOS/EOS"),
    )
    dtype: str | None = field(
        default=None,
        metadata=arg("store weights in this dtype (default: as in the checkpoint)",
                     choices=DTYPES),
    )
    force: bool = field(default=False, metadata=arg("replace a non-empty --out directory"))


def run(config: ExportConfig) -> str:
    """Write the directory and return its path."""
    from NLM.min_lm.hf import export_hf  # torch is imported only when the command runs, not for --help

    out = export_hf(
        config.checkpoint,
        config.vocab_path,
        config.merges_path,
        config.out,
        special_tokens=config.special_tokens,
        dtype=config.dtype,
        force=config.force,
    )
    print(f"wrote {out} (load it with transformers: AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return str(out)


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.export_hf") -> int:
    return run_command(ExportConfig, run, argv, prog, __doc__)


if __name__ == "__main__":
    sys.exit(main())
