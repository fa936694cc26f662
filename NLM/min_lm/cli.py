"""The `minlm` command: one subcommand per script, each `python -m NLM.min_lm.scripts.<module>` too."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module under NLM.min_lm.scripts, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("quickstart", "the whole pipeline on a built-in corpus: tokenizer, model, samples"),
    "train-tokenizer": ("train_tokenizer", "train a byte-level BPE tokenizer on text, JSONL or Parquet"),
    "tokenize": ("tokenize", "encode corpora (text, JSON lines, Parquet) into .npy token arrays"),
    "train": ("train", "train a Transformer LM on .npy token arrays"),
    "eval": ("evaluate", "score a checkpoint on held-out tokens or text: loss, perplexity, bits/byte"),
    "generate": ("generate", "sample text from a checkpoint"),
    "export-hf": ("export_hf", "export a checkpoint + tokenizer to a Hugging Face directory"),
    "import-hf": ("import_hf", "import a Llama-shaped Hugging Face model as a checkpoint"),
}
# earlier names that keep working (not listed in the usage)
ALIASES = {"export": "export-hf"}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: minlm <command> [options]   (minlm <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = ALIASES.get(argv[0], argv[0]), argv[1:]
    if name not in COMMANDS:
        print(f"minlm: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"NLM.min_lm.scripts.{COMMANDS[name][0]}")
    return module.main(rest, prog=f"minlm {name}")


if __name__ == "__main__":
    sys.exit(main())
