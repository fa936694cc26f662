"""Sample text from a trained checkpoint, streamed to stdout as it is generated.

    minlm generate --checkpoint runs/model.pt --vocab_path tokenizers/train_vocab.json \\
        --merges_path tokenizers/train_merges.txt --prompt "Once upon a time" --temperature 0.8 --top_p 0.95

The model's shape comes from the checkpoint. A sample ends at <|endoftext|> or after --max_tokens new
tokens. The prompt "<|endoftext|>" starts a fresh document (unconditional sampling). With --num_samples N
the N samples are decoded together as one batch and printed one after another.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from NLM.min_lm.args import arg, run_command
from NLM.min_lm.errors import UserError
from NLM.min_lm.tokenization import END_OF_TEXT, load_tokenizer


@dataclass
class GenerateConfig:
    checkpoint: str = field(metadata=arg("checkpoint written by `minlm train` (it holds the model's config)"))
    vocab_path: str = field(metadata=arg("the tokenizer's vocab.json"))
    merges_path: str = field(metadata=arg("the tokenizer's merges.txt"))
    prompt: str = field(metadata=arg("text to continue; '<|endoftext|>' starts a fresh document"))
    max_tokens: int = field(default=256, metadata=arg("new tokens per sample at most"))
    temperature: float = field(default=1.0, metadata=arg("softmax temperature; 0 = greedy (argmax)"))
    top_p: float | None = field(default=None, metadata=arg("nucleus sampling: keep the most likely tokens "
                                                           "up to this total probability"))
    top_k: int | None = field(default=None, metadata=arg("sample among the k most likely tokens only"))
    seed: int | None = field(default=None, metadata=arg("random seed, for reproducible samples"))
    num_samples: int = field(default=1, metadata=arg("independent samples, generated as one batch"))
    device: str = field(default="auto", metadata=arg("auto (cuda, then mps, then cpu), cpu, cuda, "
                                                     "cuda:N or mps"))
    special_tokens: list[str] = field(default_factory=lambda: [END_OF_TEXT],
                                      metadata=arg("the tokenizer's special tokens"))

    def __post_init__(self) -> None:
        if not self.prompt:
            raise UserError("--prompt is empty; give some text (or '<|endoftext|>' for a fresh document)")
        if self.max_tokens < 1:
            raise UserError(f"--max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise UserError(f"--temperature must not be negative, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top_k must be at least 1, got {self.top_k}")
        if self.num_samples < 1:
            raise UserError(f"--num_samples must be at least 1, got {self.num_samples}")


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run(config: GenerateConfig) -> list[str]:
    """Generate `num_samples` continuations of the prompt; print them and return them (prompt included)."""
    from NLM.min_lm.generation import load_model_for, sample_texts  # torch: only when the command runs

    tokenizer = load_tokenizer(config.vocab_path, config.merges_path, config.special_tokens)
    model = load_model_for(tokenizer, config.checkpoint, config.device, f"the tokenizer {config.vocab_path}")
    streaming = config.num_samples == 1  # one sample is printed token by token, a batch when done
    if streaming:
        _write(config.prompt)
    texts = sample_texts(model, tokenizer, config.prompt, config.num_samples, config.max_tokens,
                         config.temperature, config.top_p, config.top_k, seed=config.seed,
                         on_text=_write if streaming else None)
    if streaming:
        _write("\n")
    else:
        for i, text in enumerate(texts, 1):
            _write(f"--- sample {i} of {config.num_samples} ---\n{text}\n")
    return texts


def main(argv: list[str] | None = None, prog: str = "python -m NLM.min_lm.scripts.generate") -> int:
    return run_command(GenerateConfig, run, argv, prog, __doc__)


if __name__ == "__main__":
    sys.exit(main())
