"""Score a checkpoint on held-out data: mean loss (nats/token), perplexity, bits per byte, tokens scored.

    minlm eval --checkpoint runs/model.pt --tokens data/test.npy
    minlm eval --checkpoint runs/model.pt --text test.jsonl --vocab_path v.json --merges_path m.txt --json

--tokens takes a .npy array made by `minlm tokenize`. --text takes a corpus in any format `minlm tokenize`
reads (its documents joined by <|endoftext|>) and encodes it first; the text is preceded by
<|endoftext|>, as a document is in training, so every one of its tokens is scored and bits per byte
(which only text gives) count every byte. The whole input is scored in windows of the model's context
length; --stride below it overlaps them for more context per token (each token is still scored once).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field

from NLM.min_lm.args import arg, run_command
from NLM.min_lm.errors import UserError
from NLM.min_lm.options import TRAIN_DTYPES
from NLM.min_lm.tokenization.tokenizer import END_OF_TEXT


@dataclass
class EvalConfig:
    checkpoint: str = field(metadata=arg("checkpoint to score (it holds the model's config)"))
    tokens: str | None = field(default=None, metadata=arg("a .npy array of token ids to score"))
    text: str | None = field(default=None, metadata=arg("or a corpus to encode and score: a .txt, .jsonl, "
                                                        ".jsonl.gz, .json or .parquet file, folder or glob"))
    vocab_path: str | None = field(default=None, metadata=arg("the tokenizer's vocab.json (with --text)"))
    merges_path: str | None = field(default=None, metadata=arg("the tokenizer's merges.txt (with --text)"))
    special_tokens: list[str] = field(default_factory=lambda: [END_OF_TEXT],
                                      metadata=arg("the tokenizer's special tokens (with --text)"))
    text_field: str = field(default="text", metadata=arg("the field (column) holding the text in JSON and "
                                                         "Parquet records"))
    skip_bad_records: bool = field(default=False, metadata=arg("skip and count records without usable text "
                                                               "instead of stopping at the first"))
    stride: int | None = field(default=None, metadata=arg("tokens between window starts "
                                                          "(default: the context length, no overlap)"))
    batch_size: int = field(default=8, metadata=arg("windows per forward pass"))
    device: str = field(default="auto", metadata=arg("auto (cuda, then mps, then cpu), cpu, cuda, "
                                                     "cuda:N or mps"))
    dtype: str = field(default="float32", metadata=arg("compute dtype", choices=TRAIN_DTYPES))
    json: bool = field(default=False, metadata=arg("print the result as one JSON object"))
    progress: bool = field(default=True, metadata=arg("show a progress bar"))

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.text is None):
            raise UserError("give exactly one of --tokens (a .npy file) and --text (a corpus)")
        if self.text is not None and (self.vocab_path is None or self.merges_path is None):
            raise UserError("--text needs the tokenizer: --vocab_path and --merges_path")
        if self.stride is not None and self.stride < 1:
            raise UserError(f"--stride must be at least 1, got {self.stride}")
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be at least 1, got {self.batch_size}")


def run(config: EvalConfig):
    """Score the checkpoint on the data; print and return the EvalResult (torch is imported here, so --help
    stays fast)."""
    from NLM.min_lm.device import resolve_device
    from NLM.min_lm.evaluation import encode_corpus, evaluate_tokens
    from NLM.min_lm.generation import load_model_for
    from NLM.min_lm.tokenization import load_tokenizer
    from NLM.min_lm.tokenization.documents import BadRecords, resolve_inputs
    from NLM.min_lm.training.data import open_tokens
    from NLM.min_lm.transformer import load_model

    if config.tokens is not None:
        model, _ = load_model(config.checkpoint, resolve_device(config.device))
        # at least 2 tokens (one to score), every id inside the model's vocabulary
        tokens = open_tokens(config.tokens, "--tokens", model.config.vocab_size, context_length=1)
        num_bytes, source = None, config.tokens
    else:
        tokenizer = load_tokenizer(config.vocab_path, config.merges_path, config.special_tokens)
        model = load_model_for(tokenizer, config.checkpoint, config.device, config.vocab_path)
        bad_records = BadRecords(skip=config.skip_bad_records)
        files = resolve_inputs(config.text, "--text")
        tokens, num_bytes = encode_corpus(tokenizer, files, config.text_field, bad_records)
        if bad_records.count:
            print(f"warning: {bad_records.summary()}", file=sys.stderr)
        if num_bytes == 0:
            raise UserError(f"--text {config.text}: no text to score")
        source = config.text
    if config.stride is not None and config.stride > model.config.context_length:
        raise UserError(f"--stride {config.stride} exceeds the model's context length "
                        f"{model.config.context_length}")
    result = evaluate_tokens(model, tokens, config.stride, config.batch_size, config.dtype, num_bytes,
                             progress=config.progress and not config.json)
    if config.json:
        print(json.dumps({"checkpoint": config.checkpoint, "data": source, **dataclasses.asdict(result)}))
    else:
        print(format_result(result, config.checkpoint, source))
    return result


def format_result(result, checkpoint: str, source: str) -> str:
    rows = [("loss", f"{result.loss:.4f} nats/token"), ("perplexity", f"{result.perplexity:.2f}")]
    if result.bits_per_byte is not None:
        rows.append(("bits/byte", f"{result.bits_per_byte:.4f} ({result.num_bytes:,} bytes)"))
    rows.append(("tokens", f"{result.tokens:,} scored in {result.windows:,} windows of "
                           f"{min(result.context_length, result.tokens):,} (stride {result.stride})"))
    return "\n".join([f"{checkpoint} on {source}:"] + [f"  {name:<11} {value}" for name, value in rows])


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.evaluate") -> int:
    return run_command(EvalConfig, run, argv, prog, __doc__)


if __name__ == "__main__":
    sys.exit(main())
