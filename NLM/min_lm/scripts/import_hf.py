"""Import a Llama-shaped Hugging Face model directory as a min_lm checkpoint (to generate with or fine-tune).

It fits when the model has no biases, as many key/value heads as query heads, SiLU, no RoPE scaling and
safetensors weights; tied embeddings become a copy in lm_head. With --vocab_path/--merges_path the
tokenizer is written too, if tokenizer.json is a GPT-2-style byte-level BPE.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from NLM.min_lm.args import arg, run_command


@dataclass
class ImportConfig:
    hf_dir: str = field(
        metadata=arg("Hugging Face model directory (config.json, model.safetensors)", positional=True)
    )
    out: str = field(metadata=arg("checkpoint file to write"))
    vocab_path: str | None = field(default=None, metadata=arg("also write the tokenizer's vocab.json here"))
    merges_path: str | None = field(default=None, metadata=arg("also write the tokenizer's merges.txt here"))


def run(config: ImportConfig) -> str:
    """Write the checkpoint (and tokenizer files) and return the checkpoint's path."""
    from NLM.min_lm.hf import import_hf  # torch is imported only when the command runs, not for --help

    out = import_hf(config.hf_dir, config.out, vocab_path=config.vocab_path, merges_path=config.merges_path)
    print(f"wrote {out}" + (f", {config.vocab_path} and {config.merges_path}" if config.vocab_path else ""))
    return str(out)


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.import_hf") -> int:
    return run_command(ImportConfig, run, argv, prog, __doc__)


if __name__ == "__main__":
    sys.exit(main())
